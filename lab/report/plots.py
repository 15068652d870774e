"""Report plots as inline SVG strings (matplotlib, Agg, imported lazily). No fonts or files needed."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping
from typing import Any

from lab.report.summary import (
    expected_loss,
    protocols_of,
    results_by_protocol,
    retransmits,
    stream_count,
    timeline_rows,
)

PROTOCOL_COLORS = {"tcp": "#1f6fb4", "udp": "#d9482b"}
FALLBACK_COLORS = ("#2a9d4b", "#8a4fbf", "#b8860b", "#555555")
# One colour per logical stream in the arrival timeline (matplotlib's tab10 order, which stays
# distinguishable for colour-blind readers better than a ramp); more streams reuse them.
STREAM_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
)
MAX_COLUMNS = 3
PANEL_W, PANEL_H = 4.2, 2.8  # inches per small-multiple panel
US_PER_MS = 1000.0
MS_PER_S = 1000.0


def color(protocol: str, protocols: list[str]) -> str:
    """A stable colour per protocol (TCP blue, UDP red, others from a fixed list)."""
    if protocol in PROTOCOL_COLORS:
        return PROTOCOL_COLORS[protocol]
    others = [p for p in protocols if p not in PROTOCOL_COLORS]
    return FALLBACK_COLORS[others.index(protocol) % len(FALLBACK_COLORS)] if protocol in others else "#555"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "path",  # glyphs as paths: the SVG needs no font installed
            "svg.hashsalt": "wirelab",  # deterministic ids, so re-rendering gives identical files
            # Every text is plain text: a point id like `$\frac{$` is not mathtext nor LaTeX.
            "text.parse_math": False,
            "text.usetex": False,
            "font.size": 8,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
        }
    )
    return plt


def _svg(fig: Any) -> str:
    plt = _pyplot()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    # The RDF metadata block names external vocabularies; the report needs none of it.
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)


def _grid(plt: Any, n: int, *, sharey: bool = False) -> tuple[Any, list[Any]]:
    cols = min(MAX_COLUMNS, max(1, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(PANEL_W * cols, PANEL_H * rows), squeeze=False, sharey=sharey
    )
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def latency_cdf(payload: Mapping[str, Any]) -> str:
    """RTT CDF per sweep point, one line per protocol (from the per-probe timeline)."""
    plt = _pyplot()
    points = payload.get("points", [])
    protocols = protocols_of(payload)
    fig, axes = _grid(plt, len(points) or 1)
    for ax, point in zip(axes, points, strict=False):
        for proto, result in results_by_protocol(point).items():
            rtts = sorted(rtt for _s, _t, rtt, _stream in timeline_rows(result) if rtt is not None)
            if not rtts:
                quant = result.get("rtt_us") or {}
                pairs = [
                    (quant.get(k), q) for k, q in (("min", 0), ("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
                ]
                pairs = [(v / US_PER_MS, q) for v, q in pairs if v is not None]
                if pairs:
                    ax.plot(
                        *zip(*pairs, strict=True),
                        marker="o",
                        color=color(proto, protocols),
                        label=proto.upper(),
                    )
                continue
            sent = max(result["sent"], len(rtts))  # a hand-edited file may say fewer were sent
            ys = [(i + 1) / sent for i in range(len(rtts))]  # lost probes keep the CDF below 1
            ax.step(rtts, ys, where="post", color=color(proto, protocols), label=proto.upper())
        ax.set_title(point["id"], fontsize=9)
        ax.set_xlabel("RTT (ms)")
        ax.set_ylabel("share of probes answered")
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower right", fontsize=7)
    fig.suptitle("Latency CDF (a line that stops below 1: the rest were lost)", fontsize=10)
    fig.tight_layout()
    return _svg(fig)


def loss(payload: Mapping[str, Any]) -> str:
    """Measured loss with its 95% interval vs the link's expected loss, per point and protocol."""
    plt = _pyplot()
    points = payload.get("points", [])
    protocols = protocols_of(payload)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(points) * max(1, len(protocols))), 3.2))
    width = 0.8 / max(1, len(protocols))
    for i, proto in enumerate(protocols):
        xs, ys, err_lo, err_hi, exp_x, exp_y = [], [], [], [], [], []
        for j, point in enumerate(points):
            result = results_by_protocol(point).get(proto)
            if not result:
                continue
            x = j + (i - (len(protocols) - 1) / 2) * width
            value = 100 * result["loss_ratio"]
            lo, hi = (result.get("loss_ci95") or [result["loss_ratio"]] * 2)[:2]
            xs.append(x)
            ys.append(value)
            err_lo.append(max(0.0, value - 100 * lo))
            err_hi.append(max(0.0, 100 * hi - value))
            predicted = expected_loss(point, result)[0]
            if predicted is not None:
                exp_x.append(x)
                exp_y.append(100 * predicted)
        bars = ax.bar(
            xs,
            ys,
            width=width * 0.9,
            color=color(proto, protocols),
            alpha=0.8,
            label=f"{proto.upper()} measured",
        )
        ax.bar_label(bars, fmt="%.1f%%", fontsize=6, padding=1)  # a 0 % bar is otherwise invisible
        ax.errorbar(xs, ys, yerr=[err_lo, err_hi], fmt="none", ecolor="#222", capsize=3, linewidth=1)
        ax.scatter(
            exp_x, exp_y, marker="D", color="#111", s=18, zorder=3, label="expected" if i == 0 else None
        )
    ax.set_xticks(range(len(points)), [p["id"] for p in points], rotation=20 if len(points) > 4 else 0)
    ax.set_ylabel("loss (%)")
    ax.set_title("Measured loss (bars, 95% interval) vs what the link predicts (diamonds)", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _svg(fig)


def _stream_groups(
    result: Mapping[str, Any], proto: str, protocols: list[str]
) -> list[tuple[str, str, int | None]]:
    """(label, colour, stream | None = all) per series: one per stream when there are several."""
    streams = stream_count(result)
    if streams > 1:
        return [(f"stream {n}", STREAM_COLORS[n % len(STREAM_COLORS)], n) for n in range(streams)]
    return [("reply (at receive time)", color(proto, protocols), None)]


def _arrivals_panel(ax: Any, result: Mapping[str, Any], proto: str, protocols: list[str]) -> None:
    """Sequence number vs receive time; lost probes as crosses at their send time."""
    entries = timeline_rows(result)
    groups = _stream_groups(result, proto, protocols)
    multi = groups[0][2] is not None
    lost_total = sum(1 for row in entries if row[2] is None)
    for label, shade, stream in groups:
        mine = [row for row in entries if stream is None or row[3] == stream]
        # float(): numpy refuses Python ints past 64 bits, and a sequence number is one
        got = [((t + rtt) / MS_PER_S, float(s)) for s, t, rtt, _st in mine if rtt is not None]
        lost = [(t / MS_PER_S, float(s)) for s, t, rtt, _st in mine if rtt is None]
        if got:
            ax.scatter(*zip(*got, strict=True), s=3, color=shade, label=label, linewidths=0)
        if lost:
            # One stream's losses in its own colour: separate flows lose probes one flow at a time.
            ax.scatter(
                *zip(*lost, strict=True),
                s=12,
                marker="x",
                color=shade if multi else "#222",
                alpha=0.8,
                linewidths=0.7,
                label=None if multi else f"lost ({lost_total}, at send time)",
            )
    if multi and lost_total:
        label = f"lost ({lost_total}, at send time)"
        ax.scatter([], [], s=12, marker="x", color="#222", linewidths=0.7, label=label)
    if entries:
        ax.legend(loc="upper left", fontsize=6, markerscale=2)


def _delays_panel(ax: Any, result: Mapping[str, Any], proto: str, protocols: list[str]) -> None:
    """RTT vs send time per stream: a head-of-line stall is a spike every stream shares."""
    entries = timeline_rows(result)
    hol = (result.get("extras") or {}).get("hol") or {}
    threshold = (hol.get("threshold_us") or 0) / US_PER_MS
    answered = [rtt for _s, _t, rtt, _st in entries if rtt is not None]
    top = max([*answered, threshold, 1.0]) * 1.08  # lost probes drawn here, above every reply
    for _label, shade, stream in _stream_groups(result, proto, protocols):
        mine = [row for row in entries if stream is None or row[3] == stream]
        got = [(t / MS_PER_S, rtt) for _s, t, rtt, _st in mine if rtt is not None]
        lost = [t / MS_PER_S for _s, t, rtt, _st in mine if rtt is None]
        if got:
            ax.scatter(*zip(*got, strict=True), s=4, color=shade, linewidths=0)
        if lost:
            ax.scatter(lost, [top] * len(lost), s=12, marker="x", color=shade, linewidths=0.7)
    notes = []
    if threshold:
        ax.axhline(threshold, color="#777", linestyle="--", linewidth=0.7)
        notes.append(f"dashed: delayed (RTT > {threshold:.0f} ms)")
        ax.set_title(
            f"{ax.get_title()}: {hol.get('blocked', 0)} held back by another stream", fontsize=9
        )
    if any(row[2] is None for row in entries):
        notes.append("x: lost")
    if notes:
        ax.text(0.99, 0.97, " · ".join(notes), transform=ax.transAxes, ha="right", va="top", fontsize=6)
    ax.set_ylim(0, top * 1.3)


def arrival_timeline(payload: Mapping[str, Any]) -> str:
    """Sequence number vs receive time, one panel per point and protocol: UDP gaps, TCP stalls.

    A point with several logical streams colours them apart and adds a row of RTT vs send time
    per stream, where head-of-line blocking shows as spikes all streams share at once.
    """
    plt = _pyplot()
    points = payload.get("points", [])
    protocols = protocols_of(payload) or ["-"]
    rows: list[tuple[Mapping[str, Any], str]] = []
    for point in points:
        rows.append((point, "arrivals"))
        if any(stream_count(r) > 1 for r in point.get("results", [])):
            rows.append((point, "delays"))
    cols = len(protocols)
    fig, axes = plt.subplots(
        max(1, len(rows)), cols, figsize=(PANEL_W * 1.2 * cols, PANEL_H * max(1, len(rows))), squeeze=False
    )
    for r, (point, kind) in enumerate(rows):
        by_proto = results_by_protocol(point)
        for c, proto in enumerate(protocols):
            ax = axes[r][c]
            result = by_proto.get(proto)
            if kind == "arrivals":
                ax.set_title(f"{point['id']} · {proto.upper()}", fontsize=9)
                ax.set_xlabel("time since start (s)")
                ax.set_ylabel("sequence number")
            else:
                ax.set_title(f"{point['id']} · {proto.upper()} RTT per stream", fontsize=9)
                ax.set_xlabel("send time since start (s)")
                ax.set_ylabel("RTT (ms)")
            if result is None:
                ax.text(0.5, 0.5, "skipped", ha="center", va="center", transform=ax.transAxes, color="#999")
                continue
            (_arrivals_panel if kind == "arrivals" else _delays_panel)(ax, result, proto, protocols)
    fig.suptitle(
        "Arrival timeline: each dot is a reply; flat steps are stalls, crosses are losses", fontsize=10
    )
    fig.tight_layout()
    return _svg(fig)


def goodput(payload: Mapping[str, Any]) -> str:
    """Goodput (bits/s of probes echoed back intact) per point and protocol."""
    plt = _pyplot()
    points = payload.get("points", [])
    protocols = protocols_of(payload)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(points) * max(1, len(protocols))), 3.0))
    width = 0.8 / max(1, len(protocols))
    for i, proto in enumerate(protocols):
        xs, ys = [], []
        for j, point in enumerate(points):
            result = results_by_protocol(point).get(proto)
            if result:
                xs.append(j + (i - (len(protocols) - 1) / 2) * width)
                ys.append((result.get("goodput_bps") or 0.0) / 1e3)
        ax.bar(xs, ys, width=width * 0.9, color=color(proto, protocols), label=proto.upper())
    ax.set_xticks(range(len(points)), [p["id"] for p in points], rotation=20 if len(points) > 4 else 0)
    ax.set_ylabel("goodput (kbit/s)")
    ax.set_title("Goodput: bits of probes echoed back intact, per second", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _svg(fig)


def _link_total(result: Mapping[str, Any], word: str) -> int:
    """Sum of every counter named like `word` in the forwarder's counters (any nesting)."""
    total = 0

    def walk(node: Any, name: str = "") -> None:
        nonlocal total
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, str(k))
        elif isinstance(node, int | float) and not isinstance(node, bool) and word in name:
            total += int(node)

    walk(result.get("link") or {})
    return total


def retransmissions(payload: Mapping[str, Any]) -> str:
    """TCP retransmitted segments next to the packets the link dropped, per point."""
    plt = _pyplot()
    points = payload.get("points", [])
    protocols = protocols_of(payload)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 * len(points) * 3), 3.0))
    series: list[tuple[str, str, list[int]]] = []
    for proto in protocols:
        values = [retransmits(results_by_protocol(p).get(proto) or {}) for p in points]
        if any(v is not None for v in values):
            series.append((f"{proto.upper()} retransmits", color(proto, protocols), [v or 0 for v in values]))
        drops = [_link_total(results_by_protocol(p).get(proto) or {}, "drop") for p in points]
        if any(drops):
            series.append((f"link drops during {proto.upper()}", color(proto, protocols), drops))
    width = 0.8 / max(1, len(series))
    for i, (label, c, values) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(points))]
        hatch = "//" if label.startswith("link") else None
        heights = [float(v) for v in values]  # counters are Python ints of any size; numpy's are 64-bit
        ax.bar(xs, heights, width=width * 0.9, color=c, alpha=0.5 if hatch else 0.9, hatch=hatch, label=label)
    if not series:
        ax.text(
            0.5, 0.5, "no retransmission or drop counters in this run", ha="center", transform=ax.transAxes
        )
    ax.set_xticks(range(len(points)), [p["id"] for p in points], rotation=20 if len(points) > 4 else 0)
    ax.set_ylabel("count")
    ax.set_title("TCP retransmissions and packets the link dropped", fontsize=10)
    if series:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _svg(fig)


PLOTS = {
    "latency_cdf": latency_cdf,
    "loss": loss,
    "timeline": arrival_timeline,
    "goodput": goodput,
    "retransmissions": retransmissions,
}


def render_plots(payload: Mapping[str, Any]) -> dict[str, str]:
    """Every report plot as an inline SVG string, keyed by section name.

    matplotlib's warnings (a glyph missing from the font, a legend with no labelled artist) say
    nothing the reader of a report can act on; they would only clutter the command's output.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: make(payload) for name, make in PLOTS.items()}
