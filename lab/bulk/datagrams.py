"""A bulk flow of datagrams (UDP, UDP-Lite) at a set rate, counted by the sink by sequence number.

Without congestion control a datagram sender must be told its rate (`BulkPlan.rate_bps`, bits/s
of datagram bytes, as iperf3 -b counts UDP payload). The flow first opens a TCP control connection
to the sink's port (the sink is there, and the flow's id is announced), then sends `plan.size`-byte
datagrams (a 32-byte header of flow id, seq, send time, CRC-32) paced at the rate, and at the end
sends END on the control connection; the sink answers with what arrived: received, duplicates,
corrupted, RFC 4737 reordered, RFC 3550 jitter (docs/architecture.md#bulk-traffic). The control
connection is TCP, so the answer crosses a lossy link.
"""

from __future__ import annotations

import select
import socket
import time
import zlib
from collections.abc import Callable
from typing import Any

from lab.bulk import wire
from lab.bulk.common import (
    NS_PER_S,
    Bounds,
    Sending,
    collect_summary,
    connect_tcp,
    datagram_figures,
    new_flow_id,
    read_summary,
    sink_missing,
    wait_until,
)
from lab.bulk.plan import BulkPlan, BulkResult
from lab.errors import ConfigError, EndpointError
from lab.targets import lab_address
from lab.timing import fine_timers

MAX_BURST = 64  # datagrams sent back to back when the sender is behind its schedule
QUIET_MIN_S = 0.25  # the sink answers once the flow was quiet this long (plus the path's round trip)


def need_rate(protocol_name: str, plan: BulkPlan) -> float:
    """The plan's rate; ConfigError when there is none (datagrams have no congestion control)."""
    if plan.rate_bps is None:
        raise ConfigError(f"bulk traffic over {protocol_name} needs a rate (e.g. --rate 20mbit, "
                          f"[flows] rate = \"20mbit\"): it has no congestion control to find one",
                          key="rate")
    return plan.rate_bps


def run_datagram_bulk(protocol: Any, address: tuple[str, int], plan: BulkPlan, *,
                      progress: Callable[..., None] | None = None, round_trip_s: float = 0.0) -> BulkResult:
    """One paced datagram flow of `protocol` (its `open_socket`) to the sink at `address`."""
    from lab.protocols.common import big_buffers, unreachable

    rate = need_rate(protocol.name, plan)
    if plan.size < wire.DATAGRAM.size:
        raise ConfigError(f"bulk datagrams carry a {wire.DATAGRAM.size}-byte header: size must be at "
                          f"least {wire.DATAGRAM.size}, got {plan.size}", key="size")
    host, port = lab_address(address)
    control = connect_tcp((host, port), protocol.label, None, round_trip_s)
    result = BulkResult(protocol=protocol.name, interval_s=plan.interval_s, plan=plan.to_dict())
    with control, protocol.open_socket(host) as sock, fine_timers():  # paced: wake-ups on time
        big_buffers(sock)
        try:
            sock.connect((host, port))
        except OSError as exc:
            raise unreachable((host, port), protocol.label, exc, connected=False) from exc
        sock.setblocking(False)
        # Announced before the start, so the sink knows the flow before its first datagram; its
        # intervals count from the planned start (flows planned together line up) or from now.
        flow_id = new_flow_id()
        announced = plan.start_at_ns or time.monotonic_ns()
        interval_ns = round(plan.interval_s * NS_PER_S)
        control.sendall(wire.Hello(wire.MODE_DATAGRAMS, flow_id, announced, interval_ns).encode())
        _accepted(control, (host, port))
        control.setblocking(False)
        wait_until(plan.start_at_ns)
        started = time.monotonic_ns()  # the pacing's clock: the accept's round trip is not a backlog
        result.started_ns = announced
        bounds = Bounds(plan, started)
        payload = wire.pattern(plan.size - wire.DATAGRAM.size)
        payload_crc = zlib.crc32(payload)
        gap_ns = plan.size * 8 * NS_PER_S / rate
        seq = sent_bytes = refused = 0
        with Sending(result, bounds) as sending:
            while True:
                now = time.monotonic_ns()
                if bounds.sample_due(now) and progress is not None:
                    progress({"t_s": bounds.t_s(now), "bytes_sent": sent_bytes, "datagrams_sent": seq})
                if bounds.over(now, sent_bytes):
                    break
                burst = 0
                while (burst < MAX_BURST and started + seq * gap_ns <= now
                       and not bounds.over(now, sent_bytes)):
                    data = wire.datagram(flow_id, seq, time.monotonic_ns(), payload, payload_crc)
                    try:
                        sock.send(data)
                    except BlockingIOError:  # our own socket is full: wait for room, then send it
                        select.select([], [sock], [], 0.01)
                        break
                    except ConnectionRefusedError:  # ICMP for an earlier one: the sink went away
                        refused += 1
                        continue
                    seq += 1
                    sent_bytes += len(data)
                    burst += 1
                if burst >= MAX_BURST:
                    continue
                due_ns = started + seq * gap_ns
                wait_ns = min(due_ns, bounds.next_sample_ns, bounds.end_ns) - time.monotonic_ns()
                if wait_ns > 0:
                    readable, _, _ = select.select([control], [], [], wait_ns / NS_PER_S)
                    if readable and _control_closed(control):
                        bounds.stopped = "error"
                        sink_missing(result, "the sink closed the control connection")
                        break
        sending.ended(sent_bytes, started)
        interrupted = sending.interrupted
        if refused:
            result.observations["icmp_refused"] = refused
        quiet_s = QUIET_MIN_S + 2 * round_trip_s
        # The sink answers once the flow is quiet (a queue still draining is not), by MAX_END_WAIT_S.
        wait_s = sending.summary_wait_s(round_trip_s, sink_waits_s=wire.MAX_END_WAIT_S)

        def ask() -> dict[str, Any]:
            control.setblocking(True)
            control.sendall(wire.encode_end(seq, sent_bytes, round(quiet_s * NS_PER_S)))
            return read_summary(control, wait_s, (host, port))

        summary = collect_summary(result, started, interrupted, ask)
        result.datagrams = datagram_figures(summary, seq)
    return result


def _accepted(control: socket.socket, address: tuple[str, int]) -> None:
    """Wait for the sink's ACCEPTED (the socket's connect timeout bounds it)."""
    from lab.targets import where

    answer = b""
    try:
        while len(answer) < len(wire.ACCEPTED) and (chunk := control.recv(len(wire.ACCEPTED) - len(answer))):
            answer += chunk
    except OSError as exc:
        raise EndpointError(f"the sink at {where(address)} did not accept the flow "
                            f"({exc.strerror or exc})") from exc
    if answer != wire.ACCEPTED:
        raise EndpointError(f"the sink at {where(address)} did not accept the flow (is it a wirelab "
                            "sink? `lab serve discard` starts one)")


def _control_closed(control: socket.socket) -> bool:
    """True if the sink closed (or reset) the control connection: nothing else comes on it early."""
    try:
        return control.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
