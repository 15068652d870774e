"""UDP-Lite (lab.protocols.udplite): header-only checksum coverage, its echo server, and what a
corrupting link does to UDP and to UDP-Lite."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.kernel import counter_deltas, read_counters
from lab.metrics import compute_result
from lab.protocols import LOOPBACK, get_protocol
from lab.protocols.udplite import (
    HEADER_COVERAGE,
    IPPROTO_UDPLITE,
    UDPLITE_RECV_CSCOV,
    UDPLITE_SEND_CSCOV,
    checksum_drops,
    udplite_socket,
)
from lab.records import TrafficPlan
from lab.wire import Probe, decode_untrusted_datagram, encode

pytestmark = pytest.mark.skipif(get_protocol("udplite").unavailable() is not None,
                                reason="this kernel has no UDP-Lite")
IO_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    with get_protocol("udplite").serving(LOOPBACK) as address:
        yield address


def echo(address: tuple[str, int], data: bytes, coverage: int = HEADER_COVERAGE) -> bytes:
    """Send `data` with a checksum over `coverage` bytes (0: all); the reply (header coverage, which a
    socket asking for more on receiving would drop)."""
    with udplite_socket() as sock:
        sock.setsockopt(IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV, coverage)
        sock.settimeout(IO_TIMEOUT)
        sock.sendto(data, address)
        return sock.recv(65536)


def test_the_socket_covers_the_header_only_both_ways() -> None:
    with udplite_socket() as sock:
        assert sock.proto == IPPROTO_UDPLITE
        assert sock.getsockopt(IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV) == HEADER_COVERAGE
        assert sock.getsockopt(IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV) == HEADER_COVERAGE


def test_udplite_is_not_relayed_and_its_server_is_its_own() -> None:
    udplite = get_protocol("udplite")
    assert (udplite.transport, udplite.relayable, udplite.reliable) == ("udp", False, False)
    assert udplite.server_argv("127.0.0.1", 7)[-5:] == ["lab.protocols.udplite", "--host", "127.0.0.1",
                                                        "--port", "7"]


def test_a_run_on_loopback_gets_every_probe_back(server: tuple[str, int]) -> None:
    result = compute_result(get_protocol("udplite").run(server, TrafficPlan(count=100, rate=1000, size=200)))
    assert (result.received, result.corrupted, result.lost) == (100, 0, 0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048), coverage=st.integers(min_value=0, max_value=64))
def test_the_echo_server_survives_any_datagram(server: tuple[str, int], data: bytes, coverage: int) -> None:
    """Any payload, with any checksum coverage the sender picks (0 = all), comes back as it went:
    the server neither dies nor answers anything else."""
    assert echo(server, data, coverage) == data


def test_the_echo_server_survives_what_never_reaches_a_socket(server: tuple[str, int]) -> None:
    """Raw UDP-Lite packets with a bad checksum, an impossible coverage or a short header are dropped
    by the kernel; the server is still there for the next probe."""
    try:
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_UDPLITE)
    except PermissionError:
        pytest.skip("raw sockets need CAP_NET_RAW")
    before = read_counters()
    with raw:
        sport = 40000
        for header in (
            sport.to_bytes(2, "big") + server[1].to_bytes(2, "big") + (8).to_bytes(2, "big") + b"\x00\x01",
            sport.to_bytes(2, "big") + server[1].to_bytes(2, "big") + (4000).to_bytes(2, "big") + b"\xff\xff",
            sport.to_bytes(2, "big") + server[1].to_bytes(2, "big") + (3).to_bytes(2, "big") + b"\x12\x34",
            b"\x01\x02\x03",
        ):
            raw.sendto(header + os.urandom(32), ("127.0.0.1", 0))
    dropped = counter_deltas(before, read_counters())
    assert dropped.get("UdpLiteInCsumErrors", 0) >= 1 and dropped.get("UdpLiteInErrors", 0) >= 3, dropped
    probe = encode(Probe(seq=7, stream=0, send_ns=0, payload=b"after the garbage"))
    got = decode_untrusted_datagram(echo(server, probe), max_payload=1024)
    assert isinstance(got, Probe) and got.seq == 7


@pytest.mark.privileged
def test_a_corrupting_link_udp_drops_in_the_kernel_udplite_delivers_damage(impaired_link: Any) -> None:
    """20 % of packets get one bit flipped each way. UDP: the receiving kernels drop every damaged
    datagram (UdpInCsumErrors) and the application sees none. UDP-Lite: damage outside the 8-byte
    header reaches the application, and the probe's CRC-32 counts it as corrupted."""
    link = impaired_link(corrupt="20%")
    results = {}
    for name in ("udp", "udplite"):
        link.reseed()
        results[name] = link.run(name, count=300, rate=400, size=256, timeout=1.0)
    udp, lite = results["udp"], results["udplite"]
    damaged = {name: sum(d["corrupted"] for d in r.link.values()) for name, r in results.items()}
    assert damaged["udp"] > 60 and damaged["udplite"] > 60

    udp_kernel = sum(udp.kernel[side].get("UdpInCsumErrors", 0) for side in ("client", "server"))
    assert udp.corrupted == 0
    assert udp_kernel >= damaged["udp"] - 5  # (a flip that makes a bad datagram otherwise invalid: InErrors)
    assert udp.received + udp_kernel >= udp.sent - 5
    # What the application got, no more: the replies, and the answers to its closing loss query.
    answers = udp.observations.get("server", {}).get("loss_answers", 0)
    assert udp.kernel["client"]["UdpInDatagrams"] == udp.received + answers

    lite_kernel = sum(lite.kernel[side].get("UdpLiteInCsumErrors", 0) for side in ("client", "server"))
    assert lite.corrupted > damaged["udplite"] // 2  # most of the damage arrived, and was seen
    assert lite_kernel < damaged["udplite"] // 4  # only flips in its 8-byte header are its checksum's
    assert checksum_drops(udp.to_dict()) == udp_kernel and checksum_drops(lite.to_dict()) == lite_kernel
