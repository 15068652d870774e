"""The probe schedule every measuring client shares: what to send when, what came back, when to stop.

Sans-IO like `lab.wire`: no sockets, and the clock is injected (`clock=`, monotonic ns), so tests
drive a whole run by hand (docs/architecture.md#protocols). A protocol's client owns its sockets
and its loop; it asks the schedule

- `due_ns(now)`: when the next probe may go (None once all are sent),
- `next_probe()` then `stamp(seq)` right before the send, `sent(...)` right after it,
- `arrived(probe, recv_ns, intact=...)` for every reply, damaged or not,
- `done(now)` / `wait_s(now)`: whether to stop, and how long it may sleep,
- `record(now)` at the end, or `interrupted(now)` when Ctrl-C stops it.

Ping-pong (`plan.rate is None`): one probe in flight; the next goes when the reply arrives or the
timeout expires. Open loop (`rate` probes/s): probe i is *intended* at start + i/rate and keeps
that time even when the sender falls behind, so a stall shows up as latency instead of vanishing
(coordinated omission). Every run is bounded by an overall deadline, so it always ends.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from lab.errors import CrcMismatchError, RemoteWireError
from lab.records import Arrival, Observations, RunNotes, RunRecord, Send, TrafficPlan
from lab.wire import (
    EOF,
    FLAG_LOSS_QUERY,
    HEADER_SIZE,
    HEADER_V2_SIZE,
    NEED_DATA,
    VERSION,
    VERSION_2,
    Probe,
    StreamDecoder,
    header_size,
    make_payload,
    read_reply,
)

Progress = Callable[..., None]  # progress(sent, total[, new_arrivals]) — see ProbeSchedule.report
Clock = Callable[[], int]  # monotonic nanoseconds

NS_PER_S = 1_000_000_000
# A paced sender sleeps until this long before a probe is due, then polls: waking from a sleep
# costs tens of µs in Python, which would otherwise be booked as latency of every probe.
SPIN_NS = 100_000
PROGRESS_INTERVAL_NS = 100_000_000  # report progress at most 10 times a second


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a client run; `.record` holds what it observed up to then.

    A `KeyboardInterrupt`, so callers that stop on Ctrl-C (the runner) still do; `lab send` uses
    the record to print what was measured, as ping does.
    """

    def __init__(self, record: RunRecord, result: Any = None) -> None:
        super().__init__()
        self.record = record
        self.result = result  # set by whoever measured the record (e.g. a link, with its counters)

    def __reduce__(self) -> tuple[Any, ...]:
        # It crosses a process boundary (a client run inside a namespace): keep the record.
        return (type(self), (self.record, self.result))


def deadline_ns(plan: TrafficPlan, deadline_s: float | None, now: int) -> int:
    """The clock reading at which a run of `plan` started at `now` must stop.

    `deadline_s` defaults to `plan.deadline_s()`."""
    if deadline_s is None:
        deadline_s = plan.deadline_s()
    if deadline_s <= 0:
        raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
    return now + round(deadline_s * NS_PER_S)


class ProbeSchedule:
    """One client run's schedule, record and bounds (see the module docstring for the protocol)."""

    __slots__ = (
        "protocol", "plan", "clock", "progress", "start_ns", "deadline_ns", "timeout_ns", "next_seq",
        "waiting", "waiting_until", "last_sent_ns", "answered", "sends", "arrivals", "unattributed",
        "notes", "observations", "burst", "_progress_ns", "_arrivals_seen", "version", "timestamps",
        "realtime_offset_ns", "loss_reports", "server_received",
    )

    def __init__(self, protocol: str, plan: TrafficPlan, *, deadline_s: float | None = None,
                 progress: Progress | None = None, clock: Clock = time.monotonic_ns,
                 wire_version: int = VERSION) -> None:
        self.protocol = protocol
        self.plan = plan
        self.clock = clock
        self.progress = progress
        self.start_ns = clock()
        self.deadline_ns = deadline_ns(plan, deadline_s, self.start_ns)
        self.timeout_ns = round(plan.timeout * NS_PER_S)
        self.next_seq = 0
        self.waiting: int | None = None  # ping-pong: the seq in flight
        self.waiting_until = 0
        self.last_sent_ns = 0
        self.answered: set[int] = set()
        self.sends: list[Send] = []
        self.arrivals: list[Arrival] = []
        self.unattributed = 0  # replies too damaged to tell which probe they were
        self.notes = RunNotes()  # what went unusually (deadline_hit, interrupted, ...)
        self.observations: Observations = {}  # the protocol's own (lab.records.Observations)
        self.burst = 0  # probes the last `due_probes` handed out
        self._progress_ns = 0
        self._arrivals_seen = 0
        # Wire version 2 (room for the server's report), for a client that asks for it and probes
        # big enough to hold it; `next_probe`'s payload leaves room for the version's header.
        self.version = VERSION_2 if wire_version == VERSION_2 and plan.size >= HEADER_V2_SIZE else VERSION
        self.timestamps = "user"  # a client that has the kernel stamp its socket sets "kernel"
        # To set user-space (monotonic) times beside the server's CLOCK_REALTIME ones.
        self.realtime_offset_ns = time.time_ns() - clock()  # read back to back
        self.loss_reports: list[list[int]] = []  # [stream, seq, seen] answers to the loss query
        self.server_received = 0  # the most probes the server said it had received (wire v2)

    # --- sending ---
    def intended_ns(self, seq: int) -> int:
        """Open loop: when probe `seq` is meant to leave (start + seq/rate)."""
        assert self.plan.rate is not None
        return self.start_ns + round(seq * NS_PER_S / self.plan.rate)

    def due_ns(self, now: int) -> int | None:
        """When the next probe may go (None once all are sent)."""
        if self.next_seq >= self.plan.count:
            return None
        if self.plan.rate is not None:
            return self.intended_ns(self.next_seq)
        if self.waiting is not None:
            return self.waiting_until  # ping-pong: the one in flight times out
        return now

    def next_probe(self) -> tuple[int, int, bytes, int]:
        """(seq, stream, payload, crc) of the probe to send next."""
        seq = self.next_seq
        payload = make_payload(self.plan.size - header_size(self.version), seq)
        return seq, seq % self.plan.streams, payload, zlib.crc32(payload)

    def stamp(self, seq: int) -> tuple[int, int]:
        """(intended_ns, sent_ns) for a probe about to be sent right now."""
        now = self.clock()
        # Ping-pong has no schedule: it means to send exactly when it does.
        return (self.intended_ns(seq) if self.plan.rate is not None else now), now

    def due_probes(self, limit: int) -> Iterator[tuple[int, int, bytes, int, int, int]]:
        """The probes due now, at most `limit` in a row (then the loop must drain replies):
        (seq, stream, payload, crc, intended_ns, sent_ns), each stamped as it is handed out.

        Send it, then book it with `sent(...)`; a probe not booked (its send failed) is due again.
        `burst` counts what was handed out: a full burst means the sender is behind schedule.
        """
        self.burst = 0
        now = self.clock()
        while self.burst < limit and (due := self.due_ns(now)) is not None and due <= now:
            seq, stream, payload, crc = self.next_probe()
            intended, sent_ns = self.stamp(seq)
            self.burst += 1
            yield seq, stream, payload, crc, intended, sent_ns
            now = self.clock()

    def sent(self, seq: int, stream: int, intended_ns: int, sent_ns: int) -> None:
        """Book probe `seq` as sent (call only once the send succeeded)."""
        self.sends.append(
            Send(seq=seq, intended_ns=intended_ns, sent_ns=sent_ns, size=self.plan.size, stream=stream)
        )
        self.next_seq = seq + 1
        self.last_sent_ns = sent_ns
        if self.plan.rate is None:
            self.waiting, self.waiting_until = seq, sent_ns + self.timeout_ns
        self.report(sent_ns)

    def kernel_sent(self, seq: int, kernel_ns: int) -> None:
        """Book the kernel's transmit stamp of probe `seq` (CLOCK_REALTIME ns, lab.timestamps)."""
        if 0 <= seq < len(self.sends) and (send := self.sends[seq]).seq == seq:
            send.kernel_sent_ns = kernel_ns

    # --- receiving ---
    def arrived(self, probe: Probe, recv_ns: int, *, intact: bool, kernel_ns: int | None = None) -> None:
        """Book one reply (duplicates and late ones too; `intact=False`: its payload CRC failed).
        `kernel_ns`: the kernel's receive stamp of it, when the client has one."""
        report = probe.server
        self.book(probe.seq, probe.stream, recv_ns, intact, kernel_ns,
                  None if report is None else (report.rx_ns, report.tx_ns, report.seen, report.received))

    def book(self, seq: int, stream: int, recv_ns: int, intact: bool, kernel_ns: int | None,
             report: tuple[int, int, int, int] | None) -> None:
        """`arrived` from a reply's fields (lab.wire.read_reply): report = (rx_ns, tx_ns, seen, received)."""
        if report is None:
            self.arrivals.append(Arrival(seq=seq, recv_ns=recv_ns, intact=intact, stream=stream,
                                         kernel_recv_ns=kernel_ns))
        else:
            self.arrivals.append(Arrival(seq=seq, recv_ns=recv_ns, intact=intact, stream=stream,
                                         kernel_recv_ns=kernel_ns, server_rx_ns=report[0],
                                         server_tx_ns=report[1], server_seen=report[2]))
            if report[3] > self.server_received:
                self.server_received = report[3]
        if seq < self.next_seq:  # a seq never sent must not make the run look complete
            self.answered.add(seq)
        if seq == self.waiting:
            self.waiting = None  # any reply, even a damaged one, settles the probe in flight

    def arrived_datagram(self, data: bytes, recv_ns: int, kernel_ns: int | None = None) -> bool:
        """Book the reply one datagram holds (damaged or not); False, booking nothing, when the
        datagram is no probe at all (the caller decides what else it may be). The answer to a loss
        query goes to `loss_reports`."""
        try:
            seq, stream, flags, report, intact = read_reply(data, max_payload=self.plan.size - HEADER_SIZE)
        except RemoteWireError:
            return False
        if not flags & FLAG_LOSS_QUERY:
            self.book(seq, stream, recv_ns, intact, kernel_ns, report)
        elif not intact:
            self.unattributed += 1
        elif report is not None:
            self.loss_reports.append([stream, seq, report[2]])
        return True

    def arrived_stream(self, decoder: StreamDecoder, recv_ns: int, kernel_ns: int | None = None) -> object:
        """Book every whole reply `decoder` holds; returns NEED_DATA, or EOF once the peer closed.
        RemoteWireError (from the decoder) when the byte stream is unreadable from here on."""
        while True:
            try:
                item = decoder.next_message()
            except CrcMismatchError as exc:
                if isinstance(exc.probe, Probe):
                    self.arrived(exc.probe, recv_ns, intact=False, kernel_ns=kernel_ns)
                continue
            if item is NEED_DATA or item is EOF:
                return item
            assert isinstance(item, Probe)
            self.arrived(item, recv_ns, intact=True, kernel_ns=kernel_ns)

    # --- pacing and ending ---
    def tail_end_ns(self) -> int:
        """When to stop listening once everything is sent (unless every probe is answered)."""
        # Both modes listen for one timeout after the last send, so stragglers of ping-pong
        # (late replies of earlier probes) are recorded too.
        return self.last_sent_ns + self.timeout_ns

    def complete(self) -> bool:
        """True once every probe is sent and answered."""
        return self.next_seq >= self.plan.count and len(self.answered) >= len(self.sends)

    def done(self, now: int) -> bool:
        """True when the run must stop: deadline hit, or all sent and answered or timed out."""
        if now >= self.deadline_ns:
            self.notes.deadline_hit = True
            return True
        if self.next_seq < self.plan.count:
            return False
        if len(self.answered) >= len(self.sends):
            return True  # every probe answered: nothing left to wait for
        return now >= self.tail_end_ns()

    def wait_s(self, now: int) -> float:
        """How long the loop may sleep before it must act even if no reply arrives."""
        due = self.due_ns(now)
        if due is not None and self.plan.rate is not None:
            due -= SPIN_NS  # wake early and poll the last stretch (see SPIN_NS)
        target = min(due if due is not None else self.tail_end_ns(), self.deadline_ns)
        return max(0, target - now) / NS_PER_S

    # --- progress and the record ---
    def report(self, now: int, *, final: bool = False) -> None:
        """Call `progress(sent, total)` at most 10 times a second (and once at the end).

        A callback with `wants_arrivals = True` also gets the intact replies since its last call
        (`new_arrivals`), for live views.
        """
        if self.progress is not None and (final or now - self._progress_ns >= PROGRESS_INTERVAL_NS):
            self._progress_ns = now
            if getattr(self.progress, "wants_arrivals", False):
                self.progress(len(self.sends), self.plan.count, self.new_arrivals())
            else:
                self.progress(len(self.sends), self.plan.count)

    def new_arrivals(self) -> list[tuple[int, float]]:
        """(seq, RTT ms from the intended send) of intact replies since the last call (live views)."""
        out = []
        for arrival in self.arrivals[self._arrivals_seen:]:
            if arrival.intact and 0 <= arrival.seq < len(self.sends):
                send = self.sends[arrival.seq]
                if send.seq == arrival.seq:
                    out.append((arrival.seq, (arrival.recv_ns - send.intended_ns) / 1e6))
        self._arrivals_seen = len(self.arrivals)
        return out

    def interrupted(self, now: int) -> RunInterrupted:
        """The exception carrying this run's record when Ctrl-C stops it at `now`.

        Probes still inside their timeout window and unanswered are neither received nor lost
        yet: they leave the record (counted as `undecided`) instead of showing as loss.
        """
        open_ = {s.seq for s in self.sends
                 if s.seq not in self.answered and now < s.sent_ns + self.timeout_ns}
        self.sends = [s for s in self.sends if s.seq not in open_]
        self.notes.interrupted = True
        self.notes.undecided = len(open_)
        # No final progress report: the callback may be what raised (or is being interrupted).
        return RunInterrupted(self.record(now, report=False))

    def record(self, ended_ns: int, *, report: bool = True) -> RunRecord:
        """The run's RunRecord, ended at `ended_ns`."""
        if report:
            self.report(ended_ns, final=True)
        observations = {observer: dict(figures) for observer, figures in self.observations.items()}
        if self.server_received:  # the lab's echo server's own count (wire v2 reports)
            observations.setdefault("server", {})["received"] = self.server_received
        if self.loss_reports:  # answers to the closing loss query (datagrams beyond the replies)
            observations.setdefault("server", {})["loss_answers"] = len(self.loss_reports)
        return RunRecord(
            protocol=self.protocol,
            plan=self.plan,
            started_ns=self.start_ns,
            ended_ns=ended_ns,
            sends=self.sends,
            arrivals=self.arrivals,
            unattributed_corrupt=self.unattributed,
            notes=replace(self.notes),
            observations=observations,
            timestamps=self.timestamps,
            realtime_offset_ns=self.realtime_offset_ns,
            loss_reports=[list(report) for report in self.loss_reports],
        )
