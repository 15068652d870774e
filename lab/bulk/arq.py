"""A bulk flow over the lab's ARQ (arq-sw, arq-gbn, arq-sr): as fast as the window allows.

The byte stream of lab.bulk.wire (a hello, then blocks) goes through the client's ARQ sender, one
block per segment (`plan.size` payload bytes: a block's 20-byte header and its data), so a flow
that runs out of time never leaves half a block behind. The sender's queue is kept a window
deep: the window, never the application, limits the rate. The ARQ server in sink mode
(`python -m lab.protocols.arq.server --sink`) counts what its receiver delivers in order; an empty
segment ends the stream, and the sink's summary comes back through its own ARQ sender, reliable
too (docs/architecture.md#bulk-traffic). Retransmissions are the sender's own count.
"""

from __future__ import annotations

import secrets
import selectors
import time
from collections.abc import Callable
from typing import Any

from lab.bulk import wire
from lab.bulk.common import (
    MAX_DRAIN_S,
    NS_PER_S,
    Bounds,
    Sending,
    collect_summary,
    new_flow_id,
    wait_until,
)
from lab.bulk.plan import BulkPlan, BulkResult
from lab.errors import ConfigError, EndpointError, RemoteWireError
from lab.targets import lab_address, where

# Segments kept waiting in the sender: a whole window, so however many ACKs one wake-up reads, the
# window refills at once (two were too few: selective repeat at window 32 used a third of it).
MAX_WAIT_S = 0.05  # the loop looks at its bounds at least this often


def run_arq_bulk(protocol: Any, address: tuple[str, int], plan: BulkPlan, *,
                 progress: Callable[..., None] | None = None, round_trip_s: float = 0.0) -> BulkResult:
    """One window-limited flow of `protocol` (its `scheme`) to the ARQ sink at `address`."""
    from lab.protocols.arq.endpoint import Endpoint
    from lab.protocols.arq.protocol import DEFAULT_WINDOW, OBSERVER
    from lab.protocols.arq.segment import MAX_PAYLOAD, MAX_WINDOW
    from lab.protocols.common import connected_datagram_socket

    window = plan.window or DEFAULT_WINDOW
    if not 1 <= window <= MAX_WINDOW:
        raise ConfigError(f"window must be between 1 and {MAX_WINDOW} segments for the ARQ protocols, "
                          f"got {window}", key="window")
    if not wire.HELLO.size <= plan.size <= MAX_PAYLOAD:
        raise ConfigError(f"size must be between {wire.HELLO.size} and {MAX_PAYLOAD} bytes per ARQ "
                          f"segment, got {plan.size}", key="size")
    host, port = lab_address(address)
    endpoint = Endpoint(protocol.scheme, secrets.randbits(32), window)
    result = BulkResult(protocol=protocol.name, interval_s=plan.interval_s, plan=plan.to_dict())
    with connected_datagram_socket((host, port), protocol.label) as sock, selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        wait_until(plan.start_at_ns)
        started = time.monotonic_ns()
        result.started_ns = started
        flow = _ArqFlow(endpoint, sock, sel, (host, port), Bounds(plan, started), plan, progress)
        endpoint.send(wire.Hello(wire.MODE_STREAM, new_flow_id(), started, flow.bounds.interval_ns).encode())
        with Sending(result, flow.bounds) as sending:
            flow.send_until_done()
        sending.ended(flow.sent, started)
        interrupted = sending.interrupted
        wait_s = sending.summary_wait_s(round_trip_s)
        collect_summary(result, started, interrupted, lambda: flow.finish(wait_s, extend=not interrupted))
        observed = endpoint.observations()
        result.observations[OBSERVER] = observed
        result.retransmits = observed["sender"]["retransmitted"]
    return result


class _ArqFlow:
    """The flow's loop: keep the sender's queue topped up, move datagrams, run the timers."""

    def __init__(self, endpoint: Any, sock: Any, sel: selectors.BaseSelector, address: tuple[str, int],
                 bounds: Bounds, plan: BulkPlan, progress: Callable[..., None] | None) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self.sel = sel
        self.address = address
        self.bounds = bounds
        self.progress = progress
        self.writer = wire.BlockWriter(block_size=plan.size - wire.BLOCK.size)
        self.summary = wire.SummaryReader()
        self.sent = 0
        self.heard = 0  # datagrams received
        self.delivered_any = False

    def send_until_done(self) -> None:
        bounds, sender = self.bounds, self.endpoint.sender
        while True:
            now = time.monotonic_ns()
            if bounds.sample_due(now) and self.progress is not None:
                counters = sender.counters
                self.progress({"t_s": bounds.t_s(now), "bytes_sent": self.sent,
                               "retransmits": counters.retransmitted})
            if bounds.over(now, self.sent):
                return
            while len(sender.queue) < sender.window:
                left = bounds.left(self.sent)
                block = self.writer.block(None if left is None else max(0, left - wire.BLOCK.size))
                self.endpoint.send(block)
                self.sent += len(block)
                if bounds.over(now, self.sent):
                    break
            self.step(min(bounds.next_sample_ns, bounds.end_ns))

    def finish(self, wait_s: float, *, extend: bool = True) -> dict[str, Any]:
        """End the stream (an empty segment) and wait for the sink's summary (`extend`: longer while
        datagrams still come, up to MAX_DRAIN_S)."""
        self.endpoint.send(b"")
        started = time.monotonic_ns()
        wait_ns, cap = round(wait_s * NS_PER_S), started + round(MAX_DRAIN_S * NS_PER_S)
        deadline, heard = started + wait_ns, self.heard
        while self.summary.value is None:
            now = time.monotonic_ns()
            if extend and self.heard != heard:  # datagrams still come (the last blocks, the summary): wait on
                heard, deadline = self.heard, max(deadline, min(now + wait_ns, cap))
            if now >= deadline:
                raise EndpointError(f"the ARQ sink at {where(self.address)} gave no summary within "
                                    f"{(now - started) / NS_PER_S:.0f} s")
            self.step(deadline)
        return self.summary.value

    def step(self, until_ns: int) -> None:
        """Send what is due, then wait for a datagram, a timer or `until_ns`, whichever is first."""
        now_s = time.monotonic_ns() / NS_PER_S
        self.transmit(self.endpoint.poll(now_s))
        wait_s = min(MAX_WAIT_S, max(0.0, until_ns / NS_PER_S - now_s))
        if (deadline := self.endpoint.next_deadline()) is not None:
            wait_s = min(wait_s, max(0.0, deadline - now_s))
        if self.sel.select(wait_s):
            self.drain()

    def drain(self) -> None:
        from lab.protocols.common import received_datagrams

        for datagram, recv_ns in received_datagrams(self.sock, self.refused):
            self.heard += 1
            delivered, out = self.endpoint.receive(datagram, recv_ns / NS_PER_S)
            self.delivered_any = self.delivered_any or bool(out)
            self.transmit(out)
            for payload in delivered:
                try:
                    self.summary.feed(payload)
                except RemoteWireError as exc:
                    raise EndpointError(f"the ARQ sink at {where(self.address)}: {exc}") from exc

    def transmit(self, datagrams: list[bytes]) -> None:
        for datagram in datagrams:
            try:
                self.sock.send(datagram)
            except BlockingIOError:
                pass  # our own buffer is full: as good as lost, the ARQ sends it again
            except ConnectionRefusedError as exc:
                self.refused(exc)

    def refused(self, exc: OSError) -> None:
        from lab.protocols.common import unreachable

        if not self.delivered_any:
            raise unreachable(self.address, "ARQ", exc, connected=False, answering="ARQ sink",
                              hint=" (python -m lab.protocols.arq.server --sink)") from exc
