"""`lab send PROTO HOST PORT --bulk`: one flow to a discard sink, shown as iperf3 shows one.

Per-interval lines (what the sink counted in each interval, and for TCP the congestion window,
smoothed RTT and retransmissions sampled then), a separator, then the totals; `--json` prints the
BulkResult instead (docs/architecture.md#bulk-traffic).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from lab.bulk.plan import BulkPlan, BulkResult
from lab.metric_registry import format_rate

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as `lab send` (lab.endpoints.client)


def send_bulk_command(protocol: str, host: str, port: int, plan: BulkPlan, as_json: bool) -> int:
    """Run one flow against the sink at host:port and print it; the exit status (130 if interrupted)."""
    from lab.protocols import get_protocol
    from lab.targets import resolve_lab_target, where

    chosen = get_protocol(protocol)
    ip = resolve_lab_target(host)  # refused before any socket exists
    chosen.require_available()
    if not as_json:  # at once: the user sees the flow is under way (and what it will be)
        print(title(protocol, where((ip, port)), plan.to_dict()), flush=True)
    status = _StatusLine() if not as_json and sys.stderr.isatty() else None
    try:
        result = chosen.run_bulk((ip, port), plan, progress=status)
    except KeyboardInterrupt:  # before the flow started (connecting, waiting for its start time)
        if not as_json:
            print("interrupted before the flow started: nothing measured")
        return EXIT_INTERRUPTED
    finally:
        if status is not None:
            status.clear()
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        print(format_bulk(result, where((ip, port)), with_title=False))
    return EXIT_INTERRUPTED if result.stopped == "interrupted" else 0


class _StatusLine:
    """While a flow runs, one line on the terminal's stderr, rewritten each interval: what the sender
    has sent so far (the sink's per-interval counts come at the end)."""

    def __init__(self) -> None:
        self.shown = False

    def __call__(self, report: dict[str, Any]) -> None:
        parts = [f"{report.get('t_s', 0):6.1f} s", f"sent {human_bytes(report.get('bytes_sent', 0))}"]
        if report.get("cwnd") is not None:
            parts.append(f"cwnd {report['cwnd']}")
        if report.get("retransmits") is not None:
            parts.append(f"retransmits {report['retransmits']}")
        sys.stderr.write("\r" + "  ".join(parts) + "\033[K")
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def human_bytes(size: float) -> str:
    """1234567 -> '1.23 MB' (decimal prefixes, as rates are)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size:.0f} B"


def human_rate(bps: float) -> str:
    """896e6 -> '896.0 Mbit/s' (the report's format_rate, one digit after the point)."""
    return format_rate(bps, digits=1)


def interval_lines(result: BulkResult) -> list[str]:
    """One line per interval: its span, what the sink counted in it, the goodput; TCP's state then."""
    trace = result.tcp_trace
    lines = []
    tcp = bool(trace)
    head = f"{'interval':>13}  {'delivered':>10}  {'goodput':>13}"
    lines.append(head + (f"  {'cwnd':>6}  {'srtt':>8}  {'retr':>5}" if tcp else ""))
    for t_s, size in result.intervals:
        start = max(0.0, t_s - result.interval_s)
        span = t_s - start
        line = (f"{start:6.2f}-{t_s:<6.2f}  {human_bytes(size):>10}  "
                f"{human_rate(8 * size / span if span > 0 else 0.0):>13}")
        if tcp:
            row = _trace_at(trace, t_s)
            if row is not None:
                line += f"  {int(row[1]):>6}  {row[2] / 1000:>6.2f}ms  {int(row[3]):>5}"
        lines.append(line)
    return lines


def _trace_at(trace: list[list[float]], t_s: float) -> list[float] | None:
    """The last TCP_INFO sample taken by `t_s` (a little after: samples come just after the mark)."""
    chosen = None
    for row in trace:
        if row[0] <= t_s + 0.05 * max(t_s, 1e-3):
            chosen = row
    return chosen


def title(protocol: str, where: str, plan: dict[str, Any]) -> str:
    """'tcp 127.0.0.1:9009: bulk for 5 s' (or N bytes, at a rate)."""
    bound = f"{plan.get('duration_s', 0):g} s" + (f" or {human_bytes(plan['max_bytes'])}"
                                                  if plan.get("max_bytes") else "")
    rate = f" at {human_rate(plan['rate_bps'])}" if plan.get("rate_bps") else ""
    return f"{protocol} {where}: bulk for {bound}{rate}"


def format_bulk(result: BulkResult, where: str, *, with_title: bool = True) -> str:
    """Per-interval lines, then the totals (what `lab send --bulk` prints after its title line)."""
    algorithm = (result.observations.get("tcp") or {}).get("congestion_control")
    lines = [title(result.protocol, where, result.plan)] if with_title else []
    if result.intervals:
        lines += interval_lines(result)
        lines.append(" ".join("-" * 20))
    if (result.observations.get("sink") or {}).get("missing"):
        lines.append(f"sent {human_bytes(result.bytes_sent)} in {result.duration_s:.2f} s; delivered: "
                     "unknown (no counts from the sink)")
    else:
        lines.append(f"sent {human_bytes(result.bytes_sent)}, "
                     f"delivered {human_bytes(result.bytes_delivered)} in order and intact, "
                     f"in {result.duration_s:.2f} s: goodput {human_rate(result.goodput_bps)}")
    extra = [f"congestion control {algorithm}"] if algorithm else []
    if result.retransmits is not None:
        extra.append(f"retransmits {result.retransmits}")
    if result.min_rtt_us is not None:
        us = result.min_rtt_us
        extra.append(f"min rtt {us / 1000:.2f} ms" if us >= 1000 else f"min rtt {us:.0f} µs")
    if result.mss:
        extra.append(f"mss {result.mss}")
    if extra:
        lines.append("  ".join(extra))
    figures = result.datagrams
    if figures and figures.get("received") is not None:
        lo, hi = figures["loss_ci95"]
        lines.append(f"datagrams: {figures['sent']} sent, {figures['received']} received, "
                     f"{figures['lost']} lost ({100 * figures['loss_ratio']:.2f}%, "
                     f"95% CI {100 * lo:.2f}-{100 * hi:.2f}%)")
        lines.append(f"jitter {figures['jitter_us'] / 1000:.3f} ms  reordered {figures['reordered']}  "
                     f"duplicates {figures['duplicates']}  corrupted {figures['corrupted']}")
    lines += [f"note: {note}" for note in bulk_notes(result)]
    return "\n".join(lines)


def bulk_notes(result: BulkResult) -> list[str]:
    """Sentences for what went unusually."""
    out = []
    sink = result.observations.get("sink") or {}
    if result.stopped == "interrupted":
        out.append("interrupted (Ctrl-C): the figures cover the flow until then")
    if result.stopped == "error":
        out.append(f"the flow ended early: {sink.get('error') or sink.get('missing') or 'a send failed'}")
    if missing := sink.get("missing"):
        out.append(f"the sink's counts are missing: {missing}")
    if broken := sink.get("broken"):
        out.append(f"the sink stopped reading the stream: {broken}")
    if sink.get("corrupted_blocks"):
        out.append(f"{sink['corrupted_blocks']} blocks arrived damaged (CRC-32) and were not counted")
    if overflows := sink.get("receive_buffer_overflows"):
        out.append(f"{overflows} datagrams overflowed a receive buffer at the sink's end during the flow: "
                   "lost there, not on the path (the sink could not keep up with the rate)")
    if refused := result.observations.get("icmp_refused"):
        out.append(f"{refused} sends drew ICMP port unreachable: the sink went away")
    return out
