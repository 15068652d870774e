"""RFC 862 echo servers: TCP echoes the byte stream, UDP echoes each datagram, one `selectors` loop.

The loop is non-blocking throughout. Each TCP connection keeps its own outgoing buffer; when a
client stops reading, that buffer grows until `OUTBUF_HIGH` (or all buffers together pass
`TOTAL_OUTBUF_HIGH`), and then the server stops reading *that* connection (back-pressure) until
it drains. At `max_conns` the longest-idle connection is closed to make room for a new one. Nothing
a peer sends can make the loop raise: every OSError on a connection closes just that connection
and is counted. UDP datagrams that would start an echo loop or exceed a source's rate are left
unanswered and counted (`UdpGuard`).

What it shares with the socketserver variant (`classic.py`) is in `lab.endpoints.common`. Also
here: `running_server` (a server in a daemon thread, for tests and the runner), `serve_command`
(`lab serve`) and a machine entry point (`python -m lab.endpoints.server`) that prints a JSON ready
line, used to start servers inside network namespaces.
"""

from __future__ import annotations

import argparse
import contextlib
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

from lab import timestamps
from lab.child import Child, Failed, Ready, child_channel, end_process, python_argv, spawn
from lab.endpoints.common import (
    COUNTER_NAMES,
    KINDS,
    LOOP_SECONDS,
    MAX_UDP_PAYLOAD,
    RECV_CHUNK,
    UDP_RATE_LIMIT,
    VARIANTS,
    BoundEcho,
    ProbeReceipts,
    SelectorLoop,
    format_address,
)
from lab.errors import ConfigError, EndpointError
from lab.wire import (
    DEFAULT_MAX_PAYLOAD,
    HEADER,
    HEADER_V2_SIZE,
    MAGIC,
    VERSION_2,
    v2_request,
)

OUTBUF_HIGH = 256 * 1024  # stop reading a connection whose unsent echo exceeds this (back-pressure)
OUTBUF_LOW = 64 * 1024  # ... and resume once it has drained below this
# All connections together: above TOTAL_OUTBUF_HIGH every connection with unsent echo stops reading
# (and the others read in small chunks) until the total is below TOTAL_OUTBUF_LOW, so clients that
# never read cannot grow the server beyond ~TOTAL_OUTBUF_HIGH + max_conns * SMALL_RECV_CHUNK.
TOTAL_OUTBUF_HIGH = 16 * 1024 * 1024
TOTAL_OUTBUF_LOW = 8 * 1024 * 1024
SMALL_RECV_CHUNK = 4096
BATCH = 64  # accepts/datagrams handled per readiness event, so one busy socket cannot starve others


V2_START = MAGIC + bytes([VERSION_2])  # how a wire v2 probe begins


class StreamReports:
    """The TCP echo of a wire v2 probe stream: each whole probe goes back with the server's report
    filled in (docs/architecture.md#timestamps-and-one-way-delay); any other stream is echoed byte
    for byte, as before.

    A connection starts undecided: bytes that begin like a v2 probe are framed, anything else
    makes it a plain echo for good (so do a v2 header declaring an over-long payload and bytes
    that stop looking like a v2 probe mid-stream: what is buffered goes back unchanged). At most
    one message waits here, bounded by its header's length check.
    """

    __slots__ = ("buf", "framing", "receipts")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.framing: bool | None = None  # None until the first bytes tell
        self.receipts = ProbeReceipts()

    def feed(self, data: bytes, rx_ns: int | None) -> bytes | bytearray:
        """What to echo now for `data` just read (`rx_ns`: the kernel's receive stamp of it)."""
        if self.framing is False:
            return data
        buf = self.buf
        buf += data
        out = bytearray()
        while True:
            start = bytes(buf[:len(V2_START)])
            if not V2_START.startswith(start):
                return self._plain(out)
            self.framing = self.framing or len(start) == len(V2_START) or None
            if len(buf) < HEADER_V2_SIZE:
                break
            _, _, flags, _, seq, _, length, _ = HEADER.unpack_from(buf)  # the header, read once
            if length > DEFAULT_MAX_PAYLOAD:
                return self._plain(out)
            end = HEADER_V2_SIZE + length
            if len(buf) < end:
                break
            out += self.receipts.reply(0, buf[:end], seq, flags, rx_ns)
            del buf[:end]
        return out

    def _plain(self, out: bytearray) -> bytearray:
        self.framing = False
        out += self.buf
        self.buf = bytearray()
        return out

    def flush(self) -> bytes:
        """The bytes still held (a stream that ended inside a message): echoed as they came."""
        held, self.buf = bytes(self.buf), bytearray()
        return held


class _Conn:
    """One TCP connection's state in the loop."""

    __slots__ = ("sock", "outbuf", "last_active", "reading", "eof", "events", "reports")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.outbuf = bytearray()
        self.last_active = now
        self.reading = True  # False while paused by back-pressure
        self.eof = False  # the client half-closed (or we gave up reading)
        self.events = selectors.EVENT_READ
        self.reports = StreamReports()


class EchoServer(BoundEcho, SelectorLoop):
    """TCP and/or UDP echo served by one `selectors` loop (SelectorLoop: serve_forever, shutdown,
    close); binds in the constructor (BoundEcho)."""

    def __init__(self, kind: str, *, host: str = "127.0.0.1", port: int = 0, **limits: Any) -> None:
        super().__init__(kind, host=host, port=port, **limits)
        self.max_conns = self.limits.max_conns
        self.idle_timeout = self.limits.idle_timeout
        self.max_datagram = self.limits.max_datagram
        self._tcp, self._udp = self.tcp_socket, self.udp_socket
        self._guard = self.udp_guard()
        # Wire v2 (docs/architecture.md#timestamps-and-one-way-delay): the kernel stamps what the
        # datagram socket receives, and the server reports each probe's receipt in its reply.
        self._receipts = ProbeReceipts()
        self._rx_stamps = self._udp is not None and timestamps.enable(self._udp, transmit=False) is None
        self._init_loop()
        # Least recently active first (see _touch): the front is the next to evict or time out.
        self._conns: dict[socket.socket, _Conn] = {}
        self._buffered = 0  # unsent echo bytes held for all connections together
        self._idle_check_at = 0.0  # when the oldest-idle connection may time out (0 = no check due)

    # --- public ------------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the counters and `outbuf_bytes` (unsent echo held now); safe from any thread."""
        return {**self.counters.snapshot(), "outbuf_bytes": self._buffered}

    # --- the loop ----------------------------------------------------------------------------------
    def _register(self) -> None:
        if self._tcp is not None:
            self._sel.register(self._tcp, selectors.EVENT_READ, self._on_accept)
        if self._udp is not None:
            self._sel.register(self._udp, selectors.EVENT_READ, self._on_datagram)

    def _step(self) -> None:
        now = time.monotonic()
        for key, mask in self._sel.select(self._timeout(now)):
            key.data(key.fileobj, mask)
        if self._idle_check_at or self._accept_paused:
            now = time.monotonic()
            if self._idle_check_at and now >= self._idle_check_at:
                self._close_idle(now)
            self._resume_accepting(now)

    def _timeout(self, now: float) -> float | None:
        deadlines = [t for t in (self._idle_check_at, self._accept_deadline()) if t]
        return max(0.0, min(deadlines) - now) if deadlines else None

    def _on_accept(self, listener: Any, mask: int) -> None:
        for sock, _addr in self._accepted(listener, BATCH):
            if len(self._conns) >= self.max_conns:
                # Full: make room by closing the longest-idle connection rather than turning the
                # new one away, or idle connections holding every slot lock every client out.
                self._drop(next(iter(self._conns.values())))
                self.counters.add(evicted=1)
            try:
                sock.setblocking(False)
                # An echo must go back as soon as it arrives: Nagle would hold a partial echo
                # until the client ACKs, which delayed ACKs can stretch to ~40 ms.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                timestamps.enable(sock, transmit=False)  # wire v2 reports the kernel's receive time
            except OSError:
                sock.close()
                self.counters.add(errors=1)
                continue
            conn = _Conn(sock, time.monotonic())
            self._conns[sock] = conn
            if self.idle_timeout > 0 and not self._idle_check_at:
                self._idle_check_at = conn.last_active + self.idle_timeout
            self._sel.register(sock, selectors.EVENT_READ, self._on_conn)
            self.counters.add(accepted=1, active=1)

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
            self.counters.add(errors=1)
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
            data, ancillary, _, _ = conn.sock.recvmsg(chunk, timestamps.ANCILLARY_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        self._touch(conn)
        if not data:
            conn.eof = True
            conn.reading = False
            data = conn.reports.flush()  # the end of a stream that stopped inside a message
            if not data:
                return
        else:
            self.counters.add(bytes_in=len(data))
            # the kernel's stamp matters only to a stream of v2 probes, not to a plain echo
            stamped = ancillary and conn.reports.framing is not False
            data = conn.reports.feed(data, timestamps.receive_stamp(ancillary) if stamped else None)
            if not data:
                return
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
            self.counters.add(bytes_out=sent)
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
            self.counters.add(bytes_out=sent)

    def _update_interest(self, conn: _Conn) -> None:
        held = len(conn.outbuf)
        if conn.reading and not conn.eof and (
                held > OUTBUF_HIGH or (held and self._buffered > TOTAL_OUTBUF_HIGH)):
            conn.reading = False
            self.counters.add(paused=1, backpressure_pauses=1)
        elif not conn.reading and not conn.eof and held < OUTBUF_LOW and (
                not held or self._buffered < TOTAL_OUTBUF_LOW):
            conn.reading = True
            self.counters.add(paused=-1)
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
            self.counters.add(closed_idle=1)
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
            self.counters.add(paused=-1)
        self._buffered -= len(conn.outbuf)
        conn.sock.close()
        self.counters.add(active=-1)

    def _on_datagram(self, sock: Any, mask: int) -> None:
        stamped = self._rx_stamps
        ancillary: Any = ()
        for _ in range(BATCH):
            try:
                if stamped:
                    data, ancillary, _, peer = sock.recvmsg(RECV_CHUNK, timestamps.ANCILLARY_BYTES)
                else:
                    data, peer = sock.recvfrom(RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # e.g. ECONNREFUSED: an ICMP port-unreachable for an earlier echo to a gone client
                self.counters.add(errors=1)
                continue
            size = len(data)
            if size > self.max_datagram:
                self.counters.add(datagrams_in=1, bytes_in=size, datagrams_dropped=1)
                continue
            refused = self._guard.refusal(peer, data, time.monotonic())  # type: ignore[union-attr]
            if refused:
                self.counters.add(datagrams_in=1, bytes_in=size, **{refused: 1})
                continue
            # Count the echo *before* sending it, so whoever receives it already sees it counted
            # (tests and probes compare counters right after a reply); undone if the send fails.
            self.counters.echoed(size)
            if (request := v2_request(data)) is not None:
                data = self._receipts.reply(peer, data, *request,
                                            timestamps.receive_stamp(ancillary) if ancillary else None)
            try:
                sock.sendto(data, peer)
            except (BlockingIOError, InterruptedError):
                # Send buffer full: UDP may drop, and an echo server must not block for one peer.
                self.counters.add(datagrams_out=-1, bytes_out=-size, datagrams_dropped=1)
            except OSError:
                self.counters.add(datagrams_out=-1, bytes_out=-size, errors=1)

    def _close_sockets(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn)
        for sock in (self._tcp, self._udp):
            if sock is not None:
                sock.close()


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


def use_congestion_control(server: _Serving, name: str) -> str:
    """Give every TCP connection `server` accepts the congestion control `name`: set on the listening
    socket, which Linux copies to each accepted one (lab.protocols.tcp_cc). The algorithm read back."""
    from lab.protocols.tcp import congestion_control
    from lab.protocols.tcp_cc import congestion_control_problem, set_congestion_control

    listener = getattr(server, "tcp_socket", None)
    if listener is None:
        raise ConfigError("--tcp-congestion needs a TCP echo server (kind tcp or both)")
    try:
        set_congestion_control(listener, name)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(congestion_control_problem(name)
                          or f"cannot use the {name} TCP congestion control: {exc}") from exc
    return congestion_control(listener)


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
    parser.add_argument("--tcp-congestion", metavar="NAME",
                        help="TCP congestion control of every connection (e.g. reno, cubic, bbr)")
    parser.add_argument("--udp-lite", action="store_true",
                        help="serve UDP-Lite instead of UDP, checksum over the header only (kind udp)")
    args = parser.parse_args(argv)
    channel = child_channel()  # started by spawn_server_process: ready on the channel too
    server = None
    try:
        server = make_server(args.kind, host=args.host, port=args.port, variant=args.variant,
                             max_conns=args.max_conns, idle_timeout=args.idle_timeout,
                             max_datagram=args.max_datagram, udp_rate_limit=args.udp_rate_limit,
                             loop_seconds=args.loop_seconds, udp_lite=args.udp_lite)
        congestion = use_congestion_control(server, args.tcp_congestion) if args.tcp_congestion else None
    except (EndpointError, ConfigError) as exc:
        if server is not None:
            server.close()
        if channel is not None:
            channel.send(Failed(exc))
        print(json.dumps({"ready": False, "error": str(exc)}), flush=True)
        return 2
    ready = {"ready": True,
             "tcp": list(server.tcp_address) if server.tcp_address else None,
             "udp": list(server.udp_address) if server.udp_address else None}
    if congestion is not None:
        ready["tcp_congestion"] = congestion

    def announce() -> None:
        print(json.dumps(ready), flush=True)
        if channel is not None:
            channel.send(Ready(ready))

    _serve_until_signal(server, announce)
    print(json.dumps({"stats": server.stats}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
