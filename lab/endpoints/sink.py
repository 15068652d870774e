"""The discard sink of bulk flows (RFC 863, counting): TCP and UDP on one port, one `selectors` loop.

What arrives is thrown away, but counted (docs/architecture.md#bulk-traffic): a TCP connection
that starts with a bulk hello (lab.bulk.wire) is a flow whose blocks are checked in order and
intact (`lab.bulk.counting.StreamCounter`); when the sender half-closes, the sink answers its
summary and closes. A hello of datagram mode makes the connection the control of a UDP flow of
that flow id from the same address: its datagrams are counted by sequence number
(`DatagramCounter`), and after the sender's END the summary goes back on the control connection
once every datagram arrived, or the flow stayed quiet as long as the END asks (bounded), so a
lossy link still gets its answer. Anything else is a plain discard client (nc): counted, never
answered.

Nothing a peer sends makes the loop raise: a bad hello or END closes that connection and is
counted. Bounded: `max_conns` connections (the least recently active makes room), and with them
the datagram flows; idle connections close after `idle_timeout`; what a flow keeps is bounded by
lab.bulk.counting.

`python -m lab.endpoints.sink --host H --port P [--udp-lite] [--tcp-congestion NAME]` is the
helper process (lab.child: a ready message on its channel), `lab serve discard` the command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from lab.bulk import wire
from lab.bulk.counting import DatagramCounter, StreamCounter
from lab.endpoints.common import (
    Counters,
    SelectorLoop,
    bind_sockets,
    check_idle_timeout,
    format_address,
)
from lab.errors import ConfigError, EndpointError, RemoteWireError

DISCARD_PORT = 9009  # discard's well-known port is 9 (RFC 863); 9009 needs no privileges
RECV_CHUNK = 256 * 1024
BATCH = 256  # datagrams per readiness event
UDP_RCVBUF = 8 * 1024 * 1024  # a paced sender's bursts must not overflow a sink that is briefly busy
ACCEPT_BATCH = 16  # connections taken per readiness of the listener
SWEEP_S = 0.5  # idle connections and pending ENDs are looked at this often
MAX_QUIET_NS = round(wire.MAX_QUIET_S * 10**9)
MAX_END_WAIT_NS = round(wire.MAX_END_WAIT_S * 10**9)
COUNTER_NAMES = (
    "accepted", "active", "evicted", "closed_idle", "refused", "errors",
    "stream_flows", "datagram_flows", "summaries", "bytes_in", "plain_bytes",
    "datagrams_in", "plain_datagrams", "unknown_flow_datagrams",
)

SNIFF, HELLO, PLAIN, STREAM, CONTROL, ENDED, CLOSING = range(7)


class _Conn:
    __slots__ = ("sock", "phase", "head", "counter", "flow_key", "outbuf", "last_active", "end",
                 "last_datagram_ns", "peer", "overflows_before")

    def __init__(self, sock: socket.socket, peer: str, now: float) -> None:
        self.sock = sock
        self.peer = peer
        self.phase = SNIFF
        self.head = bytearray()
        self.counter: StreamCounter | DatagramCounter | None = None
        self.flow_key: tuple[str, int] | None = None
        self.outbuf = bytearray()
        self.last_active = now
        self.end: tuple[int, int, int] | None = None  # (sent, quiet_ns, END received at ns)
        self.last_datagram_ns = 0
        self.overflows_before = 0  # the namespace's receive-buffer drops when its datagram flow began


class DiscardSink(SelectorLoop):
    """TCP and UDP (or UDP-Lite) discard on one port number, served by one `selectors` loop
    (SelectorLoop: serve_forever, shutdown, close); binds in the constructor."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, udp_lite: bool = False,
                 max_conns: int = 64, idle_timeout: float = 60.0) -> None:
        if max_conns < 1:
            raise ConfigError(f"max_conns must be at least 1, got {max_conns}")
        check_idle_timeout(idle_timeout)
        self.max_conns = max_conns
        self.idle_timeout = idle_timeout
        self.tcp_socket, self.udp_socket = bind_sockets("both", host, port, udp_lite=udp_lite)  # type: ignore[assignment]
        self.tcp_address = self.tcp_socket.getsockname()[:2]
        self.udp_address = self.udp_socket.getsockname()[:2]
        for option in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):  # FORCE: root only
            with contextlib.suppress(OSError):
                self.udp_socket.setsockopt(socket.SOL_SOCKET, option, UDP_RCVBUF)
                break
        self.counters = Counters(COUNTER_NAMES)
        self._conns: dict[socket.socket, _Conn] = {}
        self._flows: dict[tuple[str, int], _Conn] = {}  # (peer address, flow id) -> its control
        self._init_loop()
        self._next_sweep = 0.0
        # One receive buffer for every connection (the loop handles one read at a time), not a fresh
        # 256 KiB bytes object per read.
        self._buffer = bytearray(RECV_CHUNK)

    # --- public ---
    @property
    def stats(self) -> dict[str, int]:
        return self.counters.snapshot()

    # --- the loop (lab.endpoints.common.SelectorLoop runs it) ---
    def _register(self) -> None:
        self._sel.register(self.tcp_socket, selectors.EVENT_READ, self._on_accept)
        self._sel.register(self.udp_socket, selectors.EVENT_READ, self._on_datagram)
        self._next_sweep = time.monotonic() + SWEEP_S

    def _step(self) -> None:
        deadline = min(self._next_sweep, self._accept_deadline() or self._next_sweep)
        for key, mask in self._sel.select(max(0.0, deadline - time.monotonic())):
            key.data(key.fileobj, mask)
        self._resume_accepting(time.monotonic())
        if time.monotonic() >= self._next_sweep:
            self._sweep()
            self._next_sweep = time.monotonic() + SWEEP_S

    def _on_accept(self, listener: Any, mask: int) -> None:
        for sock, peer in self._accepted(listener, ACCEPT_BATCH):
            if len(self._conns) >= self.max_conns:
                self._drop(min(self._conns.values(), key=lambda c: c.last_active))
                self.counters.add(evicted=1)
            sock.setblocking(False)
            conn = _Conn(sock, str(peer[0]), time.monotonic())
            self._conns[sock] = conn
            self._sel.register(sock, selectors.EVENT_READ, self._on_conn)
            self.counters.add(accepted=1, active=1)

    def _on_conn(self, sock: Any, mask: int) -> None:
        conn = self._conns.get(sock)
        if conn is None:
            return
        try:
            if mask & selectors.EVENT_WRITE and conn.outbuf:
                self._flush(conn)
            elif mask & selectors.EVENT_READ:
                self._read(conn)
        except OSError:
            self.counters.add(errors=1)
            self._drop(conn)

    def _read(self, conn: _Conn) -> None:
        buffer = self._buffer
        try:
            size = conn.sock.recv_into(buffer)
        except (BlockingIOError, InterruptedError):
            return
        now_ns = time.monotonic_ns()
        conn.last_active = now_ns / 1e9
        if not size:
            self._ended(conn, now_ns)
            return
        self.counters.add(bytes_in=size)
        try:
            if conn.phase == STREAM:  # the bulk of the bytes: counted in place, never copied
                conn.counter.feed(buffer, now_ns, size)  # type: ignore[union-attr]
                return
            self._take(conn, bytes(buffer[:size]), now_ns)
        except RemoteWireError:
            self.counters.add(refused=1)
            self._drop(conn)

    def _take(self, conn: _Conn, data: bytes, now_ns: int) -> None:
        """Bytes of a connection not (yet) in a stream flow (`_read` counts those in place)."""
        if conn.phase == PLAIN:
            self.counters.add(plain_bytes=len(data))
            return
        if conn.phase in (SNIFF, HELLO):
            need = wire.HELLO.size - len(conn.head)
            conn.head += data[:need]
            rest = data[need:]
            magic = bytes(conn.head[:4])
            if not wire.HELLO_MAGIC.startswith(magic):  # a plain RFC 863 client
                conn.phase = PLAIN
                self.counters.add(plain_bytes=len(conn.head) + len(rest))
                conn.head.clear()
                return
            if len(conn.head) < wire.HELLO.size:
                conn.phase = HELLO
                return
            hello = wire.Hello.decode(bytes(conn.head))
            conn.head.clear()
            if hello.mode == wire.MODE_STREAM:
                conn.phase = STREAM
                conn.counter = StreamCounter(hello.start_ns, hello.interval_ns)
                self.counters.add(stream_flows=1)
                if rest:
                    conn.counter.feed(rest, now_ns)
                return
            key = (conn.peer, hello.flow_id)
            if key in self._flows:
                raise RemoteWireError("a datagram flow of this id is already open")
            conn.phase, conn.flow_key = CONTROL, key
            conn.counter = DatagramCounter(hello.start_ns, hello.interval_ns)
            self._flows[key] = conn
            conn.overflows_before = receive_buffer_overflows()
            self.counters.add(datagram_flows=1)
            conn.sock.send(wire.ACCEPTED)  # 4 bytes into an empty send buffer: never partial
            data = rest
        if conn.phase == CONTROL:
            conn.head += data
            if len(conn.head) > wire.END.size:
                raise RemoteWireError("bytes after a datagram flow's END")
            if len(conn.head) == wire.END.size:
                sent, _bytes_sent, quiet_ns = wire.decode_end(bytes(conn.head))
                conn.end = (sent, min(quiet_ns, MAX_QUIET_NS), now_ns)
                conn.phase = ENDED
                self._answer_if_due(conn, now_ns)
            return
        if data:  # ENDED or CLOSING: the sender has nothing more to say
            raise RemoteWireError("bytes after the end of a flow")

    def _ended(self, conn: _Conn, now_ns: int) -> None:
        """The peer half-closed: a stream flow gets its summary; anything else is over."""
        if conn.phase == STREAM:
            self._reply(conn, conn.counter.summary())  # type: ignore[union-attr]
            return
        if conn.phase == ENDED:  # it stopped waiting: answer with what arrived
            self._answer(conn)
            return
        self._drop(conn)

    def _answer_if_due(self, conn: _Conn, now_ns: int) -> None:
        sent, quiet_ns, end_ns = conn.end  # type: ignore[misc]
        counter = conn.counter
        assert isinstance(counter, DatagramCounter)
        quiet_since = max(conn.last_datagram_ns, end_ns)
        if (counter.received >= sent or now_ns - quiet_since >= quiet_ns
                or now_ns - end_ns >= MAX_END_WAIT_NS):
            self._answer(conn)

    def _answer(self, conn: _Conn) -> None:
        summary = conn.counter.summary()  # type: ignore[union-attr]
        if conn.end is not None:
            summary["sent"] = conn.end[0]
        # Datagrams the kernel dropped because a receive buffer was full (ours, when the sink cannot
        # keep up) during the flow: all of this namespace's sockets, so an upper bound for this flow.
        summary["receive_buffer_overflows"] = max(0, receive_buffer_overflows() - conn.overflows_before)
        self._forget_flow(conn)
        self._reply(conn, summary)

    def _reply(self, conn: _Conn, summary: dict[str, Any]) -> None:
        conn.phase = CLOSING
        conn.outbuf += wire.encode_summary(summary)
        self.counters.add(summaries=1)
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        del conn.outbuf[:sent]
        if conn.outbuf:
            self._sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self._on_conn)
            return
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        self._drop(conn)

    def _on_datagram(self, sock: Any, mask: int) -> None:
        # counted once per wake-up, not per datagram (a lock and a dict each): up to BATCH of them
        datagrams = nbytes = plain = unknown = 0
        try:
            for _ in range(BATCH):
                try:
                    data, peer = sock.recvfrom(65536)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    self.counters.add(errors=1)
                    continue
                now_ns = time.monotonic_ns()
                datagrams += 1
                nbytes += len(data)
                header = wire.parse_datagram(data)
                if header is None:
                    plain += 1
                    continue
                conn = self._flows.get((str(peer[0]), header.flow_id))
                if conn is None:
                    unknown += 1
                    continue
                conn.counter.arrived(header, len(data), now_ns)  # type: ignore[union-attr]
                conn.last_datagram_ns = now_ns
                conn.last_active = now_ns / 1e9
                if conn.phase == ENDED:
                    self._answer_if_due(conn, now_ns)
        finally:
            if datagrams:
                self.counters.add(datagrams_in=datagrams, bytes_in=nbytes, plain_datagrams=plain,
                                  unknown_flow_datagrams=unknown)

    def _sweep(self) -> None:
        now = time.monotonic()
        now_ns = time.monotonic_ns()
        for conn in list(self._conns.values()):
            if conn.phase == ENDED:
                self._answer_if_due(conn, now_ns)
            elif self.idle_timeout and now - conn.last_active >= self.idle_timeout:
                self.counters.add(closed_idle=1)
                self._drop(conn)

    def _forget_flow(self, conn: _Conn) -> None:
        if conn.flow_key is not None:
            self._flows.pop(conn.flow_key, None)
            conn.flow_key = None

    def _drop(self, conn: _Conn) -> None:
        if self._conns.pop(conn.sock, None) is None:
            return
        self._forget_flow(conn)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(conn.sock)
        conn.sock.close()
        self.counters.add(active=-1)

    def _close_sockets(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn)
        for sock in (self.tcp_socket, self.udp_socket):
            sock.close()


def receive_buffer_overflows() -> int:
    """UdpRcvbufErrors + UdpLiteRcvbufErrors of this namespace (/proc/net/snmp; 0 if unreadable)."""
    from lab.kernel import read_counters

    counters = read_counters()
    return counters.get("UdpRcvbufErrors", 0) + counters.get("UdpLiteRcvbufErrors", 0)


@contextlib.contextmanager
def running_sink(**options: Any) -> Any:
    """A sink serving in a daemon thread for the block (tests); yields it."""
    sink = DiscardSink(**options)
    thread = threading.Thread(target=sink.serve_forever, name="discard-sink", daemon=True)
    try:
        thread.start()
        yield sink
    finally:
        sink.shutdown()
        thread.join(timeout=10.0)
        sink.close()


def format_stats(stats: dict[str, int]) -> str:
    return "discard stats: " + " ".join(f"{name}={stats[name]}" for name in COUNTER_NAMES)


def serve_command(host: str, port: int, max_conns: int, idle_timeout: float,
                  out: Callable[[str], None] | None = None) -> int:
    """`lab serve discard`: print where it listens, serve until Ctrl-C/SIGTERM, print a stats line."""
    from lab.endpoints.server import _serve_until_signal, exposure_warning

    emit = out or (lambda line: print(line, flush=True))
    sink = DiscardSink(host=host, port=port, max_conns=max_conns, idle_timeout=idle_timeout)
    if exposure_warning([sink.tcp_address]):  # the echo servers' rule of what is private
        print(f"lab: warning: listening on {format_address(sink.tcp_address)}, not loopback: other "
              "machines can reach this discard sink (it answers only the flows that announce "
              "themselves, never a datagram)", file=sys.stderr, flush=True)

    def announce() -> None:
        emit(f"discard tcp and udp listening on {format_address(sink.tcp_address)}")
        emit("press Ctrl-C to stop")

    _serve_until_signal(sink, announce)  # type: ignore[arg-type]
    emit(format_stats(sink.stats))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Helper-process entry point: one JSON ready line (and Ready on the channel), serve until a signal."""
    from lab.child import Failed, Ready, child_channel
    from lab.endpoints.server import _serve_until_signal, use_congestion_control

    parser = argparse.ArgumentParser(prog="python -m lab.endpoints.sink", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-conns", type=int, default=64)
    parser.add_argument("--idle-timeout", type=float, default=60.0)
    parser.add_argument("--udp-lite", action="store_true", help="the datagram socket is UDP-Lite")
    parser.add_argument("--tcp-congestion", metavar="NAME", help="TCP congestion control of every connection")
    args = parser.parse_args(argv)
    channel = child_channel()
    sink = None
    try:
        sink = DiscardSink(host=args.host, port=args.port, udp_lite=args.udp_lite,
                           max_conns=args.max_conns, idle_timeout=args.idle_timeout)
        congestion = use_congestion_control(sink, args.tcp_congestion) if args.tcp_congestion else None  # type: ignore[arg-type]
    except (EndpointError, ConfigError) as exc:
        if sink is not None:
            sink.close()
        if channel is not None:
            channel.send(Failed(exc))
        print(json.dumps({"ready": False, "error": str(exc)}), flush=True)
        return 2
    ready: dict[str, Any] = {"ready": True, "tcp": list(sink.tcp_address), "udp": list(sink.udp_address),
                             "sink": True}
    if congestion is not None:
        ready["tcp_congestion"] = congestion

    def announce() -> None:
        print(json.dumps(ready), flush=True)
        if channel is not None:
            channel.send(Ready(ready))

    _serve_until_signal(sink, announce)  # type: ignore[arg-type]
    print(json.dumps({"stats": sink.stats}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
