"""What the bulk senders share: the flow's clock and bounds, the sink's answer, the result."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from lab.bulk import wire
from lab.bulk.plan import BulkPlan, BulkResult
from lab.errors import EndpointError, RemoteWireError
from lab.metrics import wilson_interval
from lab.targets import where

NS_PER_S = 1_000_000_000
SUMMARY_WAIT_S = 10.0  # after the end of a flow, how long its sink may take to answer (plus the path)...
MAX_DRAIN_S = 120.0  # ...or longer while the sender sees its last bytes still being delivered, up to this
INTERRUPTED_WAIT_S = 2.0  # ... after a Ctrl-C: less (the caller waits at most ~3 s for us)
CONNECT_TIMEOUT_S = 5.0


def new_flow_id() -> int:
    return int.from_bytes(os.urandom(8), "big")


def wait_until(start_at_ns: int | None) -> None:
    """Sleep until `start_at_ns` (CLOCK_MONOTONIC) so flows planned together start together."""
    if start_at_ns is None:
        return
    while (left := start_at_ns - time.monotonic_ns()) > 0:
        time.sleep(min(left / NS_PER_S, 0.5))


class Sending:
    """A flow's sending phase, as `with Sending(result, bounds) as sending:` around the send loop: a
    Ctrl-C or a failed send ends it without losing what was sent (`bounds.stopped` says which, a
    send's error is kept for the summary, `interrupted` is set); then `ended` books it and
    `summary_wait_s` says how long to wait for the sink's summary."""

    def __init__(self, result: BulkResult, bounds: Bounds) -> None:
        self.result, self.bounds = result, bounds
        self.interrupted = False

    def __enter__(self) -> Sending:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            self.interrupt()
            return True
        if isinstance(exc, OSError):
            self.bounds.stopped = "error"
            self.result.observations.setdefault("sink", {})["error"] = f"send failed: {exc.strerror or exc}"
            return True
        return False

    def interrupt(self) -> None:
        """A Ctrl-C ended sending."""
        self.interrupted, self.bounds.stopped = True, "interrupted"

    def ended(self, bytes_sent: int, started_ns: int) -> None:
        """Book what sending did: the bytes handed over, why it stopped, how long since the start."""
        self.result.bytes_sent = bytes_sent
        self.result.stopped = self.bounds.stopped or "error"
        self.result.duration_s = (time.monotonic_ns() - started_ns) / NS_PER_S

    def summary_wait_s(self, round_trip_s: float, sink_waits_s: float = 0.0) -> float:
        """How long to wait for the sink's summary: briefly after a Ctrl-C, else the sink's own wait
        before it answers (`sink_waits_s`) and SUMMARY_WAIT_S; four round trips on top."""
        waited = INTERRUPTED_WAIT_S if self.interrupted else sink_waits_s + SUMMARY_WAIT_S
        return waited + 4 * round_trip_s


class Bounds:
    """A flow's end: its duration from `started_ns`, its byte budget; `stopped` says which ended it."""

    def __init__(self, plan: BulkPlan, started_ns: int) -> None:
        self.started_ns = started_ns
        self.end_ns = started_ns + round(plan.duration_s * NS_PER_S)
        self.max_bytes = plan.max_bytes
        self.interval_ns = round(plan.interval_s * NS_PER_S)
        self.next_sample_ns = started_ns + self.interval_ns
        self.stopped: str | None = None

    def over(self, now_ns: int, sent_bytes: int) -> bool:
        if self.stopped is None:
            if self.max_bytes is not None and sent_bytes >= self.max_bytes:
                self.stopped = "bytes"
            elif now_ns >= self.end_ns:
                self.stopped = "duration"
        return self.stopped is not None

    def left(self, sent_bytes: int) -> int | None:
        return None if self.max_bytes is None else max(0, self.max_bytes - sent_bytes)

    def sample_due(self, now_ns: int) -> bool:
        if now_ns < self.next_sample_ns:
            return False
        while self.next_sample_ns <= now_ns:
            self.next_sample_ns += self.interval_ns
        return True

    def t_s(self, now_ns: int) -> float:
        return (now_ns - self.started_ns) / NS_PER_S


NO_SINK_HINT = "; `lab serve discard` starts one"


def connect_tcp(address: tuple[str, int], label: str, prepare: Callable[[socket.socket], None] | None,
                round_trip_s: float) -> socket.socket:
    """A connected TCP socket to the sink (options from `prepare` set before connect)."""
    from lab.protocols.common import connected_stream

    return connected_stream(address, label, prepare, CONNECT_TIMEOUT_S + 3 * round_trip_s,
                            answering="discard sink", hint=NO_SINK_HINT)


def read_summary(sock: socket.socket, timeout_s: float, address: tuple[str, int],
                 progressing: Callable[[], bool] | None = None) -> dict[str, Any]:
    """The sink's SUMMARY from a connection whose sending side is done; EndpointError if none comes
    within `timeout_s`. While `progressing()` says the last bytes are still being delivered (a slow
    link draining its queue), the wait goes on, up to MAX_DRAIN_S."""
    reader = wire.SummaryReader()
    started = time.monotonic()
    deadline = started + timeout_s
    sock.setblocking(False)
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        while True:
            now = time.monotonic()
            if progressing is not None and now - started < MAX_DRAIN_S and progressing():
                deadline = max(deadline, min(now + timeout_s, started + MAX_DRAIN_S))
            left = deadline - now
            if left <= 0:
                raise EndpointError(f"the sink at {where(address)} gave no summary within "
                                    f"{now - started:.0f} s")
            if not sel.select(min(left, 1.0)):
                continue
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise EndpointError(f"the sink at {where(address)} broke the connection before its "
                                    f"summary ({exc.strerror or exc})") from exc
            if not data:
                raise EndpointError(f"the sink at {where(address)} closed without a summary "
                                    "(a plain discard server counts nothing: use `lab serve discard`)")
            try:
                if (summary := reader.feed(data)) is not None:
                    return summary
            except RemoteWireError as exc:
                raise EndpointError(f"the sink at {where(address)}: {exc}") from exc


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ignore SIGINT within the block, where possible: the bounded last exchange after a Ctrl-C must
    not be cut by the second SIGINT the caller sends a child that has not answered yet."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def apply_summary(result: BulkResult, summary: dict[str, Any], started_ns: int) -> None:
    """Fill `result` from the sink's summary: delivered bytes, intervals, duration, goodput."""
    result.bytes_delivered = int(summary.get("bytes") or 0)
    interval_ns = int(summary.get("interval_ns") or round(result.interval_s * NS_PER_S))
    booked = {int(index): int(size) for index, size in summary.get("intervals") or []}
    last = max(booked, default=-1)
    result.intervals = [[round((index + 1) * interval_ns / NS_PER_S, 6), booked.get(index, 0)]
                        for index in range(last + 1)]
    last_ns = summary.get("last_ns")
    if last_ns is not None and result.bytes_delivered:
        result.duration_s = max(0.0, (int(last_ns) - started_ns) / NS_PER_S)
    result.goodput_bps = 8 * result.bytes_delivered / result.duration_s if result.duration_s > 0 else 0.0
    result.observations.setdefault("sink", {}).update(
        {k: v for k, v in summary.items() if k not in ("intervals", "interval_ns")})


def datagram_figures(summary: dict[str, Any], sent: int) -> dict[str, Any]:
    """`BulkResult.datagrams` from a datagram sink's summary and what the sender sent (without a
    summary: only `sent`, the rest None: unknown, not zero)."""
    if not summary:
        return {"sent": sent, **dict.fromkeys(("received", "lost", "loss_ratio", "loss_ci95", "jitter_us",
                                               "reordered", "duplicates", "corrupted",
                                               "receive_buffer_overflows"))}
    received = min(int(summary.get("received") or 0), sent)
    lost = sent - received
    lo, hi = wilson_interval(lost, sent) if sent else (0.0, 1.0)
    return {
        "sent": sent, "received": received, "lost": lost,
        "loss_ratio": lost / sent if sent else 0.0, "loss_ci95": [lo, hi],
        "jitter_us": float(summary.get("jitter_us") or 0.0),
        "reordered": int(summary.get("reordered") or 0), "duplicates": int(summary.get("duplicates") or 0),
        "corrupted": int(summary.get("corrupted") or 0),
        # the sink's namespace's UdpRcvbufErrors during the flow: lost at the sink, not on the path
        "receive_buffer_overflows": summary.get("receive_buffer_overflows"),
    }


def collect_summary(result: BulkResult, started_ns: int, interrupted: bool,
                    ask: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The sink's summary of a flow that has stopped sending: `ask()` gets it (bounded by the
    caller's wait), `result` is filled from it; or, when it never comes (an EndpointError or OSError,
    a Ctrl-C), `result` says why and the summary is empty. After a Ctrl-C the exchange runs with
    SIGINT ignored (`uninterrupted`): one Ctrl-C stops a flow, not the report of what it did."""
    try:
        with uninterrupted() if interrupted else contextlib.nullcontext():
            summary = ask()
        apply_summary(result, summary, started_ns)
        return summary
    except (EndpointError, OSError) as exc:
        sink_missing(result, str(exc))
    except KeyboardInterrupt:
        result.stopped = "interrupted"
        sink_missing(result, "interrupted while waiting for the sink's summary")
    return {}


def sink_missing(result: BulkResult, why: str) -> None:
    """The sink's summary never came: say so (bytes_delivered stays what the sender knows)."""
    result.observations.setdefault("sink", {})["missing"] = why
