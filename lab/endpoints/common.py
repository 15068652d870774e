"""What the lab's two echo servers share: limits, counters, the UDP guard, binding.

`lab.endpoints.server` (one `selectors` loop) and `lab.endpoints.classic` (the `socketserver`
variant) both build on these, so they count, refuse and bind the same way.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Self

from lab.errors import ConfigError, EndpointError
from lab.wire import FLAG_LOSS_QUERY, filled

KINDS = ("tcp", "udp", "both")
VARIANTS = ("selectors", "socketserver")
MAX_UDP_PAYLOAD = 65507  # 65535 - 20 (IPv4 header) - 8 (UDP header), RFC 768 / RFC 791
MAX_UDP6_PAYLOAD = 65527  # 65535 - 8 (UDP header): IPv6's payload length excludes its header, RFC 8200
RECV_CHUNK = 65536  # bytes per recv(); also large enough to see any over-max datagram (IPv6: 65527)
LISTEN_BACKLOG = 128
UDP_SOCKET_BUFFER = 1 << 20  # ask for 1 MiB so a burst of max-size datagrams is not dropped at once
BOTH_BIND_ATTEMPTS = 8  # kind="both", port=0: TCP's ephemeral port may already be taken for UDP
# An idle timeout becomes a select/epoll timeout, which the kernel caps at INT_MAX ms (~24.8 days);
# a day is more than any lab session needs and keeps far from that edge.
MAX_IDLE_TIMEOUT_S = 86_400.0
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

ACCEPT_PAUSE_S = 0.1  # out of fds/memory: stop accepting this long instead of spinning
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
UDP_REFUSALS = ("udp_refused_own_address", "udp_refused_low_port", "udp_refused_rate", "udp_refused_loop")
COUNTER_NAMES = (
    "accepted", "active", "evicted", "closed_idle",
    "bytes_in", "bytes_out", "datagrams_in", "datagrams_out", "datagrams_dropped",
    *UDP_REFUSALS,
    "errors", "paused", "backpressure_pauses",
)


class Counters:
    """The servers' counters (`names`: the echo servers' by default; the discard sink has its own);
    written by the serving thread(s), read as a snapshot from any thread.

    Input and UDP output are counted before the echo leaves, so a client holding a reply sees it
    counted; TCP `bytes_out` moves once the kernel took the bytes, just after the client may see them.
    `paused` is a gauge (connections stopped by back-pressure now), `active` too; the rest only grow.
    """

    def __init__(self, names: tuple[str, ...] = COUNTER_NAMES) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(names, 0)

    def add(self, **deltas: int) -> None:
        """Add each delta to its counter (atomically as a group)."""
        with self._lock:
            for name, delta in deltas.items():
                self._values[name] += delta

    def echoed(self, size: int) -> None:
        """One datagram of `size` bytes in and its echo out: `add` for the UDP hot path."""
        with self._lock:
            values = self._values
            values["datagrams_in"] += 1
            values["datagrams_out"] += 1
            values["bytes_in"] += size
            values["bytes_out"] += size

    def snapshot(self) -> dict[str, int]:
        """A consistent copy of every counter."""
        with self._lock:
            return dict(self._values)


def check_idle_timeout(idle_timeout: float) -> None:
    """Raise ConfigError unless 0 <= idle_timeout <= MAX_IDLE_TIMEOUT_S (NaN and inf included)."""
    if not 0 <= idle_timeout <= MAX_IDLE_TIMEOUT_S:  # also false for NaN
        raise ConfigError(f"idle timeout must be 0..{MAX_IDLE_TIMEOUT_S:.0f} seconds "
                          f"(0 = never), got {idle_timeout}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    """An echo server's limits (both variants take them as keywords); checked when made."""

    max_conns: int = 256  # TCP connections at once; the longest idle one makes room for a new one
    idle_timeout: float = 60.0  # seconds before an idle TCP connection is closed
    max_datagram: int = MAX_UDP_PAYLOAD  # larger UDP datagrams are counted and not answered
    udp_rate_limit: float = UDP_RATE_LIMIT  # UDP answers/s per source (0 = no limit)
    loop_seconds: float = LOOP_SECONDS  # a peer reflecting our echoes this long is an echo loop

    def __post_init__(self) -> None:
        check_limits(self.max_conns, self.idle_timeout, self.max_datagram, self.udp_rate_limit,
                     self.loop_seconds)


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


RECEIPT_WINDOW = 1024  # seqs below a peer's highest whose receipt the server remembers
_RECEIPT_MASK = (1 << RECEIPT_WINDOW) - 1
_SEEN_MASK = (1 << 64) - 1  # lab.wire.SEEN_BITS


class ProbeReceipts:
    """Which wire v2 probes the echo server received from each peer: the report in each reply.

    Per peer (one client socket, so one logical stream) the highest seq, a bitmap of the
    RECEIPT_WINDOW seqs below it, and how many distinct probes arrived. A reply to seq s carries
    `seen`, bit i set when s - 1 - i arrived (lab.wire), so the client tells a probe the server
    never saw (lost forward) from a reply lost on the way back
    (docs/architecture.md#timestamps-and-one-way-delay).
    A seq more than the window behind the highest starts the peer afresh (a new run from a reused
    port). Bounded like the guard: at most UDP_SOURCES_MAX peers, the older half forgotten when full.
    """

    __slots__ = ("_peers",)

    def __init__(self) -> None:
        # peer -> [highest seq, seen bits (bit j: highest - j), received]
        self._peers: dict[Any, list[int]] = {}

    def report(self, peer: Any, seq: int, *, query: bool = False) -> tuple[int, int]:
        """(seen, received) for the reply to `seq` from `peer`, after booking `seq` as received
        (unless `query`: a loss query asks about the seqs below its own and is no probe)."""
        state = self._peers.get(peer)
        if state is None:
            if query:
                return 0, 0
            if len(self._peers) >= UDP_SOURCES_MAX:
                _forget_oldest(self._peers)
            state = self._peers[peer] = [seq, 0, 0]
        highest, seen, received = state
        if not query:
            if seq > highest:
                ahead = seq - highest
                seen = ((seen << ahead) | 1) & _RECEIPT_MASK if ahead < RECEIPT_WINDOW else 1
                highest = seq
                received += 1
            elif highest - seq < RECEIPT_WINDOW:
                bit = 1 << (highest - seq)
                if not seen & bit:
                    seen |= bit
                    received += 1
            else:  # far behind what this peer sent: a new run reusing its address and port
                highest, seen, received = seq, 1, 1
            state[0], state[1], state[2] = highest, seen, received
        shift = highest - seq + 1  # bit i of the answer is seen's bit shift + i
        if shift >= 0:
            return (seen >> shift) & _SEEN_MASK, received
        return ((seen << -shift) & _SEEN_MASK if -shift < 64 else 0), received

    def reply(self, peer: Any, probe: bytes | bytearray | memoryview, seq: int, flags: int,
              kernel_rx_ns: int | None) -> bytearray:
        """The reply to wire v2 probe `probe` (seq and flags from its header) from `peer`: its bytes
        with the server's report filled in, the receipt booked (a loss query only asks). The
        receive time is the kernel's stamp when there is one; the send time is this server's clock
        just before it answers (a reply cannot carry its own transmit stamp)."""
        seen, received = self.report(peer, seq, query=bool(flags & FLAG_LOSS_QUERY))
        return filled(probe, kernel_rx_ns or time.time_ns(), time.time_ns(), seen, received & 0xFFFFFFFF,
                      kernel_rx_ns is not None)


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


# UDP-Lite (RFC 3828, Linux): the datagram socket of the `udplite` protocol and of its echo server.
IPPROTO_UDPLITE = getattr(socket, "IPPROTO_UDPLITE", 136)  # netinet/in.h
UDPLITE_SEND_CSCOV = 10  # linux/udp.h: bytes the checksum covers on sending (0: all)
UDPLITE_RECV_CSCOV = 11  # linux/udp.h: the least coverage accepted on receiving
HEADER_COVERAGE = 8  # the UDP-Lite header only: a damaged payload still reaches the application


def udplite_socket(sock_family: int = socket.AF_INET, coverage: int = HEADER_COVERAGE) -> socket.socket:
    """A UDP-Lite datagram socket whose checksum covers `coverage` bytes, both ways (OSError if the
    kernel has no UDP-Lite)."""
    sock = socket.socket(sock_family, socket.SOCK_DGRAM, IPPROTO_UDPLITE)
    try:
        sock.setsockopt(IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV, coverage)
        sock.setsockopt(IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV, coverage)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind(host: str, port: int, socktype: int, *, udp_lite: bool = False) -> socket.socket:
    """A bound (and, for TCP, listening) non-blocking socket; EndpointError with a reason if not.
    `udp_lite`: the datagram socket is UDP-Lite, its checksum over the header only."""
    family, sockaddr = resolve_bind(host, port, socktype)
    if udp_lite:
        try:
            sock = udplite_socket(family)
        except OSError as exc:
            raise EndpointError(f"cannot open a UDP-Lite socket: {exc.strerror or exc}") from exc
    else:
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


def bind_sockets(kind: str, host: str, port: int, *,
                 udp_lite: bool = False) -> tuple[socket.socket | None, socket.socket | None]:
    """Bind the listening TCP and/or UDP sockets; with kind="both" they share one port number.
    `udp_lite`: the datagram socket is UDP-Lite (kinds "udp" and "both")."""
    if kind not in KINDS:
        raise ConfigError(f"server kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if udp_lite and kind == "tcp":
        raise ConfigError("UDP-Lite needs a datagram socket: kind udp (or both)")
    if kind == "tcp":
        return _bind(host, port, socket.SOCK_STREAM), None
    if kind == "udp":
        return None, _bind(host, port, socket.SOCK_DGRAM, udp_lite=udp_lite)
    for attempt in range(BOTH_BIND_ATTEMPTS):
        tcp = _bind(host, port, socket.SOCK_STREAM)
        try:
            return tcp, _bind(host, tcp.getsockname()[1], socket.SOCK_DGRAM, udp_lite=udp_lite)
        except EndpointError:
            tcp.close()
            if port != 0 or attempt == BOTH_BIND_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


class BoundEcho:
    """What both echo servers do first: check their limits, bind their sockets, start counting.

    `kind` is "tcp", "udp" or "both" (one port number for both); `udp_lite` makes the datagram
    socket UDP-Lite (the `udplite` protocol's server); `limits` are the keywords of `ServerLimits`.
    Binding happens here, so a port in use fails before anything is served.
    """

    def __init__(self, kind: str, *, host: str = "127.0.0.1", port: int = 0, udp_lite: bool = False,
                 **limits: Any) -> None:
        self.kind = kind
        self.limits = ServerLimits(**limits)
        self.counters = Counters()
        self.tcp_socket, self.udp_socket = bind_sockets(kind, host, port, udp_lite=udp_lite)
        self.tcp_address = self.tcp_socket.getsockname()[:2] if self.tcp_socket else None
        self.udp_address = self.udp_socket.getsockname()[:2] if self.udp_socket else None

    @property
    def address(self) -> tuple[str, int]:
        """The first bound address (TCP's when both)."""
        return self.tcp_address or self.udp_address  # type: ignore[return-value]

    def udp_guard(self) -> UdpGuard | None:
        """The guard for this server's UDP socket (None without one), with its limits."""
        if self.udp_address is None:
            return None
        limits = self.limits
        return UdpGuard(self.udp_address, rate=limits.udp_rate_limit, loop_seconds=limits.loop_seconds)


class SelectorLoop:
    """The life of the lab's `selectors` servers (the echo server, the discard sink): one loop run by
    `serve_forever` until `shutdown()` (from any thread, idempotent: a wake-up socket pair breaks the
    wait), `close()` (idempotent; waits briefly for a running loop, which closes everything as it
    exits), a context manager. A subclass calls `_init_loop()` in its constructor and gives
    `_register` (its sockets, into `self._sel`), `_step` (one round of the loop) and
    `_close_sockets` (its connections and listening sockets, called once)."""

    counters: Counters  # the subclass's; `_accepted` counts accept errors there

    def _init_loop(self) -> None:
        self._accept_paused: tuple[Any, float] | None = None  # (listener, until when)
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._serving = False
        self._closed = False
        self._close_lock = threading.Lock()
        self._loop_thread: threading.Thread | None = None

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
            self._sel.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accepted(self, listener: socket.socket, batch: int) -> Iterator[tuple[socket.socket, Any]]:
        """The connections waiting on `listener`, at most `batch` (then the loop serves the others).
        A connection the client gave up while queued is skipped. Out of fds or memory, the listener
        stays readable: it is taken out of the loop for ACCEPT_PAUSE_S (`_accept_deadline`,
        `_resume_accepting`) instead of spinning; other errors end the batch. Errors are counted."""
        for _ in range(batch):
            try:
                accepted = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self.counters.add(errors=1)
                if exc.errno in RESOURCE_ERRNOS:
                    self._sel.unregister(listener)
                    self._accept_paused = (listener, time.monotonic() + ACCEPT_PAUSE_S)
                return
            yield accepted

    def _accept_deadline(self) -> float | None:
        """When a paused listener is taken back (monotonic seconds), or None."""
        return self._accept_paused[1] if self._accept_paused else None

    def _resume_accepting(self, now: float) -> None:
        """Take a paused listener back into the loop once its pause is over (its handler is
        `self._on_accept`, as every subclass registers it)."""
        if self._accept_paused and now >= self._accept_paused[1]:
            listener = self._accept_paused[0]
            self._accept_paused = None
            self._sel.register(listener, selectors.EVENT_READ, self._on_accept)  # type: ignore[attr-defined]

    def _on_wake(self, sock: Any, mask: int) -> None:
        with contextlib.suppress(OSError):
            sock.recv(4096)

    def _close_all(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._close_sockets()
        for sock in (self._wake_r, self._wake_w):
            sock.close()
        self._sel.close()

    def _register(self) -> None:
        raise NotImplementedError

    def _step(self) -> None:
        raise NotImplementedError

    def _close_sockets(self) -> None:
        raise NotImplementedError
