"""The loopback UDP relay: real sockets, a real echo server, a real relay process."""

from __future__ import annotations

import os
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from typing import Any

import pytest
from scipy.stats import binomtest

from lab.errors import ConfigError, TargetRefusedError
from lab.link.models import LinkConfig
from lab.link.relay import UdpRelay, tcp_needs_privileges_message

SEQ = struct.Struct("!Q")
P_MIN = 0.001  # binomial p-value threshold (fixed seed: deterministic unless the kernel drops)
QUIET_S = 0.3  # stop collecting replies after this long without one
DEADLINE_S = 10.0  # hard bound on any send/collect loop
WINDOW = 25  # unanswered datagrams allowed in flight (far below any socket buffer's capacity)
WINDOW_QUIET_S = 0.01  # a full window silent this long is written off (late replies still count)


def client_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def exchange(address: tuple[str, int], count: int, *, payload: bytes = b"") -> list[tuple[int, bytes]]:
    """Send `count` numbered datagrams, at most WINDOW unanswered at a time; return replies (seq, data).

    The window keeps socket buffers far from overflowing, so every datagram that does not come back
    was dropped by the relay's model, not by the kernel; a window that stays silent for
    WINDOW_QUIET_S is written off as lost.
    """
    replies: list[tuple[int, bytes]] = []
    written_off = 0
    deadline = time.monotonic() + DEADLINE_S
    with client_socket() as sock:
        sock.setblocking(False)

        def drain(wait: float) -> bool:
            got = False
            while select.select([sock], [], [], wait)[0]:
                data = sock.recv(65536)
                replies.append((SEQ.unpack_from(data)[0], data))
                got, wait = True, 0.0
            return got

        for seq in range(count):
            sock.sendto(SEQ.pack(seq) + payload, address)
            while seq + 1 - len(replies) - written_off >= WINDOW and time.monotonic() < deadline:
                if not drain(WINDOW_QUIET_S):
                    written_off = seq + 1 - len(replies)
        while time.monotonic() < deadline and drain(QUIET_S):
            pass
    return replies


def test_no_impairment_every_datagram_echoes(udp_echo_server: Any) -> None:
    with UdpRelay(LinkConfig(), udp_echo_server.address) as relay:
        replies = exchange(relay.address, 500, payload=b"x" * 100)
        counters = relay.counters()
    assert sorted(seq for seq, _ in replies) == list(range(500))
    assert all(data[8:] == b"x" * 100 for _, data in replies)
    for direction in ("forward", "reverse"):
        c = counters[direction]
        assert c["packets_in"] == c["forwarded"] == 500, counters
        assert c["bytes_in"] == 500 * (28 + 108), "bytes include a 28-byte IPv4+UDP header"
        assert c["send_errors"] == 0


def test_loss_both_ways_matches_binomial_and_counters(udp_echo_server: Any) -> None:
    n, p = 2000, 0.20
    config = LinkConfig.from_options({"loss": "20%"}, seed=5)
    with UdpRelay(config, udp_echo_server.address) as relay:
        replies = exchange(relay.address, n)
    counters = relay.counters()  # final, after exit
    lost = n - len({seq for seq, _ in replies})
    expected = config.expected_loss_ratio()
    assert expected == pytest.approx(1 - (1 - p) ** 2)
    result = binomtest(lost, n, expected)
    assert result.pvalue > P_MIN, f"lost {lost}/{n} = {lost / n:.3f}, expected {expected:.3f}, seed 5"
    dropped = counters["forward"]["dropped_loss"] + counters["reverse"]["dropped_loss"]
    assert dropped == lost, f"relay counters {counters} vs {lost} lost seen by the client"
    assert counters["forward"]["packets_in"] == n
    assert counters["reverse"]["forwarded"] == len(replies)


def rtts(address: tuple[str, int], count: int) -> list[float]:
    """Ping-pong RTTs in seconds, one datagram at a time."""
    out = []
    with client_socket() as sock:
        sock.settimeout(1.0)
        for seq in range(count):
            start = time.perf_counter()
            sock.sendto(SEQ.pack(seq), address)
            while SEQ.unpack_from(sock.recv(64))[0] != seq:
                pass
            out.append(time.perf_counter() - start)
    return out


def test_delay_20ms_adds_about_40ms_rtt(udp_echo_server: Any) -> None:
    config = LinkConfig.from_options({"delay": "20ms"})
    with UdpRelay(config, udp_echo_server.address) as relay:
        samples = rtts(relay.address, 30)
    p50 = statistics.median(samples)
    # Never below 40 ms (the delay is a floor); above it by the relay's wake-up (epoll timeouts are
    # whole milliseconds) plus scheduling on a loaded 2-core CI box. A timer bug shows as >= 100 ms
    # (the loop's longest sleep), far outside this band.
    assert 0.040 <= p50 <= 0.050, (
        f"delay 20ms each way: RTT p50 {p50 * 1e3:.2f} ms, wanted 40..50 ms; "
        f"min {min(samples) * 1e3:.2f} max {max(samples) * 1e3:.2f} ms over {len(samples)} pings"
    )


def test_duplicates_and_corruption_reach_the_application(udp_echo_server: Any) -> None:
    config = LinkConfig.from_options({"duplicate": "100%", "corrupt": "100%"}, direction="forward")
    with UdpRelay(config, udp_echo_server.address) as relay:
        replies = exchange(relay.address, 50, payload=bytes(32))
        counters = relay.counters()
    assert counters["forward"]["duplicated"] == counters["forward"]["corrupted"] == 50
    assert len(replies) == 100, "each datagram is duplicated once"
    flipped = [d for _, d in replies if d[8:] != bytes(32) or SEQ.unpack_from(d)[0] >= 50]
    # One copy of each is corrupted (no kernel checksum between relay and receiver to drop it);
    # the flip may land in the sequence number too, so count differing copies, not payloads.
    assert len(flipped) == 50, replies[:4]


def test_set_changes_the_impairment_while_running(udp_echo_server: Any) -> None:
    with UdpRelay(LinkConfig(), udp_echo_server.address) as relay:
        assert len(exchange(relay.address, 20)) == 20
        new = relay.set(loss="100%", direction="forward")
        assert relay.config == new and new.forward.loss == 1.0 and new.reverse.is_null
        assert exchange(relay.address, 20) == []
        with pytest.raises(ConfigError, match="loss must be between 0% and 100%, got 150%"):
            relay.set(loss="150%")
        relay.set(loss="0%")
        assert len(exchange(relay.address, 20)) == 20
        counters = relay.counters()
    assert counters["forward"]["packets_in"] == 60
    assert counters["forward"]["dropped_loss"] == 20


def test_replies_go_back_to_the_client_that_sent(udp_echo_server: Any) -> None:
    with UdpRelay(LinkConfig(), udp_echo_server.address) as relay, client_socket() as a, \
            client_socket() as b:
        for sock in (a, b):
            sock.settimeout(2.0)
        a.sendto(b"from a", relay.address)
        b.sendto(b"from b", relay.address)
        assert b.recv(64) == b"from b"
        assert a.recv(64) == b"from a"


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_relay_process_is_gone_after_exit_also_on_exception(udp_echo_server: Any) -> None:
    relay = UdpRelay(LinkConfig(), udp_echo_server.address)
    with relay:
        pid = relay.pid
        assert pid is not None and not process_gone(pid)
    assert relay.pid is None and process_gone(pid)
    with pytest.raises(RuntimeError, match="boom"), UdpRelay(LinkConfig(), udp_echo_server.address) as r:
        pid = r.pid
        raise RuntimeError("boom")
    assert pid is not None and process_gone(pid)


@pytest.mark.parametrize(("upstream", "host"), [
    (("198.18.0.2", 7), "127.0.0.1"), (("192.0.2.1", 7), "127.0.0.1"), (("127.0.0.1", 7), "0.0.0.0"),
])
def test_non_loopback_is_refused_before_anything_starts(upstream: tuple[str, int], host: str) -> None:
    with pytest.raises(TargetRefusedError, match="only works on loopback"):
        UdpRelay(LinkConfig(), upstream, host=host)


def test_ipv6_loopback_relay(udp_echo_server: Any) -> None:
    """The relay itself may listen on ::1 while the upstream is IPv4 loopback."""
    with UdpRelay(LinkConfig(), udp_echo_server.address, host="::1") as relay, \
            socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sock.sendto(b"six", relay.address)
        assert sock.recv(64) == b"six"


def test_tcp_message_names_the_capability() -> None:
    message = tcp_needs_privileges_message()
    assert "CAP_NET_ADMIN" in message and "UDP" in message


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv (util-linux) to drop capabilities")
def test_tcp_message_without_capabilities_says_what_is_missing_and_what_to_do() -> None:
    """Run with CAP_NET_ADMIN dropped, the message names it, says sudo, and that UDP still works."""
    code = "from lab.link.relay import tcp_needs_privileges_message as m; print(m())"
    done = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin,-net_raw,-sys_admin",
                           sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    message = done.stdout.strip()
    assert "this process lacks CAP_NET_ADMIN" in message and "sudo" in message, message
    assert "UDP runs impaired without root" in message, message
