"""The lab's QUIC echo server, for `quic` and `quic-datagram` (lab.protocols.quic).

A helper process (docs/architecture.md#processes): `python -m lab.protocols.quic_server --host H
--port P` binds one UDP socket, makes a self-signed certificate in memory (a fresh key each start:
no key material is ever written or kept), answers Ready({"udp": [host, port]}) on its channel — or
Failed(EndpointError) when it cannot bind — and serves until SIGTERM/SIGINT or until its parent
goes away. It serves many connections at once, each an aioquic sans-IO `QuicConnection` found by
its connection IDs, in one selectors loop:

- data on a client's bidirectional stream comes back on the same stream, byte for byte;
- a DATAGRAM frame (RFC 9221) comes back as one;
- `lab.protocols.quic.STATS_REQUEST` on a client's unidirectional stream is answered, on one of
  the server's, with its end's figures of that connection (JSON: lost and retransmitted packets,
  RTT, congestion window), so the client can report both ends as TCP's retransmission count does.

With `--sink` it is the discard sink of QUIC bulk flows instead (docs/architecture.md#bulk-traffic):
a client bidirectional stream carries a bulk stream (lab.bulk.wire: a hello, then blocks), counted
by a `lab.bulk.counting.StreamCounter` and answered with the summary on the same stream when the
client ends it; a hello of datagram mode announces a flow of DATAGRAM frames (answered `ACCEPTED`
at once), counted by sequence number (`DatagramCounter`), whose END on the stream is answered with
its summary. At most `MAX_SINK_FLOWS` flows per connection are counted.

Bad input never stops it: a datagram that is not QUIC is counted and dropped, one that breaks a
connection drops that connection, and at most `--max-conns` connections are kept (the longest idle
goes first), idle ones expiring after `--idle-timeout` seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from lab.errors import ConfigError, EndpointError
from lab.protocols.quic import (
    ALPN,
    CONGESTION_CONTROL,
    IDLE_TIMEOUT_S,
    MAX_DATAGRAM_FRAME_SIZE,
    MAX_DATAGRAM_PROBE,
    MAX_STATS_BYTES,
    STATS_REQUEST,
    recovery_figures,
    watch_recovery,
)

MAX_CONNS = 256
MAX_DRAIN = 256  # datagrams read per wake-up before timers are looked at again
RECV_BUFSIZE = 65536
SWEEP_INTERVAL_S = 1.0  # how often idle connections are looked for
MAX_WAIT_S = 1.0
CERTIFICATE_NAME = "wirelab QUIC echo server"
COUNTER_NAMES = ("datagrams", "not_quic", "connections", "evicted", "expired", "broken",
                 "version_negotiations", "datagram_frames_dropped", "sink_flows", "sink_refused")
MAX_SINK_FLOWS = 16  # sink mode: flows counted per connection


class _Stop(BaseException):
    """Raised by the signal handler: leave the loop at once."""


def self_signed_certificate() -> tuple[Any, Any]:
    """(certificate, private key): an ECDSA P-256 key made now and a one-day certificate for it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CERTIFICATE_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a clock a little behind still accepts it
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def server_configuration(idle_timeout: float = IDLE_TIMEOUT_S) -> Any:
    """The server's QuicConfiguration, with a fresh self-signed certificate."""
    from aioquic.quic.configuration import QuicConfiguration

    certificate, key = self_signed_certificate()
    return QuicConfiguration(
        is_client=False, alpn_protocols=[ALPN], certificate=certificate, private_key=key,
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE, idle_timeout=idle_timeout,
        congestion_control_algorithm=CONGESTION_CONTROL,
    )


@dataclass(eq=False)
class _Peer:
    """One client connection and what the server keeps of it."""

    conn: Any
    addr: tuple[Any, ...]
    counts: dict[str, int]
    last_active: float
    sent: int = 0
    received: int = 0
    stats_requests: dict[int, bytearray] = field(default_factory=dict)
    sinks: dict[int, Any] = field(default_factory=dict)  # sink mode: stream id -> its _SinkStream


class _SinkStream:
    """Sink mode: one client stream's bulk flow (its hello, then a stream or a datagram flow)."""

    __slots__ = ("head", "counter", "flow_id", "refused")

    def __init__(self) -> None:
        self.head = bytearray()
        self.counter: Any = None  # StreamCounter or DatagramCounter, once the hello is read
        self.flow_id: int | None = None  # a datagram flow's id
        self.refused = False  # not a bulk flow: its bytes are ignored


class QuicEchoServer:
    """Echo over QUIC for many connections on one UDP socket (see the module docstring)."""

    def __init__(self, sock: socket.socket, configuration: Any, *, max_conns: int = MAX_CONNS,
                 idle_timeout: float = IDLE_TIMEOUT_S, sink: bool = False) -> None:
        self.sink = sink
        self.sock = sock
        self.configuration = configuration
        self.max_conns = max_conns
        self.idle_timeout = idle_timeout
        self.by_cid: dict[bytes, _Peer] = {}
        self.peers: set[_Peer] = set()
        self.counters = dict.fromkeys(COUNTER_NAMES, 0)
        self._next_sweep = 0.0

    # --- the loop ---
    def serve(self, sel: selectors.BaseSelector, channel: Any = None) -> None:
        """Serve until `_Stop` (a signal) or until `channel` (the parent's) reaches its end."""
        sel.register(self.sock, selectors.EVENT_READ, "quic")
        if channel is not None:
            sel.register(channel.fileno(), selectors.EVENT_READ, "parent")
        while True:
            for key, _ in sel.select(self.wait_s()):
                if key.data == "quic":
                    self.read()
                elif _parent_gone(channel):
                    return
            self.timers()

    def wait_s(self) -> float:
        now = time.monotonic()
        until = now + MAX_WAIT_S
        for peer in self.peers:
            timer = peer.conn.get_timer()
            if timer is not None and timer < until:
                until = timer
        return max(0.0, until - now)

    def read(self) -> None:
        for _ in range(MAX_DRAIN):
            try:
                data, addr = self.sock.recvfrom(RECV_BUFSIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # an ICMP error for an earlier reply: that client is gone, nothing to do
                continue
            self.counters["datagrams"] += 1
            self.datagram(data, addr, time.monotonic())

    def timers(self) -> None:
        now = time.monotonic()
        for peer in list(self.peers):
            timer = peer.conn.get_timer()
            if timer is not None and timer <= now:
                with self.guard(peer):
                    peer.conn.handle_timer(now)
                    self.events(peer)
                    self.flush(peer)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL_S
            for peer in [p for p in self.peers if now - p.last_active > self.idle_timeout]:
                self.counters["expired"] += 1
                self.drop(peer)

    # --- one datagram ---
    def datagram(self, data: bytes, addr: tuple[Any, ...], now: float) -> None:
        """Hand one received datagram to its connection (a new one for a client's Initial)."""
        from aioquic.buffer import Buffer
        from aioquic.quic.packet import QuicPacketType, encode_quic_version_negotiation, pull_quic_header

        try:
            header = pull_quic_header(Buffer(data=data),
                                      host_cid_length=self.configuration.connection_id_length)
        except Exception:  # not QUIC, or truncated: aioquic raises ValueError, a fuzzer finds others
            self.counters["not_quic"] += 1
            return
        supported = self.configuration.supported_versions
        if (header.packet_type != QuicPacketType.VERSION_NEGOTIATION and header.version is not None
                and header.version not in supported):
            # RFC 9000 §6.1; never in answer to a Version Negotiation packet (no reflection loop).
            self.counters["version_negotiations"] += 1
            self.send(encode_quic_version_negotiation(source_cid=header.destination_cid,
                                                      destination_cid=header.source_cid,
                                                      supported_versions=supported), addr)
            return
        peer = self.by_cid.get(header.destination_cid)
        if peer is None:
            # Only a client's first Initial opens a connection, and it must be padded to 1200 bytes
            # (RFC 9000 §14.1): a stray short packet never makes the server keep state.
            if header.packet_type != QuicPacketType.INITIAL or len(data) < 1200:
                self.counters["not_quic"] += 1
                return
            peer = self.accept(header.destination_cid, addr, now)
        with self.guard(peer):
            peer.received += 1
            peer.addr = addr
            peer.conn.receive_datagram(data, addr, now=now)
            self.events(peer)
            self.flush(peer)

    def accept(self, original_cid: bytes, addr: tuple[Any, ...], now: float) -> _Peer:
        from aioquic.quic.connection import QuicConnection

        if len(self.peers) >= self.max_conns:
            self.counters["evicted"] += 1
            self.drop(min(self.peers, key=lambda p: p.last_active))
        conn = QuicConnection(configuration=self.configuration,
                              original_destination_connection_id=original_cid)
        peer = _Peer(conn=conn, addr=addr, counts=watch_recovery(conn), last_active=now)
        self.peers.add(peer)
        self.by_cid[original_cid] = peer
        self.by_cid[conn.host_cid] = peer
        self.counters["connections"] += 1
        return peer

    @contextlib.contextmanager
    def guard(self, peer: _Peer) -> Any:
        """Whatever a connection's input breaks inside aioquic drops that connection, never the server."""
        try:
            yield
        except Exception:
            self.counters["broken"] += 1
            self.drop(peer)

    def drop(self, peer: _Peer) -> None:
        self.peers.discard(peer)
        for cid in [cid for cid, p in self.by_cid.items() if p is peer]:
            del self.by_cid[cid]

    # --- what a connection reports, and what it sends ---
    def events(self, peer: _Peer) -> None:
        from aioquic.quic import events

        conn = peer.conn
        while (event := conn.next_event()) is not None:
            peer.last_active = time.monotonic()
            if isinstance(event, events.StreamDataReceived):
                self.stream_data(peer, event)
            elif isinstance(event, events.DatagramFrameReceived) and self.sink:
                self.sink_datagram(peer, event.data)
            elif isinstance(event, events.DatagramFrameReceived):
                if len(event.data) <= MAX_DATAGRAM_PROBE:  # a larger echo might not fit our packet
                    conn.send_datagram_frame(event.data)
                else:
                    self.counters["datagram_frames_dropped"] += 1
            elif isinstance(event, events.ConnectionIdIssued):
                self.by_cid[event.connection_id] = peer
            elif isinstance(event, events.ConnectionIdRetired):
                if self.by_cid.get(event.connection_id) is peer:
                    del self.by_cid[event.connection_id]
            elif isinstance(event, events.ConnectionTerminated):
                self.drop(peer)

    def stream_data(self, peer: _Peer, event: Any) -> None:
        stream_id = event.stream_id
        if stream_id % 4 == 0 and self.sink:  # client-initiated, bidirectional: a bulk flow
            self.sink_stream(peer, stream_id, event.data, event.end_stream)
            return
        if stream_id % 4 == 0:  # client-initiated, bidirectional: echo
            peer.conn.send_stream_data(stream_id, event.data, end_stream=event.end_stream)
            return
        if stream_id % 4 != 2:  # only a client's unidirectional stream asks anything else
            return
        request = peer.stats_requests.setdefault(stream_id, bytearray())
        if len(request) + len(event.data) > MAX_STATS_BYTES:
            peer.stats_requests.pop(stream_id)
            return
        request += event.data
        if event.end_stream and peer.stats_requests.pop(stream_id) == STATS_REQUEST:
            figures = recovery_figures(peer.conn, peer.counts, datagrams_sent=peer.sent,
                                       datagrams_received=peer.received)
            reply = peer.conn.get_next_available_stream_id(is_unidirectional=True)
            peer.conn.send_stream_data(reply, json.dumps(figures).encode(), end_stream=True)

    # --- sink mode ---
    def sink_stream(self, peer: _Peer, stream_id: int, data: bytes, end_stream: bool) -> None:
        """A bulk flow's bytes on a client stream: its hello, then blocks (or a datagram flow's END)."""
        from lab.bulk import wire
        from lab.bulk.counting import DatagramCounter, StreamCounter
        from lab.errors import RemoteWireError

        flow = peer.sinks.get(stream_id)
        if flow is None:
            if len(peer.sinks) >= MAX_SINK_FLOWS:
                self.counters["sink_refused"] += 1
                return
            flow = peer.sinks[stream_id] = _SinkStream()
            self.counters["sink_flows"] += 1
        if flow.refused:
            return
        now_ns = time.monotonic_ns()
        view = memoryview(data)
        if flow.counter is None:
            need = wire.HELLO.size - len(flow.head)
            flow.head += view[:need]
            view = view[need:]
            if len(flow.head) < wire.HELLO.size:
                return
            try:
                hello = wire.Hello.decode(bytes(flow.head))
            except RemoteWireError:
                flow.refused = True
                self.counters["sink_refused"] += 1
                return
            flow.head.clear()
            if hello.mode == wire.MODE_STREAM:
                flow.counter = StreamCounter(hello.start_ns, hello.interval_ns)
            else:
                flow.counter, flow.flow_id = DatagramCounter(hello.start_ns, hello.interval_ns), hello.flow_id
                peer.conn.send_stream_data(stream_id, wire.ACCEPTED)
        if isinstance(flow.counter, StreamCounter):
            flow.counter.feed(view, now_ns)
            if end_stream:
                peer.conn.send_stream_data(stream_id, wire.encode_summary(flow.counter.summary()),
                                           end_stream=True)
            return
        flow.head += view  # a datagram flow's END
        if len(flow.head) > wire.END.size:
            flow.refused = True
            return
        if len(flow.head) == wire.END.size:
            try:
                sent, _bytes, _quiet = wire.decode_end(bytes(flow.head))
            except RemoteWireError:
                flow.refused = True
                return
            summary = {**flow.counter.summary(), "sent": sent}
            peer.conn.send_stream_data(stream_id, wire.encode_summary(summary), end_stream=True)
            flow.refused = True  # answered: nothing more is read on it

    def sink_datagram(self, peer: _Peer, data: bytes) -> None:
        """A DATAGRAM frame of a datagram flow this connection announced (others are counted, dropped)."""
        from lab.bulk import wire

        header = wire.parse_datagram(data)
        if header is not None:
            for flow in peer.sinks.values():
                if flow.flow_id == header.flow_id and not flow.refused:
                    flow.counter.arrived(header, len(data), time.monotonic_ns())
                    return
        self.counters["datagram_frames_dropped"] += 1

    def flush(self, peer: _Peer) -> None:
        for data, addr in peer.conn.datagrams_to_send(now=time.monotonic()):
            self.send(data, addr)
            peer.sent += 1

    def send(self, data: bytes, addr: tuple[Any, ...]) -> None:
        # A full send buffer or an unreachable client loses this datagram; QUIC recovers or times out.
        with contextlib.suppress(OSError):
            self.sock.sendto(data, addr)


def _parent_gone(channel: Any) -> bool:
    """True when the parent's end of the channel closed (it died without stopping us)."""
    try:
        channel.receive(timeout=0)
    except (EOFError, OSError):
        return True
    except TimeoutError:
        pass
    return False


def main(argv: list[str] | None = None) -> int:
    """Bind, make the certificate, say Ready (or Failed), serve until SIGTERM/SIGINT."""
    from lab.child import Failed, Ready, child_channel
    from lab.endpoints.common import bind_sockets, format_address
    from lab.protocols.common import selector

    parser = argparse.ArgumentParser(prog="python -m lab.protocols.quic_server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-conns", type=int, default=MAX_CONNS)
    parser.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT_S)
    parser.add_argument("--sink", action="store_true", help="count bulk flows instead of echoing")
    args = parser.parse_args(argv)
    channel = child_channel()
    try:
        if args.max_conns < 1 or not args.idle_timeout > 0:
            raise ConfigError("--max-conns must be >= 1 and --idle-timeout > 0")
        _, sock = bind_sockets("udp", args.host, args.port)
        assert sock is not None
        configuration = server_configuration(args.idle_timeout)
    except (EndpointError, ConfigError) as exc:
        if channel is not None:
            channel.send(Failed(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    server = QuicEchoServer(sock, configuration, max_conns=args.max_conns, idle_timeout=args.idle_timeout,
                            sink=args.sink)

    def stop(signum: int, frame: object) -> None:
        raise _Stop

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        ready = {"udp": [host, port]}
        if channel is not None:
            channel.send(Ready(ready))
        else:
            print(f"QUIC echo server on udp {format_address((host, port))} (ALPN {ALPN})", flush=True)
        with selector([sock]) as sel:
            server.serve(sel, channel)
    except _Stop:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
