"""Load and fault suite for the echo servers (issue 8): bounded, loopback only, a few seconds each.

Each server runs in its own process (`python -m lab.endpoints.server`), as `lab serve` does, so
the load generated here does not share its GIL and its memory can be measured alone. After every
test the test process has the open files, threads and child processes it started with.
Figures are printed (`pytest -s` shows them) and included in every assertion message.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.kernel import read_counters

REPO = Path(__file__).resolve().parents[1]
IO_TIMEOUT = 5.0
FD_HEADROOM = 256  # descriptors beyond the test's own sockets (pytest, the interpreter, pipes)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _children() -> set[int]:
    me, kids = str(os.getpid()), set()
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/children") as f:
            kids.update(int(pid) for pid in f.read().split())
    return kids - {int(me)}


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """Open fds, threads and child processes are back where they started after each test."""
    before = (_fds(), threading.active_count(), _children())
    yield
    deadline = time.monotonic() + IO_TIMEOUT
    while time.monotonic() < deadline:
        after = (_fds(), threading.active_count(), _children())
        if after[0] <= before[0] and after[1] <= before[1] and after[2] <= before[2]:
            return
        time.sleep(0.05)
    pytest.fail(f"left behind: fds {before[0]}->{after[0]}, threads {before[1]}->{after[1]}, "
                f"children {sorted(before[2])}->{sorted(after[2])}")


@pytest.fixture
def many_fds() -> Iterator[int]:
    """Raise this process's soft RLIMIT_NOFILE (children inherit it) for the test; restore after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    try:
        yield max(soft, want)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class ServerProcess:
    """`python -m lab.endpoints.server` in its own process: `.tcp`, `.udp`, `.rss_kib()`, `.final`."""

    def __init__(self, kind: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lab.endpoints.server", kind, "--port", "0", *args],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=REPO)
        ready = json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]
        assert ready.get("ready"), ready
        self.tcp = tuple(ready["tcp"]) if ready["tcp"] else None
        self.udp = tuple(ready["udp"]) if ready["udp"] else None
        self.final: dict[str, int] = {}

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

    def stop(self) -> dict[str, int]:
        """SIGTERM; the process prints its final counters and exits 0."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=IO_TIMEOUT * 2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        assert self.proc.returncode == 0, (self.proc.returncode, out)
        self.final = json.loads(out.strip().splitlines()[-1])["stats"]
        return self.final


@contextlib.contextmanager
def server(kind: str, *args: str) -> Iterator[ServerProcess]:
    srv = ServerProcess(kind, *args)
    try:
        yield srv
    finally:
        if srv.alive():
            srv.stop()
        else:
            srv.proc.communicate()


def tcp_echo(address: tuple[str, int], data: bytes, timeout: float = IO_TIMEOUT) -> bytes:
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data)
        got = b""
        while len(got) < len(data) and (piece := sock.recv(65536)):
            got += piece
        return got


def udp_ping(sock: socket.socket, payload: bytes, timeout: float) -> float | None:
    """RTT in seconds of one echo of `payload`, or None if none came back in time."""
    sock.settimeout(timeout)
    started = time.monotonic()
    sock.send(payload)
    deadline = started + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(2048) == payload:
                return time.monotonic() - started
        except TimeoutError:
            return None
    return None


def report(name: str, **figures: Any) -> str:
    line = f"[load] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    print(line)
    return line


# --- 1000 concurrent TCP connections, each with its own bytes ------------------------------------------
def test_load_1000_concurrent_tcp_connections_echo_their_own_bytes(many_fds: int) -> None:
    clients, size = 1000, 2048
    if many_fds < clients + FD_HEADROOM:
        pytest.skip(f"RLIMIT_NOFILE allows only {many_fds} descriptors")
    with server("tcp", "--max-conns", str(2 * clients)) as srv:
        started = time.monotonic()
        socks: list[socket.socket] = []
        sel = selectors.DefaultSelector()  # epoll: descriptors above 1024
        try:
            for _ in range(clients):  # all open at once before anyone sends
                socks.append(socket.create_connection(srv.tcp, timeout=IO_TIMEOUT))  # type: ignore[arg-type]
            connected = time.monotonic() - started
            payload = {s: struct.pack("!I", i) * (size // 4) for i, s in enumerate(socks)}
            got = {s: bytearray() for s in socks}
            for s in socks:
                s.setblocking(False)
                assert s.send(payload[s]) == size  # 2 KiB into an empty send buffer: all at once
                sel.register(s, selectors.EVENT_READ)
            deadline = time.monotonic() + 3 * IO_TIMEOUT
            pending = len(socks)
            while pending and time.monotonic() < deadline:
                for key, _ in sel.select(0.5):
                    s = key.fileobj
                    data = s.recv(65536)  # type: ignore[union-attr]
                    got[s] += data  # type: ignore[index]
                    if len(got[s]) >= size:  # type: ignore[index]
                        sel.unregister(s)
                        pending -= 1
            echoed = time.monotonic() - started
            wrong = sum(bytes(got[s]) != payload[s] for s in socks)
        finally:
            sel.close()
            for s in socks:
                s.close()
        stats = srv.stop()
    figures = report("1000 connections", held=clients, connect_s=round(connected, 2),
                     all_echoed_s=round(echoed, 2), wrong=wrong, missing=pending,
                     accepted=stats["accepted"], errors=stats["errors"])
    assert pending == 0 and wrong == 0, figures
    assert stats["accepted"] == clients and stats["evicted"] == 0, figures


# --- 500 idle connections while a normal client is served --------------------------------------------
def test_load_500_idle_connections_and_a_normal_client_is_served_promptly(many_fds: int) -> None:
    """At the default --max-conns (256) the idle ones are evicted oldest first; the client is served."""
    from lab.endpoints.client import run_client
    from lab.metrics import compute_result
    from lab.records import TrafficPlan

    idle_count = 500
    with server("both") as srv:
        idle: list[socket.socket] = []
        try:
            for _ in range(idle_count):
                idle.append(socket.create_connection(srv.tcp, timeout=IO_TIMEOUT))  # type: ignore[arg-type]
            started = time.monotonic()
            tcp = compute_result(run_client("tcp", srv.tcp, TrafficPlan(count=200, timeout=1.0)))
            udp = compute_result(run_client("udp", srv.udp, TrafficPlan(count=200, timeout=1.0)))
            took = time.monotonic() - started
        finally:
            for s in idle:
                s.close()
        stats = srv.stop()
    figures = report("500 idle", idle=idle_count, max_conns=256, evicted=stats["evicted"],
                     tcp_received=tcp.received, tcp_p50_us=tcp.rtt_us.get("p50"),
                     udp_received=udp.received, served_in_s=round(took, 2))
    assert (tcp.received, udp.received) == (200, 200), figures
    assert tcp.rtt_us["p50"] < 20_000 and took < 5.0, figures  # prompt: not waiting for a free slot
    assert stats["evicted"] == idle_count + 1 - 256, figures  # the client's connection took one slot


# --- a UDP flood while a ping-pong client keeps being answered ----------------------------------------
FLOOD_S = 2.0  # overflows the server's socket buffer many times over; kept short for the suite
PING_EVERY_S = 0.02
FLOODER = """
import socket, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.2", 0))  # its own source address: the ping client's is 127.0.0.1
s.setblocking(False)
sent, payload = 0, b"f" * 64
print("flooding", flush=True)
until = time.monotonic() + seconds
while time.monotonic() < until:
    for _ in range(256):
        try:
            s.sendto(payload, (host, port))
            sent += 1
        except BlockingIOError:
            pass
print(sent, flush=True)
"""


def test_load_udp_flood_does_not_stop_a_ping_pong_client() -> None:
    """Unpaced flood from 127.0.0.2; a client pings every 20 ms from 127.0.0.1 and counts its echoes.

    The server cannot drain as fast as a flooder sends, so its socket buffer is full most of the
    time and most pings are dropped by the kernel with the flood (RcvbufErrors); the rest are
    answered, late by the queue. The server neither crashes nor stops, and answers at once after.
    """
    with server("udp") as srv:
        before = read_counters().get("UdpRcvbufErrors", 0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ping:
            ping.connect(srv.udp)  # type: ignore[arg-type]
            assert udp_ping(ping, b"warm-up", 1.0) is not None
            flooder = subprocess.Popen([sys.executable, "-c", FLOODER, srv.udp[0],  # type: ignore[index]
                                        str(srv.udp[1]), str(FLOOD_S)],  # type: ignore[index]
                                       stdout=subprocess.PIPE, text=True)
            try:
                assert flooder.stdout.readline() == "flooding\n"  # type: ignore[union-attr]
                sent_at: dict[int, float] = {}
                rtts: list[float] = []
                ping.setblocking(False)
                started = time.monotonic()
                listen_until = started + FLOOD_S + 0.5  # late echoes still count, as answered
                while (now := time.monotonic()) < listen_until:
                    if now < started + FLOOD_S and now >= started + len(sent_at) * PING_EVERY_S:
                        sent_at[len(sent_at)] = now
                        ping.send(struct.pack("!I", len(sent_at) - 1))
                    with contextlib.suppress(BlockingIOError):
                        while True:
                            seq = struct.unpack("!I", ping.recv(64))[0]
                            rtts.append(time.monotonic() - sent_at[seq])
                    time.sleep(0.001)
                flood_sent = int(flooder.communicate(timeout=IO_TIMEOUT * 2)[0])
            finally:
                if flooder.poll() is None:
                    flooder.kill()
                    flooder.communicate()
            alive = srv.alive()
            ping.setblocking(True)
            after_rtt = udp_ping(ping, b"after the flood", 1.0)
        overflow = read_counters().get("UdpRcvbufErrors", 0) - before
        rss_kib = srv.rss_kib()
        stats = srv.stop()
    rtts.sort()
    figures = report(f"udp flood {FLOOD_S:g}s", flood_sent=flood_sent,
                     flood_rate_per_s=round(flood_sent / FLOOD_S), server_in=stats["datagrams_in"],
                     server_rate_per_s=round(stats["datagrams_in"] / FLOOD_S),
                     rcvbuf_errors=overflow, pings=len(sent_at), answered=len(rtts),
                     ping_p50_ms=round(1000 * rtts[len(rtts) // 2], 2) if rtts else None,
                     after_ms=round(1000 * after_rtt, 2) if after_rtt else None, server_rss_kib=rss_kib)
    assert alive and after_rtt is not None and after_rtt < 0.5, figures  # the queue drains in ~0.1 s
    assert len(rtts) >= 3, figures  # kept being answered through the flood
    assert overflow > 0 and stats["datagrams_in"] < flood_sent, figures  # the kernel dropped; we did not die
    assert stats["errors"] == 0, figures


# --- connect + reset loops ---------------------------------------------------------------------------
LINGER_0 = struct.pack("ii", 1, 0)


def test_load_connect_reset_loops_leave_the_server_serving() -> None:
    """300 rounds of: reset before sending, reset mid-echo, reset with unread echo pending."""
    with server("tcp") as srv:
        started = time.monotonic()
        for i in range(300):
            s = socket.create_connection(srv.tcp, timeout=IO_TIMEOUT)  # type: ignore[arg-type]
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
            if i % 3:
                s.sendall(os.urandom(100 if i % 3 == 1 else 200_000))
            s.close()  # RST
        took = time.monotonic() - started
        assert tcp_echo(srv.tcp, b"still serving") == b"still serving"  # type: ignore[arg-type]
        alive = srv.alive()
        stats = srv.stop()
    figures = report("connect+reset", rounds=300, seconds=round(took, 2), accepted=stats["accepted"],
                     errors=stats["errors"], active_at_end=stats["active"])
    assert alive and stats["accepted"] == 301 and stats["active"] == 0, figures
    assert stats["errors"] <= 300, figures  # at most one per reset connection, nothing else


# --- clients that never read ------------------------------------------------------------------------
def test_load_clients_that_never_read_keep_server_memory_bounded(many_fds: int) -> None:
    """200 clients write all they can and never read: the server stops reading them; memory bounded."""
    from lab.endpoints.server import SMALL_RECV_CHUNK, TOTAL_OUTBUF_HIGH

    clients, per_client_limit = 200, 8 << 20
    with server("tcp", "--max-conns", "1000") as srv:
        rss_before = srv.rss_kib()
        hogs = []
        for _ in range(clients):  # small client buffers: the kernel holds less, the test runs faster
            h = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            hogs.append(h)
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                h.setsockopt(socket.SOL_SOCKET, opt, 64 * 1024)
            h.settimeout(IO_TIMEOUT)
            h.connect(srv.tcp)  # type: ignore[arg-type]
        try:
            chunk, sent = b"z" * 65536, 0
            for h in hogs:
                h.setblocking(False)
            deadline = time.monotonic() + 3 * IO_TIMEOUT
            open_ = set(hogs)
            written = dict.fromkeys(hogs, 0)
            stalled_rounds = 0
            while open_ and time.monotonic() < deadline and stalled_rounds < 20:
                progressed = False
                for h in list(open_):
                    try:
                        n = h.send(chunk)
                        written[h] += n
                        sent += n
                        progressed = True
                        if written[h] >= per_client_limit:
                            open_.discard(h)
                    except BlockingIOError:
                        continue
                stalled_rounds = 0 if progressed else stalled_rounds + 1
                if not progressed:
                    time.sleep(0.02)  # every window full: the server has stopped reading them
            rss_peak = srv.rss_kib()
            assert tcp_echo(srv.tcp, b"others are served") == b"others are served"  # type: ignore[arg-type]
        finally:
            for h in hogs:
                h.close()
        stats = srv.stop()
    growth_mib = (rss_peak - rss_before) / 1024
    bound_mib = (TOTAL_OUTBUF_HIGH + clients * (SMALL_RECV_CHUNK + 65536)) / (1 << 20) + 16  # + interpreter
    figures = report("never-reading clients", clients=clients, written_mib=round(sent / (1 << 20)),
                     rss_before_mib=round(rss_before / 1024, 1), rss_peak_mib=round(rss_peak / 1024, 1),
                     growth_mib=round(growth_mib, 1), bound_mib=round(bound_mib),
                     pauses=stats["backpressure_pauses"], bytes_in_mib=round(stats["bytes_in"] / (1 << 20)))
    assert sent < clients * per_client_limit, f"never stopped: no back-pressure; {figures}"
    assert growth_mib < bound_mib, figures
    assert stats["backpressure_pauses"] >= 1, figures
