"""A lossy channel simulated in-process, and a run of one ARQ sender and receiver across it.

No sockets and no real time: a virtual clock jumps from event to event, so a run of minutes takes
milliseconds and always goes the same way. The lesson (`python -m lab.protocols.arq`) prints such
a run; the property tests run thousands of them with channels hypothesis invents.

Each direction is a `Channel`: a list of `Fate`s, one per datagram in the order they are sent
(dropped, delivered, duplicated, and after what delay: different delays reorder), and after the
list, every datagram arrives after `delay`. So every channel eventually delivers, which is what
any ARQ needs: no protocol gets data across a channel that loses everything forever.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from lab.protocols.arq.base import InOrderReceiver, Sender
from lab.protocols.arq.segment import Segment, decode

DEFAULT_DELAY_S = 0.010  # one-way delay of a datagram the fates say nothing about


@dataclass(frozen=True, slots=True)
class Fate:
    """What happens to one datagram: `copies` of it arrive (0: lost), each `delay` s later."""

    copies: int = 1
    delay: float = DEFAULT_DELAY_S


class Channel:
    """One direction: each datagram meets the next fate, then the channel is perfect."""

    def __init__(self, fates: Iterable[Fate] = (), *, delay: float = DEFAULT_DELAY_S) -> None:
        self._fates: Iterator[Fate] = iter(fates)
        self.delay = delay
        self.carried = 0
        self.lost = 0

    def carry(self, now: float) -> list[float]:
        """When the copies of a datagram sent at `now` arrive ([] if it is lost)."""
        fate = next(self._fates, None) or Fate(1, self.delay)
        self.carried += 1
        self.lost += fate.copies == 0
        # A duplicate trails its original by a microsecond, so they never tie.
        return [now + fate.delay + copy * 1e-6 for copy in range(fate.copies)]


def random_fates(seed: int, *, loss: float, duplicate: float = 0.0, delay: float = DEFAULT_DELAY_S,
                 jitter: float = 0.0) -> Iterator[Fate]:
    """Fates drawn from a seeded generator: lost with probability `loss`, else one copy (two with
    probability `duplicate`) after `delay` plus up to `jitter` (which reorders). Endless."""
    rng = random.Random(seed)
    while True:
        if rng.random() < loss:
            yield Fate(0, delay)
        else:
            yield Fate(2 if rng.random() < duplicate else 1, delay + rng.uniform(0, jitter))


@dataclass(slots=True)
class Outcome:
    """What a simulated run delivered, and when it ended (everything acknowledged, or `until`)."""

    delivered: list[bytes]
    ended: float
    complete: bool


Log = Callable[[float, str, str], None]  # (time, event, detail): "send", "resend", "lost", ...
Observe = Callable[[float, Segment, Sender], None]  # each DATA segment just before it leaves


def simulate(sender: Sender, receiver: InOrderReceiver, payloads: Iterable[bytes], *,
             forward: Channel | None = None, reverse: Channel | None = None, until: float = 3600.0,
             log: Log | None = None, observe: Observe | None = None) -> Outcome:
    """Send `payloads` from `sender` to `receiver` over `forward`, ACKs back over `reverse`.

    Ends when the sender has everything acknowledged (complete) or the clock passes `until`.
    """
    forward = forward or Channel()
    reverse = reverse or Channel()
    note: Log = log or (lambda _t, _e, _d: None)
    order = itertools.count()  # breaks ties between datagrams arriving at the same time
    in_transit: list[tuple[float, int, str, bytes]] = []
    delivered: list[bytes] = []
    now = 0.0

    def transmit(segments: list[Segment]) -> None:
        for segment in segments:
            if observe is not None:
                observe(now, segment, sender)
            again = sender.unacked[segment.seq].transmissions > 1
            arrivals = forward.carry(now)
            note(now, "resend" if again else "send", f"DATA {segment.seq}")
            if not arrivals:
                note(now, "lost", f"DATA {segment.seq}")
            for when in arrivals:
                heapq.heappush(in_transit, (when, next(order), "receiver", segment.encode()))

    def poll() -> None:
        timeouts = sender.counters.timeouts
        segments = sender.poll(now)
        if sender.counters.timeouts > timeouts:
            note(now, "timeout", f"RTO -> {sender.timer.rto:.3f} s")
        transmit(segments)

    for payload in payloads:
        sender.send(payload)
    poll()
    while not sender.idle:
        next_arrival = in_transit[0][0] if in_transit else None
        wake = [t for t in (next_arrival, sender.next_deadline()) if t is not None]
        if not wake or min(wake) > until:
            return Outcome(delivered, now, complete=False)
        now = max(now, min(wake))
        while in_transit and in_transit[0][0] <= now:
            _, _, to, datagram = heapq.heappop(in_transit)
            segment = decode(datagram)
            if to == "receiver":
                payloads_now, ack = receiver.on_data(segment)
                for payload in payloads_now:
                    delivered.append(payload)
                    note(now, "deliver", f"#{len(delivered) - 1} ({len(payload)} bytes)")
                arrivals = reverse.carry(now)
                note(now, "ack", describe_ack(ack) + ("" if arrivals else " (lost)"))
                for when in arrivals:
                    heapq.heappush(in_transit, (when, next(order), "sender", ack.encode()))
            else:
                duplicates = sender.counters.duplicate_acks
                sender.on_ack(segment, now)
                note(now, "acked" if sender.counters.duplicate_acks == duplicates else "dup-ack",
                     describe_ack(segment))
        poll()
    return Outcome(delivered, now, complete=True)


def describe_ack(segment: Segment) -> str:
    """`ACK 5` or `ACK 5 SACK 7,8`."""
    sacked = segment.acked()
    return f"ACK {segment.ack}" + (f" SACK {','.join(map(str, sacked))}" if sacked else "")
