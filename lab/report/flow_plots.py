"""Report plots of bulk points and flow groups (docs/architecture.md#flows-and-oracles): goodput over
time per flow, cwnd over time of the TCP flows, fairness bars with Jain's index, latency-under-load
CDFs one line per point, and goodput beside the textbook's prediction across a sweep. Each builder
takes the result.json payload and a lab.report.plots.Style; `FLOW_FIGURES` is what lab.report.plots
adds to the report when some point has flows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lab.i18n import _
from lab.report.appearance import OKABE_ITO
from lab.report.appearance import label as protocol_label
from lab.report.flows import bulk_flows, has_flows, link_rate, probe_flows
from lab.report.plots import REPORT, US_PER_MS, Style, _grid, _layout, _pyplot, _title, color
from lab.report.summary import point_label

LINK_STYLE = {"color": "#444444", "linestyle": "--", "linewidth": 1.2}
SMOOTHING_S = 0.5
PALETTE = tuple(OKABE_ITO) + ("#332288", "#117733", "#882255", "#44AA99", "#999933", "#AA4499")


def _flow_colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _flow_label(flow: Mapping[str, Any]) -> str:
    """A flow's name (`tcp-cubic-2`); a protocol alone at its point shows its label."""
    return str(flow.get("name"))


def _smoothed(rows: list[list[Any]], step: float, width: float) -> tuple[list[float], list[float]]:
    """Bytes per interval -> Mbit/s averaged over bins of `width` seconds (0.1 s samples of
    competing flows are mostly the noise of whose packet the queue took next)."""
    per_bin = max(1, round(width / step))
    bins: dict[int, float] = {}
    for t, size, *_rest in rows:
        index = int((float(t) - 1e-9) // (per_bin * step))
        bins[index] = bins.get(index, 0.0) + float(size)
    xs = [(i + 1) * per_bin * step for i in sorted(bins)]
    ys = [bins[i] * 8 / (per_bin * step) / 1e6 for i in sorted(bins)]
    return xs, ys


def _group_points(payload: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Points whose flows ran together ([[flows]]: the point has its group's figures)."""
    return [p for p in payload.get("points", []) if has_flows(p) and p.get("group") is not None]


def _alone_points(payload: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Points where each protocol ran alone ([traffic] kind = "bulk")."""
    return [p for p in payload.get("points", []) if has_flows(p) and p.get("group") is None]


def _plain_log_ticks(axis: Any) -> None:
    """Tick labels of a log axis as plain numbers (the report turns mathtext off: `10^{1}` would show
    as its source)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda _value, _pos: ""))


def flow_goodput_figure(payload: Mapping[str, Any], style: Style = REPORT) -> Any:
    """Goodput over time, one line per flow, one panel per group point (the link's rate dashed)."""
    plt = _pyplot(style)
    points = _group_points(payload) or _alone_points(payload)
    fig, axes = _grid(plt, len(points) or 1, style)
    for ax, point in zip(axes, points, strict=False):
        for index, flow in enumerate(bulk_flows(point)):
            bulk = flow.get("bulk") or {}
            step = float(bulk.get("interval_s") or 0.1)
            rows = [r for r in bulk.get("intervals") or [] if len(r) >= 2 and None not in r[:2]]
            start = float(flow.get("start_s") or 0.0)
            xs, ys = _smoothed(rows, step, SMOOTHING_S)
            ax.plot([start + x for x in xs], ys, color=_flow_colour(index), linewidth=1.6,
                    label=_flow_label(flow))
        rate = link_rate(point)
        if rate:
            ax.axhline(rate / 1e6, label=_("link rate"), **LINK_STYLE)
        _over_time(ax, _("goodput (Mbit/s)"), point, style, len(points))
    fig.suptitle(_("Goodput over time, per flow (bytes the sink counted, per half second)"))
    _layout(fig)
    return fig


def _over_time(ax: Any, ylabel: str, point: Mapping[str, Any], style: Style, panels: int) -> None:
    """The axes, legend and title of one group's panel of a figure over the flows' time."""
    ax.set_xlabel(_("time since the flows started (s)"))
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=style.font * 0.85)
    _title(ax, point_label(point), style, min(style.columns, panels))


def cwnd_figure(payload: Mapping[str, Any], style: Style = REPORT) -> Any:
    """Congestion window (segments) over time of every TCP flow, from its TCP_INFO trace."""
    plt = _pyplot(style)
    points = [p for p in payload.get("points", []) if any((f.get("bulk") or {}).get("tcp_trace")
                                                          for f in bulk_flows(p))]
    fig, axes = _grid(plt, len(points) or 1, style)
    for ax, point in zip(axes, points, strict=False):
        for index, flow in enumerate(bulk_flows(point)):
            rows = (flow.get("bulk") or {}).get("tcp_trace") or []
            trace = [r for r in rows if len(r) >= 2 and None not in r[:2]]
            if trace:
                start = float(flow.get("start_s") or 0.0)
                ax.plot([start + float(r[0]) for r in trace], [float(r[1]) for r in trace],
                        color=_flow_colour(index), linewidth=1.4, label=_flow_label(flow))
        _over_time(ax, _("cwnd (segments)"), point, style, len(points))
    fig.suptitle(_("TCP congestion window over time (TCP_INFO snd_cwnd)"))
    _layout(fig)
    return fig


def fairness_figure(payload: Mapping[str, Any], style: Style = REPORT) -> Any:
    """Each bulk flow's goodput as a bar, per group point; Jain's index in the panel's title."""
    plt = _pyplot(style)
    points = [p for p in _group_points(payload) if len(bulk_flows(p)) > 1]
    fig, axes = _grid(plt, len(points) or 1, style)
    for ax, point in zip(axes, points, strict=False):
        flows = bulk_flows(point)
        heights = [float(f.get("goodput_bps") or 0) / 1e6 for f in flows]
        bars = ax.bar(range(len(flows)), heights, color=[_flow_colour(i) for i in range(len(flows))])
        ax.bar_label(bars, fmt="%.2f", padding=2)
        ax.set_xticks(range(len(flows)), [_flow_label(f) for f in flows], rotation=20, ha="right")
        rate = link_rate(point)
        if rate:
            ax.axhline(rate / 1e6, label=_("link rate"), **LINK_STYLE)
            ax.axhline(rate / 1e6 / len(flows), label=_("equal share"), color="#999999", linestyle=":")
            ax.legend(loc="upper right", fontsize=style.font * 0.85)
        ax.set_ylabel(_("goodput (Mbit/s)"))
        ax.margins(y=0.15)
        jain = (point.get("group") or {}).get("jain_index")
        title = point_label(point)
        if jain is not None:
            title += " · " + _("Jain's index {jain}").format(jain=f"{jain:.3f}")
        _title(ax, title, style, min(style.columns, len(points)))
    fig.suptitle(_("Fairness: each flow's share of the link"))
    _layout(fig)
    return fig


def loaded_latency_figure(payload: Mapping[str, Any], style: Style = REPORT) -> Any:
    """CDF of the probes' RTT under load, one line per point (the queue limit), idle dashed."""
    plt = _pyplot(style)
    fig, axes = _grid(plt, 1, style)
    ax = axes[0]
    points = [p for p in payload.get("points", []) if probe_flows(p)]
    for index, point in enumerate(points):
        for flow in probe_flows(point)[:1]:
            rtts = sorted(r[2] for r in flow.get("timeline") or [] if len(r) > 2 and r[2] is not None)
            if rtts:
                sent = max(int(flow.get("sent") or 0), len(rtts))
                ax.step(rtts, [(i + 1) / sent for i in range(len(rtts))], where="post", linewidth=2,
                        color=_flow_colour(index), label=point_label(point))
        idle = ((point.get("group") or {}).get("idle_rtt_us") or {}).get("p50")
        if idle is not None:
            ax.axvline(idle / US_PER_MS, color=_flow_colour(index), linestyle=":", linewidth=1)
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel(_("round-trip time under load (ms, log scale; dotted: idle median)"))
    ax.set_ylabel(_("share of probes answered"))
    ax.set_ylim(0, 1.02)
    if points:
        ax.legend(loc="lower right")
    fig.suptitle(_("Latency under load: probes while bulk traffic fills the queue"))
    _layout(fig)
    return fig


def oracle_figure(payload: Mapping[str, Any], style: Style = REPORT) -> Any:
    """Each protocol's goodput alone at every point (solid), beside Mathis's prediction (dashed)."""
    plt = _pyplot(style)
    points = _alone_points(payload)
    protocols = list(dict.fromkeys(str(f.get("protocol")) for p in points for f in bulk_flows(p)))
    fig, axes = _grid(plt, 1, style)
    ax = axes[0]
    for proto in protocols:
        xs, measured, predicted_x, predicted = [], [], [], []
        for index, point in enumerate(points):
            for flow in bulk_flows(point):
                if flow.get("protocol") != proto or flow.get("goodput_bps") is None:
                    continue
                xs.append(index)
                measured.append(float(flow["goodput_bps"]) / 1e6)
                mathis = (flow.get("predictions") or {}).get("mathis")
                if mathis:
                    predicted_x.append(index)
                    predicted.append(float(mathis["goodput_bps"]) / 1e6)
        shade = color(proto, protocols)
        ax.plot(xs, measured, marker="o", color=shade, linewidth=2, label=protocol_label(proto))
        if predicted:
            ax.plot(predicted_x, predicted, marker="x", linestyle="--", color=shade, linewidth=1,
                    label=_("{protocol}: Mathis").format(protocol=protocol_label(proto)))
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    ax.set_xticks(range(len(points)), [point_label(p) for p in points], rotation=20, ha="right")
    ax.set_ylabel(_("goodput (Mbit/s, log scale)"))
    if protocols:  # below the axes: the lines cross the whole panel
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, fontsize=style.font * 0.85)
    fig.suptitle(_("Goodput of each protocol alone, beside Mathis's MSS/RTT x C/sqrt(p)"))
    _layout(fig)
    return fig


FLOW_FIGURES = {
    "flow_oracle": oracle_figure,
    "flow_goodput": flow_goodput_figure,
    "flow_cwnd": cwnd_figure,
    "flow_fairness": fairness_figure,
    "flow_latency": loaded_latency_figure,
}


def flow_figures_for(payload: Mapping[str, Any]) -> list[str]:
    """The flow figures this payload has something to show in."""
    points = payload.get("points", [])
    names = []
    if _alone_points(payload) and len(_alone_points(payload)) > 1:
        names.append("flow_oracle")
    if any(bulk_flows(p) for p in points):
        names.append("flow_goodput")
    if any((f.get("bulk") or {}).get("tcp_trace") for p in points for f in bulk_flows(p)):
        names.append("flow_cwnd")
    if any(len(bulk_flows(p)) > 1 for p in _group_points(payload)):
        names.append("flow_fairness")
    if any(probe_flows(p) for p in points):
        names.append("flow_latency")
    return names
