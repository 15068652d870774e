"""Issue 8, defects 2 and 15: the echo servers under hostile peers, on real loopback sockets.

Defect 2: a datagram spoofed from the server's own address (or from another echo server) made
UDP echo servers answer each other forever. Defect 15: idle connections filling --max-conns
locked every TCP client out. Every test runs against both server variants.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.endpoints.common import UDP_RATE_BURST_S, UDP_REFUSALS, UdpGuard
from lab.endpoints.server import exposure_warning, running_server
from lab.errors import ConfigError
from lab.records import TrafficPlan
from tests.test_load import tcp_echo

VARIANTS = ["selectors", "socketserver"]
IO_TIMEOUT = 5.0
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


def server_udp_socket(handle: Any) -> socket.socket:
    """The server's own UDP socket: sending from it is sending from the server's address."""
    inner = handle.server._udp
    return inner if isinstance(inner, socket.socket) else inner.socket


def settled(server: Any, key: str, quiet_s: float = 0.3, limit_s: float = 3.0) -> int:
    """The counter once it stopped moving for `quiet_s` (fails if it still moves after `limit_s`)."""
    deadline = time.monotonic() + limit_s
    last, since = server.stats[key], time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = server.stats[key]
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now
    pytest.fail(f"{key} still growing after {limit_s}s: an echo loop ({server.stats})")


def udp_client(host: str = "127.0.0.1", timeout: float = IO_TIMEOUT) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    sock.bind((host, 0))
    return sock


def answers(sock: socket.socket, wait_s: float = 0.3) -> list[bytes]:
    """Every datagram that arrives within `wait_s`."""
    got, deadline = [], time.monotonic() + wait_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append(sock.recv(70000))
        except TimeoutError:
            break
    return got


# --- defect 2: UDP echo loops ----------------------------------------------------------------------
def test_defect_2_server_spoofed_from_its_own_address_does_not_loop(variant: str) -> None:
    """The issue's one-server case (1.07 M datagrams in 6 s): now one datagram in, none out."""
    with running_server("udp", variant=variant) as server:
        server_udp_socket(server).sendto(b"from myself", server.address)
        datagrams_in = settled(server, "datagrams_in")
        stats = server.stats
    assert datagrams_in == 1 and stats["datagrams_out"] == 0, stats
    assert stats["udp_refused_own_address"] == 1, stats


def test_defect_2_two_echo_servers_pointed_at_each_other_stop(variant: str) -> None:
    """Spoofed from A to B (three datagrams: three loops on one pair): the loops end by themselves.

    Both are high-port echo servers, which no address rule can tell from clients: they are caught
    by echoing each other's replies back for loop_seconds (0.3 s here; default LOOP_SECONDS).
    """
    with running_server("udp", variant=variant, loop_seconds=0.3) as a, \
            running_server("udp", variant=variant, loop_seconds=0.3) as b:
        for payload in (b"loop one", b"loop two", b"loop three"):
            server_udp_socket(a).sendto(payload, b.address)
        started = time.monotonic()
        total_b = settled(b, "datagrams_in", quiet_s=0.5, limit_s=4.0)
        took = time.monotonic() - started
        total_a = a.stats["datagrams_in"]
        refused = a.stats["udp_refused_loop"] + b.stats["udp_refused_loop"]
    figures = f"A in={total_a} B in={total_b} refused={refused} ended within {took:.2f}s"
    assert refused >= 3, figures  # each of the three loops was ended by one refusal
    assert took < 3.0, figures


@pytest.mark.parametrize("low_port", [7, 19, 13, 9, 1023])
def test_defect_2_source_port_below_1024_is_not_answered(variant: str, low_port: int) -> None:
    """echo (7), chargen (19), daytime (13), discard (9): answering them starts a loop between services."""
    try:
        low = udp_client(timeout=0.3)
        low.close()
        low = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        low.bind(("127.0.0.1", low_port))
    except PermissionError:
        low.close()
        pytest.skip("binding a port below 1024 needs root (CAP_NET_BIND_SERVICE)")
    except OSError as exc:
        low.close()
        if exc.errno == errno.EADDRINUSE:
            pytest.skip(f"port {low_port} is in use here")
        raise
    with low, running_server("udp", variant=variant) as server:
        low.sendto(b"chargen says hi", server.address)
        assert answers(low) == []
        stats = server.stats
    assert stats["udp_refused_low_port"] == 1 and stats["datagrams_out"] == 0, stats


def test_defect_2_answers_are_rate_limited_per_source_address(variant: str) -> None:
    """A bucket of rate*UDP_RATE_BURST_S answers per source address; another address is unaffected."""
    rate = 100.0  # answers/s per source: a bucket of 25
    burst = int(rate * UDP_RATE_BURST_S)
    with running_server("udp", variant=variant, udp_rate_limit=rate) as server, \
            udp_client("127.0.0.1") as flood, udp_client("127.0.0.2") as other:
        for i in range(200):
            flood.sendto(i.to_bytes(4, "big"), server.address)
        got = answers(flood, 0.3)
        other.sendto(b"another source", server.address)
        assert other.recv(100) == b"another source"
        stats = server.stats
    # The bucket refills at `rate` while the 200 are sent and read: a few more than its depth.
    assert burst <= len(got) <= burst + rate * 0.5, (len(got), stats)
    assert stats["udp_refused_rate"] == 200 - len(got), stats


def test_defect_2_fastest_legitimate_clients_are_not_refused(variant: str) -> None:
    """`lab send --rate 100000`-style open loop, and a constant-payload ping-pong, at the defaults."""
    from lab.endpoints.client import run_client
    from lab.metrics import compute_result

    with running_server("udp", variant=variant) as server:
        result = compute_result(run_client("udp", server.address,
                                           TrafficPlan(count=10_000, rate=100_000.0, timeout=0.5)))
        with udp_client() as sock:  # a benchmark's ping-pong: the same bytes every time
            sock.connect(server.address)
            rounds, until = 0, time.monotonic() + 0.5
            while time.monotonic() < until:
                sock.send(b"m" * 64)
                assert sock.recv(100) == b"m" * 64, f"round {rounds} unanswered"
                rounds += 1
        stats = server.stats
    refused = {k: stats[k] for k in UDP_REFUSALS}
    assert not any(refused.values()), (refused, result.received, rounds)
    # Everything that reached the server was answered (sharing this process's GIL, the server
    # may fall behind and the kernel drop some: that is a full buffer, not a refusal).
    assert stats["datagrams_out"] == stats["datagrams_in"] and result.received > 0, (stats, result)


def test_defect_2_guard_state_is_bounded_and_cheap() -> None:
    """Spoofed sources cannot grow the guard's tables; it costs about a microsecond a datagram."""
    from lab.endpoints import common as srv

    n = 3 * srv.UDP_SOURCES_MAX
    rounds_us = []
    for _ in range(3):  # the quickest of three: a busy CI box descheduled one round (53 µs a datagram)
        guard = UdpGuard(("127.0.0.1", 7007))
        started = time.perf_counter()
        for i in range(n):
            source = (f"198.18.{i >> 8 & 255}.{i & 255}", 10_000 + i)
            assert guard.refusal(source, b"x" * 64, i * 1e-3) is None
        rounds_us.append((time.perf_counter() - started) / n * 1e6)
        assert len(guard._buckets) <= srv.UDP_SOURCES_MAX and len(guard._peers) <= srv.UDP_SOURCES_MAX
    assert min(rounds_us) < 50, rounds_us  # 1-4 µs on a 2-core machine: catches a table that grows
    assert guard.refusal(("::ffff:127.0.0.1", 7007), b"", 0.0) == "udp_refused_own_address"
    assert guard.refusal(("127.0.0.9", 7007), b"", 0.0) == "udp_refused_own_address"  # loopback: ours
    assert guard.refusal(("127.0.0.1", 0), b"", 0.0) == "udp_refused_low_port"
    # Another machine's client that happens to use our port number is answered (a lab link's
    # client namespace picks ephemeral ports independently); a wildcard-bound server cannot tell.
    assert guard.refusal(("198.18.0.1", 7007), b"ok", 0.0) is None
    assert UdpGuard(("0.0.0.0", 7007)).refusal(("198.18.0.1", 7007), b"", 0.0) == "udp_refused_own_address"
    assert UdpGuard(("::", 7007)).refusal(("::ffff:10.0.0.1", 7007), b"", 0.0) == "udp_refused_own_address"


@pytest.mark.parametrize("kwargs", [dict(udp_rate_limit=-1), dict(udp_rate_limit=float("nan")),
                                    dict(udp_rate_limit=2e9), dict(loop_seconds=0),
                                    dict(loop_seconds=float("inf"))])
def test_defect_2_bad_guard_settings_are_config_errors(variant: str, kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError), running_server("udp", variant=variant, **kwargs):
        pass


def test_defect_2_exposure_warning_names_non_loopback_addresses() -> None:
    assert exposure_warning([("127.0.0.1", 7), ("::1", 7), ("198.18.0.2", 7), None]) is None
    warning = exposure_warning([("0.0.0.0", 7007), ("0.0.0.0", 7007)]) or ""
    assert warning.startswith("lab: warning: listening on 0.0.0.0:7007, not loopback"), warning
    assert "\n" not in warning and "--udp-rate-limit" in warning
    assert "[::]:7" in (exposure_warning([("::", 7)]) or "")
    assert exposure_warning([("::ffff:127.0.0.1", 7)]) is None


@contextlib.contextmanager
def lab_serve(*args: str, netns: bool = False) -> Iterator[subprocess.Popen[str]]:
    argv = [sys.executable, "-m", "lab", "serve", *args]
    if netns:  # a private namespace (only lo): a wildcard address is reachable from nowhere else
        argv = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=15)


def _stats_line(out: str) -> dict[str, int]:
    line = out.strip().splitlines()[-1]
    assert line.startswith("echo stats:"), out
    return {k: int(v) for k, v in (pair.split("=") for pair in line.split(":", 1)[1].split())}


@pytest.mark.privileged
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_defect_2_lab_serve_on_a_wildcard_address_warns_once() -> None:
    with lab_serve("udp", "--host", "0.0.0.0", "--port", "0", netns=True) as proc:
        assert proc.stdout.readline().startswith("echo udp listening on 0.0.0.0:")  # type: ignore[union-attr]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lab: warning: listening on 0.0.0.0:"), err
    assert "udp_refused_loop=0" in out


def test_defect_2_lab_serve_counts_refusals_in_its_stats_line() -> None:
    """Ctrl-C's stats line names each refusal kind; loopback gets no warning."""
    with lab_serve("udp", "--port", "0", "--udp-rate-limit", "4") as proc:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        port = int(line.rsplit(":", 1)[1])
        with udp_client() as sock:
            for i in range(10):  # 4/s: a bucket of one answer (1 s of rate * 0.25 s)
                sock.sendto(bytes([i]), ("127.0.0.1", port))
            got = answers(sock, 0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0 and err == "", (out, err)
    stats = _stats_line(out)
    assert set(UDP_REFUSALS) <= set(stats), stats
    assert stats["udp_refused_rate"] == 10 - len(got) >= 8, (stats, got)


@pytest.mark.parametrize(("value", "message"), [("-1", "--udp-rate-limit"), ("nan", "--udp-rate-limit"),
                                                ("1e10", "--udp-rate-limit")])
def test_defect_2_lab_serve_bad_rate_limit_is_one_line(value: str, message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "lab", "serve", "udp", "--port", "0",
                           "--udp-rate-limit", value], capture_output=True, text=True, timeout=15, cwd=REPO)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done
    assert done.stderr.startswith("lab: error:") and message in done.stderr, done.stderr


def test_defect_2_machine_entry_point_takes_the_guard_settings() -> None:
    """`python -m lab.endpoints.server` (used inside namespaces) honours --loop-seconds."""
    proc = subprocess.Popen([sys.executable, "-m", "lab.endpoints.server", "udp", "--loop-seconds", "0.2"],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        address = tuple(json.loads(proc.stdout.readline())["udp"])  # type: ignore[union-attr]
        with running_server("udp", loop_seconds=60) as local:  # only the process may end the loop
            server_udp_socket(local).sendto(b"round and round", address)
            settled(local, "datagrams_in", quiet_s=0.5, limit_s=4.0)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    stats = json.loads(out.strip().splitlines()[-1])["stats"]
    assert stats["udp_refused_loop"] >= 1, stats


# --- defect 15: idle connections locking everyone out -----------------------------------------------
def test_defect_15_full_of_idle_connections_a_new_client_is_served(variant: str) -> None:
    """--max-conns 8 held by 8 silent connections: a newcomer is served at once, the idlest is closed."""
    with running_server("tcp", variant=variant, max_conns=8) as server:
        idle = [socket.create_connection(server.address, timeout=IO_TIMEOUT) for _ in range(8)]
        try:
            until = time.monotonic() + IO_TIMEOUT  # all accepted (in order) before one of them talks
            while server.stats["accepted"] < 8 and time.monotonic() < until:
                time.sleep(0.01)
            idle[0].sendall(b"awake")  # idle[0] talked last: idle[1] is now the longest idle
            assert idle[0].recv(10) == b"awake"
            started = time.monotonic()
            assert tcp_echo(server.address, b"let me in", timeout=1.0) == b"let me in"
            waited = time.monotonic() - started
            idle[1].settimeout(IO_TIMEOUT)
            with contextlib.suppress(ConnectionResetError):
                assert idle[1].recv(10) == b""  # closed to make room
            idle[0].sendall(b"kept")
            assert idle[0].recv(10) == b"kept"
            wait_until = time.monotonic() + IO_TIMEOUT
            while server.stats["active"] != 7 and time.monotonic() < wait_until:
                time.sleep(0.01)
            stats = server.stats
        finally:
            for sock in idle:
                sock.close()
    assert waited < 1.0, f"served after {waited:.2f}s"
    assert stats["evicted"] == 1 and stats["accepted"] == 9 and stats["active"] == 7, stats


def test_defect_15_lab_send_is_served_by_a_full_server() -> None:
    """The issue's symptom through `lab send`: 8 idle connections, --max-conns 8, a normal run."""
    from lab.endpoints.client import run_client

    with running_server("tcp", max_conns=8) as server:
        idle = [socket.create_connection(server.address, timeout=IO_TIMEOUT) for _ in range(8)]
        try:
            record = run_client("tcp", server.address, TrafficPlan(count=20, timeout=1.0))
        finally:
            for sock in idle:
                sock.close()
    assert len(record.arrivals) == 20, record.notes


@contextlib.contextmanager
def full_server(reset: bool) -> Iterator[tuple[str, int]]:
    """A TCP server that closes every connection at once, as servers at their limit do."""
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            if reset:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[:2]
    finally:
        stop.set()
        thread.join(IO_TIMEOUT)
        listener.close()


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_defect_15_client_says_the_server_may_be_full(reset: bool) -> None:
    from lab.endpoints.client import run_client
    from lab.errors import EndpointError

    with full_server(reset) as address, pytest.raises(EndpointError) as info:
        run_client("tcp", address, TrafficPlan(count=3, timeout=0.5))
    assert str(info.value) == (f"the echo server at {address[0]}:{address[1]} closed the connection before "
                               "any reply (it may be full: see its --max-conns)")


def test_defect_15_lab_send_message_in_one_line() -> None:
    with full_server(False) as (host, port):
        done = subprocess.run([sys.executable, "-m", "lab", "send", "tcp", host, str(port), "-c", "3"],
                              capture_output=True, text=True, timeout=30, cwd=REPO)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done
    assert "it may be full: see its --max-conns" in done.stderr, done.stderr
