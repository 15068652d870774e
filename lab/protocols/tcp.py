"""`tcp`: probes framed back to back on one TCP connection (RFC 9293): reliable, in order.

Logical streams share the one connection (the head-of-line experiment). TCP's own view of the run
(TCP_INFO: retransmissions, smoothed RTT, congestion window) is read from the socket at the end
into `observations["tcp"]`; the `retransmits` metric (expectations, the summary table) reads it.
A TCP variant that differs only in its socket options (a congestion control, ...) subclasses
`TCP` and overrides `prepare_socket`.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from lab import timestamps
from lab.errors import EndpointError, RemoteWireError
from lab.i18n import N_
from lab.metric_registry import Metric, format_scaled, time_unit_of
from lab.protocols import Protocol
from lab.protocols.common import (
    DONTWAIT,
    MAX_BURST,
    ReceiveTimeout,
    connect_timeout_s,
    connected_stream,
    selector,
)
from lab.records import RunRecord, TrafficPlan, observations_of
from lab.schedule import NS_PER_S, ProbeSchedule
from lab.targets import lab_address, where
from lab.timing import fine_timers
from lab.wire import EOF, HEADER_SIZE, VERSION_2, StreamDecoder, frame

# Bound of bytes queued in the client for a connection that does not drain; beyond it the
# sender waits (and open loop falls behind schedule, which the intended times record).
OUTBUF_LIMIT = 4 * 1024 * 1024
OUTBUF_FULL_POLL_NS = 10_000_000  # re-check the deadline this often while the send buffer is full
DECODER_BUFFER = 1024 * 1024
RECV_CHUNK = 256 * 1024
SERVER_CLOSED = "the echo server closed the connection"
# TCP's observations of a run (lab.records.Observations): observations["tcp"] = {"tcp_info": the
# client socket's TCP_INFO at the end, "tcp_nodelay": True, "congestion_control": the algorithm the
# client's connection used, e.g. "cubic"}; the same key for any variant of TCP.
OBSERVER = "tcp"
TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)  # linux/tcp.h
TCP_CA_NAME_MAX = 16  # linux/tcp.h: the longest algorithm name, NUL included


def congestion_control(sock: socket.socket) -> str:
    """The congestion control a TCP socket uses (getsockopt(TCP_CONGESTION): "cubic", "bbr"...)."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, TCP_CA_NAME_MAX)
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def retransmitted_segments(result: Mapping[str, Any]) -> int | None:
    """TCP segments retransmitted by both ends of a run (None for a run without TCP_INFO).

    The client's own count comes from its TCP_INFO (`total_retrans`); the echo server's — replies
    lost on the way back — from the `TcpRetransSegs` delta of the server's namespace, which a linked
    run measures (`result["kernel"]["server"]`). On loopback only the client's count exists.
    """
    info = observations_of(result, OBSERVER).get("tcp_info") or {}
    client = info.get("total_retrans", info.get("retransmits"))
    if client is None:
        return None
    server = ((result.get("kernel") or {}).get("server") or {}).get("TcpRetransSegs", 0)
    return int(client) + int(server)


RETRANSMITS = Metric(
    name="retransmits", unit="segments", read=retransmitted_segments,
    doc="TCP segments retransmitted by both ends (client TCP_INFO + server namespace)",
    label=N_("retransmits"), row=110,  # the last of the summary table's rows, as it always was
)


def _congestion_control(result: Mapping[str, Any]) -> Any:  # text ("cubic"), or None: not a number
    return observations_of(result, OBSERVER).get("congestion_control")


def _text_cell(value: object, _time_unit: str = "ms") -> str:
    return "-" if value is None else str(value)


def _point_has_congestion_control(point: Mapping[str, Any]) -> bool:
    return any(_congestion_control(r) for r in point.get("results", []))


# Which algorithm the client's connection ran: the system default for plain `tcp` (not always cubic).
CONGESTION_CONTROL = Metric(
    name="congestion_control", unit="", read=_congestion_control,
    doc="the TCP congestion control the client's connection used (getsockopt TCP_CONGESTION)",
    label=N_("congestion control"), row=115, format_cell=_text_cell, expectable=False,
    shown=_point_has_congestion_control,
)


class TCP(Protocol):
    name = "tcp"
    transport = "tcp"
    description = "probes framed on one TCP connection (reliable, in order)"
    reliable = True
    style = "bold blue"
    metrics = (RETRANSMITS, CONGESTION_CONTROL)
    bulk_driver = "lab.bulk.stream:run_tcp_bulk"  # its socket options, as fast as the connection takes

    def summary_lines(self, result: Any) -> list[str]:
        """TCP's own view of the run (TCP_INFO of the client's socket at the end)."""
        info = observations_of(result, "tcp").get("tcp_info")
        if not info:
            return []
        srtt, rttvar = info.get("rtt_us"), info.get("rttvar_us")
        unit, scale = time_unit_of(srtt if isinstance(srtt, int | float) else None)
        shown = [format_scaled(v / scale) if isinstance(v, int | float) else str(v) for v in (srtt, rttvar)]
        return [f"tcp_info: srtt {shown[0]} {unit}  rttvar {shown[1]} {unit}  "
                f"cwnd {info.get('snd_cwnd')}  retransmits {info.get('total_retrans')}"]

    def prepare_socket(self, sock: socket.socket) -> None:
        """Options set on the connected socket before the first probe (subclasses add theirs)."""
        # Latency is what we measure: do not let Nagle hold a probe back waiting for an ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def run_client(self, address: tuple[str, int], plan: TrafficPlan, *,
                   progress: Callable[..., None] | None = None, deadline_s: float | None = None,
                   round_trip_s: float = 0.0) -> RunRecord:
        """Probes framed back to back on one connection; logical streams share it.

        `round_trip_s` is the path's known round-trip delay (a lab link's), so the handshake gets
        time to cross it (see `connect_timeout_s`).
        """
        from lab.kernel import tcp_info

        host, port = lab_address(address)
        connect_timeout = connect_timeout_s(plan, round_trip_s)
        if deadline_s is not None:
            connect_timeout = min(connect_timeout, deadline_s)
        sock = connected_stream((host, port), self.label, self.prepare_socket, connect_timeout)
        with sock, selector([sock]) as sel:
            sock.setblocking(False)
            run = ProbeSchedule(self.name, plan, deadline_s=deadline_s, progress=progress,
                                wire_version=VERSION_2)
            # After connect: a TCP socket's OPT_ID keys count bytes from the moment it is set.
            refused = timestamps.enable(sock)
            if refused is None:
                run.timestamps = timestamps.KERNEL
            else:
                run.notes.timestamps_fallback = refused
            observed = run.observations.setdefault(OBSERVER, {})
            observed["tcp_nodelay"] = True
            observed["congestion_control"] = congestion_control(sock)  # after prepare_socket's choice
            connection = _Connection(run, sock, (host, port), stamped=refused is None)
            with fine_timers():
                try:
                    connection.loop(sel)
                except KeyboardInterrupt:
                    raise run.interrupted(time.monotonic_ns()) from None
            ended = time.monotonic_ns()
            connection.collect_stamps()
            # If the connection is already gone, the record stands without TCP_INFO.
            with contextlib.suppress(OSError):
                observed["tcp_info"] = tcp_info(sock)
            return run.record(ended)


class _Connection:
    """One run's connection: an outgoing buffer, a stream decoder, and how the connection ended."""

    def __init__(self, run: ProbeSchedule, sock: socket.socket, address: tuple[str, int], *,
                 stamped: bool = False) -> None:
        self.run = run
        self.sock = sock
        self.address = address
        self.decoder = StreamDecoder(max_payload=run.plan.size - HEADER_SIZE, max_buffer=DECODER_BUFFER)
        self.outbuf = bytearray()
        # Kernel timestamps (lab.timestamps): a probe's transmit stamp is keyed by its last byte's
        # offset in the stream; `written` counts the bytes handed to the connection so far.
        self.stamps = timestamps.TransmitLog() if stamped else None
        self.written = 0
        self.receive_timeout = ReceiveTimeout(sock)

    def loop(self, sel: selectors.BaseSelector) -> None:
        run, outbuf = self.run, self.outbuf
        sel.register(self.sock, selectors.EVENT_READ)
        writing = False
        # Ping-pong waits for its reply in the receive call itself (`await_reply`), on a blocking
        # socket whose other calls pass MSG_DONTWAIT; open loop keeps the selector.
        blocking = run.plan.rate is None
        if blocking:
            self.sock.setblocking(True)
        while True:
            # A full buffer takes no more until the connection drains (open loop falls behind).
            limit = (1 if blocking else MAX_BURST) if len(outbuf) < OUTBUF_LIMIT else 0
            version, stamps = run.version, self.stamps
            held = None
            for seq, stream, payload, crc, intended, sent_ns in run.due_probes(limit):
                # Stamped when handed to the connection; bytes still queued in our buffer behind a
                # stalled connection wait there, which is part of the latency the application sees.
                message = frame(seq, stream, intended, payload, crc, version)
                outbuf += message
                if stamps is not None:
                    self.written += len(message)
                    stamps.sent(seq, self.written - 1)
                if blocking:  # ping-pong: stamped again just before the send, booked after it
                    held = (seq, stream)
                    continue
                run.sent(seq, stream, intended, sent_ns)
                if len(outbuf) >= OUTBUF_LIMIT:
                    break
            now = time.monotonic_ns()
            if held is not None:
                # building the probe is the client's work, not the round trip's: ping-pong means
                # to send when it does (intended = sent = now, as UDP's), and the send is booked
                # once the client wakes (as UDP's ping-pong does), so no bookkeeping of ours sits
                # between the send and the sleep in the receive call
                booked = (*held, now, now)
                if not self.flush():
                    run.sent(*booked)
                    return
                if not outbuf:
                    until = min(now + run.timeout_ns, run.deadline_ns)
                    if not self.await_reply((until - now) / NS_PER_S, booked):
                        return
                    continue
                run.sent(*booked)  # not all of it went out: the writable path takes over
            elif outbuf and not self.flush():
                return
            if stamps is not None and run.burst and not blocking:
                self.collect_stamps()
            if run.done(now):
                return
            if blocking and not outbuf and run.burst < MAX_BURST:
                if not self.await_reply(run.wait_s(now)):
                    return
                continue
            if bool(outbuf) != writing:
                writing = bool(outbuf)
                sel.modify(self.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0))
            if run.burst >= MAX_BURST:
                wait_s = 0.0
            elif len(outbuf) >= OUTBUF_LIMIT:  # only a writable socket or a reply can help now
                wait_s = min(run.deadline_ns - now, OUTBUF_FULL_POLL_NS) / NS_PER_S
            else:
                wait_s = run.wait_s(now)
            for _, events in sel.select(wait_s):
                if events & selectors.EVENT_READ and not self.receive():
                    return

    def await_reply(self, wait_s: float, held: tuple[int, int, int, int] | None = None) -> bool:
        """Sleep in `recvmsg` until a reply comes or `wait_s` passes (SO_RCVTIMEO, set again only
        when the wait changed); False when the connection is over. `held`: the probe just sent,
        (seq, stream, intended_ns, sent_ns), booked on waking."""
        alive = self.receive(flags=self.receive_timeout.flags(wait_s), held=held)
        self.collect_stamps()
        return alive

    def flush(self) -> bool:
        try:
            n = self.sock.send(self.outbuf, DONTWAIT)
        except BlockingIOError:
            return True
        except OSError as exc:
            return self.broken(f"send failed: {exc.strerror or exc}", exc)
        del self.outbuf[:n]
        return True

    def collect_stamps(self) -> None:
        """Book the transmit stamps waiting on the error queue (they also make the socket readable)."""
        if self.stamps:  # probes awaiting a stamp: at most one read each
            for seq, stamp in self.stamps.stamped(timestamps.transmit_stamps(self.sock, len(self.stamps))):
                self.run.kernel_sent(seq, stamp)

    def receive(self, *, flags: int = DONTWAIT, held: tuple[int, int, int, int] | None = None) -> bool:
        """Read what is there (`flags` 0: sleep in the call until something is, bounded by
        SO_RCVTIMEO) and decode it; False when the connection is over. `held`: a probe sent but not
        booked yet, booked first."""
        run, decoder = self.run, self.decoder
        size = min(RECV_CHUNK, decoder.max_buffer - decoder.buffered)
        kernel_ns = None
        try:
            try:
                if self.stamps is None:
                    data = self.sock.recv(size, flags)
                    recv_ns = time.monotonic_ns()
                else:
                    data, ancillary, _, _ = self.sock.recvmsg(size, timestamps.ANCILLARY_BYTES, flags)
                    recv_ns = time.monotonic_ns()  # before reading the stamp: not the round trip's
                    kernel_ns = timestamps.receive_stamp(ancillary) if ancillary else None
            finally:
                if held is not None:  # sent before anything came back: booked first
                    run.sent(*held)
        except BlockingIOError:
            self.collect_stamps()
            return True
        except OSError as exc:
            return self.broken(f"receive failed: {exc.strerror or exc}", exc)
        try:
            decoder.receive_data(data)
            if run.arrived_stream(decoder, recv_ns, kernel_ns) is EOF:
                return self.broken(SERVER_CLOSED, None)
            return True
        except RemoteWireError as exc:
            # The byte stream is desynchronised: nothing after this point can be attributed.
            run.unattributed += 1
            return self.broken(f"reply stream unreadable: {exc}", None)

    def broken(self, why: str, exc: OSError | None) -> bool:
        run = self.run
        if not run.arrivals:
            if why == SERVER_CLOSED or isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                # What a server at its connection limit does to a newcomer (ours closes the longest
                # idle connection instead, so this is another server, or ours evicting us).
                raise EndpointError(f"the echo server at {where(self.address)} closed the connection "
                                    "before any reply (it may be full: see its --max-conns)") from exc
            raise EndpointError(f"echo server at {where(self.address)} over TCP gave no reply "
                                f"({why})") from exc
        if not run.complete():
            run.notes.connection_ended = why
        return False
