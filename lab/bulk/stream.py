"""A bulk flow over TCP (any congestion control): blocks as fast as the connection takes them.

The protocol's `prepare_socket` runs before connect, so a variant's congestion control governs the
whole connection. TCP_NOTSENT_LOWAT keeps the bytes waiting unsent in the kernel small: when the
flow's time is up, what is left to deliver is about a congestion window and 50 ms of sending, not a
4 MB send buffer (the flow stays bounded in time); it and the block size follow the delivery rate.
TCP_INFO is sampled every interval into `tcp_trace` (docs/architecture.md#bulk-traffic). At the end
the sender half-closes and reads the sink's summary.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Callable
from typing import Any

from lab.bulk import wire
from lab.bulk.common import (
    NS_PER_S,
    Bounds,
    Sending,
    collect_summary,
    connect_tcp,
    new_flow_id,
    read_summary,
    wait_until,
)
from lab.bulk.plan import BulkPlan, BulkResult
from lab.targets import lab_address

TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # linux/tcp.h
NOTSENT_LOWAT = 128 * 1024
# Both follow the connection's delivery rate (TCP_INFO), sampled every interval: what waits unsent
# in the kernel stays about UNSENT_S of sending (the flow ends on time on a slow link), and a block
# about BLOCK_S of it; on a fast path, small blocks and a small unsent queue cost a system call per
# 64 KiB (a 10 Gbit/s loopback flow reached 0.55-0.75x of iperf3 with 64 KiB and 128 KiB fixed).
UNSENT_S, MAX_NOTSENT_LOWAT = 0.05, 8 * 1024 * 1024
BLOCK_S = 0.01
LAST_BLOCK_WAIT_S = 2.0  # finishing the block under way when the time is up


def trace_row(t_s: float, info: dict[str, Any]) -> list[float]:
    """One `tcp_trace` row: [t_s, snd_cwnd, srtt_us, total_retrans, delivery_rate_bps]."""
    return [round(t_s, 6), info.get("snd_cwnd", 0), info.get("rtt_us", 0), info.get("total_retrans", 0),
            8 * info.get("delivery_rate", 0)]


def run_tcp_bulk(protocol: Any, address: tuple[str, int], plan: BulkPlan, *,
                 progress: Callable[..., None] | None = None, round_trip_s: float = 0.0) -> BulkResult:
    """One bulk flow of `protocol` (TCP or a variant: its `prepare_socket`) to the sink at `address`."""
    from lab.kernel import tcp_info

    host, port = lab_address(address)

    def prepare(sock: socket.socket) -> None:
        protocol.prepare_socket(sock)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)

    sock = connect_tcp((host, port), protocol.label, prepare, round_trip_s)
    result = BulkResult(protocol=protocol.name, interval_s=plan.interval_s, plan=plan.to_dict())
    with sock:
        wait_until(plan.start_at_ns)
        started = time.monotonic_ns()
        result.started_ns = started
        bounds = Bounds(plan, started)
        flow = wire.Hello(wire.MODE_STREAM, new_flow_id(), started, bounds.interval_ns)
        writer = wire.BlockWriter()
        observed = result.observations.setdefault("tcp", {})
        from lab.protocols.tcp import congestion_control  # (that module names this one only as text)

        observed["congestion_control"] = congestion_control(sock)
        sent = 0  # block bytes handed to the kernel
        pending = memoryview(b"")
        with Sending(result, bounds) as sending:
            sock.sendall(flow.encode())
            sock.setblocking(False)
            while True:
                now = time.monotonic_ns()
                if bounds.sample_due(now):
                    _adapt(sock, writer, _sample(sock, bounds, now, result, sent, progress))
                if pending and now >= bounds.end_ns:  # the sink counts whole blocks: finish this one
                    _finish_block(sock, pending)
                    sent += len(pending)
                    pending = memoryview(b"")
                if not pending:
                    if bounds.over(now, sent):
                        break
                    left = bounds.left(sent)
                    size = None if left is None else max(0, left - wire.BLOCK.size)
                    pending = writer.view(size)  # sent whole before the next view is taken
                try:
                    n = sock.send(pending)
                except BlockingIOError:
                    wait_ns = min(bounds.next_sample_ns, bounds.end_ns) - time.monotonic_ns()
                    select.select([], [sock], [], max(wait_ns, 0) / NS_PER_S)
                    continue
                sent += n
                pending = pending[n:]
        sending.ended(sent, started)
        interrupted = sending.interrupted
        wait_s = sending.summary_wait_s(round_trip_s)

        def ask() -> dict[str, Any]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            return read_summary(sock, wait_s, (host, port), None if interrupted else _acked_growing(sock))

        collect_summary(result, started, interrupted, ask)
        with contextlib.suppress(OSError):
            info = tcp_info(sock)
            observed["tcp_info"] = info
            result.tcp_trace.append(trace_row(bounds.t_s(time.monotonic_ns()), info))
            result.retransmits = info.get("total_retrans")
            result.mss = info.get("snd_mss")
            result.min_rtt_us = info.get("min_rtt_us")
    return result


def _adapt(sock: socket.socket, writer: wire.BlockWriter, info: dict[str, Any] | None) -> None:
    """Size the blocks and the unsent queue to the connection's delivery rate (bytes/s)."""
    rate = (info or {}).get("delivery_rate", 0)
    if rate <= 0:
        return
    writer.resize(min(max(int(rate * BLOCK_S), wire.BLOCK_SIZE), wire.MAX_BLOCK))
    with contextlib.suppress(OSError):
        lowat = min(max(int(rate * UNSENT_S), NOTSENT_LOWAT), MAX_NOTSENT_LOWAT)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, lowat)


def _sample(sock: socket.socket, bounds: Bounds, now: int, result: BulkResult, sent: int,
            progress: Callable[..., None] | None) -> dict[str, Any] | None:
    from lab.kernel import tcp_info

    try:
        info = tcp_info(sock)
    except OSError:
        return None
    row = trace_row(bounds.t_s(now), info)
    result.tcp_trace.append(row)
    if progress is not None:
        progress({"t_s": row[0], "bytes_sent": sent, "cwnd": row[1], "srtt_us": row[2],
                  "retransmits": row[3]})
    return info


def _acked_growing(sock: socket.socket) -> Callable[[], bool]:
    """True each time the connection's acknowledged bytes grew since the last call (TCP_INFO)."""
    from lab.kernel import tcp_info

    last = [-1]

    def growing() -> bool:
        try:
            acked = int(tcp_info(sock).get("bytes_acked", 0))
        except OSError:
            return False
        grew, last[0] = acked > last[0], acked
        return grew

    return growing


def _finish_block(sock: socket.socket, rest: memoryview) -> None:
    """Hand the rest of the block under way to the kernel (bounded): the sink counts whole blocks."""
    deadline = time.monotonic() + LAST_BLOCK_WAIT_S
    while rest:
        left = deadline - time.monotonic()
        if left <= 0:
            raise OSError("the connection took no more data")
        try:
            rest = rest[sock.send(rest):]
        except BlockingIOError:
            select.select([], [sock], [], left)
