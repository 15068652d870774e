"""`quic` and `quic-datagram`: probes over one QUIC connection (RFC 9000), with aioquic.

`quic` carries the probes on streams: `streams = N` opens N bidirectional QUIC streams and probe
`seq` goes on stream `seq % N`, framed with the lab's wire format (one `lab.wire.StreamDecoder` per
stream). Each stream is an ordered byte stream of its own, so a lost packet holds back only the
later probes of the streams it carried (RFC 9000 §2.2), where one TCP connection holds back every
stream behind it: the head-of-line scenario shows the difference. `quic-datagram` sends one probe
per DATAGRAM frame (RFC 9221) on the same kind of connection: encrypted and congestion-controlled,
never retransmitted — QUIC's answer to "UDP's behaviour, with encryption".

Both drive aioquic's sans-IO `QuicConnection` from the lab's own selectors loop (like udp.py), so
the timestamps are the loop's: a probe is stamped when handed to the connection, a reply when the
UDP datagram carrying it is read. They talk to the lab's own QUIC echo server
(`lab.protocols.quic_server`, a helper process with a self-signed certificate made when it
starts). aioquic's own view of the run — packets its loss detection declared lost, packets whose
data it sent again, smoothed RTT, congestion window — goes into `observations["quic"]`, for the
client's end and, asked over a stream once the probes are done, the server's.

aioquic is imported only when a QUIC run starts: the registry loads this module for every command.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from lab.errors import ConfigError, EndpointError, LabError, RemoteWireError
from lab.i18n import N_
from lab.metric_registry import Metric
from lab.protocols import Protocol, Requirement
from lab.protocols.common import (
    MAX_BURST,
    connect_timeout_s,
    connected_datagram_socket,
    received_datagrams,
    selector,
    unreachable,
)
from lab.records import RunRecord, TrafficPlan, observations_of
from lab.schedule import ProbeSchedule
from lab.targets import lab_address, where
from lab.timing import fine_timers
from lab.wire import HEADER_SIZE, StreamDecoder, frame

ALPN = "wirelab-echo"  # both ends offer only this: a QUIC server of anything else refuses the handshake
OBSERVER = "quic"  # observations["quic"] = {"client": {...}, "server": {...}} (see `recovery_figures`)
# A DATAGRAM frame must fit one QUIC packet (RFC 9221 §3): aioquic's packets carry 1200 bytes, less
# header, packet number, AEAD tag and the frame's own header; 1100 leaves room for an ACK beside it.
MAX_DATAGRAM_PROBE = 1100
MAX_DATAGRAM_FRAME_SIZE = 65536  # what each end advertises it accepts (a packet bounds it anyway)
STATS_REQUEST = b"stats"  # on a client unidirectional stream: the server answers with its figures
MAX_STATS_BYTES = 4096
STATS_WAIT_MIN_S = 0.5  # how long the client waits for the server's figures after the probes...
STATS_WAIT_MAX_S = 2.0  # ...at most: a lossy link may need a retransmission or two
DECODER_BUFFER = 1024 * 1024
IDLE_TIMEOUT_S = 30.0
CONGESTION_CONTROL = "cubic"
CLIENT_BIDI_STREAM_STEP = 4  # stream ids: the two low bits say who opened it and whether it is one-way


# --- aioquic's counters ----------------------------------------------------------------------------
def watch_recovery(connection: Any) -> dict[str, int]:
    """Counters of what a connection's loss recovery (RFC 9002) does, kept up to date from now on.

    aioquic counts none of this itself: its `QuicPacketRecovery` (`connection._loss`) hands every
    packet it gives up on to `_on_packets_lost` — declared lost by loss detection
    (`congestion_event=True`), or rescheduled after a probe timeout — and the frames of those packets
    are sent again. We wrap that method on this one connection's instance: `lost_packets` counts
    the declared losses, `retransmitted_packets` the given-up packets whose stream or handshake data
    is sent again (a lost DATAGRAM frame is not). If aioquic's internals change, the counters stay
    absent (`{}`) instead of breaking the run.
    """
    counts: dict[str, int] = {}
    recovery = getattr(connection, "_loss", None)
    original = getattr(recovery, "_on_packets_lost", None)
    if original is None:
        return counts
    try:
        from aioquic.quic.stream import QuicStreamSender
    except ImportError:
        return counts
    resend = QuicStreamSender.on_data_delivery
    counts.update(lost_packets=0, retransmitted_packets=0)

    def counting(**kwargs: Any) -> Any:
        packets = kwargs["packets"] = list(kwargs.get("packets", ()))
        if kwargs.get("congestion_event", True):
            counts["lost_packets"] += len(packets)
        counts["retransmitted_packets"] += sum(
            any(getattr(handler, "__func__", None) is resend for handler, _ in packet.delivery_handlers)
            for packet in packets
        )
        return original(**kwargs)

    recovery._on_packets_lost = counting  # type: ignore[union-attr]
    return counts


def recovery_figures(connection: Any, counts: Mapping[str, int], *, datagrams_sent: int,
                     datagrams_received: int) -> dict[str, Any]:
    """One end's figures: its counters, UDP datagrams each way, RTT estimates and congestion window.

    Read defensively from aioquic's recovery state (private attributes: a missing one is left out).
    """
    figures: dict[str, Any] = dict(counts)
    figures.update(datagrams_sent=datagrams_sent, datagrams_received=datagrams_received)
    recovery = getattr(connection, "_loss", None)
    for name, attribute in (("smoothed_rtt_ms", "_rtt_smoothed"), ("min_rtt_ms", "_rtt_min"),
                            ("latest_rtt_ms", "_rtt_latest")):
        value = getattr(recovery, attribute, None)
        if isinstance(value, int | float) and 0 < value < float("inf"):
            figures[name] = round(value * 1000, 3)
    with contextlib.suppress(AttributeError, TypeError, ValueError):
        figures["congestion_window_bytes"] = int(recovery.congestion_window)  # type: ignore[union-attr]
    return figures


def _both_ends(result: Mapping[str, Any], counter: str) -> int | None:
    """A counter summed over the client's and (when it answered) the server's end; None without QUIC."""
    observed = observations_of(result, OBSERVER)
    client = (observed.get("client") or {}).get(counter)
    if client is None:
        return None
    return int(client) + int((observed.get("server") or {}).get(counter, 0) or 0)


def _has_quic(point: Mapping[str, Any]) -> bool:
    return any(observations_of(r, OBSERVER) for r in point.get("results", []))


QUIC_LOST = Metric(
    name="quic_lost_packets", unit="packets", read=lambda r: _both_ends(r, "lost_packets"),
    doc="QUIC packets aioquic's loss detection declared lost, both ends (RFC 9002 §6)",
)
QUIC_RETRANSMITS = Metric(
    name="quic_retransmits", unit="packets", read=lambda r: _both_ends(r, "retransmitted_packets"),
    doc="QUIC packets whose stream data was sent again, both ends (lost, or after a probe timeout)",
    label=N_("QUIC retransmits"), row=120, shown=_has_quic,
)


# --- the protocols ---------------------------------------------------------------------------------
class QUIC(Protocol):
    name = "quic"
    transport = "udp"  # the link and the unprivileged relay carry it like any UDP flow
    description = "probes on QUIC streams, one per logical stream (reliable, ordered per stream, encrypted)"
    reliable = True
    style = "bold green"
    requires = (Requirement("the aioquic module", module="aioquic"),)
    metrics = (QUIC_LOST, QUIC_RETRANSMITS)
    datagrams = False  # True: one probe per RFC 9221 DATAGRAM frame instead of streams
    bulk_driver = "lab.bulk.quic:run_quic_bulk"  # a stream as fast as aioquic allows; DATAGRAMs at a rate

    def server_argv(self, host: str, port: int) -> list[str]:
        """The lab's QUIC echo server (lab.protocols.quic_server) at (host, port)."""
        from lab.child import python_argv

        return python_argv("lab.protocols.quic_server", "--host", host, "--port", str(port))

    def sink_argv(self, host: str, port: int) -> list[str]:
        """The QUIC server in sink mode: it counts bulk flows (docs/architecture.md#bulk-traffic)."""
        return [*self.server_argv(host, port), "--sink"]

    def run_client(self, address: tuple[str, int], plan: TrafficPlan, *,
                   progress: Callable[..., None] | None = None, deadline_s: float | None = None,
                   round_trip_s: float = 0.0) -> RunRecord:
        """One QUIC connection: the handshake (given time to cross a slow, lossy path, like TCP's
        connect), the probes, then the server's figures. An aioquic failure is one EndpointError."""
        host, port = lab_address(address)
        if self.datagrams and plan.size > MAX_DATAGRAM_PROBE:
            raise ConfigError(f"{self.name} sends each probe in one DATAGRAM frame, which must fit one "
                              f"QUIC packet: size may be at most {MAX_DATAGRAM_PROBE} bytes, got "
                              f"{plan.size} (the quic protocol carries larger probes on streams)",
                              key="size")
        handshake_s = connect_timeout_s(plan, round_trip_s)
        if deadline_s is not None:
            handshake_s = min(handshake_s, deadline_s)
        sock = connected_datagram_socket((host, port), self.label)
        try:
            with selector([sock]) as sel:
                sel.register(sock, selectors.EVENT_READ)
                client = _Client(self, sock, sel, (host, port))
                try:
                    return client.run(plan, handshake_s, round_trip_s, progress=progress,
                                      deadline_s=deadline_s)
                except (LabError, KeyboardInterrupt):
                    raise
                except Exception as exc:  # inside aioquic: one line, the cause chained for debugging
                    raise EndpointError(f"the QUIC connection to {where((host, port))} failed inside "
                                        f"aioquic: {type(exc).__name__}: {exc}") from exc
        finally:
            sock.close()


class QUICDatagram(QUIC):
    name = "quic-datagram"
    label = "QUIC-DGRAM"
    description = "one probe per QUIC DATAGRAM frame, RFC 9221 (encrypted, never retransmitted)"
    reliable = False
    style = "bold yellow"
    metrics = ()  # QUIC's metrics are registered once, by `quic`
    datagrams = True


def client_configuration(datagrams: bool) -> Any:
    """The client's QuicConfiguration."""
    import ssl

    from aioquic.quic.configuration import QuicConfiguration

    return QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        # The server is the lab's own, started for this run with a certificate made when it started
        # (lab.protocols.quic_server): there is no authority to check it against, and nothing to
        # protect — the encryption is what is measured, not who answers.
        verify_mode=ssl.CERT_NONE,
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE if datagrams else None,
        idle_timeout=IDLE_TIMEOUT_S, congestion_control_algorithm=CONGESTION_CONTROL,
    )


class QuicPeer:
    """A client connection driven from our own selectors loop (sans-IO aioquic): the handshake and
    the I/O that the probe client (`_Client`) and the bulk flow (lab.bulk.quic) share. A subclass
    handles the connection's other events in `on_event` and an ICMP refusal after the handshake in
    `refused_later`; `sent`/`received` count UDP datagrams."""

    answering = "echo server"  # what should answer at `address`, for messages
    start_hint = ""  # appended to "nothing answers" messages: how to start what should answer
    missing_hint = "is it the lab's QUIC server?"

    def __init__(self, protocol: Any, sock: socket.socket, sel: selectors.BaseSelector,
                 address: tuple[str, int]) -> None:
        self.protocol = protocol
        self.sock = sock
        self.sel = sel
        self.address = address
        self.conn: Any = None
        self.counts: dict[str, int] = {}
        self.handshake_done = False
        self.terminated: str | None = None  # why the connection ended, once it has
        self.sent = self.received = 0

    def start(self) -> None:
        """A connection of the protocol's kind, its recovery counted (`watch_recovery`)."""
        from aioquic.quic.connection import QuicConnection

        self.conn = QuicConnection(configuration=client_configuration(self.protocol.datagrams))
        self.counts = watch_recovery(self.conn)

    def handshake(self, timeout_s: float) -> None:
        """Connect, and pump until the handshake is confirmed (aioquic resends lost packets itself).

        Confirmed, not just complete (RFC 9001 §4.1.2, the server's HANDSHAKE_DONE): until the server
        has our Finished it does not read our 1-RTT packets (§5.7). Streams would send those probes
        again; DATAGRAM frames would be lost, a loss of the handshake's and not the link's.
        """
        started = time.monotonic()
        self.conn.connect(self.address, now=started)
        self.flush()
        while not (self.handshake_done and getattr(self.conn, "_handshake_confirmed", True)):
            if self.terminated is not None:
                raise EndpointError(f"the QUIC handshake with {where(self.address)} failed: "
                                    f"{self.terminated}")
            left = started + timeout_s - time.monotonic()
            if left <= 0:
                raise EndpointError(f"no QUIC {self.answering} answering at {where(self.address)} (no "
                                    f"handshake within {timeout_s:.0f} s: {self.missing_hint})")
            self.pump(left)

    def close(self, reason: str = "run done") -> None:
        """Close the connection politely (one CONNECTION_CLOSE; the server times out if it is lost)."""
        if self.conn is not None and self.terminated is None:
            self.conn.close(reason_phrase=reason)
            self.flush()

    # --- I/O ---
    def pump(self, wait_s: float) -> None:
        """Wait up to `wait_s` for a datagram or the connection's timer; feed what came; send what
        the connection has to send."""
        timer = self.conn.get_timer()
        if timer is not None:
            wait_s = min(wait_s, max(0.0, timer - time.monotonic()))
        if self.sel.select(wait_s):
            self.read()
        timer = self.conn.get_timer()
        now = time.monotonic()
        if timer is not None and timer <= now:
            self.conn.handle_timer(now)
            self.events(time.monotonic_ns())
        self.flush()

    def read(self) -> None:
        # An ICMP port unreachable for an earlier datagram goes to `refused`; a reply's timestamp is
        # when its datagram was read.
        for data, recv_ns in received_datagrams(self.sock, self.refused):
            self.received += 1
            self.conn.receive_datagram(data, self.address, now=recv_ns / 1e9)
            self.events(recv_ns)

    def flush(self) -> None:
        for data, _ in self.conn.datagrams_to_send(now=time.monotonic()):
            try:
                self.sock.send(data)
            except BlockingIOError:
                continue  # our own send buffer is full: QUIC recovers it as a lost packet
            except ConnectionRefusedError as exc:
                self.refused(exc)
                continue
            except OSError as exc:
                raise self.unreachable(exc) from exc
            self.sent += 1

    def refused(self, exc: OSError) -> None:
        if not self.handshake_done:
            raise self.unreachable(exc) from exc
        self.refused_later(exc)

    def unreachable(self, exc: OSError) -> EndpointError:
        """The one-line error when nothing answers at `address`."""
        return unreachable(self.address, self.protocol.label, exc, connected=False, answering=self.answering,
                           hint=self.start_hint)

    def refused_later(self, exc: OSError) -> None:
        """An ICMP refusal once connected (the server went away): ignored unless a subclass counts it."""

    # --- what the connection reports ---
    def events(self, recv_ns: int) -> None:
        from aioquic.quic import events

        while (event := self.conn.next_event()) is not None:
            if isinstance(event, events.HandshakeCompleted):
                self.handshake_done = True
            elif isinstance(event, events.ConnectionTerminated):
                self.terminated = _termination(event)
            else:
                self.on_event(event, recv_ns)

    def on_event(self, event: Any, recv_ns: int) -> None:
        """Any other event of the connection (stream data, DATAGRAM frames...)."""


class _Client(QuicPeer):
    """One probe run's connection and decoders, driven by `pump`."""

    def __init__(self, protocol: QUIC, sock: socket.socket, sel: selectors.BaseSelector,
                 address: tuple[str, int]) -> None:
        super().__init__(protocol, sock, sel, address)
        self.run_: ProbeSchedule | None = None
        self.decoders: dict[int, StreamDecoder] = {}  # stream id -> decoder of its replies
        self.stream_ids: list[int] = []  # logical stream -> QUIC stream id
        self.stats_stream: int | None = None
        self.stats_reply = bytearray()
        self.stats_done = False

    # --- the run's phases ---
    def run(self, plan: TrafficPlan, handshake_s: float, round_trip_s: float, *,
            progress: Callable[..., None] | None, deadline_s: float | None) -> RunRecord:
        self.start()
        with fine_timers():
            self.handshake(handshake_s)
            run = self.run_ = ProbeSchedule(self.protocol.name, plan, deadline_s=deadline_s,
                                            progress=progress)
            if not self.protocol.datagrams:
                for stream in range(plan.streams):
                    # Client-initiated bidirectional streams are 0, 4, 8... (RFC 9000 §2.1); aioquic
                    # creates one when data is first sent on it.
                    stream_id = CLIENT_BIDI_STREAM_STEP * stream
                    self.stream_ids.append(stream_id)
                    self.decoders[stream_id] = StreamDecoder(max_payload=plan.size - HEADER_SIZE,
                                                             max_buffer=DECODER_BUFFER)
            try:
                self.probe_loop(run)
            except KeyboardInterrupt:
                raise run.interrupted(time.monotonic_ns()) from None
            ended = time.monotonic_ns()
            if self.terminated is not None and not run.arrivals:
                raise EndpointError(f"the QUIC connection to {where(self.address)} ended before any reply: "
                                    f"{self.terminated}")
            self.run_ = None  # replies from here on are not part of the run
            server = self.server_figures(round_trip_s) if self.terminated is None else None
            if self.terminated is not None and not run.complete():
                run.notes.connection_ended = self.terminated
            run.observations[OBSERVER] = {
                "client": recovery_figures(self.conn, self.counts, datagrams_sent=self.sent,
                                           datagrams_received=self.received),
                "server": server,
            }
            self.close()
            return run.record(ended)

    def probe_loop(self, run: ProbeSchedule) -> None:
        conn = self.conn
        while True:
            for seq, stream, payload, crc, intended, sent_ns in run.due_probes(MAX_BURST):
                # Stamped when handed to the connection: time in QUIC's buffers (congestion window,
                # pacing, retransmission) is part of the latency the application sees, as with TCP.
                data = frame(seq, stream, intended, payload, crc)
                if self.protocol.datagrams:
                    conn.send_datagram_frame(data)
                else:
                    conn.send_stream_data(self.stream_ids[stream], data)
                run.sent(seq, stream, intended, sent_ns)
            now = time.monotonic_ns()
            if run.burst:
                self.flush()
            if self.terminated is not None or run.done(now):
                return
            self.pump(0.0 if run.burst >= MAX_BURST else run.wait_s(now))

    def server_figures(self, round_trip_s: float) -> dict[str, Any] | None:
        """Ask the server for its end's figures on a unidirectional stream; None if no answer in time."""
        self.stats_stream = self.conn.get_next_available_stream_id(is_unidirectional=True)
        self.conn.send_stream_data(self.stats_stream, STATS_REQUEST, end_stream=True)
        self.flush()
        until = time.monotonic() + min(STATS_WAIT_MAX_S, max(STATS_WAIT_MIN_S, 4 * round_trip_s))
        while not self.stats_done and self.terminated is None and (left := until - time.monotonic()) > 0:
            self.pump(left)
        if not self.stats_done:
            return None
        try:
            figures = json.loads(bytes(self.stats_reply))
        except ValueError:
            return None
        return figures if isinstance(figures, dict) else None

    def refused_later(self, exc: OSError) -> None:
        if self.run_ is not None:
            self.run_.notes.icmp_refused += 1

    def on_event(self, event: Any, recv_ns: int) -> None:
        from aioquic.quic import events

        if isinstance(event, events.StreamDataReceived):
            self.stream_data(event.stream_id, event.data, event.end_stream, recv_ns)
        elif isinstance(event, events.DatagramFrameReceived):
            self.datagram(event.data, recv_ns)

    def stream_data(self, stream_id: int, data: bytes, end_stream: bool, recv_ns: int) -> None:
        if stream_id == self.stats_stream or stream_id % 4 == 3:  # the server's figures (its uni stream)
            if len(self.stats_reply) + len(data) <= MAX_STATS_BYTES:
                self.stats_reply += data
            self.stats_done = self.stats_done or end_stream
            return
        run, decoder = self.run_, self.decoders.get(stream_id)
        if run is None or decoder is None:
            return  # after the run, or a stream we never opened
        try:
            decoder.receive_data(data)
            run.arrived_stream(decoder, recv_ns)
        except RemoteWireError as exc:
            # This stream's bytes are desynchronised: nothing more on it can be attributed.
            run.unattributed += 1
            self.decoders.pop(stream_id, None)
            run.notes.connection_ended = f"reply stream {stream_id} unreadable: {exc}"

    def datagram(self, data: bytes, recv_ns: int) -> None:
        run = self.run_
        if run is not None and not run.arrived_datagram(data, recv_ns):
            run.unattributed += 1  # not a probe at all


def _termination(event: Any) -> str:
    """Why a connection ended, in words: aioquic's reason phrase and the RFC 9000 error code."""
    reason = event.reason_phrase or "no reason given"
    return f"{reason} (QUIC error 0x{event.error_code:x})"
