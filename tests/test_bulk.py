"""Bulk flows (lab.bulk) and their discard sink (lab.endpoints.sink): counting, the sink's answers,
TCP and UDP flows on loopback and through the impaired link."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.bulk import BulkPlan, BulkResult, run_bulk_loopback, wire
from lab.bulk.counting import DatagramCounter, StreamCounter
from lab.endpoints.sink import running_sink
from lab.errors import ConfigError, EndpointError
from lab.protocols import get_protocol

MS = 1_000_000


# --- counting (sans-IO) ------------------------------------------------------------------------------
def test_stream_counter_counts_whole_intact_blocks_in_their_intervals() -> None:
    writer = wire.BlockWriter(block_size=1000)
    counter = StreamCounter(start_ns=0, interval_ns=100 * MS)
    blocks = [writer.block() for _ in range(3)]
    counter.feed(blocks[0], 50 * MS)
    counter.feed(blocks[1][:500], 150 * MS)  # a block split across two intervals
    counter.feed(blocks[1][500:] + blocks[2], 250 * MS)
    summary = counter.summary()
    assert summary["bytes"] == 3 * (1000 + wire.BLOCK.size) == counter.received_bytes
    assert summary["intervals"] == [[0, 1020], [1, 500], [2, 1540]]
    assert (summary["blocks"], summary["corrupted_blocks"], summary["broken"]) == (3, 0, None)


def test_stream_counter_takes_back_a_damaged_block_and_stops_at_a_wrong_seq() -> None:
    writer = wire.BlockWriter(block_size=100)
    counter = StreamCounter(start_ns=0, interval_ns=100 * MS)
    good, bad = writer.block(), bytearray(writer.block())
    bad[-1] ^= 0x01
    counter.feed(good + bytes(bad), 10 * MS)
    writer.seq += 5  # a block skipped
    counter.feed(writer.block(), 20 * MS)
    summary = counter.summary()
    assert summary["bytes"] == 120 and summary["corrupted_blocks"] == 1
    assert "seq 7 where 2 was due" in summary["broken"]
    assert summary["intervals"] == [[0, 120]]


def test_stream_counter_leaves_an_unfinished_block_out() -> None:
    writer = wire.BlockWriter(block_size=100)
    counter = StreamCounter(start_ns=0, interval_ns=100 * MS)
    counter.feed(writer.block() + writer.block()[:50], 10 * MS)
    assert counter.summary()["bytes"] == 120
    assert counter.summary()["intervals"] == [[0, 120]]


def _datagram(seq: int, send_ns: int, flow: int = 7) -> bytes:
    import zlib

    payload = wire.pattern(40)
    return wire.datagram(flow, seq, send_ns, payload, zlib.crc32(payload))


def test_datagram_counter_counts_duplicates_reordering_corruption_and_jitter() -> None:
    counter = DatagramCounter(start_ns=0, interval_ns=100 * MS)
    arrivals = [(0, 0, 10), (2, 20, 30), (1, 10, 45), (2, 20, 46), (3, 30, 50)]  # seq, sent, arrived (ms)
    for seq, sent, arrived in arrivals:
        data = _datagram(seq, sent * MS)
        counter.arrived(wire.parse_datagram(data), len(data), arrived * MS)  # type: ignore[arg-type]
    damaged = bytearray(_datagram(4, 40 * MS))
    damaged[-1] ^= 0xFF
    counter.arrived(wire.parse_datagram(bytes(damaged)), len(damaged), 60 * MS)  # type: ignore[arg-type]
    summary = counter.summary()
    counted = (summary["received"], summary["duplicates"], summary["reordered"], summary["corrupted"])
    assert counted == (4, 1, 1, 1)
    # RFC 3550 by hand: D = 0 (10->30 vs 0->20), then |35-(-10)|=25... J += (|D| - J)/16
    jitter = 0.0
    for d in (0, (45 - 30) - (10 - 20), (50 - 45) - (30 - 10)):
        jitter += (abs(d) - jitter) / 16
    assert summary["jitter_us"] == pytest.approx(jitter * 1000)
    assert summary["intervals"] == [[0, 4 * len(_datagram(0, 0))]]


def test_wire_refuses_what_is_not_ours() -> None:
    from lab.errors import RemoteWireError

    with pytest.raises(RemoteWireError):
        wire.Hello.decode(b"WLBK" + bytes(28))
    assert wire.parse_datagram(b"hello") is None
    reader = wire.SummaryReader()
    with pytest.raises(RemoteWireError):
        reader.feed(b"HTTP/1.1 200 OK\r\n")


# --- the sink ----------------------------------------------------------------------------------------
def _send_and_read(address: tuple[str, int], data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        out = bytearray()
        while chunk := sock.recv(65536):
            out += chunk
        return bytes(out)


def test_sink_discards_a_plain_client_silently_and_counts_it() -> None:
    with running_sink() as sink:
        assert _send_and_read(sink.tcp_address, b"hello discard\n" * 100) == b""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"a datagram", sink.udp_address)
        deadline = time.monotonic() + 5
        while sink.stats["plain_datagrams"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sink.stats["plain_bytes"] == 1400
        assert sink.stats["plain_datagrams"] == 1 and sink.stats["summaries"] == 0


def test_sink_answers_a_stream_flow_with_its_summary() -> None:
    writer = wire.BlockWriter(block_size=1000)
    hello = wire.Hello(wire.MODE_STREAM, 1, time.monotonic_ns(), 100 * MS).encode()
    with running_sink() as sink:
        answer = _send_and_read(sink.tcp_address, hello + writer.block() + writer.block(10))
    summary = wire.SummaryReader().feed(answer)
    assert summary is not None and summary["bytes"] == 1020 + 30 and summary["blocks"] == 2


def test_sink_refuses_a_bad_hello_and_keeps_serving() -> None:
    with running_sink() as sink:
        assert _send_and_read(sink.tcp_address, b"WLBK" + bytes(40)) == b""
        assert sink.stats["refused"] == 1
        writer = wire.BlockWriter(block_size=10)
        hello = wire.Hello(wire.MODE_STREAM, 1, time.monotonic_ns(), 100 * MS).encode()
        assert wire.SummaryReader().feed(_send_and_read(sink.tcp_address, hello + writer.block()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(head=st.sampled_from([b"", b"WLBK", wire.Hello(1, 1, 0, 10 * MS).encode(),
                             wire.Hello(2, 9, 0, 10 * MS).encode()]),
       tail=st.binary(max_size=4096), datagram=st.binary(max_size=1500))
def test_sink_never_dies_on_input(head: bytes, tail: bytes, datagram: bytes) -> None:
    with running_sink(idle_timeout=2.0) as sink:
        with socket.create_connection(sink.tcp_address, timeout=5) as sock:
            sock.sendall(head + tail)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.sendto(datagram or b"x", sink.udp_address)
                udp.sendto(b"Wd\x01" + datagram, sink.udp_address)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            try:
                while sock.recv(65536):
                    pass
            except (TimeoutError, ConnectionResetError):
                pass
        writer = wire.BlockWriter(block_size=10)
        hello = wire.Hello(wire.MODE_STREAM, 2, time.monotonic_ns(), 100 * MS).encode()
        assert wire.SummaryReader().feed(_send_and_read(sink.tcp_address, hello + writer.block()))


def test_sink_keeps_at_most_max_conns_connections() -> None:
    with running_sink(max_conns=3) as sink:
        socks = [socket.create_connection(sink.tcp_address, timeout=5) for _ in range(6)]
        try:
            deadline = time.monotonic() + 5
            while sink.stats["accepted"] < 6 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert sink.stats["active"] <= 3 and sink.stats["evicted"] == 3
        finally:
            for sock in socks:
                sock.close()


# --- flows on loopback --------------------------------------------------------------------------------
def test_tcp_bulk_on_loopback_counts_every_byte_in_its_intervals() -> None:
    result = run_bulk_loopback("tcp", BulkPlan(duration_s=0.5, interval_s=0.1))
    assert result.stopped == "duration" and result.goodput_bps > 0
    assert result.bytes_delivered == result.bytes_sent > 0
    assert sum(size for _, size in result.intervals) == result.bytes_delivered
    assert result.tcp_trace and all(len(row) == 5 for row in result.tcp_trace)
    assert result.mss and result.retransmits is not None and result.min_rtt_us is not None
    assert BulkResult.from_dict(result.to_dict()) == result


def test_a_bulk_flow_is_bounded_by_its_bytes() -> None:
    result = run_bulk_loopback("tcp", BulkPlan(duration_s=5.0, max_bytes=300_000))
    assert result.stopped == "bytes"
    assert 300_000 <= result.bytes_delivered == result.bytes_sent < 300_000 + wire.BLOCK.size
    assert result.duration_s < 5.0


def test_udp_bulk_at_a_rate_on_loopback_loses_nothing() -> None:
    plan = BulkPlan(duration_s=0.5, interval_s=0.1, rate_bps=8e6, size=1000)
    result = run_bulk_loopback("udp", plan)
    figures = result.datagrams
    assert figures is not None and figures["lost"] == 0 and figures["duplicates"] == 0
    expected = 8e6 * 0.5 / 8 / 1000  # datagrams at the rate for the duration
    assert expected * 0.9 <= figures["sent"] <= expected + 2
    assert result.bytes_delivered == result.bytes_sent == figures["sent"] * 1000
    assert figures["loss_ci95"][0] == 0.0 and figures["jitter_us"] >= 0


@pytest.mark.parametrize("name", ["udp", "udplite"])
def test_datagram_bulk_without_a_rate_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="needs a rate"):
        get_protocol(name).run_bulk(("127.0.0.1", 9), BulkPlan(duration_s=1.0))


def test_no_sink_is_one_line() -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    with pytest.raises(EndpointError, match="no discard sink.*lab serve discard"):
        get_protocol("tcp").run_bulk(("127.0.0.1", port), BulkPlan(duration_s=1.0))


@pytest.mark.parametrize(("name", "says"), [
    ("arq-sr", "no ARQ sink answering at .* over ARQ .*lab.protocols.arq.server --sink"),
    ("quic", "no sink answering at .* over QUIC .*lab.protocols.quic_server --sink"),
])
def test_no_sink_says_which_sink_and_how_to_start_it(name: str, says: str) -> None:
    """One unreachable() for every protocol: it names what should answer, never "echo server"."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    with pytest.raises(EndpointError, match=says) as info:
        get_protocol(name).run_bulk(("127.0.0.1", port), BulkPlan(duration_s=0.5, rate_bps=1e6))
    assert "echo server" not in str(info.value) and "\n" not in str(info.value)


def test_tcp_variant_bulk_runs_its_congestion_control() -> None:
    from lab.protocols.tcp_cc import available_congestion_controls

    if "reno" not in available_congestion_controls():
        pytest.skip("this kernel offers no reno")
    result = run_bulk_loopback("tcp-reno", BulkPlan(duration_s=0.3))
    assert result.observations["tcp"]["congestion_control"] == "reno"
    assert result.bytes_delivered > 0


# --- through the impaired link ------------------------------------------------------------------------
@pytest.mark.privileged
def test_through_a_lossy_link_tcp_delivers_everything_and_udp_loses_within_its_interval(
        impaired_link: Any) -> None:
    link = impaired_link(loss="5%", direction="forward", delay="2ms")
    tcp = link.bulk("tcp", BulkPlan(duration_s=1.0, interval_s=0.25))
    assert tcp.bytes_delivered == tcp.bytes_sent > 0 and tcp.retransmits > 0
    assert tcp.link["forward"]["dropped_loss"] > 0 and tcp.kernel is not None
    udp = link.bulk("udp", BulkPlan(duration_s=1.0, rate_bps=8e6, size=1000))
    figures = udp.datagrams
    assert figures is not None and figures["lost"] > 0
    from lab.metrics import wilson_interval

    # the link's share: datagrams the sink's own receive buffer dropped (a busy host) are counted apart
    lost_on_link = figures["lost"] - (figures.get("receive_buffer_overflows") or 0)
    lo, hi = wilson_interval(lost_on_link, figures["sent"], 0.99)
    assert lo <= 0.05 <= hi, figures
    # what the link dropped, less the control connection's packets it dropped too
    assert figures["lost"] <= udp.link["forward"]["dropped_loss"]


@pytest.mark.privileged
def test_flows_started_together_run_at_once(impaired_link: Any) -> None:
    link = impaired_link(delay="1ms")
    for name in ("tcp", "udp"):
        link.sink_for(name)  # started before: a fresh sink process takes longer than the head start
    start = time.monotonic_ns() + 500 * MS
    flows = [link.start_bulk(name, BulkPlan(duration_s=0.5, start_at_ns=start, rate_bps=4e6))
             for name in ("tcp", "udp")]
    results = [flow.result(timeout=30) for flow in flows]
    for result in results:
        assert result.bytes_delivered > 0 and result.started_ns is not None
        assert abs(result.started_ns - start) < 100 * MS  # both honoured start_at_ns


@pytest.mark.privileged
def test_a_download_flow_goes_server_to_client_through_the_reverse_direction(impaired_link: Any) -> None:
    link = impaired_link(rate="10mbit", delay="2ms")
    result = link.bulk("tcp", BulkPlan(duration_s=1.0, interval_s=0.25, direction="download"))
    assert result.plan["direction"] == "download"
    assert result.bytes_delivered == result.bytes_sent > 0
    assert result.goodput_bps < 10e6  # the link's rate caps it
    reverse, forward = result.link["reverse"], result.link["forward"]
    # the data went server -> client; forward carried only the ACKs (and the control connection)
    assert reverse["bytes_out"] >= result.bytes_delivered > 10 * forward["bytes_out"]


# --- lab send --bulk, lab serve discard -----------------------------------------------------------------
def _lab(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lab", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_lab_send_bulk_prints_intervals_and_totals() -> None:
    with get_protocol("udp").sinking() as (host, port):
        sender = _lab("send", "udp", host, str(port), "--bulk", "--duration", "0.6", "--interval", "0.2",
                      "--rate", "4mbit")
        out, err = sender.communicate(timeout=60)
    assert sender.returncode == 0, err
    assert "bulk for 0.6 s at 4.0 Mbit/s" in out and "0.00-0.20" in out
    assert "datagrams: " in out and " 0 lost" in out and "goodput" in out


def test_lab_send_bulk_ctrl_c_prints_what_was_measured() -> None:
    with get_protocol("tcp").sinking() as (host, port):
        sender = _lab("send", "tcp", host, str(port), "--bulk", "--duration", "60", "--interval", "0.2")
        try:
            assert sender.stdout is not None
            assert "bulk for 60 s" in sender.stdout.readline()  # the flow is about to start
            time.sleep(1.0)
            sender.send_signal(signal.SIGINT)
            out, err = sender.communicate(timeout=30)
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.communicate()
    assert sender.returncode == 130, err
    assert "interrupted (Ctrl-C)" in out and "delivered" in out, err
    assert "missing" not in out  # the sink still gave its counts


def test_lab_send_rate_means_probes_without_bulk_and_bits_with_it() -> None:
    for args, message in ((["--rate", "20mbit"], "probes per second"),
                          (["--bulk", "--rate", "20"], "bit rate with a unit")):
        sender = _lab("send", "udp", "127.0.0.1", "9", *args)
        _, err = sender.communicate(timeout=60)
        assert sender.returncode == 2 and message in err and err.count("\n") == 1


def test_lab_serve_discard_counts_and_prints_its_stats() -> None:
    server = _lab("serve", "discard", "--port", "0")
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("discard tcp and udp listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        result = get_protocol("tcp").run_bulk(("127.0.0.1", port), BulkPlan(duration_s=0.2))
        assert result.bytes_delivered > 0
        server.send_signal(signal.SIGINT)
        out, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert "stream_flows=1" in out and "summaries=1" in out


# --- ARQ ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["arq-sw", "arq-gbn", "arq-sr"])
def test_arq_bulk_on_loopback_delivers_what_it_sent(name: str) -> None:
    result = run_bulk_loopback(name, BulkPlan(duration_s=0.4, interval_s=0.1, window=4))
    assert result.stopped == "duration" and result.bytes_delivered == result.bytes_sent > 0
    assert sum(size for _, size in result.intervals) == result.bytes_delivered
    assert result.retransmits is not None
    assert result.observations["arq"]["window"] == (1 if name == "arq-sw" else 4)


@settings(max_examples=100, deadline=None)
@given(payloads=st.lists(st.one_of(st.binary(max_size=300), st.just(b""),
                                   st.just(wire.Hello(1, 1, 0, 10 * MS).encode())), max_size=8))
def test_arq_sink_never_raises_on_what_a_conversation_delivers(payloads: list[bytes]) -> None:
    from lab.protocols.arq.endpoint import Endpoint
    from lab.protocols.arq.segment import Scheme
    from lab.protocols.arq.server import ArqServer, Conversation

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        server = ArqServer(sock, sink=True)
        conversation = Conversation(Endpoint(Scheme.SELECTIVE_REPEAT, 1, 8), heard=0.0)
        for payload in payloads:
            server.count(conversation, payload)
        assert conversation.sink_state in ("hello", "counting", "answered", "not bulk")


@pytest.mark.privileged
def test_arq_bulk_through_a_lossy_link_delivers_everything_with_retransmissions(impaired_link: Any) -> None:
    link = impaired_link(loss="5%", delay="1ms")
    result = link.bulk("arq-sr", BulkPlan(duration_s=1.0, window=16))
    assert result.bytes_delivered == result.bytes_sent > 0 and result.retransmits > 0


# --- QUIC ---------------------------------------------------------------------------------------------
needs_aioquic = pytest.mark.skipif(get_protocol("quic").unavailable() is not None, reason="needs aioquic")


@needs_aioquic
def test_quic_bulk_on_loopback_delivers_its_stream() -> None:
    result = run_bulk_loopback("quic", BulkPlan(duration_s=0.5, interval_s=0.1))
    assert result.stopped == "duration" and result.bytes_delivered == result.bytes_sent > 0
    assert sum(size for _, size in result.intervals) == result.bytes_delivered
    assert result.retransmits is not None and "client" in result.observations["quic"]


@needs_aioquic
def test_quic_datagram_bulk_at_a_rate_on_loopback() -> None:
    result = run_bulk_loopback("quic-datagram", BulkPlan(duration_s=0.5, rate_bps=2e6, size=1000))
    figures = result.datagrams
    assert figures is not None and figures["sent"] > 0 and figures["received"] == figures["sent"]
    with pytest.raises(ConfigError, match="needs a rate"):
        get_protocol("quic-datagram").run_bulk(("127.0.0.1", 9), BulkPlan(duration_s=1.0))


@needs_aioquic
@settings(max_examples=40, deadline=None)
@given(chunks=st.lists(st.one_of(st.binary(max_size=200), st.just(wire.Hello(1, 1, 0, 10 * MS).encode()),
                                 st.just(wire.Hello(2, 3, 0, 10 * MS).encode()),
                                 st.just(wire.encode_end(1, 1, 0))), max_size=6),
       frames=st.lists(st.binary(max_size=100), max_size=4))
def test_quic_sink_never_raises_on_stream_data_or_frames(chunks: list[bytes], frames: list[bytes]) -> None:
    from lab.protocols.quic_server import QuicEchoServer, _Peer

    class Conn:  # only what the sink calls on a connection
        def send_stream_data(self, *args: Any, **kwargs: Any) -> None:
            pass

    server = QuicEchoServer(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), None, sink=True)
    try:
        peer = _Peer(conn=Conn(), addr=("127.0.0.1", 1), counts={}, last_active=0.0)
        for index, chunk in enumerate(chunks):
            server.sink_stream(peer, 0, chunk, index == len(chunks) - 1)
        for frame in frames + [_datagram(0, 0, flow=3)]:
            server.sink_datagram(peer, frame)
    finally:
        server.sock.close()


@needs_aioquic
@pytest.mark.privileged
def test_quic_bulk_through_a_lossy_link_delivers_everything_with_retransmissions(impaired_link: Any) -> None:
    link = impaired_link(loss="5%", direction="forward", delay="1ms")
    result = link.bulk("quic", BulkPlan(duration_s=1.0))
    assert result.bytes_delivered == result.bytes_sent > 0 and result.retransmits > 0


# --- stopping flows -------------------------------------------------------------------------------------
@pytest.mark.privileged
def test_an_interrupted_flow_keeps_what_it_measured(impaired_link: Any) -> None:
    link = impaired_link(delay="1ms")
    flow = link.start_bulk("udp", BulkPlan(duration_s=60.0, rate_bps=4e6))
    try:
        time.sleep(1.0)
        flow.interrupt()
        result = flow.result(timeout=30)
    finally:
        flow.close()
    assert result.stopped == "interrupted" and result.duration_s < 30, result
    assert result.bytes_delivered == result.bytes_sent > 0 and result.datagrams["lost"] == 0, result


LINK_BULK_SCRIPT = """
import sys
from lab.bulk import BulkInterrupted, BulkPlan
from lab.link.session import open_link
with open_link(delay="1ms", rate="50mbit") as link:  # a rate: a full-speed flow would take both cores
    link.sink_for("tcp")
    print("ready", flush=True)
    try:
        link.bulk("tcp", BulkPlan(duration_s=60.0))
    except BulkInterrupted as stopped:
        result = stopped.result
        print("interrupted", result.stopped, result.bytes_sent > 0, result.bytes_delivered > 0,
              bool(result.link), flush=True)
"""


@pytest.mark.privileged
def test_ctrl_c_during_link_bulk_raises_bulk_interrupted_with_the_counts() -> None:
    """SIGINT to the whole process group, as a terminal's Ctrl-C: the flow stops, the sink (in a
    session of its own) still answers, Link.bulk raises BulkInterrupted with the link's counters."""
    process = subprocess.Popen([sys.executable, "-c", LINK_BULK_SCRIPT], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        os.killpg(process.pid, signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert "interrupted interrupted True True True" in out, err


def test_sink_closes_idle_connections() -> None:
    with running_sink(idle_timeout=0.3) as sink:
        sock = socket.create_connection(sink.tcp_address, timeout=5)
        with sock:
            assert sock.recv(1) == b""  # closed by the sink, not by us
        assert sink.stats["closed_idle"] == 1


def test_udplite_bulk_on_loopback_counts_its_datagrams() -> None:
    if (why := get_protocol("udplite").unavailable()) is not None:
        pytest.skip(why)
    result = run_bulk_loopback("udplite", BulkPlan(duration_s=0.3, rate_bps=2e6, size=500))
    figures = result.datagrams
    assert figures is not None and figures["sent"] > 0 and figures["received"] == figures["sent"]


def test_the_summary_says_when_the_sink_itself_dropped_datagrams() -> None:
    from lab.bulk.summary import format_bulk

    plan = BulkPlan(duration_s=1.0, rate_bps=1e6).to_dict()
    result = BulkResult(protocol="udp", bytes_sent=1000, plan=plan,
                        observations={"sink": {"receive_buffer_overflows": 7}})
    assert "7 datagrams overflowed a receive buffer at the sink's end" in format_bulk(result, "x")


def test_a_datagram_flow_keeps_a_bounded_bitmap_of_seqs() -> None:
    from lab.bulk.counting import MAX_TRACKED_SEQ

    counter = DatagramCounter(start_ns=0, interval_ns=100 * MS)
    for seq in (MAX_TRACKED_SEQ - 1, MAX_TRACKED_SEQ + 5, MAX_TRACKED_SEQ - 1):
        data = _datagram(seq, 0)
        counter.arrived(wire.parse_datagram(data), len(data), 0)  # type: ignore[arg-type]
    assert len(counter._seen) == MAX_TRACKED_SEQ // 8
    assert (counter.received, counter.duplicates, counter.untracked) == (2, 1, 1)


@pytest.mark.privileged
def test_closing_the_link_stops_its_flows(impaired_link: Any) -> None:
    link = impaired_link(delay="1ms", rate="50mbit")  # the suite's other tests keep the cores
    flow = link.start_bulk("tcp", BulkPlan(duration_s=60.0))
    time.sleep(0.5)
    link.close()
    assert flow.done
    assert flow.result(timeout=0).stopped == "interrupted"
