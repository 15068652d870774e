"""quic and quic-datagram (lab/protocols/quic.py) and their echo server (lab/protocols/quic_server.py).

Real sockets and real processes: the echo server runs as the helper process `Protocol.serving`
starts, on loopback without privileges, in the link's server namespace with them.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.errors import ConfigError, EndpointError
from lab.metric_registry import value_of
from lab.metrics import compute_result
from lab.protocols import LOOPBACK, get_protocol
from lab.protocols.quic import MAX_DATAGRAM_PROBE
from lab.records import TrafficPlan
from lab.scenario import loss_interval

pytest.importorskip("aioquic")

QUIC = get_protocol("quic")
DATAGRAM = get_protocol("quic-datagram")


@pytest.fixture(scope="module")
def quic_server():
    """One QUIC echo server on loopback for the module (the fuzz test shares it: it must survive)."""
    with QUIC.serving(LOOPBACK) as address:
        yield address


def loopback_run(protocol, address, **plan):
    return compute_result(protocol.run(address, TrafficPlan(**plan)))


# --- on loopback, no privileges ---------------------------------------------------------------------
def test_quic_carries_every_probe_on_its_streams(quic_server):
    result = loopback_run(QUIC, quic_server, count=200, rate=400, size=200, streams=3, timeout=2.0)
    assert (result.sent, result.received, result.corrupted, result.duplicates) == (200, 200, 0, 0)
    observed = result.observations["quic"]
    assert observed["client"]["datagrams_sent"] > 0 and observed["client"]["smoothed_rtt_ms"] > 0
    assert observed["server"]["datagrams_received"] > 0  # the server's end answered the stats request
    assert value_of(result.to_dict(), "quic_lost_packets") == 0  # loopback loses nothing
    assert value_of(result.to_dict(), "quic_retransmits") is not None


def test_quic_datagram_carries_one_probe_per_frame(quic_server):
    result = loopback_run(DATAGRAM, quic_server, count=200, rate=400, size=MAX_DATAGRAM_PROBE, timeout=2.0)
    assert (result.sent, result.received, result.corrupted) == (200, 200, 0)
    assert result.observations["quic"]["client"]["retransmitted_packets"] == 0


def test_ping_pong_works_too(quic_server):
    result = loopback_run(QUIC, quic_server, count=20, timeout=1.0)
    assert result.received == 20


def test_a_datagram_probe_must_fit_one_packet(quic_server):
    with pytest.raises(ConfigError, match="at most 1100 bytes"):
        DATAGRAM.run(quic_server, TrafficPlan(count=1, size=MAX_DATAGRAM_PROBE + 1))


# --- failures are one line --------------------------------------------------------------------------
def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_a_server_that_is_not_quic_is_one_line():
    """The lab's UDP echo server returns the client's Initial unchanged: no handshake, one sentence."""
    with get_protocol("udp").serving(LOOPBACK) as address, pytest.raises(EndpointError) as info:
        QUIC.run(address, TrafficPlan(count=5, timeout=0.5))
    assert "no QUIC echo server answering" in one_line(info.value)


def test_nothing_listening_is_one_line():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # a port surely closed: ours, released
        sock.bind(("127.0.0.1", 0))
        address = sock.getsockname()
    with pytest.raises(EndpointError) as info:
        QUIC.run(address, TrafficPlan(count=5, timeout=0.5))
    assert "port unreachable" in one_line(info.value)


def test_lab_send_prints_the_failure_as_one_line_without_a_traceback():
    with get_protocol("udp").serving(LOOPBACK) as (host, port):
        done = subprocess.run([sys.executable, "-m", "lab", "send", "quic", host, str(port), "--count", "3",
                               "--timeout", "0.5"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    assert "no QUIC echo server answering" in done.stderr + done.stdout


# --- the server keeps serving whatever it receives --------------------------------------------------
def genuine_initial() -> bytes:
    """A client's first Initial packet (1200 bytes, padded), as aioquic builds it."""
    import time

    from aioquic.quic.connection import QuicConnection

    from lab.protocols.quic import client_configuration

    conn = QuicConnection(configuration=client_configuration(False))
    conn.connect(("127.0.0.1", 9), now=time.monotonic())
    return conn.datagrams_to_send(now=time.monotonic())[0][0]


INITIAL = genuine_initial()
garbage = st.one_of(
    st.binary(max_size=1500),
    # long-header packets of QUIC v1 with a random rest: past the first check
    st.binary(min_size=1, max_size=1300).map(lambda rest: b"\xc0\x00\x00\x00\x01" + rest),
    # a real Initial with a few bytes changed: a connection is opened, then its input is bad
    st.lists(st.tuples(st.integers(0, len(INITIAL) - 1), st.integers(0, 255)), min_size=1, max_size=8).map(
        lambda edits: bytes(_edit(bytearray(INITIAL), edits))),
    st.just(INITIAL),  # an Initial nobody finishes: the server must not keep it forever (max-conns)
)


def _edit(data: bytearray, edits: list[tuple[int, int]]) -> bytearray:
    for position, value in edits:
        data[position] = value
    return data


def test_the_server_survives_malformed_datagrams_and_keeps_serving(quic_server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(quic_server)

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(data=garbage)
        def send(data: bytes) -> None:
            try:
                sock.send(data)
            except ConnectionRefusedError:  # ICMP port unreachable: the server is gone
                pytest.fail("the QUIC echo server stopped answering")

        send()
    result = loopback_run(QUIC, quic_server, count=50, rate=500, streams=2, timeout=2.0)
    assert result.received == 50


# --- through the real link --------------------------------------------------------------------------
@pytest.mark.privileged
def test_through_the_link_at_20_percent_loss_quic_delivers_all_and_datagrams_lose_what_the_link_predicts(
        impaired_link):
    link = impaired_link(loss="20%", delay="5ms")
    stream = link.run("quic", count=200, rate=400, timeout=2.0, size=100)
    assert (stream.sent, stream.received, stream.corrupted, stream.loss_ratio) == (200, 200, 0, 0.0)
    assert value_of(stream.to_dict(), "quic_lost_packets") > 0  # the link did drop; QUIC recovered
    assert value_of(stream.to_dict(), "quic_retransmits") > 0
    link.reseed()
    # 100/s keeps one probe per packet. Faster, aioquic's pacer (it charges every packet a full 1200
    # bytes) packs several frames into one packet once the window is at its floor, and they are lost
    # together: the same mean loss, a wider spread than the binomial interval allows (0.28-0.45 at
    # 400/s with seeds 1-6, against 0.335-0.41 at 100/s).
    datagram = link.run("quic-datagram", count=200, rate=100, timeout=1.0, size=100)
    lo, hi = loss_interval(datagram.expected_loss_ratio, datagram.sent, 0.99)
    assert lo <= datagram.loss_ratio <= hi, (datagram.loss_ratio, (lo, hi))
    assert datagram.corrupted == 0


@pytest.mark.privileged
def test_quic_streams_do_not_block_each_other_as_one_tcp_connection_does(impaired_link):
    link = impaired_link(loss="3%", delay="10ms")
    plan = {"count": 300, "rate": 200, "timeout": 1.5, "streams": 4}
    tcp = link.run("tcp", **plan)
    # QUIC's count is only losses that overlap (two streams' probes recovered together, or sent in one
    # packet): 3-12 with seeds 1-6 against TCP's 29-43. At 5% loss the overlaps grow faster than
    # TCP's stalls (8-26 against 41-69 of 300), too close for a test of 300 probes. A client
    # descheduled on a loaded host stalls every stream at once, which the metric cannot tell from
    # blocking (lab.metrics.head_of_line): one more run, same seed, before calling QUIC broken — a
    # QUIC that multiplexed its streams into one ordered stream counts ~50 every time.
    quic_runs = []
    for _attempt in range(2):
        link.reseed()
        quic_runs.append(link.run("quic", **plan))
        assert tcp.received == quic_runs[-1].received == 300
        if quic_runs[-1].hol["blocked"] * 2 < tcp.hol["blocked"]:
            return
    pytest.fail(f"quic's hol_blocked {[r.hol['blocked'] for r in quic_runs]} is not under half of "
                f"tcp's {tcp.hol['blocked']}")
