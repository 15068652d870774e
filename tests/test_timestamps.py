"""Kernel timestamps on real loopback sockets, and what the metrics make of them
(docs/architecture.md#timestamps-and-one-way-delay)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from lab import timestamps
from lab.endpoints.client import format_summary
from lab.metrics import compute_result, loss_directions
from lab.records import Arrival, RunRecord, Send, TrafficPlan


@pytest.fixture
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.bind(("127.0.0.1", 0))
        client.connect(server.getsockname())
        server.settimeout(5.0)
        yield client, server
    finally:
        client.close()
        server.close()


def test_udp_stamps_both_ways_and_names_each_send(udp_pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = udp_pair
    assert timestamps.enable(client) is None and timestamps.enable(server, transmit=False) is None
    log = timestamps.TransmitLog()
    before = time.time_ns()
    for seq in (10, 11, 12):
        client.send(b"probe %d" % seq)
        log.sent(seq, seq - 10)  # the socket's send count
    received = []
    for _ in range(3):
        _, ancillary, _, _ = server.recvmsg(100, timestamps.ANCILLARY_BYTES)
        received.append(timestamps.receive_stamp(ancillary))
    sent = log.stamped(timestamps.transmit_stamps(client, 3))
    after = time.time_ns()
    assert [seq for seq, _ in sent] == [10, 11, 12] and not log
    assert all(before <= stamp <= after for _, stamp in sent)
    assert all(stamp is not None and before <= stamp <= after for stamp in received)
    assert all(tx <= rx for (_, tx), rx in zip(sent, received, strict=True))  # one clock, in order
    assert timestamps.transmit_stamps(client) == []  # nothing left: no stale entry


def test_tcp_keys_are_last_byte_offsets_and_one_stamp_covers_a_send() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with socket.create_connection(listener.getsockname(), timeout=5.0) as client:
            peer, _ = listener.accept()
            with peer:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                client.setblocking(False)  # a socket timeout would make Python poll before each read
                assert timestamps.enable(client) is None  # connected: OPT_ID counts bytes from here
                log = timestamps.TransmitLog()
                log.sent(0, 9)  # two probes of 10 bytes handed to one send...
                log.sent(1, 19)
                client.send(b"x" * 20)
                log.sent(2, 24)
                time.sleep(0.01)  # (a separate segment, not coalesced behind the first)
                client.send(b"y" * 5)
                deadline = time.monotonic() + 5
                stamped: list[tuple[int, int]] = []
                while len(stamped) < 3 and time.monotonic() < deadline:
                    stamped += log.stamped(timestamps.transmit_stamps(client))
                    time.sleep(0.001)
                assert [seq for seq, _ in stamped] == [0, 1, 2]
                assert stamped[0][1] == stamped[1][1] <= stamped[2][1]  # ...share its stamp


def test_receive_stamp_without_one_is_none() -> None:
    assert timestamps.receive_stamp([]) is None
    assert timestamps.receive_stamp([(socket.SOL_SOCKET, timestamps.SCM_TIMESTAMPING, bytes(48))]) is None


# --- what the metrics make of them ---------------------------------------------------------------
MS = 1_000_000


def _record(*, stamped: bool = True, rate: float | None = None, report: bool = True) -> RunRecord:
    sends, arrivals = [], []
    for seq in range(4):
        intended = seq * 10 * MS
        late = 2 * MS if rate else 0  # open loop: each send left 2 ms after its intended time
        sends.append(Send(seq=seq, intended_ns=intended, sent_ns=intended + late, size=64,
                          kernel_sent_ns=10**18 + intended + late + 50_000 if stamped else None))
        if seq == 3:
            continue  # lost
        user_recv = intended + late + 1 * MS
        kernel_sent = 10**18 + intended + late + 50_000
        arrivals.append(Arrival(seq=seq, recv_ns=user_recv, kernel_recv_ns=kernel_sent + 400_000,
                                server_rx_ns=kernel_sent + 300_000 if report else None,
                                server_tx_ns=kernel_sent + 320_000 if report else None,
                                server_seen=(1 << seq) - 1 if report else None))
    return RunRecord(protocol="udp", plan=TrafficPlan(count=4, rate=rate), started_ns=0, ended_ns=50 * MS,
                     sends=sends, arrivals=arrivals, timestamps="kernel", realtime_offset_ns=10**18)


def test_the_kernels_rtt_is_the_best_figure_and_the_users_stays_beside_it() -> None:
    result = compute_result(_record())
    assert result.timestamps == "kernel" and result.notes.timestamps_fallback is None
    assert result.rtt_us["p50"] == 400 and result.rtt_user_us["p50"] == 1000
    assert result.owd_forward_us["p50"] == 300 and result.owd_reverse_us["p50"] == 80
    assert result.server_turnaround_us["p50"] == 20
    summary = format_summary(result, "127.0.0.1:7")
    assert "(kernel timestamps)" in summary.splitlines()[1] and "rtt ms in user space" in summary
    assert "one-way µs: forward p50 300" in summary


def test_open_loop_keeps_the_schedule_correction() -> None:
    result = compute_result(_record(rate=100.0))
    assert result.rtt_us["p50"] == pytest.approx(2400, rel=1e-3)  # 0.4 ms on the wire + 2 ms late
    assert result.rtt_uncorrected_us["p50"] == 400


def test_a_missing_stamp_falls_back_to_user_times_and_says_why() -> None:
    record = _record()
    record.sends[1].kernel_sent_ns = None
    result = compute_result(record)
    assert result.timestamps == "user" and result.rtt_us == result.rtt_user_us
    assert "1 of 3 replies lack" in result.notes.timestamps_fallback
    assert "user-space timestamps" in format_summary(result, "127.0.0.1:7")


def test_a_plain_echo_gives_no_one_way_figures() -> None:
    result = compute_result(_record(report=False))
    assert result.owd_forward_us is None and result.loss_forward_ratio is None


def test_loss_directions_from_reports_and_the_closing_query() -> None:
    def arrival(seq: int, seen: int, stream: int = 0) -> Arrival:
        return Arrival(seq=seq, recv_ns=0, stream=stream, server_rx_ns=1, server_tx_ns=2, server_seen=seen)

    # 1 reached the server (reply lost), 2 did not; 5 no report covers; 4 a late copy proves seen
    arrivals = [arrival(0, 0), arrival(3, 0b110), Arrival(seq=4, recv_ns=0, server_rx_ns=1, server_tx_ns=2)]
    forward, reverse, unknown = loss_directions(1, arrivals, [], [1, 2, 4, 5])
    assert (forward, reverse, unknown) == ({2}, {1, 4}, {5})
    # the closing query for seq 6 covers 5: seen
    assert loss_directions(1, arrivals, [[0, 6, 0b1]], [5]) == (set(), {5}, set())
    # two streams: a report speaks only for its own stream's seqs
    assert loss_directions(2, [arrival(4, 0, stream=0)], [], [1, 2]) == ({2}, set(), {1})
    assert loss_directions(1, [Arrival(seq=0, recv_ns=0)], [], [1]) is None  # a plain echo
