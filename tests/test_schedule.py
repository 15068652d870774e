"""The probe schedule without sockets: a hand-driven clock, probes booked by hand (lab.schedule)."""

from __future__ import annotations

import pytest

from lab.records import RunNotes, TrafficPlan
from lab.schedule import NS_PER_S, SPIN_NS, ProbeSchedule, RunInterrupted
from lab.wire import Probe


class Clock:
    """A monotonic clock the test moves by hand (ns)."""

    def __init__(self, now: int = 1_000 * NS_PER_S) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> int:
        self.now += round(seconds * NS_PER_S)
        return self.now


def send_next(run: ProbeSchedule) -> int:
    seq, stream, _payload, _crc = run.next_probe()
    intended, sent = run.stamp(seq)
    run.sent(seq, stream, intended, sent)
    return seq


def reply(run: ProbeSchedule, seq: int, clock: Clock, *, intact: bool = True) -> None:
    run.arrived(Probe(seq=seq, send_ns=0, stream=seq % run.plan.streams), clock(), intact=intact)


def test_open_loop_intends_each_probe_at_start_plus_seq_over_rate() -> None:
    clock = Clock()
    run = ProbeSchedule("udp", TrafficPlan(count=4, rate=100.0), clock=clock)
    start = clock()
    assert run.due_ns(start) == start
    send_next(run)
    assert run.due_ns(clock()) == start + 10_000_000  # 1/100 s later
    # The sender falls 25 ms behind: probe 1 keeps its intended time (coordinated omission).
    clock.advance(0.025)
    intended, sent = run.stamp(1)
    assert (intended, sent) == (start + 10_000_000, start + 25_000_000)
    # Sleeping: wake SPIN_NS before the next probe is due.
    run.sent(1, 1, intended, sent)
    assert run.wait_s(clock()) == 0  # probe 2 (due at +20 ms) is already late
    clock.now = start + 25_000_000
    run.sent(2, 2 % run.plan.streams, *run.stamp(2))
    assert run.wait_s(clock()) == pytest.approx((start + 30_000_000 - SPIN_NS - clock()) / NS_PER_S)


def test_ping_pong_waits_for_the_reply_or_the_timeout() -> None:
    clock = Clock()
    run = ProbeSchedule("udp", TrafficPlan(count=3, timeout=0.5), clock=clock)
    assert send_next(run) == 0
    assert run.due_ns(clock()) == clock() + 500_000_000  # probe 0 in flight: next after its timeout
    clock.advance(0.01)
    reply(run, 0, clock)
    assert run.due_ns(clock()) == clock()  # answered: the next goes at once
    send_next(run)
    clock.advance(0.5)  # probe 1 times out
    assert run.due_ns(clock()) <= clock()
    send_next(run)
    assert not run.done(clock())
    clock.advance(0.2)
    reply(run, 2, clock)
    assert not run.done(clock())  # probe 1 unanswered: listen one timeout after the last send
    clock.advance(0.3)
    assert run.done(clock())
    record = run.record(clock())
    assert [s.seq for s in record.sends] == [0, 1, 2] and [a.seq for a in record.arrivals] == [0, 2]


def test_done_as_soon_as_everything_is_answered() -> None:
    clock = Clock()
    run = ProbeSchedule("tcp", TrafficPlan(count=2, rate=1000.0), clock=clock)
    send_next(run)
    clock.advance(0.001)
    send_next(run)
    reply(run, 0, clock)
    reply(run, 1, clock, intact=False)  # a damaged reply still settles its probe
    assert run.complete() and run.done(clock())


def test_a_reply_to_a_probe_never_sent_does_not_complete_the_run() -> None:
    clock = Clock()
    run = ProbeSchedule("udp", TrafficPlan(count=2, rate=10.0), clock=clock)
    send_next(run)
    reply(run, 5, clock)
    assert not run.complete()


def test_the_deadline_ends_any_run_and_says_so() -> None:
    clock = Clock()
    run = ProbeSchedule("udp", TrafficPlan(count=1000, timeout=1.0), deadline_s=2.0, clock=clock)
    send_next(run)
    clock.advance(1.999)
    assert not run.done(clock())
    clock.advance(0.001)
    assert run.done(clock()) and run.notes.deadline_hit is True
    assert run.wait_s(clock() - 1) <= 1e-9


def test_default_deadline_comes_from_the_plan() -> None:
    clock = Clock()
    plan = TrafficPlan(count=100, rate=50.0, timeout=1.0)
    run = ProbeSchedule("udp", plan, clock=clock)
    assert run.deadline_ns == clock() + round(plan.deadline_s() * NS_PER_S)
    with pytest.raises(ValueError):
        ProbeSchedule("udp", plan, deadline_s=0, clock=clock)


def test_interrupted_leaves_undecided_probes_out() -> None:
    clock = Clock()
    run = ProbeSchedule("udp", TrafficPlan(count=10, rate=100.0, timeout=1.0), clock=clock)
    for _ in range(3):
        send_next(run)
        clock.advance(0.01)
    reply(run, 0, clock)
    clock.advance(1.0)  # probe 1's timeout expired (lost); probe 2 is still inside its window
    clock.now -= round(0.015 * NS_PER_S)
    stopped = run.interrupted(clock())
    assert isinstance(stopped, RunInterrupted) and isinstance(stopped, KeyboardInterrupt)
    assert [s.seq for s in stopped.record.sends] == [0, 1]
    assert stopped.record.notes == RunNotes(interrupted=True, undecided=1)


def test_progress_is_rate_limited_and_final() -> None:
    clock = Clock()
    calls: list[tuple[int, int]] = []
    run = ProbeSchedule("udp", TrafficPlan(count=5, rate=1000.0), clock=clock,
                        progress=lambda sent, total: calls.append((sent, total)))
    for _ in range(5):
        send_next(run)
        clock.advance(0.001)
    run.record(clock())
    assert calls[0] == (1, 5) and calls[-1] == (5, 5) and len(calls) == 2


def test_live_views_get_new_arrivals_with_their_rtt() -> None:
    clock = Clock()
    seen: list[list[tuple[int, float]]] = []

    def progress(sent: int, total: int, arrivals: list[tuple[int, float]]) -> None:
        seen.append(arrivals)

    progress.wants_arrivals = True  # type: ignore[attr-defined]
    run = ProbeSchedule("udp", TrafficPlan(count=2, rate=10.0), clock=clock, progress=progress)
    send_next(run)
    clock.advance(0.004)
    reply(run, 0, clock)
    run.record(clock())
    assert seen[-1] == [(0, pytest.approx(4.0))]


def test_notes_and_observations_go_into_the_record_as_copies() -> None:
    run = ProbeSchedule("udp", TrafficPlan(count=1), clock=Clock())
    run.notes.icmp_refused += 3
    run.observations["udp"] = {"socket": {"rcvbuf": 212992}}
    record = run.record(0, report=False)
    assert record.notes == RunNotes(icmp_refused=3)
    assert record.observations == {"udp": {"socket": {"rcvbuf": 212992}}}
    run.notes.icmp_refused += 1
    run.observations["udp"]["late"] = True
    assert record.notes.icmp_refused == 3 and "late" not in record.observations["udp"]


def test_replies_are_decoded_and_booked_from_datagrams_and_streams() -> None:
    from lab.wire import EOF, NEED_DATA, StreamDecoder, encode, make_payload

    clock = Clock()
    run = ProbeSchedule("udp", TrafficPlan(count=3, rate=100.0, size=40), clock=clock)
    for _ in range(3):
        send_next(run)
    good = encode(Probe(seq=0, send_ns=0, payload=make_payload(8, 0)))
    damaged = bytearray(encode(Probe(seq=1, send_ns=0, payload=make_payload(8, 1))))
    damaged[-1] ^= 0xFF
    assert run.arrived_datagram(good, clock()) and run.arrived_datagram(bytes(damaged), clock())
    assert not run.arrived_datagram(b"not a probe", clock())
    assert [(a.seq, a.intact) for a in run.arrivals] == [(0, True), (1, False)]
    decoder = StreamDecoder(max_payload=8)
    decoder.receive_data(encode(Probe(seq=2, send_ns=0, payload=make_payload(8, 2))) + good[:5])
    assert run.arrived_stream(decoder, clock()) is NEED_DATA
    decoder.receive_data(good[5:])
    decoder.receive_data(b"")
    assert run.arrived_stream(decoder, clock()) is EOF
    assert [a.seq for a in run.arrivals] == [0, 1, 2, 0]
