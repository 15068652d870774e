"""What the three ARQ machines share: the counters, a segment waiting for its ack, the sender's
queue and window, and the in-order receiver of stop-and-wait and go-back-N.

Every machine is sans-IO: no sockets and no clock. The caller hands in segments and the time
(`now`, seconds on any monotonic clock) and sends what the machine hands back, so the same code
runs over a real UDP socket (lab.protocols.arq.endpoint), in a simulated lossy channel
(lab.protocols.arq.simulation) and in property tests.

A sender is driven by three calls: `send(payload)` queues application bytes; `poll(now)` returns
the segments to transmit now (new ones the window allows, and retransmissions whose timer
expired); `on_ack(segment, now)` takes an acknowledgement in. `next_deadline()` says when `poll`
must run again even if nothing arrives. A receiver has one call, `on_data(segment)`, returning the
payloads it can now hand the application, in order, and the ACK to send back.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import ClassVar

from lab.protocols.arq.segment import MAX_WINDOW, Scheme, Segment, ack, data
from lab.protocols.arq.timer import RetransmissionTimer


@dataclass(slots=True)
class SenderCounters:
    """What a sender did; a student reads these after a run."""

    sent: int = 0  # segments sent for the first time
    retransmitted: int = 0  # copies sent again (after a timeout)
    timeouts: int = 0  # times the retransmission timer expired
    duplicate_acks: int = 0  # ACKs that acknowledged nothing new
    window_stalls: int = 0  # times data had to wait because the window was full

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class ReceiverCounters:
    """What a receiver saw."""

    delivered: int = 0  # payloads handed to the application, in order, once each
    duplicates: int = 0  # copies of segments already delivered (or already buffered)
    out_of_order: int = 0  # segments that arrived ahead of a missing one (go-back-N drops them)
    acks_sent: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class Outstanding:
    """A segment sent and not yet acknowledged."""

    payload: bytes
    first_sent: float  # when it was first sent
    transmissions: int = 1
    sent_at: list[float] = field(default_factory=list)  # when each copy left (copy n: sent_at[n-1])
    deadline: float = 0.0  # selective repeat: when this segment's own timer expires
    backoffs: int = 0  # the timer's backoff count when this copy was sent (selective repeat)


def check_window(window: int) -> int:
    """`window` if it is a whole number of segments the header can carry, else ValueError."""
    if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= MAX_WINDOW:
        raise ValueError(f"window must be a whole number of segments in 1..{MAX_WINDOW}, got {window!r}")
    return window


class Sender:
    """The part of a sender every scheme shares: the queue, the window, Karn's rule, the counters.

    Segments are numbered 0, 1, 2, ...; `base` is the oldest one not yet acknowledged and
    `next_seq` the next new one. The window lets at most `window` numbers from `base` on be out:
    `next_seq - base < window` (for go-back-N that is exactly the unacknowledged segments).
    """

    scheme: ClassVar[Scheme]

    def __init__(self, conn: int = 0, window: int = 8, timer: RetransmissionTimer | None = None) -> None:
        self.conn = conn
        self.window = check_window(window)
        self.timer = timer or RetransmissionTimer()
        self.queue: deque[bytes] = deque()  # application bytes not yet sent
        self.base = 0
        self.next_seq = 0
        self.unacked: dict[int, Outstanding] = {}  # seq -> segment, in sending order
        self.counters = SenderCounters()
        self._stalled = False

    # --- what the application and the driver call ---
    def send(self, payload: bytes) -> None:
        """Queue one payload: it becomes one segment."""
        self.queue.append(bytes(payload))

    def poll(self, now: float) -> list[Segment]:
        """The segments to transmit now: retransmissions first (if a timer expired), then new ones."""
        out = self.on_timer(now)
        out += self.fill_window(now)
        return out

    def on_ack(self, segment: Segment, now: float) -> None:  # each scheme reads acks its own way
        raise NotImplementedError

    def on_timer(self, now: float) -> list[Segment]:  # ... and retransmits its own way
        raise NotImplementedError

    def next_deadline(self) -> float | None:
        """When `poll` must run again even if no ack arrives (None: no timer is running)."""
        raise NotImplementedError

    @property
    def idle(self) -> bool:
        """True once everything queued was sent and acknowledged."""
        return not self.queue and not self.unacked

    def is_acknowledged(self, seq: int) -> bool:
        """True if segment `seq` was sent and its acknowledgement arrived."""
        return seq < self.next_seq and seq not in self.unacked

    # --- shared steps ---
    def fill_window(self, now: float) -> list[Segment]:
        """New segments, as many as the window allows; counts a stall when data has to wait."""
        out = []
        while self.queue and self.next_seq - self.base < self.window:
            seq = self.next_seq
            self.unacked[seq] = Outstanding(self.queue.popleft(), first_sent=now, sent_at=[now],
                                            deadline=now + self.timer.rto, backoffs=self.timer.backoffs)
            self.next_seq += 1
            self.counters.sent += 1
            out.append(self.segment(seq))
            self.started(seq, now)
        stalled = bool(self.queue)  # data left over: the window is full
        if stalled and not self._stalled:
            self.counters.window_stalls += 1  # one stall per episode, however often we are polled
        self._stalled = stalled
        return out

    def started(self, seq: int, now: float) -> None:
        """Hook: a new segment `seq` just left (a scheme starts its timer here)."""

    def segment(self, seq: int) -> Segment:
        """The DATA segment for `seq` (for its first transmission or another one), naming its copy."""
        outstanding = self.unacked[seq]
        return data(self.scheme, self.conn, self.window, seq, outstanding.payload, outstanding.transmissions)

    def resend(self, seq: int, now: float) -> Segment:
        """Segment `seq` once more; counted, and never again an RTT sample (Karn's rule)."""
        outstanding = self.unacked[seq]
        outstanding.transmissions += 1
        outstanding.sent_at.append(now)
        outstanding.deadline = now + self.timer.rto
        outstanding.backoffs = self.timer.backoffs
        self.counters.retransmitted += 1
        return self.segment(seq)

    def acknowledge(self, seqs: list[int], now: float, answering: Segment | None = None) -> None:
        """Forget the segments in `seqs` (just acknowledged by the ACK `answering`) and take an RTT
        sample from them (see `rtt_sample`)."""
        rtt = self.rtt_sample(seqs, now, answering)
        if rtt is not None:
            self.timer.sample(rtt)  # a valid sample: it also ends any backoff (RFC 6298 (5.7))
        for seq in seqs:
            del self.unacked[seq]
        self.base = min(self.unacked) if self.unacked else self.next_seq

    def rtt_sample(self, seqs: list[int], now: float, answering: Segment | None) -> float | None:
        """The round trip the ACK `answering` measures, or None if it measures none for sure.

        An ACK that names the copy it answers (segment.py: our receivers always do) times that
        copy, retransmitted or not, as TCP's timestamps do (RFC 7323 section 4); if the copy it
        names was not just acknowledged (an old duplicate), it times nothing. Without a name,
        Karn's rule: only a segment sent exactly once gives a sample, since the ACK of a resent
        one may answer either copy; of those, the newest (the ACK most likely answers it).
        Without names, a backoff outlives the segment that caused it until some segment gets
        through at the first try: at 20 % loss each way that took the RTO to 60 s.
        """
        if answering is not None and answering.copy:
            if answering.seq not in seqs:
                return None
            sent_at = self.unacked[answering.seq].sent_at
            return now - sent_at[answering.copy - 1] if answering.copy <= len(sent_at) else None
        clean = [seq for seq in seqs if self.unacked[seq].transmissions == 1]
        return now - self.unacked[max(clean)].first_sent if clean else None


class InOrderReceiver:
    """The receiver of stop-and-wait and go-back-N: it accepts only the segment it expects next.

    Anything else is dropped (a copy of an old one, or one ahead of a gap: go-back-N keeps no
    buffer, the sender will send it again). Every segment is answered with the cumulative ACK
    "everything below `expected` arrived", so a lost ACK is repaired by the next one.
    """

    scheme: ClassVar[Scheme]

    def __init__(self, conn: int = 0, window: int = 8) -> None:
        self.conn = conn
        self.window = check_window(window)
        self.expected = 0
        self.counters = ReceiverCounters()

    def on_data(self, segment: Segment) -> tuple[list[bytes], Segment]:
        """(payloads to hand the application now, the ACK to send back)."""
        delivered = []
        if segment.seq == self.expected:
            delivered.append(segment.payload)
            self.expected += 1
        elif segment.seq < self.expected:
            self.counters.duplicates += 1  # its ACK was lost or slow: the ACK below repeats it
        else:
            self.counters.out_of_order += 1
        self.counters.delivered += len(delivered)
        return delivered, self.ack(segment)

    def ack(self, answering: Segment) -> Segment:
        """The cumulative ACK, naming the DATA segment (seq and copy) that prompted it."""
        self.counters.acks_sent += 1
        return ack(self.scheme, self.conn, self.window, self.expected, answering=answering)
