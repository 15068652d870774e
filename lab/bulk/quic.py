"""A bulk flow over QUIC: `quic` on one stream as fast as the congestion controller allows;
`quic-datagram` as DATAGRAM frames (RFC 9221) at a set rate.

The same sans-IO aioquic connection as lab.protocols.quic, driven from a loop of our own, to the
QUIC server in sink mode (`python -m lab.protocols.quic_server --sink`). On the stream, the bytes
of lab.bulk.wire (a hello, then blocks) are written a few blocks at a time, only when aioquic has
sent everything written before: its congestion window, not our buffer, limits the rate. Ending the
stream asks for the sink's summary, which comes back on the same stream. A datagram flow announces
itself on a stream (the sink answers ACCEPTED), sends paced frames, waits until aioquic has sent
them all and the path is quiet, then sends END on the stream for the summary. Retransmissions are
the packets whose data aioquic sent again (`lab.protocols.quic.watch_recovery`)
(docs/architecture.md#bulk-traffic).
"""

from __future__ import annotations

import contextlib
import selectors
import time
import zlib
from collections.abc import Callable
from typing import Any

from lab.bulk import wire
from lab.bulk.common import (
    MAX_DRAIN_S,
    NS_PER_S,
    Bounds,
    Sending,
    collect_summary,
    datagram_figures,
    new_flow_id,
    wait_until,
)
from lab.bulk.plan import BulkPlan, BulkResult
from lab.errors import EndpointError, LabError, RemoteWireError
from lab.protocols.quic import QuicPeer
from lab.targets import lab_address, where

BLOCKS_AHEAD = 4  # blocks written at once when aioquic has sent all it had
MAX_WAIT_S = 0.05
QUIET_MIN_S = 0.25
STREAM_ID = 0  # the client's first bidirectional stream
MAX_BURST = 64


def run_quic_bulk(protocol: Any, address: tuple[str, int], plan: BulkPlan, *,
                  progress: Callable[..., None] | None = None, round_trip_s: float = 0.0) -> BulkResult:
    """One flow of `protocol` (`quic` or `quic-datagram`) to the QUIC sink at `address`."""
    from lab.bulk.datagrams import need_rate
    from lab.protocols.common import connected_datagram_socket

    if protocol.datagrams:
        need_rate(protocol.name, plan)
    host, port = lab_address(address)
    result = BulkResult(protocol=protocol.name, interval_s=plan.interval_s, plan=plan.to_dict())
    with connected_datagram_socket((host, port), protocol.label) as sock, selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        flow = _QuicFlow(protocol, sock, sel, (host, port))
        try:
            flow.connect(5.0 + 3 * round_trip_s)
            wait_until(plan.start_at_ns)
            flow.run(plan, result, progress, round_trip_s)
        except (LabError, KeyboardInterrupt):
            raise
        except Exception as exc:  # inside aioquic: one line, the cause chained
            raise EndpointError(f"the QUIC connection to {where((host, port))} failed inside aioquic: "
                                f"{type(exc).__name__}: {exc}") from exc
        finally:
            flow.close()
    return result


class _QuicFlow(QuicPeer):
    """The connection, its socket (lab.protocols.quic.QuicPeer), and what came back on our stream."""

    answering = "sink"
    start_hint = " (python -m lab.protocols.quic_server --sink)"
    missing_hint = "python -m lab.protocols.quic_server --sink starts one"

    def __init__(self, protocol: Any, sock: Any, sel: selectors.BaseSelector,
                 address: tuple[str, int]) -> None:
        super().__init__(protocol, sock, sel, address)
        self.reply = bytearray()  # what the sink sent on our stream
        self.flow_id = 0

    # --- the phases ---
    def connect(self, timeout_s: float) -> None:
        self.start()
        self.handshake(timeout_s)

    def run(self, plan: BulkPlan, result: BulkResult, progress: Callable[..., None] | None,
            round_trip_s: float) -> None:
        from lab.protocols.quic import OBSERVER, recovery_figures

        started = time.monotonic_ns()
        result.started_ns = started
        bounds = Bounds(plan, started)
        mode = wire.MODE_DATAGRAMS if self.protocol.datagrams else wire.MODE_STREAM
        self.flow_id = new_flow_id()
        hello = wire.Hello(mode, self.flow_id, started, bounds.interval_ns)
        self.conn.send_stream_data(STREAM_ID, hello.encode())
        self.flush()
        sending = self.datagrams if self.protocol.datagrams else self.stream
        sent: dict[str, int] = {"bytes": 0, "datagrams": 0}
        phase = Sending(result, bounds)
        try:
            sending(plan, bounds, sent, progress)
        except KeyboardInterrupt:  # (a failed send is the QUIC connection's error: it propagates)
            phase.interrupt()
        phase.ended(sent["bytes"], started)
        interrupted = phase.interrupted
        wait_s = phase.summary_wait_s(round_trip_s)
        quiet_s = QUIET_MIN_S + 2 * round_trip_s
        summary = collect_summary(result, started, interrupted,
                                  lambda: self.finish(sent, wait_s, quiet_s, interrupted))
        if self.protocol.datagrams:
            result.datagrams = datagram_figures(summary, sent["datagrams"])
        client = recovery_figures(self.conn, self.counts, datagrams_sent=self.sent,
                                  datagrams_received=self.received)
        result.observations[OBSERVER] = {"client": client}
        result.retransmits = client.get("retransmitted_packets")
        if (rtt := client.get("min_rtt_ms")) is not None:
            result.min_rtt_us = rtt * 1000

    def stream(self, plan: BulkPlan, bounds: Bounds, sent: dict[str, int],
               progress: Callable[..., None] | None) -> None:
        writer = wire.BlockWriter()
        while self.terminated is None:
            now = time.monotonic_ns()
            self.sample(bounds, now, sent, progress)
            if bounds.over(now, sent["bytes"]):
                return
            if self.all_sent():
                for _ in range(BLOCKS_AHEAD):
                    left = bounds.left(sent["bytes"])
                    block = writer.block(None if left is None else max(0, left - wire.BLOCK.size))
                    self.conn.send_stream_data(STREAM_ID, block)
                    sent["bytes"] += len(block)
                    if bounds.over(now, sent["bytes"]):
                        break
                self.flush()
            self.pump(min(MAX_WAIT_S, max(0, min(bounds.next_sample_ns, bounds.end_ns) - now) / NS_PER_S))
        bounds.stopped = "error"

    def datagrams(self, plan: BulkPlan, bounds: Bounds, sent: dict[str, int],
                  progress: Callable[..., None] | None) -> None:
        from lab.protocols.quic import MAX_DATAGRAM_PROBE

        self.await_accepted(bounds)
        size = max(wire.DATAGRAM.size, min(plan.size, MAX_DATAGRAM_PROBE))  # one frame fits one packet
        payload = wire.pattern(size - wire.DATAGRAM.size)
        payload_crc = zlib.crc32(payload)
        gap_ns = size * 8 * NS_PER_S / (plan.rate_bps or 1.0)
        flow_id = self.flow_id
        started = bounds.started_ns
        while self.terminated is None:
            now = time.monotonic_ns()
            self.sample(bounds, now, sent, progress)
            if bounds.over(now, sent["bytes"]):
                return
            burst = 0
            while (burst < MAX_BURST and started + sent["datagrams"] * gap_ns <= now
                   and not bounds.over(now, sent["bytes"])):
                frame = wire.datagram(flow_id, sent["datagrams"], time.monotonic_ns(), payload, payload_crc)
                self.conn.send_datagram_frame(frame)
                sent["datagrams"] += 1
                sent["bytes"] += len(frame)
                burst += 1
            if burst:
                self.flush()
            due = started + sent["datagrams"] * gap_ns
            until = min(due, bounds.next_sample_ns, bounds.end_ns)
            self.pump(min(MAX_WAIT_S, max(0, until - time.monotonic_ns()) / NS_PER_S))
        bounds.stopped = "error"

    def await_accepted(self, bounds: Bounds) -> None:
        deadline = time.monotonic() + 10.0
        while len(self.reply) < len(wire.ACCEPTED):
            if self.terminated is not None or time.monotonic() > deadline:
                raise EndpointError(f"the QUIC sink at {where(self.address)} did not accept the flow")
            self.pump(MAX_WAIT_S)
        if bytes(self.reply[:len(wire.ACCEPTED)]) != wire.ACCEPTED:
            raise EndpointError(f"the QUIC sink at {where(self.address)} did not accept the flow")
        del self.reply[:len(wire.ACCEPTED)]

    def finish(self, sent: dict[str, int], wait_s: float, quiet_s: float,
               interrupted: bool) -> dict[str, Any]:
        """End the flow on our stream (datagrams: once aioquic sent them all and the path was quiet)
        and wait for the sink's summary."""
        deadline = time.monotonic() + wait_s
        if self.protocol.datagrams:
            quiet_until = None
            while time.monotonic() < deadline and self.terminated is None:
                if quiet_until is None and not getattr(self.conn, "_datagrams_pending", None):
                    quiet_until = time.monotonic() + (0.0 if interrupted else quiet_s)
                if quiet_until is not None and time.monotonic() >= quiet_until:
                    break
                self.pump(MAX_WAIT_S)
            self.conn.send_stream_data(STREAM_ID, wire.encode_end(sent["datagrams"], sent["bytes"], 0),
                                       end_stream=True)
        else:
            self.conn.send_stream_data(STREAM_ID, b"", end_stream=True)
        self.flush()
        reader = wire.SummaryReader()
        started, heard = time.monotonic(), self.received
        while True:
            if self.received != heard and not interrupted:  # the tail and the summary still come
                heard = self.received
                deadline = max(deadline, min(time.monotonic() + wait_s, started + MAX_DRAIN_S))
            try:
                if (summary := reader.feed(bytes(self.reply))) is not None:
                    return summary
            except RemoteWireError as exc:
                raise EndpointError(f"the QUIC sink at {where(self.address)}: {exc}") from exc
            self.reply.clear()
            left = deadline - time.monotonic()
            if self.terminated is not None:
                raise EndpointError(f"the QUIC connection ended before the sink's summary: {self.terminated}")
            if left <= 0:
                raise EndpointError(f"the QUIC sink at {where(self.address)} gave no summary in time")
            self.pump(min(left, MAX_WAIT_S))

    def sample(self, bounds: Bounds, now: int, sent: dict[str, int],
               progress: Callable[..., None] | None) -> None:
        if bounds.sample_due(now) and progress is not None:
            progress({"t_s": bounds.t_s(now), "bytes_sent": sent["bytes"],
                      "retransmits": self.counts.get("retransmitted_packets")})

    def all_sent(self) -> bool:
        """True when aioquic has sent (at least once) everything we wrote on our stream."""
        stream = getattr(self.conn, "_streams", {}).get(STREAM_ID)
        return stream is None or stream.sender.buffer_is_empty

    def close(self, reason: str = "bulk flow done") -> None:
        with contextlib.suppress(Exception):  # in a finally: the flow's own error is the one to see
            super().close(reason)

    def on_event(self, event: Any, recv_ns: int) -> None:
        from aioquic.quic import events

        if isinstance(event, events.StreamDataReceived) and event.stream_id == STREAM_ID \
                and len(self.reply) + len(event.data) <= wire.MAX_SUMMARY:
            self.reply += event.data
