"""One registry of the figures a result offers: what scenario expectations check and report tables show.

A `Metric` says once what a figure is called in a scenario file (`rtt_p50_ms`), its unit, how it is
read from a result (its `to_dict()` form, as result.json holds it), a one-line doc, the label of its
row in the summary table (if it has one), how a cell shows it, and whether expectations may use it.
Expectations (lab.scenario), the summary table (lab.report.summary: Markdown, HTML and the
terminal's live table) all take their list from `metrics()`, so a figure is added in one place.

A protocol contributes figures of its own through its `metrics` attribute (lab.protocols): they come
after the lab's own, in registry order. docs/architecture.md#result-object describes the result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lab.i18n import N_
from lab.records import hol_of

Value = float | int | None
DEFAULT_ROW = 1000  # a row without a place of its own: after the lab's own rows
US_PER_MS = 1000.0


# --- cell formats: (value in the metric's unit, the table's time unit 'ms' or 'µs') -> text -------
def format_count(value: Value, _time_unit: str = "ms") -> str:
    """A count as a cell: `7`, or '-' when not measured."""
    if value is None:
        return "-"
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def format_percent(value: Value, _time_unit: str = "ms") -> str:
    """A ratio as a percentage cell: `17.0%`."""
    return "-" if value is None else f"{100 * value:.1f}%"


def format_us(us: Value, time_unit: str = "ms") -> str:
    """Microseconds as a short text in `time_unit` ('ms' or 'µs'; '-' when missing)."""
    if us is None:
        return "-"
    if time_unit == "µs":
        return f"{us:.0f}" if us >= 10 else f"{us:.1f}"
    ms = us / US_PER_MS
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.3f}"


def format_time(value_ms: Value, time_unit: str = "ms") -> str:
    """Milliseconds as a cell in the table's unit ('ms', or 'µs' when every median is under 1 ms)."""
    if value_ms is None:
        return "-"
    return format_us(round(value_ms * US_PER_MS, 6), time_unit)  # the µs result.json holds, no residue


def time_unit_of(us: float | None) -> tuple[str, float]:
    """(unit, µs per unit) a line of times reads best in: ms from a 1 ms median on, else µs."""
    return ("ms", US_PER_MS) if us is not None and us >= US_PER_MS else ("µs", 1.0)


def format_scaled(value: float | None) -> str:
    """A time already scaled to its unit, for a summary line: `1,234`, `12.5`, or '-'."""
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def format_rate(bps: Value, _time_unit: str = "ms", *, digits: int = 2) -> str:
    """Bits per second with a unit: `1.23 Mbit/s` (`digits` after the point)."""
    if bps is None:
        return "-"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.{digits}f} {unit}"
    return f"{bps:.0f} bit/s"


@dataclass(frozen=True, slots=True, kw_only=True)
class Metric:
    """One figure of a result.

    - `name`: as a scenario file's [expect] table writes it (`rtt_p50_ms`); unique.
    - `unit`: of the value `read` returns ("ms" marks a time: the table picks ms or µs for it).
    - `read`: the value from a result's dict form (`Result.to_dict()` / a result.json entry);
      None when the run did not measure it.
    - `doc`: one line saying what it counts.
    - `label`: its row in the summary table, marked with `N_` and translated where the table is
      made; "" for a figure the table does not show. `row` orders the rows (lower first; equal ones
      in registry order): the lab's own rows are 10..100 (TCP's `retransmits` is 110), so a
      protocol's row comes after them by default.
    - `format_cell`: (value, the table's time unit) -> the cell's text.
    - `expectable`: whether an expectation may check it.
    - `shown`: for a row, whether a point's table shows it (None: always), given the point's
      result.json form (e.g. head-of-line only for several streams).
    """

    name: str
    unit: str
    read: Callable[[Mapping[str, Any]], Value]
    doc: str
    label: str = ""
    row: int = DEFAULT_ROW
    format_cell: Callable[[Value, str], str] = format_count
    expectable: bool = True
    shown: Callable[[Mapping[str, Any]], bool] | None = None

    @property
    def timed(self) -> bool:
        """A duration: its row is labelled with the table's time unit (`RTT p50 ms`)."""
        return self.unit == "ms"

    def value(self, result: Mapping[str, Any]) -> Value:
        """`read`, with a result that lacks the figure (an older or hand-edited file) giving None."""
        try:
            return self.read(result)
        except KeyError:
            return None


# --- readers ----------------------------------------------------------------------------------------
def _field(key: str) -> Callable[[Mapping[str, Any]], Value]:
    return lambda result: result.get(key)


def _percentile_ms(key: str, percentile: str) -> Callable[[Mapping[str, Any]], Value]:
    def read(result: Mapping[str, Any]) -> Value:
        value = (result.get(key) or {}).get(percentile)
        return None if value is None else value / US_PER_MS

    return read


def _rtt_ms(percentile: str) -> Callable[[Mapping[str, Any]], Value]:
    return _percentile_ms("rtt_us", percentile)


def _shown_if(key: str) -> Callable[[Mapping[str, Any]], bool]:
    """A row shown only in a point where some result has `key` (e.g. the lab's server's reports)."""
    return lambda point: any(r.get(key) is not None for r in point.get("results", []))


def _text_cell(value: object, _time_unit: str = "ms") -> str:
    return "-" if value is None else str(value)


def _delivered_ratio(result: Mapping[str, Any]) -> Value:
    sent = result.get("sent") or 0
    return result["received"] / sent if sent else None


def _jitter_ms(result: Mapping[str, Any]) -> Value:
    value = result.get("jitter_us")
    return None if value is None else value / US_PER_MS


def _hol_blocked(result: Mapping[str, Any]) -> Value:
    return (hol_of(result) or {}).get("blocked")


def _point_has_hol(point: Mapping[str, Any]) -> bool:
    return any(hol_of(r) for r in point.get("results", []))


GOODPUT_NOTABLE = 0.1  # goodput 10% off what the delivered share implies says something loss does not


def goodput_tells(point: Mapping[str, Any]) -> bool:
    """Whether a point's goodput says more than its loss row. Always for ping-pong traffic (it follows
    the RTT there). With open-loop traffic every protocol sends at the same rate, so goodput is the
    delivered share again, unless the protocols' goodput per delivered probe differs by 10% (or, for
    one protocol, its goodput is 10% off sent-rate x delivered share)."""
    traffic = point.get("traffic") or {}
    rate, size = traffic.get("rate"), traffic.get("size")
    results = [r for r in point.get("results", []) if r.get("received") and r.get("goodput_bps") is not None]
    if not results:
        return False
    if not rate or not size:
        return True
    per_probe = [r["goodput_bps"] / r["received"] for r in results]
    if len(per_probe) > 1:
        return max(per_probe) > (1 + GOODPUT_NOTABLE) * min(per_probe)
    sent = results[0].get("sent") or results[0]["received"]
    implied = results[0]["received"] * size * 8 / (sent / rate)
    return abs(results[0]["goodput_bps"] - implied) > GOODPUT_NOTABLE * implied


# The lab's own figures, in the order scenario errors list them; `row` orders the summary table.
CORE_METRICS: tuple[Metric, ...] = (
    Metric(name="sent", unit="probes", read=_field("sent"), doc="probes sent (the plan's count, or fewer "
           "when a run was cut short)", label=N_("sent"), row=10, expectable=False),
    Metric(name="loss_ratio", unit="ratio", read=_field("loss_ratio"), doc="lost / sent (0..1)",
           label=N_("loss"), row=30, format_cell=format_percent),
    Metric(name="delivered_ratio", unit="ratio", read=_delivered_ratio, doc="received / sent (0..1)",
           format_cell=format_percent),
    Metric(name="received", unit="probes", read=_field("received"), doc="probes whose reply came back",
           label=N_("received"), row=20),
    Metric(name="lost", unit="probes", read=_field("lost"), doc="probes never answered"),
    Metric(name="duplicates", unit="replies", read=_field("duplicates"), doc="extra copies of a reply",
           label=N_("duplicates"), row=80),
    Metric(name="reordered", unit="probes", read=_field("reordered"),
           doc="replies that arrived after a later-sent one", label=N_("reordered"), row=70),
    Metric(name="corrupted", unit="replies", read=_field("corrupted"),
           doc="replies whose payload CRC failed"),
    Metric(name="late", unit="replies", read=_field("late"), doc="replies that came after the timeout"),
    Metric(name="rtt_min_ms", unit="ms", read=_rtt_ms("min"), doc="RTT minimum, ms", format_cell=format_time),
    Metric(name="rtt_p50_ms", unit="ms", read=_rtt_ms("p50"), doc="RTT median, ms", label=N_("RTT p50"),
           row=40, format_cell=format_time),
    Metric(name="rtt_p90_ms", unit="ms", read=_rtt_ms("p90"), doc="RTT p90, ms", format_cell=format_time),
    Metric(name="rtt_p99_ms", unit="ms", read=_rtt_ms("p99"), doc="RTT p99, ms", label=N_("RTT p99"),
           row=50, format_cell=format_time),
    Metric(name="rtt_max_ms", unit="ms", read=_rtt_ms("max"), doc="RTT maximum, ms", format_cell=format_time),
    Metric(name="rtt_mean_ms", unit="ms", read=_rtt_ms("mean"), doc="RTT mean, ms", format_cell=format_time),
    # Timestamps and one-way delay (docs/architecture.md#timestamps-and-one-way-delay).
    Metric(name="timestamps", unit="", read=_field("timestamps"), doc='which clock the RTT reads: "kernel" '
           "(SO_TIMESTAMPING) or \"user\" (user-space times)", label=N_("timestamps"), row=52,
           format_cell=_text_cell, expectable=False, shown=_shown_if("timestamps")),
    Metric(name="rtt_user_p50_ms", unit="ms", read=_percentile_ms("rtt_user_us", "p50"),
           doc="RTT median from user-space times, ms (rtt_p50_ms is the kernel's when it has one)",
           format_cell=format_time),
    Metric(name="owd_forward_p50_ms", unit="ms", read=_percentile_ms("owd_forward_us", "p50"),
           doc="one-way delay client to server, median, ms (the lab's echo server only)",
           label=N_("one-way forward p50"), row=54, format_cell=format_time,
           shown=_shown_if("owd_forward_us")),
    Metric(name="owd_forward_p99_ms", unit="ms", read=_percentile_ms("owd_forward_us", "p99"),
           doc="one-way delay client to server, p99, ms", format_cell=format_time),
    Metric(name="owd_reverse_p50_ms", unit="ms", read=_percentile_ms("owd_reverse_us", "p50"),
           doc="one-way delay server to client, median, ms (the lab's echo server only)",
           label=N_("one-way reverse p50"), row=56, format_cell=format_time,
           shown=_shown_if("owd_reverse_us")),
    Metric(name="owd_reverse_p99_ms", unit="ms", read=_percentile_ms("owd_reverse_us", "p99"),
           doc="one-way delay server to client, p99, ms", format_cell=format_time),
    Metric(name="server_turnaround_p50_ms", unit="ms", read=_percentile_ms("server_turnaround_us", "p50"),
           doc="the echo server's time from receiving a probe to sending its reply, median, ms",
           format_cell=format_time),
    Metric(name="loss_forward_ratio", unit="ratio", read=_field("loss_forward_ratio"),
           doc="probes the server never received / probes whose fate is known (0..1)",
           label=N_("loss forward"), row=32, format_cell=format_percent,
           shown=_shown_if("loss_forward_ratio")),
    Metric(name="loss_reverse_ratio", unit="ratio", read=_field("loss_reverse_ratio"),
           doc="replies lost on the way back / probes the server received (0..1)",
           label=N_("loss reverse"), row=34, format_cell=format_percent,
           shown=_shown_if("loss_reverse_ratio")),
    Metric(name="jitter_ms", unit="ms", read=_jitter_ms, doc="RFC 3550 interarrival jitter, ms",
           label=N_("jitter"), row=60, format_cell=format_time),
    Metric(name="goodput_bps", unit="bit/s", read=_field("goodput_bps"), doc="echoed payload bits per second",
           label=N_("goodput"), row=100, format_cell=format_rate, shown=goodput_tells),
    Metric(name="hol_blocked", unit="probes", read=_hol_blocked,
           doc="probes held back by another stream's delayed probe (streams > 1, metrics.head_of_line)",
           label=N_("head-of-line blocked"), row=90, shown=_point_has_hol),
)


# Bulk flows and flow groups (lab.flows, docs/architecture.md#flows-and-oracles): read from a point's
# `flows` entries (a bulk flow's goodput_bps is the core metric above) and its group's figures
# ([expect.all]). No table row: the report's flows table shows them.
FLOW_METRICS: tuple[Metric, ...] = (
    Metric(name="utilisation", unit="ratio", read=_field("utilisation"),
           doc="a bulk flow's goodput / the link's rate (0..1; only over a rated link)",
           format_cell=format_percent),
    Metric(name="bytes_delivered", unit="bytes", read=_field("bytes_delivered"),
           doc="payload bytes a bulk flow's sink counted, in order and intact"),
    Metric(name="jain_index", unit="ratio", read=_field("jain_index"),
           doc="Jain's fairness index of the group's bulk goodputs ([expect.all]; 1 = equal shares)"),
    Metric(name="rpm_idle", unit="RTT/min", read=_field("rpm_idle"),
           doc="responsiveness before the load: 60 / trimmed-mean RTT of the idle probes ([expect.all])"),
    Metric(name="rpm_loaded", unit="RTT/min", read=_field("rpm_loaded"),
           doc="responsiveness under the load: 60 / trimmed-mean RTT of the probes flows ([expect.all])"),
    Metric(name="rpm_loaded_upload", unit="RTT/min", read=_field("rpm_loaded_upload"),
           doc="rpm_loaded when every bulk flow of the group uploads (client -> server; [expect.all])"),
    Metric(name="rpm_loaded_download", unit="RTT/min", read=_field("rpm_loaded_download"),
           doc="rpm_loaded when every bulk flow of the group downloads (server -> client; [expect.all])"),
)


def _protocol_metrics() -> list[Metric]:
    """Figures the registered protocols contribute, in registry order."""
    from lab.protocols import registry

    return [m for p in registry().values() for m in getattr(p, "metrics", ())]


def metrics() -> tuple[Metric, ...]:
    """Every figure: the lab's own, then the protocols' (a name already taken is not added again)."""
    seen = {m.name for m in CORE_METRICS} | {m.name for m in FLOW_METRICS}
    extra = []
    for metric in _protocol_metrics():
        if metric.name not in seen:
            seen.add(metric.name)
            extra.append(metric)
    return (*CORE_METRICS, *FLOW_METRICS, *extra)


def by_name() -> dict[str, Metric]:
    """name -> Metric, in registry order."""
    return {m.name: m for m in metrics()}


def expectation_metrics() -> dict[str, Metric]:
    """The metrics a scenario's expectations may check, in registry order."""
    return {m.name: m for m in metrics() if m.expectable}


def table_rows() -> tuple[Metric, ...]:
    """The summary table's rows, in order (the metrics with a label, by `row`)."""
    return tuple(sorted((m for m in metrics() if m.label), key=lambda m: m.row))


def value_of(result: Mapping[str, Any], name: str) -> Value:
    """The value of metric `name` in a result's dict form (None if not measured or not registered)."""
    metric = by_name().get(name)
    return None if metric is None else metric.value(result)
