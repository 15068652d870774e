"""Measuring clients, protocol-independent: run any registered protocol's client, `lab send`, summaries.

A client only *records* (a `RunRecord`: every send and every arrival with monotonic timestamps);
`lab.metrics` turns records into figures. Each protocol's client lives in its module under
`lab/protocols/` and shares the schedule of `lab.schedule` (docs/architecture.md#protocols).
"""

from __future__ import annotations

import json

from lab.metric_registry import format_scaled, time_unit_of
from lab.protocols import get_protocol, registry
from lab.records import RTT_KEYS, Result, RunRecord, TrafficPlan
from lab.schedule import Progress, RunInterrupted
from lab.targets import resolve_lab_target, where

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C'd program


def run_client(
    protocol: str,
    address: tuple[str, int],
    plan: TrafficPlan,
    *,
    progress: Progress | None = None,
    deadline_s: float | None = None,
    round_trip_s: float = 0.0,
) -> RunRecord:
    """Run one measuring client of the registered `protocol` against an echo server."""
    return get_protocol(protocol).run(
        address, plan, progress=progress, deadline_s=deadline_s, round_trip_s=round_trip_s
    )


# --- `lab send` ----------------------------------------------------------------------------------
def send_command(protocol: str, host: str, port: int, plan: TrafficPlan, as_json: bool) -> int:
    """`lab send`: measure against an echo server, print a summary (or the result as JSON)."""
    from lab.metrics import compute_result

    get_protocol(protocol)  # unknown protocol: a ConfigError listing the known ones
    ip = resolve_lab_target(host)  # normalised once; refused before any socket exists
    code = 0
    try:
        record = run_client(protocol, (ip, port), plan)
    except RunInterrupted as stopped:
        record, code = stopped.record, EXIT_INTERRUPTED
    result = compute_result(record)
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        print(format_summary(result, where((ip, port))))
    return code


def format_summary(result: Result, where: str) -> str:
    """A short human summary of one result (what `lab send` prints without --json).

    Each line of times is in the unit its median fits: µs on loopback, ms over a 40 ms link.
    """

    def times(label: str, figures: dict, keys: tuple[str, ...]) -> str:
        unit, scale = time_unit_of(figures.get("p50"))
        values = "  ".join(
            f"{k} {format_scaled(None if figures.get(k) is None else figures[k] / scale)}" for k in keys
        )
        return label.format(unit=unit) + values

    lo, hi = result.loss_ci95
    rtt = result.rtt_us
    lines = [
        f"{result.protocol} {where}: {result.sent} sent, {result.received} received, "
        f"{result.lost} lost ({100 * result.loss_ratio:.2f}%, 95% CI {100 * lo:.2f}-{100 * hi:.2f}%)",
        times("rtt {unit}: ", rtt, RTT_KEYS) + f"  ({timestamps_phrase(result)})",
    ]
    if result.timestamps == "kernel" and result.rtt_user_us:
        lines.append(times("rtt {unit} in user space: ", result.rtt_user_us, ("min", "p50", "p99")))
    if result.owd_forward_us and result.owd_reverse_us:
        lines.append(one_way_line(result))
    if result.loss_forward_ratio is not None:
        lines.append(direction_line(result))
    if result.lost and result.rtt_censored_us:
        # Lost probes stay in the latency picture, each counted as waiting the whole timeout.
        label = f"rtt {{unit}} with the {result.lost} lost at the {result.timeout_s:g} s timeout: "
        lines.append(times(label, result.rtt_censored_us, ("p50", "p90", "p99")))
    if result.rtt_uncorrected_us is not None:
        lines.append(times("rtt {unit} from actual send (uncorrected): ", result.rtt_uncorrected_us,
                           ("p50", "p99", "max")))
    j_unit, j_scale = time_unit_of(result.jitter_us)
    lines.append(
        f"jitter {result.jitter_us / j_scale:.{3 if j_unit == 'ms' else 1}f} {j_unit}  late {result.late}  "
        f"duplicates {result.duplicates}  reordered {result.reordered}  corrupted {result.corrupted}  "
        f"goodput {result.goodput_bps / 1e6:.3f} Mbit/s  in {result.duration_s:.2f} s"
    )
    if result.protocol in registry():  # a result of a protocol this install knows: its own lines
        lines += registry()[result.protocol].summary_lines(result)
    lines += [f"note: {note}" for note in notes(result)]
    return "\n".join(lines)


def timestamps_phrase(result: Result) -> str:
    """Which clock the RTT line reads: the kernel's stamps or user-space times."""
    return "kernel timestamps" if result.timestamps == "kernel" else "user-space timestamps"


def one_way_line(result: Result) -> str:
    """The one-way delays and the server's turnaround, in the unit the forward median fits."""
    forward, reverse = result.owd_forward_us or {}, result.owd_reverse_us or {}
    turnaround = result.server_turnaround_us or {}
    unit, scale = time_unit_of(max(forward.get("p50") or 0, reverse.get("p50") or 0))

    def shown(figures: dict, key: str) -> str:
        value = figures.get(key)
        return format_scaled(None if value is None else value / scale)

    return (f"one-way {unit}: forward p50 {shown(forward, 'p50')}  p99 {shown(forward, 'p99')}  "
            f"reverse p50 {shown(reverse, 'p50')}  p99 {shown(reverse, 'p99')}  "
            f"server turnaround p50 {shown(turnaround, 'p50')}")


def direction_line(result: Result) -> str:
    """Losses by direction: the server never saw the probe (forward), or its reply was lost (reverse)."""
    def part(name: str, lost: int | None, ratio: float | None, ci: list[float] | None) -> str:
        if ratio is None:
            return f"{name} -"
        interval = f", 95% CI {100 * ci[0]:.2f}-{100 * ci[1]:.2f}%" if ci else ""
        return f"{name} {lost} ({100 * ratio:.2f}%{interval})"

    line = ("lost by direction: "
            + part("forward", result.lost_forward, result.loss_forward_ratio, result.loss_forward_ci95) + "  "
            + part("reverse", result.lost_reverse, result.loss_reverse_ratio, result.loss_reverse_ci95))
    if result.lost_direction_unknown:
        line += f"  unknown {result.lost_direction_unknown}"
    return line


def notes(result: Result) -> list[str]:
    """Sentences for what a result's notes say went unusually (nothing here goes unmentioned)."""
    x = result.notes
    out = []
    if x.interrupted:
        undecided = x.undecided
        out.append(f"interrupted (Ctrl-C): the figures cover the {result.sent} probes settled by then"
                   + (f"; {undecided} still inside their timeout were left out" if undecided else ""))
    if result.sent and not result.received and not result.late and not result.corrupted:
        out.append("no probe came back: is an echo server (RFC 862) listening there? "
                   "`lab serve` starts one")
    if x.deadline_hit:
        out.append("the run hit its overall deadline before every probe was sent and settled")
    if x.connection_ended:
        out.append(f"the connection ended early: {x.connection_ended}")
    if x.merged_replies:
        out.append(f"{x.merged_replies} replies held several probes in one datagram: this echo "
                   "server does not keep datagram boundaries (e.g. socat UDP-LISTEN with PIPE); "
                   "their probes count as received")
    if x.icmp_refused:
        out.append(f"{x.icmp_refused} sends drew ICMP port unreachable: the echo server went away")
    if x.unknown_seq:
        out.append(f"{x.unknown_seq} replies carried a sequence number that was never sent")
    if x.timestamps_fallback:
        out.append(f"user-space timestamps: {x.timestamps_fallback}")
    if x.rtt_clamped:
        out.append(f"{x.rtt_clamped} RTT values were outside HdrHistogram's range (1 µs to 1 h) "
                   "and were clamped into it for the percentiles; min, max and mean are exact")
    return out
