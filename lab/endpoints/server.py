"""RFC 862 echo servers: TCP echoes the byte stream, UDP echoes each datagram, one `selectors` loop.

The loop is non-blocking throughout. Each TCP connection keeps its own outgoing buffer; when a
client stops reading, that buffer grows until `OUTBUF_HIGH` (or all buffers together pass
`TOTAL_OUTBUF_HIGH`), and then the server stops reading *that* connection (back-pressure) until
it drains. At `max_conns` the longest-idle connection is closed to make room for a new one. Nothing
a peer sends can make the loop raise: every OSError on a connection closes just that connection
and is counted. UDP datagrams that would start an echo loop or exceed a source's rate are left
unanswered and counted (`UdpGuard`).

Also here: `running_server` (a server in a daemon thread, for tests and the runner), `serve_command`
(`lab serve`) and a machine entry point (`python -m lab.endpoints.server`) that prints a JSON ready
line, used to start servers inside network namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from lab.child import Child, Failed, Ready, child_channel, end_process, python_argv, spawn
from lab.errors import ConfigError, EndpointError

KINDS = ("tcp", "udp", "both")
VARIANTS = ("selectors", "socketserver")
MAX_UDP_PAYLOAD = 65507  # 65535 - 20 (IPv4 header) - 8 (UDP header), RFC 768 / RFC 791
MAX_UDP6_PAYLOAD = 65527  # 65535 - 8 (UDP header): IPv6's payload length excludes its header, RFC 8200
RECV_CHUNK = 65536  # bytes per recv(); also large enough to see any over-max datagram (IPv6: 65527)
OUTBUF_HIGH = 256 * 1024  # stop reading a connection whose unsent echo exceeds this (back-pressure)
OUTBUF_LOW = 64 * 1024  # ... and resume once it has drained below this
# All connections together: above TOTAL_OUTBUF_HIGH every connection with unsent echo stops reading
# (and the others read in small chunks) until the total is below TOTAL_OUTBUF_LOW, so clients that
# never read cannot grow the server beyond ~TOTAL_OUTBUF_HIGH + max_conns * SMALL_RECV_CHUNK.
TOTAL_OUTBUF_HIGH = 16 * 1024 * 1024
TOTAL_OUTBUF_LOW = 8 * 1024 * 1024
SMALL_RECV_CHUNK = 4096
BATCH = 64  # accepts/datagrams handled per readiness event, so one busy socket cannot starve others
LISTEN_BACKLOG = 128
UDP_SOCKET_BUFFER = 1 << 20  # ask for 1 MiB so a burst of max-size datagrams is not dropped at once
BOTH_BIND_ATTEMPTS = 8  # kind="both", port=0: TCP's ephemeral port may already be taken for UDP
ACCEPT_PAUSE_S = 0.1  # out of fds/memory: stop accepting this long instead of spinning
# An idle timeout becomes a select/epoll timeout, which the kernel caps at INT_MAX ms (~24.8 days);
# a day is more than any lab session needs and keeps far from that edge.
MAX_IDLE_TIMEOUT_S = 86_400.0
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# UDP answers per second per source address. The fastest legitimate client measured, `lab send
# --rate 100000` on loopback, reached ~50 k/s on a 2-core machine; a paced client cannot exceed its
# rate for longer than the bucket's depth, so this never slows a run of `--rate 100000` or less.
UDP_RATE_LIMIT = 100_000.0
UDP_RATE_BURST_S = 0.25  # bucket depth: a sender catching up after a 250 ms stall is still answered
MAX_UDP_RATE_LIMIT = 1e9
UDP_SOURCES_MAX = 4096  # per-source state kept at once (rate buckets, echo-loop tracking): bounded
LOW_PORTS = 1024  # below: echo (7), discard (9), daytime (13), chargen (19)... never answered
LOOP_SECONDS = 5.0  # a peer echoing our replies back this long without pause is an echo loop
LOOP_GAP_S = 1.0  # a reflection more than this after our reply is not a loop (a person, a slow link)
LOOP_RING = 8  # recent replies per peer compared with what it sends (several loops interleaved)
# Datagrams up to LOOP_DIGEST_BYTES are hashed whole; larger ones by size, first and last
# LOOP_DIGEST_ENDS bytes. hash() of fresh bytes costs ~0.35 µs/KiB, slicing two ends ~0.7 µs:
# whole is cheaper up to ~3 KiB (every full-MTU datagram), the ends beyond.
LOOP_DIGEST_BYTES = 4096
LOOP_DIGEST_ENDS = 512

UDP_REFUSALS = ("udp_refused_own_address", "udp_refused_low_port", "udp_refused_rate", "udp_refused_loop")
COUNTER_NAMES = (
    "accepted", "active", "evicted", "closed_idle",
    "bytes_in", "bytes_out", "datagrams_in", "datagrams_out", "datagrams_dropped",
    *UDP_REFUSALS,
    "errors", "paused", "backpressure_pauses",
)


class Counters:
    """The servers' counters; written by the serving thread(s), read as a snapshot from any thread.

    Input and UDP output are counted before the echo leaves, so a client holding a reply sees it
    counted; TCP `bytes_out` moves once the kernel took the bytes, just after the client may see them.
    `paused` is a gauge (connections stopped by back-pressure now), `active` too; the rest only grow.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTER_NAMES, 0)

    def add(self, **deltas: int) -> None:
        """Add each delta to its counter (atomically as a group)."""
        with self._lock:
            for name, delta in deltas.items():
                self._values[name] += delta

    def snapshot(self) -> dict[str, int]:
        """A consistent copy of every counter."""
        with self._lock:
            return dict(self._values)


def check_idle_timeout(idle_timeout: float) -> None:
    """Raise ConfigError unless 0 <= idle_timeout <= MAX_IDLE_TIMEOUT_S (NaN and inf included)."""
    if not 0 <= idle_timeout <= MAX_IDLE_TIMEOUT_S:  # also false for NaN
        raise ConfigError(f"idle timeout must be 0..{MAX_IDLE_TIMEOUT_S:.0f} seconds "
                          f"(0 = never), got {idle_timeout}")


def check_limits(max_conns: int, idle_timeout: float, max_datagram: int,
                 udp_rate_limit: float = UDP_RATE_LIMIT, loop_seconds: float = LOOP_SECONDS) -> None:
    """Validate a server's limits (shared by both server variants); ConfigError names the bad one."""
    if max_conns < 1:
        raise ConfigError(f"max_conns must be at least 1, got {max_conns}")
    check_idle_timeout(idle_timeout)
    if not 0 <= max_datagram <= MAX_UDP6_PAYLOAD:
        raise ConfigError(f"max_datagram must be 0..{MAX_UDP6_PAYLOAD} bytes, got {max_datagram}")
    if not 0 <= udp_rate_limit <= MAX_UDP_RATE_LIMIT:  # also false for NaN
        raise ConfigError(f"UDP rate limit must be 0..{MAX_UDP_RATE_LIMIT:.0e} answers/s per source "
                          f"(0 = no limit), got {udp_rate_limit}")
    if not 0 < loop_seconds <= MAX_IDLE_TIMEOUT_S:
        raise ConfigError(f"loop_seconds must be > 0 and <= {MAX_IDLE_TIMEOUT_S:.0f}, got {loop_seconds}")


class _Peer:
    """Echo-loop tracking for one source (address, port): digests of our recent replies to it."""

    __slots__ = ("ring", "slot", "streak_since", "last_reply", "refuse_until")

    def __init__(self) -> None:
        self.ring: list[int] = [0] * LOOP_RING  # hash() of the last LOOP_RING replies (0 = none yet)
        self.slot = 0
        self.streak_since = 0.0  # when it began sending our replies back (0: it does not)
        self.last_reply = 0.0
        self.refuse_until = 0.0  # a loop was found: its datagrams are refused until then


class UdpGuard:
    """Decides which datagrams a UDP echo server answers; shared by both server variants.

    Careful echo services (inetd's built-in echo among them) never answer a datagram from their
    own address and port (spoofed from the server itself it starts an endless echo; from loopback,
    or to a server bound to a wildcard address, any source on its port is treated so, as another
    echo server on that port would loop with it the same way), nor from a port below 1024 (echo,
    chargen, daytime...: the same loop with the classic services). Answers are also rate-limited per source
    address (a token bucket), so spoofed datagrams cannot aim a flood at anyone.

    An echo server on a high port cannot be told from a ping-pong client by its address, only by
    what it does: it sends our replies back, byte for byte, without pause, forever. A peer that has
    done so for `loop_seconds` is refused (what it echoes back, for LOOP_GAP_S), which ends the loop
    (a constant-payload ping-pong client loses one datagram every `loop_seconds`; the lab's own
    clients never repeat a datagram).
    State is bounded: at most UDP_SOURCES_MAX sources in each table, the older half forgotten when
    full. About 1 µs per datagram. Not thread-safe: one serving thread calls `refusal`.
    """

    def __init__(self, own: tuple[Any, ...], *, rate: float = UDP_RATE_LIMIT,
                 loop_seconds: float = LOOP_SECONDS) -> None:
        self.own_host = own[0][7:] if own[0].startswith("::ffff:") else own[0]
        self.own_port = own[1]
        self.own_wildcard = self.own_host in ("0.0.0.0", "::")
        self.rate = rate
        self.burst = max(1.0, rate * UDP_RATE_BURST_S)
        self.loop_seconds = loop_seconds
        self._buckets: dict[str, list[float]] = {}  # source address -> [tokens, when counted]
        self._peers: dict[tuple[str, int], _Peer] = {}

    def refusal(self, peer: tuple[Any, ...], data: bytes, now: float) -> str | None:
        """None if `data` from `peer` is to be answered (and is then remembered); else the counter to add."""
        host, port = peer[0], peer[1]
        if host.startswith("::ffff:"):  # a dual-stack socket's view of an IPv4 peer
            host = host[7:]
        if port == self.own_port and (host == self.own_host or self.own_wildcard
                                      or host.startswith("127.") or host == "::1"):
            return "udp_refused_own_address"
        if port < LOW_PORTS:
            return "udp_refused_low_port"
        if self.rate:
            bucket = self._buckets.get(host)
            if bucket is None:
                if len(self._buckets) >= UDP_SOURCES_MAX:
                    _forget_oldest(self._buckets)
                self._buckets[host] = [self.burst - 1.0, now]
            else:
                tokens = bucket[0] + (now - bucket[1]) * self.rate
                if tokens > self.burst:
                    tokens = self.burst
                bucket[1] = now
                if tokens < 1.0:
                    bucket[0] = tokens
                    return "udp_refused_rate"
                bucket[0] = tokens - 1.0
        key = (host, port)
        state = self._peers.get(key)
        if state is None:
            if len(self._peers) >= UDP_SOURCES_MAX:
                _forget_oldest(self._peers)
            state = self._peers[key] = _Peer()
        # hash() reads every byte (~20 µs for 64 KiB): a big datagram is known by its ends and size;
        # 0 marks an empty ring slot.
        digest = (hash(data) if len(data) <= LOOP_DIGEST_BYTES
                  else hash((len(data), data[:LOOP_DIGEST_ENDS], data[-LOOP_DIGEST_ENDS:]))) or 1
        if digest in state.ring and now - state.last_reply <= LOOP_GAP_S:
            if now < state.refuse_until:
                return "udp_refused_loop"
            if not state.streak_since:
                state.streak_since = now
            elif now - state.streak_since >= self.loop_seconds:
                # Refuse every datagram still going round (several loops may share this peer);
                # each refusal ends one loop.
                state.streak_since = 0.0
                state.refuse_until = now + LOOP_GAP_S
                return "udp_refused_loop"
        else:
            state.streak_since = 0.0
        state.last_reply = now
        state.ring[state.slot] = digest
        state.slot = (state.slot + 1) % LOOP_RING
        return None


def _forget_oldest(table: dict[Any, Any]) -> None:
    """Drop the older half of a full table (dicts keep insertion order): amortised O(1) per entry."""
    for key in list(itertools.islice(table, len(table) // 2 or 1)):
        del table[key]


def resolve_bind(host: str, port: int, socktype: int) -> tuple[int, tuple[Any, ...]]:
    """(family, sockaddr) to bind `host`:`port`; raises EndpointError on a bad address or port."""
    if not 0 <= port <= 65535:
        raise EndpointError(f"port must be 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socktype, 0, socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise EndpointError(f"cannot listen on {host!r}: not a usable address ({exc})") from exc
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def format_address(address: tuple[Any, ...]) -> str:
    """'127.0.0.1:7007' or '[::1]:7007'."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind(host: str, port: int, socktype: int) -> socket.socket:
    """A bound (and, for TCP, listening) non-blocking socket; EndpointError with a reason if not."""
    family, sockaddr = resolve_bind(host, port, socktype)
    sock = socket.socket(family, socktype)
    try:
        if socktype == socket.SOCK_STREAM:
            # Restarting `lab serve` must not fail on the old server's TIME_WAIT connections; on
            # Linux this still refuses a port that another socket is *listening* on.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, UDP_SOCKET_BUFFER)
        sock.bind(sockaddr)
        if socktype == socket.SOCK_STREAM:
            sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        proto = "tcp" if socktype == socket.SOCK_STREAM else "udp"
        where = format_address((host, port))
        if exc.errno == errno.EADDRINUSE:
            raise EndpointError(f"{proto} port {port} on {host} is already in use: stop the other "
                                "server or choose another --port (0 = any free)") from exc
        if exc.errno == errno.EACCES:
            raise EndpointError(f"not allowed to listen on {proto} {where}: ports below 1024 need "
                                "root; choose a port >= 1024") from exc
        if exc.errno == errno.EADDRNOTAVAIL:
            raise EndpointError(f"cannot listen on {where}: {host} is not an address of this "
                                "machine (try 127.0.0.1 or ::1)") from exc
        raise EndpointError(f"cannot listen on {proto} {where}: {exc.strerror or exc}") from exc
    return sock


def bind_sockets(kind: str, host: str, port: int) -> tuple[socket.socket | None, socket.socket | None]:
    """Bind the listening TCP and/or UDP sockets; with kind="both" they share one port number."""
    if kind not in KINDS:
        raise ConfigError(f"server kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "tcp":
        return _bind(host, port, socket.SOCK_STREAM), None
    if kind == "udp":
        return None, _bind(host, port, socket.SOCK_DGRAM)
    for attempt in range(BOTH_BIND_ATTEMPTS):
        tcp = _bind(host, port, socket.SOCK_STREAM)
        try:
            return tcp, _bind(host, tcp.getsockname()[1], socket.SOCK_DGRAM)
        except EndpointError:
            tcp.close()
            if port != 0 or attempt == BOTH_BIND_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


class _Conn:
    """One TCP connection's state in the loop."""

    __slots__ = ("sock", "outbuf", "last_active", "reading", "eof", "events")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.outbuf = bytearray()
        self.last_active = now
        self.reading = True  # False while paused by back-pressure
        self.eof = False  # the client half-closed (or we gave up reading)
        self.events = selectors.EVENT_READ


class EchoServer:
    """TCP and/or UDP echo served by one `selectors` loop; binds in the constructor."""

    def __init__(
        self,
        kind: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_conns: int = 256,
        idle_timeout: float = 60.0,
        max_datagram: int = MAX_UDP_PAYLOAD,
        udp_rate_limit: float = UDP_RATE_LIMIT,
        loop_seconds: float = LOOP_SECONDS,
    ) -> None:
        check_limits(max_conns, idle_timeout, max_datagram, udp_rate_limit, loop_seconds)
        self.kind = kind
        self.max_conns = max_conns
        self.idle_timeout = idle_timeout
        self.max_datagram = max_datagram
        self._counters = Counters()
        self._tcp, self._udp = bind_sockets(kind, host, port)
        self.tcp_address = self._tcp.getsockname()[:2] if self._tcp else None
        self.udp_address = self._udp.getsockname()[:2] if self._udp else None
        self._guard = (UdpGuard(self.udp_address, rate=udp_rate_limit, loop_seconds=loop_seconds)
                       if self.udp_address else None)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # Least recently active first (see _touch): the front is the next to evict or time out.
        self._conns: dict[socket.socket, _Conn] = {}
        self._buffered = 0  # unsent echo bytes held for all connections together
        self._stop = threading.Event()
        self._done = threading.Event()
        self._serving = False
        self._closed = False
        self._close_lock = threading.Lock()
        self._accept_paused_until = 0.0
        self._loop_thread: threading.Thread | None = None
        self._idle_check_at = 0.0  # when the oldest-idle connection may time out (0 = no check due)

    # --- public ------------------------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        """The first bound address (TCP's when both)."""
        return self.tcp_address or self.udp_address  # type: ignore[return-value]

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the counters and `outbuf_bytes` (unsent echo held now); safe from any thread."""
        return {**self._counters.snapshot(), "outbuf_bytes": self._buffered}

    def serve_forever(self) -> None:
        """Run the loop until `shutdown()`; closes every socket on the way out.

        Returns at once if the server was already shut down or closed (a thread started just
        before `close()` must not find half-closed sockets).
        """
        with self._close_lock:
            if self._closed or self._stop.is_set():
                return
            self._serving = True
            self._loop_thread = threading.current_thread()
            self._register()
        try:
            while not self._stop.is_set():
                self._step()
        finally:
            self._close_all()
            self._done.set()

    def shutdown(self) -> None:
        """Ask the loop to stop (from any thread, idempotent); returns at once."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def close(self) -> None:
        """Stop serving and close every socket (idempotent; waits briefly for a running loop)."""
        self.shutdown()
        with self._close_lock:
            serving = self._serving
        if serving and threading.current_thread() is not self._loop_thread:
            self._done.wait(timeout=5.0)  # the loop closes everything itself as it exits
        self._close_all()

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the loop ----------------------------------------------------------------------------------
    def _register(self) -> None:
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        if self._tcp is not None:
            self._sel.register(self._tcp, selectors.EVENT_READ, self._on_accept)
        if self._udp is not None:
            self._sel.register(self._udp, selectors.EVENT_READ, self._on_datagram)

    def _step(self) -> None:
        now = time.monotonic()
        for key, mask in self._sel.select(self._timeout(now)):
            key.data(key.fileobj, mask)
        if self._idle_check_at or self._accept_paused_until:
            now = time.monotonic()
            if self._idle_check_at and now >= self._idle_check_at:
                self._close_idle(now)
            if self._accept_paused_until and now >= self._accept_paused_until:
                self._accept_paused_until = 0.0
                self._sel.register(self._tcp, selectors.EVENT_READ, self._on_accept)  # type: ignore[arg-type]

    def _timeout(self, now: float) -> float | None:
        deadlines = [t for t in (self._idle_check_at, self._accept_paused_until) if t]
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _on_wake(self, sock: Any, mask: int) -> None:
        with contextlib.suppress(OSError):
            sock.recv(4096)

    def _on_accept(self, listener: Any, mask: int) -> None:
        for _ in range(BATCH):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:  # the client gave up while queued: nothing to serve
                continue
            except OSError as exc:
                self._counters.add(errors=1)
                if exc.errno in _RESOURCE_ERRNOS:
                    # The listener stays readable while we are out of fds: back off, don't spin.
                    self._sel.unregister(listener)
                    self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE_S
                return
            if len(self._conns) >= self.max_conns:
                # Full: make room by closing the longest-idle connection rather than turning the
                # new one away, or idle connections holding every slot lock every client out.
                self._drop(next(iter(self._conns.values())))
                self._counters.add(evicted=1)
            try:
                sock.setblocking(False)
                # An echo must go back as soon as it arrives: Nagle would hold a partial echo
                # until the client ACKs, which delayed ACKs can stretch to ~40 ms.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                sock.close()
                self._counters.add(errors=1)
                continue
            conn = _Conn(sock, time.monotonic())
            self._conns[sock] = conn
            if self.idle_timeout > 0 and not self._idle_check_at:
                self._idle_check_at = conn.last_active + self.idle_timeout
            self._sel.register(sock, selectors.EVENT_READ, self._on_conn)
            self._counters.add(accepted=1, active=1)

    def _on_conn(self, sock: Any, mask: int) -> None:
        conn = self._conns.get(sock)
        if conn is None:
            return
        try:
            if mask & selectors.EVENT_READ and conn.reading:
                self._read(conn)
            elif conn.outbuf:
                self._flush(conn)
            if conn.eof and not conn.outbuf:
                # Half-close: everything echoed, now send our FIN too, then let go.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                self._drop(conn)
                return
        except OSError:  # ECONNRESET, EPIPE, ...: this connection only
            self._counters.add(errors=1)
            self._drop(conn)
            return
        self._update_interest(conn)

    def _touch(self, conn: _Conn) -> None:
        """Mark `conn` active now: it moves to the back of the least-recently-active order."""
        conn.last_active = time.monotonic()
        self._conns[conn.sock] = self._conns.pop(conn.sock)

    def _read(self, conn: _Conn) -> None:
        """Read once and echo at once; only what the kernel does not take waits in `outbuf`."""
        chunk = RECV_CHUNK if self._buffered < TOTAL_OUTBUF_HIGH else SMALL_RECV_CHUNK
        try:
            data = conn.sock.recv(chunk)
        except (BlockingIOError, InterruptedError):
            return
        self._touch(conn)
        if not data:
            conn.eof = True
            conn.reading = False
            return
        self._counters.add(bytes_in=len(data))
        if conn.outbuf:  # older bytes first: the stream's order is the echo's order
            conn.outbuf += data
            self._buffered += len(data)
            self._flush(conn)
            return
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent:
            self._counters.add(bytes_out=sent)
        if sent < len(data):
            conn.outbuf += data[sent:]
            self._buffered += len(data) - sent

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        if sent:
            del conn.outbuf[:sent]
            self._buffered -= sent
            self._touch(conn)
            self._counters.add(bytes_out=sent)

    def _update_interest(self, conn: _Conn) -> None:
        held = len(conn.outbuf)
        if conn.reading and not conn.eof and (
                held > OUTBUF_HIGH or (held and self._buffered > TOTAL_OUTBUF_HIGH)):
            conn.reading = False
            self._counters.add(paused=1, backpressure_pauses=1)
        elif not conn.reading and not conn.eof and held < OUTBUF_LOW and (
                not held or self._buffered < TOTAL_OUTBUF_LOW):
            conn.reading = True
            self._counters.add(paused=-1)
        events = (selectors.EVENT_READ if conn.reading else 0) | (
            selectors.EVENT_WRITE if conn.outbuf else 0
        )
        # Never 0: paused implies a full outbuf, and EOF with an empty outbuf was closed already.
        if events and events != conn.events:
            conn.events = events
            self._sel.modify(conn.sock, events, self._on_conn)

    def _close_idle(self, now: float) -> None:
        # Once per deadline, and only the idle front of the least-recently-active order is visited.
        idle = itertools.takewhile(lambda c: now - c.last_active >= self.idle_timeout, self._conns.values())
        for conn in list(idle):
            self._counters.add(closed_idle=1)
            self._drop(conn)
        self._idle_check_at = (
            next(iter(self._conns.values())).last_active + self.idle_timeout if self._conns else 0.0
        )

    def _drop(self, conn: _Conn) -> None:
        if self._conns.pop(conn.sock, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(conn.sock)
        if not conn.reading and not conn.eof:
            self._counters.add(paused=-1)
        self._buffered -= len(conn.outbuf)
        conn.sock.close()
        self._counters.add(active=-1)

    def _on_datagram(self, sock: Any, mask: int) -> None:
        for _ in range(BATCH):
            try:
                data, peer = sock.recvfrom(RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # e.g. ECONNREFUSED: an ICMP port-unreachable for an earlier echo to a gone client
                self._counters.add(errors=1)
                continue
            size = len(data)
            if size > self.max_datagram:
                self._counters.add(datagrams_in=1, bytes_in=size, datagrams_dropped=1)
                continue
            refused = self._guard.refusal(peer, data, time.monotonic())  # type: ignore[union-attr]
            if refused:
                self._counters.add(datagrams_in=1, bytes_in=size, **{refused: 1})
                continue
            # Count the echo *before* sending it, so whoever receives it already sees it counted
            # (tests and probes compare counters right after a reply); undone if the send fails.
            self._counters.add(datagrams_in=1, bytes_in=size, datagrams_out=1, bytes_out=size)
            try:
                sock.sendto(data, peer)
            except (BlockingIOError, InterruptedError):
                # Send buffer full: UDP may drop, and an echo server must not block for one peer.
                self._counters.add(datagrams_out=-1, bytes_out=-size, datagrams_dropped=1)
            except OSError:
                self._counters.add(datagrams_out=-1, bytes_out=-size, errors=1)

    def _close_all(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        for conn in list(self._conns.values()):
            self._drop(conn)
        for sock in (self._tcp, self._udp, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._sel.close()


# --- running a server in a thread ------------------------------------------------------------------
class _Serving(Protocol):
    tcp_address: tuple[str, int] | None
    udp_address: tuple[str, int] | None

    @property
    def stats(self) -> dict[str, int]: ...

    def serve_forever(self) -> None: ...

    def shutdown(self) -> None: ...

    def close(self) -> None: ...


class ServerHandle:
    """A server running in a daemon thread: `.address`, `.tcp_address`, `.udp_address`, `.stats`."""

    def __init__(self, server: _Serving) -> None:
        self.server = server
        self.tcp_address = server.tcp_address
        self.udp_address = server.udp_address
        self.address: tuple[str, int] = self.tcp_address or self.udp_address  # type: ignore[assignment]

    @property
    def stats(self) -> dict[str, int]:
        """Live counters (a fresh snapshot each time)."""
        return self.server.stats


def make_server(kind: str, *, host: str = "127.0.0.1", port: int = 0, variant: str = "selectors",
                **limits: Any) -> _Serving:
    """A bound, not yet serving, echo server of the given variant."""
    if variant == "selectors":
        return EchoServer(kind, host=host, port=port, **limits)
    if variant == "socketserver":
        from lab.endpoints.classic import ClassicEchoServer

        return ClassicEchoServer(kind, host=host, port=port, **limits)
    raise ConfigError(f"server variant must be one of {', '.join(VARIANTS)}, got {variant!r}")


@contextlib.contextmanager
def running_server(kind: str, *, host: str = "127.0.0.1", port: int = 0, variant: str = "selectors",
                   **limits: Any) -> Iterator[ServerHandle]:
    """Serve in a daemon thread for the duration of the block; stop, close and join on exit."""
    server = make_server(kind, host=host, port=port, variant=variant, **limits)
    thread = threading.Thread(target=server.serve_forever, name=f"echo-{kind}-{variant}", daemon=True)
    try:
        thread.start()
        yield ServerHandle(server)
    finally:
        server.shutdown()
        thread.join(timeout=10.0)
        server.close()


# --- command line ----------------------------------------------------------------------------------
def _serve_until_signal(server: _Serving, announce: Callable[[], None]) -> None:
    """Serve in this (main) thread until SIGINT/SIGTERM, then restore the old handlers.

    `announce` runs once the handlers are in place: whoever reacts to it by signalling us must
    find a clean shutdown, not Python's default KeyboardInterrupt.
    """
    def stop(signum: int, frame: object) -> None:
        server.shutdown()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        announce()
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.close()


def format_stats(stats: dict[str, int]) -> str:
    """One human line of counters."""
    return "echo stats: " + " ".join(f"{name}={stats[name]}" for name in COUNTER_NAMES if name in stats)


def exposure_warning(addresses: list[tuple[str, int] | None]) -> str | None:
    """A warning line if any bound address is reachable from other machines (None on loopback).

    The lab's own namespaces (198.18.0.0/15) count as private: only a lab link reaches them.
    """
    from lab.errors import TargetRefusedError
    from lab.targets import check_lab_target

    exposed = []
    for address in addresses:
        if address is None:
            continue
        try:  # the rule the clients send by is the rule for "private" here too
            check_lab_target(address[0].split("%")[0])
        except TargetRefusedError:
            exposed.append(format_address(address))
    if not exposed:
        return None
    return (f"lab: warning: listening on {', '.join(dict.fromkeys(exposed))}, not loopback: other machines "
            "can reach these echo servers (and spoof sources to aim echoes at others); UDP answers are "
            "limited per source (--udp-rate-limit)")


def serve_command(which: str, host: str, port: int, max_conns: int, idle_timeout: float,
                  max_datagram: int, *, variant: str = "selectors", udp_rate_limit: float = UDP_RATE_LIMIT,
                  out: Callable[[str], None] | None = None) -> int:
    """`lab serve`: print where it listens, serve until Ctrl-C/SIGTERM, print a stats line, 0."""
    emit = out or (lambda line: print(line, flush=True))
    server = make_server(which, host=host, port=port, variant=variant, max_conns=max_conns,
                         idle_timeout=idle_timeout, max_datagram=max_datagram,
                         udp_rate_limit=udp_rate_limit)
    if warning := exposure_warning([server.tcp_address, server.udp_address]):
        print(warning, file=sys.stderr, flush=True)

    def announce() -> None:
        for proto, address in (("tcp", server.tcp_address), ("udp", server.udp_address)):
            if address is not None:
                emit(f"echo {proto} listening on {format_address(address)}")
        emit("press Ctrl-C to stop")

    _serve_until_signal(server, announce)
    emit(format_stats(server.stats))
    return 0


def spawn_server_process(
    kind: str = "both",
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    variant: str = "selectors",
    popen: Callable[..., subprocess.Popen[Any]] = subprocess.Popen,
    ready_timeout: float | None = None,
) -> tuple[Child, dict[str, Any]]:
    """Start `python -m lab.endpoints.server` as a helper process (`lab.child`); (the Child, its ready
    message: {"ready": True, "tcp": [host, port] | None, "udp": ...}). Close the Child (or
    `stop_server_process`) to stop it.

    Its own process because a server measured for speed must not share the caller's GIL
    (docs/architecture.md#processes). `popen` lets the caller start it elsewhere, e.g. inside a
    network namespace. Raises EndpointError if it cannot serve there (e.g. the port is in use),
    HelperProcessError if it dies or is not ready within `ready_timeout` (default
    lab.child.READY_TIMEOUT_S); no process is left either way.
    """
    argv = python_argv("lab.endpoints.server", kind, "--host", host, "--port", str(port),
                       "--variant", variant)
    child = spawn("the echo server process", argv, popen=popen, stop_op=None, ready_timeout=ready_timeout)
    return child, child.info


def stop_server_process(process: Child | subprocess.Popen[Any]) -> None:
    """Stop a server process (SIGTERM: it prints its stats and exits 0; SIGKILL if it lingers).
    Idempotent; never raises."""
    if isinstance(process, Child):
        process.close()
        return
    end_process(process)
    if process.stdout is not None:
        process.stdout.close()


@contextlib.contextmanager
def server_process(kind: str = "both", **options: Any) -> Iterator[dict[str, Any]]:
    """`spawn_server_process` as a context manager yielding the ready message; stopped on exit."""
    child, ready = spawn_server_process(kind, **options)
    with child:
        yield ready


def main(argv: list[str] | None = None) -> int:
    """Machine entry point: one JSON ready line, serve until SIGTERM/SIGINT, one JSON stats line."""
    parser = argparse.ArgumentParser(prog="python -m lab.endpoints.server", description=__doc__)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-conns", type=int, default=256)
    parser.add_argument("--idle-timeout", type=float, default=60.0)
    parser.add_argument("--max-datagram", type=int, default=MAX_UDP_PAYLOAD)
    parser.add_argument("--udp-rate-limit", type=float, default=UDP_RATE_LIMIT)
    parser.add_argument("--loop-seconds", type=float, default=LOOP_SECONDS)
    parser.add_argument("--variant", choices=VARIANTS, default="selectors")
    args = parser.parse_args(argv)
    channel = child_channel()  # started by spawn_server_process: ready on the channel too
    try:
        server = make_server(args.kind, host=args.host, port=args.port, variant=args.variant,
                             max_conns=args.max_conns, idle_timeout=args.idle_timeout,
                             max_datagram=args.max_datagram, udp_rate_limit=args.udp_rate_limit,
                             loop_seconds=args.loop_seconds)
    except (EndpointError, ConfigError) as exc:
        if channel is not None:
            channel.send(Failed(exc))
        print(json.dumps({"ready": False, "error": str(exc)}), flush=True)
        return 2
    ready = {"ready": True,
             "tcp": list(server.tcp_address) if server.tcp_address else None,
             "udp": list(server.udp_address) if server.udp_address else None}

    def announce() -> None:
        print(json.dumps(ready), flush=True)
        if channel is not None:
            channel.send(Ready(ready))

    _serve_until_signal(server, announce)
    print(json.dumps({"stats": server.stats}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
