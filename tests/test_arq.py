"""The ARQ machines (lab.protocols.arq) without sockets: any channel that eventually delivers gets the
exact byte stream across, in order, once; RFC 6298 timers with Karn's rule; the window bounds; the
segment decoder and the server's datagram handler against any bytes; then the real protocols on
loopback sockets (the lossy link is tests/test_arq_link.py)."""

from __future__ import annotations

import contextlib
import math
import socket
import zlib
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab.errors import ConfigError
from lab.metrics import compute_result
from lab.protocols import get_protocol
from lab.protocols.arq import segment as seg
from lab.protocols.arq.base import Sender
from lab.protocols.arq.endpoint import MACHINES, machines
from lab.protocols.arq.go_back_n import GoBackNSender
from lab.protocols.arq.protocol import window_of
from lab.protocols.arq.segment import Kind, Scheme, SegmentError, decode
from lab.protocols.arq.selective_repeat import SelectiveRepeatReceiver, SelectiveRepeatSender
from lab.protocols.arq.server import ArqServer
from lab.protocols.arq.simulation import Channel, Fate, random_fates, simulate
from lab.protocols.arq.stop_and_wait import StopAndWaitSender
from lab.protocols.arq.timer import MAX_RTO_S, MIN_RTO_S, RetransmissionTimer
from lab.records import TrafficPlan

FOREVER = math.inf
fates = st.lists(st.builds(Fate, copies=st.integers(0, 2), delay=st.floats(0.0, 0.3)), max_size=60)
streams = st.lists(st.binary(max_size=24), max_size=40)
schemes = st.sampled_from(list(Scheme))
windows = st.integers(1, 16)


# --- every scheme gets the stream across -------------------------------------------------------------
@given(scheme=schemes, window=windows, payloads=streams, forward=fates, reverse=fates)
def test_any_eventually_delivering_channel_gets_the_exact_stream_across_once_in_order(
        scheme: Scheme, window: int, payloads: list[bytes], forward: list[Fate], reverse: list[Fate]) -> None:
    sender, receiver = machines(scheme, conn=7, window=window)
    outcome = simulate(sender, receiver, payloads, forward=Channel(forward), reverse=Channel(reverse),
                       until=FOREVER)
    assert outcome.complete and outcome.delivered == payloads
    assert receiver.counters.delivered == len(payloads) == sender.counters.sent
    assert sender.idle


@given(scheme=schemes, seed=st.integers(0, 2**32 - 1), loss=st.floats(0, 0.4), duplicate=st.floats(0, 0.2),
       jitter=st.floats(0, 0.05))
def test_random_loss_duplication_and_reordering_deliver_the_stream_too(
        scheme: Scheme, seed: int, loss: float, duplicate: float, jitter: float) -> None:
    payloads = [i.to_bytes(2, "big") * (i % 7) for i in range(30)]

    def lossy_then_clean(seed: int) -> list[Fate]:  # 100 random fates, then the channel is clean
        draws = random_fates(seed, loss=loss, duplicate=duplicate, jitter=jitter)
        return [next(draws) for _ in range(100)]

    sender, receiver = machines(scheme, window=6)
    outcome = simulate(sender, receiver, payloads, forward=Channel(lossy_then_clean(seed)),
                       reverse=Channel(lossy_then_clean(seed + 1)), until=FOREVER)
    assert outcome.delivered == payloads


# --- the window -----------------------------------------------------------------------------------------
@given(window=windows, payloads=streams, forward=fates, reverse=fates)
def test_go_back_n_never_has_more_than_window_segments_unacknowledged(
        window: int, payloads: list[bytes], forward: list[Fate], reverse: list[Fate]) -> None:
    def observe(_now: float, _segment: seg.Segment, sender: object) -> None:
        assert isinstance(sender, GoBackNSender)
        assert len(sender.unacked) <= window and sender.next_seq - sender.base <= window

    sender, receiver = machines(Scheme.GO_BACK_N, window=window)
    simulate(sender, receiver, payloads, forward=Channel(forward), reverse=Channel(reverse), until=FOREVER,
             observe=observe)


@given(window=windows, payloads=streams, forward=fates, reverse=fates)
def test_selective_repeat_never_resends_an_acknowledged_segment(
        window: int, payloads: list[bytes], forward: list[Fate], reverse: list[Fate]) -> None:
    def observe(_now: float, segment: seg.Segment, sender: object) -> None:
        assert isinstance(sender, SelectiveRepeatSender)
        assert not sender.is_acknowledged(segment.seq), f"resent segment {segment.seq}, already acknowledged"
        assert sender.next_seq - sender.base <= window

    sender, receiver = machines(Scheme.SELECTIVE_REPEAT, window=window)
    simulate(sender, receiver, payloads, forward=Channel(forward), reverse=Channel(reverse), until=FOREVER,
             observe=observe)


def test_stop_and_wait_is_a_window_of_one_whatever_is_asked() -> None:
    sender, receiver = machines(Scheme.STOP_AND_WAIT, window=8)
    assert sender.window == receiver.window == 1
    for payload in (b"a", b"b"):
        sender.send(payload)
    assert [s.seq for s in sender.poll(0.0)] == [0] and sender.poll(0.0) == []
    assert sender.counters.window_stalls == 1


def test_selective_repeat_keeps_what_arrives_after_a_gap_and_says_so_in_the_sack_bitmap() -> None:
    receiver = SelectiveRepeatReceiver(conn=1, window=4)
    delivered, ack = receiver.on_data(seg.data(Scheme.SELECTIVE_REPEAT, 1, 4, 2, b"c"))
    assert delivered == [] and ack.ack == 0 and ack.acked() == [2]
    delivered, ack = receiver.on_data(seg.data(Scheme.SELECTIVE_REPEAT, 1, 4, 9, b"far"))  # beyond the window
    assert delivered == [] and ack.acked() == [2]
    delivered, ack = receiver.on_data(seg.data(Scheme.SELECTIVE_REPEAT, 1, 4, 0, b"a"))
    assert delivered == [b"a"] and ack.ack == 1 and ack.acked() == [2]
    delivered, ack = receiver.on_data(seg.data(Scheme.SELECTIVE_REPEAT, 1, 4, 1, b"b"))
    assert delivered == [b"b", b"c"] and ack.ack == 3 and ack.sack == 0


# --- RFC 6298 and Karn ------------------------------------------------------------------------------------
def reference_rto(samples: list[float]) -> float:
    """RFC 6298 (2.2, 2.3) written out once more, plainly, with the lab's bounds."""
    srtt, rttvar = samples[0], samples[0] / 2
    for r in samples[1:]:
        rttvar = 0.75 * rttvar + 0.25 * abs(srtt - r)
        srtt = 0.875 * srtt + 0.125 * r
    return min(max(srtt + max(0.001, 4 * rttvar), MIN_RTO_S), MAX_RTO_S)


@given(st.lists(st.floats(0.0, 30.0), min_size=1, max_size=30))
def test_the_rto_follows_rfc_6298_from_the_samples(samples: list[float]) -> None:
    timer = RetransmissionTimer()
    assert timer.rto == 1.0 and timer.srtt is None  # (2.1) before any sample
    for rtt in samples:
        timer.sample(rtt)
    assert timer.rto == pytest.approx(reference_rto(samples))
    assert timer.samples == len(samples)


@given(st.integers(0, 20), st.floats(0.0, 5.0))
def test_backoff_doubles_the_rto_up_to_60_s_and_a_new_sample_ends_it(expiries: int, rtt: float) -> None:
    timer = RetransmissionTimer()
    timer.sample(rtt)
    start = timer.rto
    for _ in range(expiries):
        timer.backoff()
    assert timer.rto == pytest.approx(min(start * 2**expiries, MAX_RTO_S))
    timer.sample(rtt)
    assert timer.rto <= max(start, reference_rto([rtt, rtt]))


def test_karn_no_sample_from_a_retransmitted_segment_and_the_backoff_stays_until_a_clean_one() -> None:
    sender = StopAndWaitSender(conn=1)
    sender.send(b"first")
    sender.send(b"second")
    assert [s.seq for s in sender.poll(0.0)] == [0]
    assert sender.next_deadline() == 1.0  # the initial RTO
    assert [s.seq for s in sender.poll(1.0)] == [0]  # expired: sent again, RTO doubled
    assert (sender.counters.timeouts, sender.counters.retransmitted, sender.timer.rto) == (1, 1, 2.0)
    sender.on_ack(seg.ack(Scheme.STOP_AND_WAIT, 1, 1, 1), 1.05)  # which copy does it answer? unknown
    assert sender.timer.samples == 0 and sender.timer.rto == 2.0  # Karn: no sample, backoff kept
    assert [s.seq for s in sender.poll(1.05)] == [1]
    sender.on_ack(seg.ack(Scheme.STOP_AND_WAIT, 1, 1, 2), 1.10)  # sent once: a clean sample
    assert sender.timer.samples == 1 and sender.timer.srtt == pytest.approx(0.05)
    assert sender.timer.rto == MIN_RTO_S and sender.idle


class RecordingTimer(RetransmissionTimer):
    """The real timer, remembering its samples and whether one came after the last backoff."""

    __slots__ = ("taken", "sampled_since_backoff")

    def __init__(self) -> None:
        super().__init__()
        self.taken: list[float] = []
        self.sampled_since_backoff = False

    def sample(self, rtt: float) -> None:
        super().sample(rtt)
        self.taken.append(max(0.0, rtt))
        self.sampled_since_backoff = True

    def backoff(self) -> None:
        super().backoff()
        self.sampled_since_backoff = False


def check_rto_after_samples(timer: RecordingTimer) -> None:
    """RFC 6298 (5.7): once a valid sample follows the last backoff, the RTO is the formula's."""
    if timer.sampled_since_backoff:
        assert timer.rto == pytest.approx(reference_rto(timer.taken))


def run_with_recording_timer(scheme: Scheme, window: int, payloads: list[bytes], forward: Channel,
                             reverse: Channel) -> tuple[RecordingTimer, dict[int, int], Sender]:
    transmissions: dict[int, int] = {}
    sender_class, receiver_class = MACHINES[scheme]
    timer = RecordingTimer()
    sender, receiver = sender_class(0, window, timer), receiver_class(0, window)

    def observe(_now: float, segment: seg.Segment, _sender: object) -> None:
        transmissions[segment.seq] = transmissions.get(segment.seq, 0) + 1
        assert segment.copy == transmissions[segment.seq]  # each copy says which one it is
        check_rto_after_samples(timer)

    simulate(sender, receiver, payloads, forward=forward, reverse=reverse, until=FOREVER, observe=observe)
    check_rto_after_samples(timer)
    return timer, transmissions, sender


@given(scheme=schemes, window=windows, payloads=streams, forward=fates, reverse=fates)
def test_every_sample_times_a_named_copy_and_then_the_rto_is_rfc_6298s(
        scheme: Scheme, window: int, payloads: list[bytes], forward: list[Fate], reverse: list[Fate]) -> None:
    timer, transmissions, sender = run_with_recording_timer(scheme, window, payloads, Channel(forward),
                                                            Channel(reverse))
    assert sum(transmissions.values()) == sender.counters.sent + sender.counters.retransmitted
    assert timer.samples <= len(transmissions)  # at most one per segment: the copy its ACK names
    if sender.counters.retransmitted == 0:
        assert timer.backoffs == 0


@given(scheme=schemes, seed=st.integers(0, 2**32 - 1))
def test_over_a_long_run_at_20_percent_loss_each_way_a_sample_after_a_backoff_restores_the_rto(
        scheme: Scheme, seed: int) -> None:
    """The scenario that stalled arq-sw (5 ms each way, 20 % loss each way), 300 segments long."""
    payloads = [i.to_bytes(2, "big") for i in range(300)]
    timer, _, sender = run_with_recording_timer(
        scheme, 8, payloads, Channel(random_fates(seed, loss=0.2, delay=0.005)),
        Channel(random_fates(seed + 1, loss=0.2, delay=0.005)))
    assert sender.idle
    if scheme == Scheme.STOP_AND_WAIT:  # one ACK per segment gets through, and it names its copy
        assert timer.samples == len(payloads)


def test_a_backoff_does_not_outlive_the_segment_that_suffered_it() -> None:
    """Regression (arq-sw at 20 % loss each way: RTO 60 s with SRTT 11 ms): every segment's first
    copy lost, its second acknowledged. The ACK names copy 2, so it is a sample and the RTO comes
    back; an ACK that names no copy leaves Karn's rule nothing to sample, and the RTO climbs."""
    def run(named: bool) -> StopAndWaitSender:
        sender = StopAndWaitSender(conn=1)
        for n in range(12):
            sender.send(b"probe %d" % n)
        now = 0.0
        for n in range(12):
            assert [s.copy for s in sender.poll(now)] == [1]  # the first copy: lost
            now = sender.next_deadline()  # type: ignore[assignment]
            (copy,) = sender.poll(now)  # timeout: the RTO doubles, copy 2 leaves
            assert (copy.seq, copy.copy) == (n, 2)
            now += 0.01
            answer = seg.ack(Scheme.STOP_AND_WAIT, 1, 1, n + 1, answering=copy if named else None)
            sender.on_ack(answer, now)
            assert sender.is_acknowledged(n)
        return sender

    named = run(named=True)
    assert named.timer.samples == 12 and named.timer.rto == MIN_RTO_S and named.timer.backoffs == 12
    assert run(named=False).timer.rto == MAX_RTO_S  # without names: 1 s doubled 12 times, capped


def test_an_ack_answering_an_old_copy_times_that_copy_not_the_newest() -> None:
    sender = StopAndWaitSender(conn=1)
    sender.send(b"x")
    (first,) = sender.poll(0.0)
    (second,) = sender.poll(1.0)  # the first copy was only slow: the RTO of 1 s expired
    sender.on_ack(seg.ack(Scheme.STOP_AND_WAIT, 1, 1, 1, answering=first), 1.3)
    assert sender.timer.srtt == pytest.approx(1.3)  # the first copy's round trip, not 0.3 s


# --- the segment format and the server's handling of any bytes -------------------------------------------
segments = st.builds(
    seg.Segment, kind=st.sampled_from(list(Kind)), scheme=schemes, conn=st.integers(0, 2**32 - 1),
    window=st.integers(1, seg.MAX_WINDOW), seq=st.integers(0, 2**32 - 1), ack=st.integers(0, 2**32 - 1),
    sack=st.integers(0, 2**64 - 1), copy=st.integers(0, 2**32 - 1), payload=st.binary(max_size=64),
).filter(lambda s: s.kind == Kind.DATA or not s.payload)


@given(segments)
def test_a_segment_comes_back_from_its_wire_form(segment: seg.Segment) -> None:
    wire = segment.encode()
    assert len(wire) == seg.HEADER_SIZE + len(segment.payload)
    assert decode(wire) == segment


@given(segments, st.integers(0, 200), st.integers(1, 255))
def test_a_damaged_segment_is_refused_never_misread(segment: seg.Segment, where: int, flip: int) -> None:
    wire = bytearray(segment.encode())
    wire[where % len(wire)] ^= flip
    with pytest.raises(SegmentError):
        decode(bytes(wire))


@given(st.binary(max_size=100))
def test_any_bytes_decode_to_a_segment_or_a_segment_error(data: bytes) -> None:
    with contextlib.suppress(SegmentError):
        decode(data)


def crc_fixed(header_and_payload: bytes) -> bytes:
    """Bytes with a correct CRC, so the fields behind it are what gets tested."""
    raw = bytearray(header_and_payload.ljust(seg.HEADER_SIZE, b"\0"))
    raw[28:32] = b"\0\0\0\0"
    raw[28:32] = zlib.crc32(bytes(raw)).to_bytes(4, "big")
    return bytes(raw)


@pytest.fixture(scope="module")
def arq_server() -> Iterator[ArqServer]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    server = ArqServer(sock)
    yield server
    sock.close()


hostile = st.one_of(
    st.binary(max_size=80),
    st.binary(min_size=28, max_size=60).map(lambda b: crc_fixed(b"AQ\x01" + b[3:])),
    segments.map(lambda s: s.encode()),
)


@given(datagrams=st.lists(hostile, max_size=20), port=st.integers(0, 65535))
def test_the_server_takes_any_datagram_without_raising(arq_server: ArqServer, datagrams: list[bytes],
                                                       port: int) -> None:
    for i, datagram in enumerate(datagrams):
        arq_server.on_datagram(datagram, ("127.0.0.1", port), float(i))
    arq_server.on_timers(1e6)  # whatever they started is forgotten once silent
    assert not arq_server.conversations


# --- the real protocols on loopback -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["arq-sw", "arq-gbn", "arq-sr"])
def test_every_probe_comes_back_byte_exact_on_loopback(name: str) -> None:
    protocol = get_protocol(name)
    assert protocol.reliable and protocol.relayable and protocol.transport == "udp"
    with protocol.serving() as address:
        garbage = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with garbage:  # the server shrugs off what is not a segment, then serves a real client
            for junk in (b"", b"AQ", b"\xff" * 40, crc_fixed(b"AQ\x01\x02\x09")):
                garbage.sendto(junk, address)
        record = protocol.run(address, TrafficPlan(count=50, rate=500, timeout=2.0, size=100, window=4))
    result = compute_result(record)
    assert (result.sent, result.received, result.corrupted, result.duplicates) == (50, 50, 0, 0)
    observed = result.observations["arq"]
    assert observed["sender"]["sent"] == 50 and observed["receiver"]["delivered"] == 50
    assert observed["window"] == (1 if name == "arq-sw" else 4)


def test_the_window_is_checked_against_what_the_header_carries() -> None:
    assert window_of(TrafficPlan()) == 8 and window_of(TrafficPlan(window=64)) == 64
    with pytest.raises(ConfigError, match="between 1 and 64 segments for the ARQ protocols"):
        window_of(TrafficPlan(window=65))
    with pytest.raises(ConfigError, match="window must be between 1 and"):
        TrafficPlan(window=0)


# --- the lesson ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["sw", "gbn", "sr"])
def test_the_lesson_tells_the_same_story_for_the_same_seed(scheme: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from lab.protocols.arq.lesson import main

    args = ["--scheme", scheme, "--loss", "20%", "--count", "6", "--seed", "3", "--lang", "en"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0 and capsys.readouterr().out == first
    assert "delivered 6 of 6 messages in order" in first and "retransmitted" in first
    assert main([*args[:-1], "pt"]) == 0 and "entregou 6 de 6 mensagens" in capsys.readouterr().out
