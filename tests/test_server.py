"""Echo servers on real loopback sockets: correctness, robustness, limits, counters, shutdown.

Every TCP test runs against both variants (the `selectors` loop and the course's `socketserver`
classes); every UDP echo test also runs against the lesson's UDP server.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from lab.endpoints.server import EchoServer, running_server
from lab.errors import ConfigError, EndpointError
from lab.lessons import udp_server as lesson_udp

VARIANTS = ["selectors", "socketserver"]
IO_TIMEOUT = 5.0  # seconds any single blocking call in a test may take before the test fails
UDP_BUF = 1 << 20  # client socket buffers big enough for a max-size datagram and its echo


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# --- helpers -------------------------------------------------------------------------------------
def wait_for(predicate: Callable[[], bool], timeout: float = IO_TIMEOUT, what: str = "") -> None:
    """Poll `predicate` until true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def stats_settle(server: Any, **expected: int) -> dict[str, int]:
    """Wait until the counters show `expected` (a reply can reach us before its counter moves)."""
    def matches() -> bool:
        stats = server.stats
        return all(stats[k] == v for k, v in expected.items())

    deadline = time.monotonic() + IO_TIMEOUT
    while not matches() and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = server.stats
    assert all(stats[k] == v for k, v in expected.items()), f"expected {expected}, got {stats}"
    return stats


def tcp_roundtrip(address: tuple[str, int], data: bytes, chunk: int = 65536) -> bytes:
    """Send `data` (in a thread, so a full window cannot deadlock us), half-close, read to EOF."""
    with socket.create_connection(address, timeout=IO_TIMEOUT) as sock:
        errors: list[BaseException] = []

        def send() -> None:
            try:
                for i in range(0, len(data), chunk):
                    sock.sendall(data[i:i + chunk])
                sock.shutdown(socket.SHUT_WR)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        received = bytearray()
        try:
            while piece := sock.recv(65536):
                received += piece
        finally:
            sender.join(IO_TIMEOUT)
        assert not errors, errors
    return bytes(received)


def udp_socket(family: int = socket.AF_INET) -> socket.socket:
    """A client UDP socket with big buffers and a timeout."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, UDP_BUF)
    sock.settimeout(IO_TIMEOUT)
    return sock


def udp_echo(sock: socket.socket, address: tuple[str, int], data: bytes) -> bytes:
    """Send one datagram, return the reply from `address`."""
    sock.sendto(data, address)
    while True:
        reply, sender = sock.recvfrom(70000)
        if sender[:2] == tuple(address[:2]):
            return reply


class LessonUdpServer:
    """The lesson's UDP echo server in a thread, shaped like `running_server`'s handle."""

    def __init__(self) -> None:
        self.sock = lesson_udp.make_server("127.0.0.1", 0)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            self.sock.setsockopt(socket.SOL_SOCKET, opt, UDP_BUF)
        self.address = self.udp_address = self.sock.getsockname()[:2]
        self.tcp_address = None
        self.thread = threading.Thread(target=lesson_udp.serve, args=(self.sock,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes recvfrom with no sender (ENOTCONN is fine)
        self.thread.join(IO_TIMEOUT)
        self.sock.close()
        assert not self.thread.is_alive()


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tcp_server(variant: str) -> Iterator[Any]:
    with running_server("tcp", variant=variant) as handle:
        yield handle


@pytest.fixture(params=[*VARIANTS, "lesson"])
def any_udp_server(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Our two UDP servers and the lesson's: all must pass the same echo tests."""
    if request.param == "lesson":
        server = LessonUdpServer()
        try:
            yield server
        finally:
            server.close()
    else:
        with running_server("udp", variant=request.param) as handle:
            yield handle


# --- TCP echo ------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", VARIANTS)
def test_tcp_echo_any_payload(which: str) -> None:
    """Property: any bytes (0..64 KiB) written to a TCP echo server come back byte-identical."""
    with running_server("tcp", variant=which) as server:

        @given(payload=st.binary(max_size=64 * 1024))
        @example(payload=b"")
        @example(payload=bytes(range(256)) * 256)
        def check(payload: bytes) -> None:
            assert tcp_roundtrip(server.address, payload) == payload

        check()
        assert server.stats["errors"] == 0, server.stats


def test_many_concurrent_tcp_clients_get_their_own_stream(tcp_server: Any) -> None:
    """Twenty clients at once, each with a distinct 256 KiB stream, each gets exactly its own back."""
    clients, size = 20, 256 * 1024
    results: dict[int, bytes] = {}
    streams = {i: (bytes([i]) + os.urandom(31)) * (size // 32) for i in range(clients)}

    def run(i: int) -> None:
        results[i] = tcp_roundtrip(tcp_server.address, streams[i], chunk=4096)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(IO_TIMEOUT * 2)
    assert sorted(results) == list(range(clients))
    for i in range(clients):
        assert results[i] == streams[i], f"client {i} got {len(results[i])} bytes, not its own stream"
    stats_settle(tcp_server, active=0, accepted=clients, bytes_in=clients * size, bytes_out=clients * size)


def test_half_close_still_gets_everything(tcp_server: Any) -> None:
    """shutdown(SHUT_WR) right after a 1 MiB write: every echoed byte still arrives, then EOF."""
    data = os.urandom(1 << 20)
    assert tcp_roundtrip(tcp_server.address, data) == data


def test_nc_style_interactive_lines(tcp_server: Any) -> None:
    """Like typing into nc: each line comes back on the same connection before the next is sent."""
    with socket.create_connection(tcp_server.address, timeout=IO_TIMEOUT) as sock:
        for line in (b"hello\n", b"ol\xc3\xa1 mundo\n", b"\n", b"x" * 1000 + b"\n"):
            sock.sendall(line)
            got = b""
            while len(got) < len(line):
                got += sock.recv(65536)
            assert got == line


def test_garbage_bytes_are_echoed_and_server_survives(tcp_server: Any) -> None:
    """Binary junk, a TLS ClientHello start, HTTP: an echo server just echoes; nothing parses it."""
    for junk in (os.urandom(100_000), b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                 b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 5000, b"\xff" * 3):
        assert tcp_roundtrip(tcp_server.address, junk) == junk
    assert tcp_server.stats["errors"] == 0


def test_abrupt_reset_closes_only_that_connection(tcp_server: Any) -> None:
    """A client that resets (SO_LINGER 0) mid-stream is dropped; others are still served."""
    bystander = socket.create_connection(tcp_server.address, timeout=IO_TIMEOUT)
    try:
        for _ in range(5):
            rude = socket.create_connection(tcp_server.address, timeout=IO_TIMEOUT)
            rude.sendall(os.urandom(300_000))  # unread echo pending on both sides
            rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            rude.close()  # linger 0: RST instead of FIN
        bystander.sendall(b"still there?")
        assert bystander.recv(100) == b"still there?"
        wait_for(lambda: tcp_server.stats["active"] == 1, what="reset connections dropped")
        assert tcp_roundtrip(tcp_server.address, b"fresh") == b"fresh"
    finally:
        bystander.close()
    assert tcp_server.stats["accepted"] == 7, tcp_server.stats


def test_client_that_never_reads_gets_backpressure_others_served(tcp_server: Any, variant: str) -> None:
    """A client that writes but never reads: the server stops reading it (bounded), serves others."""

    def held_back(stats: dict[str, int]) -> bool:
        # The server holds echo it could not send; the selectors loop also says it paused reading.
        return stats["bytes_in"] > stats["bytes_out"] and (variant != "selectors" or stats["paused"] == 1)

    hog = socket.create_connection(tcp_server.address)
    hog.setblocking(False)
    sent, chunk = 0, b"z" * 65536
    limit, deadline = 256 << 20, time.monotonic() + 2 * IO_TIMEOUT  # bounded in bytes and time
    stalled_since = None
    try:
        while sent < limit and time.monotonic() < deadline:
            try:
                sent += hog.send(chunk)
                stalled_since = None
            except BlockingIOError:
                # Windows full everywhere: done once it stays full and the server shows why.
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 0.3 and held_back(tcp_server.stats):
                    break
                time.sleep(0.01)
        stats = tcp_server.stats
        assert sent < limit, f"sent {sent} bytes without the window ever closing: no back-pressure"
        assert held_back(stats) and stats["bytes_in"] < sent, (variant, sent, stats)
        if variant == "selectors":
            assert stats["backpressure_pauses"] >= 1, stats
        assert tcp_roundtrip(tcp_server.address, b"others are served") == b"others are served"
    finally:
        hog.close()
    stats_settle(tcp_server, active=0, paused=0)


@pytest.mark.parametrize("which", VARIANTS)
def test_idle_connection_is_closed(which: str) -> None:
    """idle_timeout=0.3 s: a silent connection gets EOF; one that talks on time is served."""
    with running_server("tcp", variant=which, idle_timeout=0.3) as server:
        with socket.create_connection(server.address, timeout=IO_TIMEOUT) as idle:
            started = time.monotonic()
            try:
                got = idle.recv(10)
            except ConnectionResetError:
                got = b""
            waited = time.monotonic() - started
        assert got == b"" and 0.2 < waited < 3.0, f"idle_timeout=0.3 closed after {waited:.2f}s"
        stats_settle(server, closed_idle=1)
        assert tcp_roundtrip(server.address, b"quick") == b"quick"


@pytest.mark.parametrize("which", VARIANTS)
def test_idle_timeout_zero_never_closes(which: str) -> None:
    with running_server("tcp", variant=which, idle_timeout=0) as server:
        with socket.create_connection(server.address, timeout=0.5) as sock:
            with pytest.raises(TimeoutError):
                sock.recv(10)
            sock.sendall(b"late")
            assert sock.recv(10) == b"late"
        assert server.stats["closed_idle"] == 0


@pytest.mark.parametrize("which", VARIANTS)
def test_max_connections_full_closes_the_longest_idle(which: str) -> None:
    """max_conns=2: a third connection is served; the longest-idle one is closed (EOF), counted."""
    with running_server("tcp", variant=which, max_conns=2) as server:
        first = socket.create_connection(server.address, timeout=IO_TIMEOUT)
        second = socket.create_connection(server.address, timeout=IO_TIMEOUT)
        try:
            for sock in (first, second):  # `first` has been idle the longest
                sock.sendall(b"ok")
                assert sock.recv(10) == b"ok"
            assert tcp_roundtrip(server.address, b"third") == b"third"
            with contextlib.suppress(ConnectionResetError):  # closed politely: an orderly EOF
                assert first.recv(10) == b""
            second.sendall(b"still here")
            assert second.recv(20) == b"still here"
            stats_settle(server, evicted=1, active=1, accepted=3)
        finally:
            first.close()
            second.close()


# --- UDP echo ------------------------------------------------------------------------------------
def test_udp_echo_any_payload(any_udp_server: Any) -> None:
    """Property: any datagram (0..65507 bytes) comes back byte-identical, as one datagram."""
    with udp_socket() as sock:

        @given(payload=st.binary(max_size=65507))
        @example(payload=b"")
        @example(payload=b"\x00" * 65507)
        def check(payload: bytes) -> None:
            assert udp_echo(sock, any_udp_server.address, payload) == payload

        check()


def test_udp_zero_length_and_max_size(any_udp_server: Any) -> None:
    with udp_socket() as sock:
        assert udp_echo(sock, any_udp_server.address, b"") == b""
        big = os.urandom(65507)
        assert udp_echo(sock, any_udp_server.address, big) == big
        with pytest.raises(OSError) as info:  # one byte more is not a UDP/IPv4 datagram at all
            sock.sendto(b"x" * 65508, any_udp_server.address)
        assert info.value.errno == errno.EMSGSIZE


def test_udp_many_clients_and_garbage(any_udp_server: Any) -> None:
    """Datagrams from several sockets interleaved: each reply goes to its own sender."""
    socks = [udp_socket() for _ in range(8)]
    try:
        payloads = [os.urandom(1 + 97 * i) for i in range(len(socks))]
        for sock, data in zip(socks, payloads, strict=True):
            sock.sendto(data, any_udp_server.address)
        for sock, data in zip(socks, payloads, strict=True):
            assert sock.recvfrom(70000)[0] == data
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("which", VARIANTS)
def test_udp_over_max_datagram_dropped_and_counted(which: str) -> None:
    with running_server("udp", variant=which, max_datagram=100) as server, udp_socket() as sock:
        sock.sendto(b"x" * 101, server.address)
        assert udp_echo(sock, server.address, b"y" * 100) == b"y" * 100  # the 101 got no echo
        stats_settle(server, datagrams_dropped=1, datagrams_in=2, datagrams_out=1, bytes_out=100)


@pytest.mark.parametrize("which", VARIANTS)
def test_udp_counters(which: str) -> None:
    with running_server("udp", variant=which) as server, udp_socket() as sock:
        for size in (0, 1, 1000):
            udp_echo(sock, server.address, b"a" * size)
        stats_settle(server, datagrams_out=3, datagrams_in=3, bytes_in=1001, bytes_out=1001)


def test_udp_server_survives_gone_client(variant: str) -> None:
    """An echo to a closed client port yields ICMP unreachable; the server must keep serving."""
    with running_server("udp", variant=variant) as server:
        for _ in range(3):
            gone = udp_socket()
            gone.sendto(b"bye", server.address)
            gone.close()
        time.sleep(0.05)
        with udp_socket() as sock:
            assert udp_echo(sock, server.address, b"alive") == b"alive"


# --- both, IPv6, errors, lifecycle ---------------------------------------------------------------
def test_both_on_one_port(variant: str) -> None:
    with running_server("both", variant=variant) as server:
        assert server.tcp_address[1] == server.udp_address[1]
        assert server.address == server.tcp_address
        assert tcp_roundtrip(server.tcp_address, b"tcp") == b"tcp"
        with udp_socket() as sock:
            assert udp_echo(sock, server.udp_address, b"udp") == b"udp"


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback on this machine")
def test_ipv6_loopback(variant: str) -> None:
    with running_server("both", host="::1", variant=variant) as server:
        assert server.tcp_address[0] == "::1"
        assert tcp_roundtrip(server.tcp_address, b"six") == b"six"
        with udp_socket(socket.AF_INET6) as sock:
            assert udp_echo(sock, server.udp_address, b"six") == b"six"


@pytest.mark.parametrize("kind,socktype", [("tcp", socket.SOCK_STREAM), ("udp", socket.SOCK_DGRAM),
                                           ("both", socket.SOCK_DGRAM)])
def test_port_in_use_is_a_clear_error(variant: str, kind: str, socktype: int) -> None:
    with socket.socket(socket.AF_INET, socktype) as taken:
        taken.bind(("127.0.0.1", 0))
        if socktype == socket.SOCK_STREAM:
            taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(EndpointError, match="already in use"), running_server(kind, port=port,
                                                                                 variant=variant):
            pass


@pytest.mark.parametrize("host", ["not an address", "192.0.2.1", "999.1.1.1"])
def test_bad_host_is_a_clear_error(host: str) -> None:
    with pytest.raises(EndpointError, match="listen on"):
        EchoServer("tcp", host=host)


@pytest.mark.parametrize("kwargs", [dict(kind="sctp"), dict(kind="tcp", max_conns=0),
                                    dict(kind="tcp", idle_timeout=-1), dict(kind="udp", max_datagram=70000),
                                    dict(kind="tcp", variant="twisted")])
def test_bad_settings_are_config_errors(kwargs: dict[str, Any]) -> None:
    kind = kwargs.pop("kind")
    with pytest.raises(ConfigError), running_server(kind, **kwargs):
        pass


@pytest.mark.parametrize("idle_timeout", [float("inf"), float("nan"), 1e8, 86_400.5])
def test_idle_timeout_beyond_what_select_can_wait_is_refused(variant: str, idle_timeout: float) -> None:
    """A huge idle timeout used to crash the loop (OverflowError in select) at the first connection."""
    with pytest.raises(ConfigError, match="idle timeout"), running_server("tcp", variant=variant,
                                                                          idle_timeout=idle_timeout):
        pass


def test_longest_idle_timeout_serves(variant: str) -> None:
    with running_server("tcp", variant=variant, idle_timeout=86_400) as server:
        assert tcp_roundtrip(server.address, b"a day") == b"a day"
        assert server.stats["errors"] == 0


def test_shutdown_closes_every_socket(variant: str) -> None:
    """After the block: listeners gone (connect refused) and open clients see their connection end."""
    threads_before = threading.active_count()
    with running_server("both", variant=variant) as server:
        client = socket.create_connection(server.address, timeout=IO_TIMEOUT)
        client.sendall(b"hi")
        assert client.recv(10) == b"hi"
        address = server.address
    try:
        with contextlib.suppress(ConnectionResetError):
            assert client.recv(10) == b""
    finally:
        client.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=IO_TIMEOUT).close()
    wait_for(lambda: threading.active_count() <= threads_before, what="server threads to end")


def test_echo_server_shutdown_is_idempotent_and_context_managed() -> None:
    with EchoServer("both") as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        assert tcp_roundtrip(server.address, b"x") == b"x"
        server.shutdown()
        server.shutdown()
        thread.join(IO_TIMEOUT)
        assert not thread.is_alive()
    server.close()
    server.serve_forever()  # closed: returns at once instead of serving on closed sockets


def test_never_served_server_closes_cleanly(variant: str) -> None:
    with running_server("tcp", variant=variant):
        pass
    from lab.endpoints.classic import ClassicEchoServer

    for cls in (EchoServer, ClassicEchoServer):
        server = cls("both")
        server.close()
        server.close()
        server.serve_forever()  # returns at once: closed
        started = cls("udp")
        thread = threading.Thread(target=started.serve_forever)
        thread.start()
        started.close()  # racing the thread's start: must neither hang nor raise in the thread
        thread.join(IO_TIMEOUT)
        assert not thread.is_alive()


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat not installed")
def test_socat_client(variant: str) -> None:
    """A real third-party client: socat sends stdin to our servers and prints the echo."""
    with running_server("both", variant=variant) as server:
        host, port = server.address
        for proto in ("TCP", "UDP"):
            out = subprocess.run(["socat", "-t", "1", "-", f"{proto}:{host}:{port}"], input=b"via socat\n",
                                 capture_output=True, timeout=IO_TIMEOUT, check=True)
            assert out.stdout == b"via socat\n", (proto, out)
