"""Report plots (matplotlib, Agg, imported lazily): inline SVG strings for report.html, and the same
figures at slide size for `lab report --slides` (lab.report.slides). No fonts or files needed.

Every builder takes a Style: the report's (11 pt text on a 10-inch-wide figure: at least 800 px in the
page) or a slide's (20 pt on 16:9). Colours are Okabe-Ito's, told apart by colour-blind readers too.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lab.i18n import N_, _
from lab.records import hol_of
from lab.report.appearance import OKABE_ITO, colour
from lab.report.appearance import label as protocol_label
from lab.report.summary import (
    expected_loss,
    goodput_tells,
    link_drop_rate,
    link_drops,
    point_label,
    protocols_of,
    results_by_protocol,
    retransmits,
    rtt_unit,
    stream_count,
    timeline_rows,
)

# Okabe & Ito's colours (lab.report.appearance): a protocol's is its place in the registry.
# One colour and one marker shape per logical stream: shape tells them apart where colour cannot.
STREAM_COLORS = tuple(OKABE_ITO[i] for i in (0, 4, 2, 3, 1, 5, 7))
STREAM_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINK_COLOR = "#444444"
US_PER_MS = 1000.0
MS_PER_S = 1000.0


@dataclass(frozen=True)
class Style:
    """Sizes of one rendering: text points, figure width (inches), panels per row, marker scale.

    `size`, when set, fixes the whole figure (a slide: 16:9) instead of growing it with its panels.
    """

    font: float = 11.0
    width: float = 10.0
    panel_h: float = 3.8
    columns: int = 2
    marker: float = 1.0
    size: tuple[float, float] | None = None


REPORT = Style()
SLIDE = Style(font=20.0, width=13.333, panel_h=7.5, columns=2, marker=3.0, size=(13.333, 7.5))


def color(protocol: str, protocols: list[str]) -> str:
    """A stable colour per protocol: its place in the registry (TCP blue, UDP vermillion); a name this
    install does not know takes the next colours (lab.report.appearance.colour)."""
    return colour(protocol, protocols)


def _pyplot(style: Style = REPORT) -> Any:
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
            # One size for every text, so none is smaller than the style promises.
            "font.size": style.font,
            "axes.titlesize": style.font,
            "axes.labelsize": style.font,
            "xtick.labelsize": style.font,
            "ytick.labelsize": style.font,
            "legend.fontsize": style.font,
            "legend.title_fontsize": style.font,
            "figure.titlesize": style.font * 1.15,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.prop_cycle": matplotlib.cycler(color=list(OKABE_ITO)),
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


def _figure(plt: Any, rows: int, cols: int, style: Style, *, sharey: bool = False) -> tuple[Any, Any]:
    size = style.size or (style.width, style.panel_h * rows)
    return plt.subplots(rows, cols, figsize=size, squeeze=False, sharey=sharey)


def _grid(plt: Any, n: int, style: Style) -> tuple[Any, list[Any]]:
    cols = min(style.columns, max(1, n))
    rows = math.ceil(n / cols)
    fig, axes = _figure(plt, rows, cols, style)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _title(ax: Any, text: str, style: Style, panels: int = 2) -> None:
    """A panel title wrapped to the panel's width (a long link description would run into the next)."""
    import textwrap

    width = (style.size[0] if style.size else style.width) / max(1, panels)
    chars = max(16, int(width * 72 / (style.font * 0.6)))
    ax.set_title("\n".join(textwrap.wrap(text, chars)))


def _layout(fig: Any) -> None:
    """tight_layout, then any title or legend wider than the figure (Portuguese runs longer than
    English) wrapped onto more lines until it fits; text that fits is left exactly as it is."""
    import textwrap

    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    left, right = fig.bbox.x0 - 1, fig.bbox.x1 + 1

    def too_wide(artist: Any) -> bool:
        box = artist.get_window_extent(renderer)
        return bool(box.x0 < left or box.x1 > right)

    def wrap(text: Any) -> bool:
        words = text.get_text()
        lines = words.count("\n") + 2
        if lines > 4 or " " not in words:
            return False
        width = math.ceil(1.15 * len(words) / lines)  # some slack: words do not break evenly
        text.set_text("\n".join(textwrap.wrap(words.replace("\n", " "), width)))
        return True

    titles = [*fig.texts, *(ax.title for ax in fig.axes)]
    legends = [legend for legend in (ax.get_legend() for ax in fig.axes) if legend is not None]
    for _attempt in range(3):
        changed = False
        for title in titles:
            if title.get_visible() and title.get_text() and too_wide(title):
                changed |= wrap(title)
        for legend in legends:
            if too_wide(legend):
                longest = max(legend.get_texts(), key=lambda t: len(t.get_text()), default=None)
                changed |= longest is not None and wrap(longest)
        if not changed:
            return
        fig.tight_layout()


def _xticks(ax: Any, points: list[Mapping[str, Any]], style: Style) -> None:
    labels = [point_label(p) for p in points]
    wide = len(points) > 3 or any(len(label) > 24 for label in labels) and len(points) > 1
    ax.set_xticks(range(len(points)), labels, rotation=20 if wide else 0, ha="right" if wide else "center")


def _cdf_panel(ax: Any, point: Mapping[str, Any], protocols: list[str], style: Style) -> None:
    """RTT CDF of one point, one line per protocol (from the per-probe timeline)."""
    by_proto = results_by_protocol(point)
    unit = rtt_unit(list(by_proto.values()))
    scale = US_PER_MS if unit == "ms" else 1.0
    for proto, result in by_proto.items():
        rtts = sorted(rtt for _s, _t, rtt, _stream in timeline_rows(result) if rtt is not None)
        if not rtts:
            quant = result.get("rtt_us") or {}
            pairs = [(quant.get(k), q) for k, q in (("min", 0), ("p50", 0.5), ("p90", 0.9), ("p99", 0.99))]
            pairs = [(v / scale, q) for v, q in pairs if v is not None]
            if pairs:
                shade = color(proto, protocols)
                ax.plot(*zip(*pairs, strict=True), marker="o", color=shade, label=protocol_label(proto))
            continue
        sent = max(result["sent"], len(rtts))  # a hand-edited file may say fewer were sent
        ys = [(i + 1) / sent for i in range(len(rtts))]  # lost probes keep the CDF below 1
        xs = [rtt * US_PER_MS / scale for rtt in rtts]  # timeline RTTs are in ms
        ax.step(xs, ys, where="post", color=color(proto, protocols), label=protocol_label(proto), linewidth=2)
    ax.set_xlabel(_("round-trip time ({unit})").format(unit=unit))
    ax.set_ylabel(_("share of probes answered"))
    ax.set_ylim(0, 1.02)
    if by_proto:
        ax.legend(loc="lower right")


def latency_cdf_figure(payload: Mapping[str, Any], style: Style = REPORT) -> Any:
    """RTT CDF per sweep point, one line per protocol."""
    plt = _pyplot(style)
    points = payload.get("points", [])
    protocols = protocols_of(payload)
    fig, axes = _grid(plt, len(points) or 1, style)
    for ax, point in zip(axes, points, strict=False):
        _cdf_panel(ax, point, protocols, style)
        _title(ax, point_label(point), style, min(style.columns, len(points)))
    fig.suptitle(_("Latency CDF (a line that stops below 1: the rest were lost)"))
    _layout(fig)
    return fig


def _loss_panel(ax: Any, points: list[Mapping[str, Any]], protocols: list[str], style: Style) -> None:
    """Measured loss bars with their 95% interval; the link's round-trip drop rate as one line per
    point across its bars; diamonds only for a protocol-specific prediction (fragments)."""
    width = min(0.4, 0.8 / max(1, len(protocols)))
    top = 0.0
    drop_labelled = diamond_labelled = False
    for i, proto in enumerate(protocols):
        xs, ys, err_lo, err_hi = [], [], [], []
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
            predicted, source = expected_loss(point, result)
            if source and predicted is not None:
                ax.scatter(
                    [x], [100 * predicted], marker="D", color="#111", s=30 * style.marker, zorder=4,
                    label=None if diamond_labelled else _("prediction for this protocol"),
                )
                diamond_labelled = True
                top = max(top, 100 * predicted)
        if not xs:
            continue
        ax.bar(xs, ys, width=width * 0.9, color=color(proto, protocols), alpha=0.85,
               label=protocol_label(proto))
        ax.errorbar(xs, ys, yerr=[err_lo, err_hi], fmt="none", ecolor="#222", capsize=4, linewidth=1.2)
        for x, y, hi in zip(xs, ys, err_hi, strict=True):
            # Above the interval's cap, so the error bar never crosses the number.
            ax.annotate(
                f"{y:.1f}%", (x, y + hi), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom"
            )
            top = max(top, y + hi)
    for j, point in enumerate(points):
        rate = link_drop_rate(point)
        if rate is None:
            continue
        ax.hlines(
            100 * rate, j - 0.45, j + 0.45, colors=LINK_COLOR, linestyles="--", linewidth=2, zorder=3,
            label=None if drop_labelled else _("link round-trip drop rate"),
        )
        drop_labelled = True
        top = max(top, 100 * rate)
    ax.set_ylim(0, max(1.0, top) * 1.3)  # room for the labels above the tallest interval
    ax.set_xlim(-0.6, len(points) - 0.4)
    ax.set_ylabel(_("probes lost (%)"))
    ax.legend(loc="upper left")


def loss_figure(payload: Mapping[str, Any], style: Style = REPORT) -> Any:
    """Measured loss with its 95% interval vs the link's round-trip drop rate, per point and protocol."""
    plt = _pyplot(style)
    points = payload.get("points", [])
    protocols = protocols_of(payload)
    fig, axes = _figure(plt, 1, 1, style)
    ax = axes[0][0]
    _loss_panel(ax, points, protocols, style)
    _xticks(ax, points, style)
    ax.set_title(_("Measured loss (bars, 95% interval) vs the link's round-trip drop rate (dashed)"))
    _layout(fig)
    return fig


def _stream_groups(
    result: Mapping[str, Any], proto: str, protocols: list[str]
) -> list[tuple[str, str, str, int | None]]:
    """(label, colour, marker, stream | None = all) per series: one per stream when there are several."""
    streams = stream_count(result)
    if streams > 1:
        return [
            (
                _("stream {n}").format(n=n),
                STREAM_COLORS[n % len(STREAM_COLORS)],
                STREAM_MARKERS[n % len(STREAM_MARKERS)],
                n,
            )
            for n in range(streams)
        ]
    return [(_("reply (at receive time)"), color(proto, protocols), "o", None)]


def _arrivals_panel(
    ax: Any, result: Mapping[str, Any], proto: str, protocols: list[str], style: Style
) -> None:
    """Sequence number vs receive time; lost probes as crosses at their send time."""
    entries = timeline_rows(result)
    groups = _stream_groups(result, proto, protocols)
    multi = groups[0][3] is not None
    lost_total = sum(1 for row in entries if row[2] is None)
    dot = (8 if multi else 5) * style.marker
    for label, shade, marker, stream in groups:
        mine = [row for row in entries if stream is None or row[3] == stream]
        # float(): numpy refuses Python ints past 64 bits, and a sequence number is one
        got = [((t + rtt) / MS_PER_S, float(s)) for s, t, rtt, _st in mine if rtt is not None]
        lost = [(t / MS_PER_S, float(s)) for s, t, rtt, _st in mine if rtt is None]
        if got:
            ax.scatter(*zip(*got, strict=True), s=dot, color=shade, marker=marker, label=label, linewidths=0)
        if lost:
            # One stream's losses in its own colour: separate flows lose probes one flow at a time.
            ax.scatter(
                *zip(*lost, strict=True),
                s=20 * style.marker,
                marker="x",
                color=shade if multi else "#222",
                alpha=0.8,
                linewidths=1,
                label=None if multi else _("lost ({count}, at send time)").format(count=lost_total),
            )
    if multi and lost_total:
        label = _("lost ({count}, at send time)").format(count=lost_total)
        ax.scatter([], [], s=20 * style.marker, marker="x", color="#222", linewidths=1, label=label)
    if entries:
        ax.legend(loc="upper left", markerscale=2 if not multi else 1.5)


def _delays_panel(ax: Any, result: Mapping[str, Any], proto: str, protocols: list[str], style: Style) -> None:
    """RTT vs send time per stream: a head-of-line stall is a spike every stream shares."""
    entries = timeline_rows(result)
    hol = hol_of(result) or {}
    threshold = (hol.get("threshold_us") or 0) / US_PER_MS
    answered = [rtt for _s, _t, rtt, _st in entries if rtt is not None]
    top = max([*answered, threshold, 1.0]) * 1.08  # lost probes drawn here, above every reply
    for _label, shade, marker, stream in _stream_groups(result, proto, protocols):
        mine = [row for row in entries if stream is None or row[3] == stream]
        got = [(t / MS_PER_S, rtt) for _s, t, rtt, _st in mine if rtt is not None]
        lost = [t / MS_PER_S for _s, t, rtt, _st in mine if rtt is None]
        if got:
            ax.scatter(*zip(*got, strict=True), s=8 * style.marker, color=shade, marker=marker, linewidths=0)
        if lost:
            ax.scatter(lost, [top] * len(lost), s=20 * style.marker, marker="x", color=shade, linewidths=1)
    notes = []
    if threshold:
        ax.axhline(threshold, color="#777", linestyle="--", linewidth=1)
        notes.append(_("dashed: delayed (RTT > {threshold} ms)").format(threshold=f"{threshold:.0f}"))
        held = _("{count} held back by another stream").format(count=hol.get("blocked", 0))
        ax.set_title(f"{ax.get_title()}:\n{held}")
    if any(row[2] is None for row in entries):
        notes.append(_("x: lost"))
    if notes:
        ax.text(0.99, 0.97, " · ".join(notes), transform=ax.transAxes, ha="right", va="top")
    ax.set_ylim(0, top * 1.3)


def arrival_timeline_figure(payload: Mapping[str, Any], style: Style = REPORT) -> Any:
    """Sequence number vs receive time, one panel per point and protocol: UDP gaps, TCP stalls.

    A point with several logical streams colours them apart and adds a row of RTT vs send time
    per stream, where head-of-line blocking shows as spikes all streams share at once.
    """
    plt = _pyplot(style)
    points = payload.get("points", [])
    protocols = protocols_of(payload) or ["-"]
    rows: list[tuple[Mapping[str, Any], str]] = []
    for point in points:
        rows.append((point, "arrivals"))
        if any(stream_count(r) > 1 for r in point.get("results", [])):
            rows.append((point, "delays"))
    fig, axes = _figure(plt, max(1, len(rows)), len(protocols), style)
    for r, (point, kind) in enumerate(rows):
        by_proto = results_by_protocol(point)
        for c, proto in enumerate(protocols):
            ax = axes[r][c]
            result = by_proto.get(proto)
            if kind == "arrivals":
                _title(ax, f"{point_label(point)} · {protocol_label(proto)}", style, len(protocols))
                ax.set_xlabel(_("time since start (s)"))
                ax.set_ylabel(_("sequence number"))
            else:
                title = _("{point} · {protocol} RTT per stream").format(
                    point=point_label(point), protocol=protocol_label(proto)
                )
                _title(ax, title, style, len(protocols))
                ax.set_xlabel(_("send time since start (s)"))
                ax.set_ylabel(_("RTT (ms)"))
            if result is None:
                skipped = _("skipped")
                ax.text(0.5, 0.5, skipped, ha="center", va="center", transform=ax.transAxes, color="#999")
                continue
            (_arrivals_panel if kind == "arrivals" else _delays_panel)(ax, result, proto, protocols, style)
    fig.suptitle(_("Arrival timeline: each dot is a reply; flat steps are stalls, crosses are losses"))
    _layout(fig)
    return fig


def reorder_series(result: Mapping[str, Any]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(send order, arrival order) of the answered probes, split into those that came in order and
    those that arrived after a probe sent later (overtaken). Arrival order ranks receive times."""
    answered = [(t + rtt, seq) for seq, t, rtt, _st in timeline_rows(result) if rtt is not None]
    by_send = sorted(seq for _arr, seq in answered)
    send_rank = {seq: i for i, seq in enumerate(by_send)}
    in_order: list[tuple[int, int]] = []
    overtaken: list[tuple[int, int]] = []
    highest = None
    for rank, (_arrival, seq) in enumerate(sorted(answered)):
        late = highest is not None and seq < highest
        (overtaken if late else in_order).append((send_rank[seq], rank))
        highest = seq if highest is None else max(highest, seq)
    return in_order, overtaken


def reordering_panels(payload: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], str, Mapping[str, Any]]]:
    """(point, protocol, result) of every run that saw reordering: the reordering figure's panels."""
    return [
        (point, proto, result)
        for point in payload.get("points", [])
        for proto, result in results_by_protocol(point).items()
        if result.get("reordered") and timeline_rows(result)
    ]


REORDER_ZOOM = 60  # probes in the close-up: few enough to see each swap


def reordering_figure(payload: Mapping[str, Any], style: Style = REPORT) -> Any:
    """Arrival order vs send order per run that saw reordering, in two panels: a close-up of the first
    probes (the diagonal is 'in order'; a probe below it... arrived after one sent later), and every
    probe's displacement (arrival place minus send place), where the swaps of a long run show."""
    plt = _pyplot(style)
    panels = reordering_panels(payload)
    protocols = protocols_of(payload)
    fig, axes = _figure(plt, max(1, len(panels)), 2, style)
    for row, (point, proto, result) in zip(axes, panels, strict=False):
        close, moved = row
        in_order, overtaken = reorder_series(result)
        shade = color(proto, protocols)
        zoom = min(REORDER_ZOOM, len(in_order) + len(overtaken))
        close.plot([0, zoom], [0, zoom], color="#999", linewidth=1, linestyle="--", label=_("in order"))
        for series, marker, size, c, label in (
            (in_order, "o", 12, shade, _("not overtaken")),
            (overtaken, "v", 40, "#000000", _("overtaken: came after a later one")),
        ):
            near = [(x, y) for x, y in series if x < zoom]
            if near:
                close.scatter(*zip(*near, strict=True), s=size * style.marker, marker=marker, color=c,
                              linewidths=0, label=label)
        first = _("{point} · {protocol}: first {count} probes").format(
            point=point_label(point), protocol=protocol_label(proto), count=zoom
        )
        _title(close, first, style)
        close.set_xlabel(_("send order"))
        close.set_ylabel(_("arrival order"))
        close.legend(loc="upper left")
        for series, marker, size, c in ((in_order, "o", 5, shade), (overtaken, "v", 16, "#000000")):
            if series:
                xs = [x for x, _y in series]
                ys = [y - x for x, y in series]
                moved.scatter(xs, ys, s=size * style.marker, marker=marker, color=c, linewidths=0)
        moved.axhline(0, color="#999", linewidth=1, linestyle="--")
        every = _("all {count} probes: {reordered} reordered").format(
            count=len(in_order) + len(overtaken), reordered=result.get("reordered", 0)
        )
        _title(moved, every, style)
        moved.set_xlabel(_("send order"))
        moved.set_ylabel(_("arrival place - send place"))
    fig.suptitle(_("Reordering: arrival order vs send order (marks off the diagonal were overtaken)"))
    _layout(fig)
    return fig


def goodput_figure(payload: Mapping[str, Any], style: Style = REPORT) -> Any:
    """Goodput (bits/s of probes echoed back intact) per point and protocol."""
    plt = _pyplot(style)
    points = payload.get("points", [])
    protocols = protocols_of(payload)
    fig, axes = _figure(plt, 1, 1, style)
    ax = axes[0][0]
    width = 0.8 / max(1, len(protocols))
    for i, proto in enumerate(protocols):
        xs, ys = [], []
        for j, point in enumerate(points):
            result = results_by_protocol(point).get(proto)
            if result:
                xs.append(j + (i - (len(protocols) - 1) / 2) * width)
                ys.append((result.get("goodput_bps") or 0.0) / 1e3)
        ax.bar(xs, ys, width=width * 0.9, color=color(proto, protocols), label=protocol_label(proto))
    _xticks(ax, points, style)
    ax.set_ylabel(_("goodput (kbit/s)"))
    ax.set_title(_("Goodput: bits of probes echoed back intact, per second"))
    ax.legend()
    _layout(fig)
    return fig


def retransmissions_figure(payload: Mapping[str, Any], style: Style = REPORT) -> Any:
    """TCP retransmitted segments next to the packets the link dropped, per point."""
    plt = _pyplot(style)
    points = payload.get("points", [])
    protocols = protocols_of(payload)
    fig, axes = _figure(plt, 1, 1, style)
    ax = axes[0][0]
    series: list[tuple[str, str, list[int], bool]] = []  # (label, colour, values, link?)
    for proto in protocols:
        values = [retransmits(results_by_protocol(p).get(proto) or {}) for p in points]
        if any(v is not None for v in values):
            label = _("{protocol} retransmits").format(protocol=protocol_label(proto))
            series.append((label, color(proto, protocols), [v or 0 for v in values], False))
        drops = [link_drops(results_by_protocol(p).get(proto) or {}) for p in points]
        if any(drops):
            label = _("link drops during {protocol}").format(protocol=protocol_label(proto))
            series.append((label, color(proto, protocols), drops, True))
    width = min(0.3, 0.8 / max(1, len(series)))  # one series: a bar, not a wall
    for i, (label, c, values, link) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(points))]
        hatch = "//" if link else None
        heights = [float(v) for v in values]  # counters are Python ints of any size; numpy's are 64-bit
        bars = ax.bar(
            xs, heights, width=width * 0.9, color=c, alpha=0.45 if hatch else 0.9, hatch=hatch, label=label
        )
        ax.bar_label(bars, fmt="%d", padding=2)
    if not series:
        no_data = _("no retransmission or drop counters in this run")
        ax.text(0.5, 0.5, no_data, ha="center", transform=ax.transAxes)
    _xticks(ax, points, style)
    ax.set_ylabel(_("count"))
    ax.margins(y=0.15)
    ax.set_title(_("TCP retransmissions and packets the link dropped"))
    if series:
        ax.legend(loc="upper left")
    _layout(fig)
    return fig


def story_point(payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The point the one-slide story shows: the one whose link drops most (the last on a tie)."""
    points = payload.get("points", [])
    if not points:
        return None
    return max(reversed(points), key=lambda p: link_drop_rate(p) or 0.0)


STORY_TITLES = (N_("Latency"), N_("Arrivals"), N_("Loss"))


def story_figure(payload: Mapping[str, Any], style: Style = SLIDE) -> Any:
    """One slide: the latency CDF, the arrivals of every protocol on one axis, and the loss bars of
    the point that shows the most (story_point), side by side."""
    plt = _pyplot(style)
    protocols = protocols_of(payload)
    point = story_point(payload)
    fig, axes = _figure(plt, 1, 3, style)
    cdf, arrivals, lost = axes[0]
    if point is not None:
        _cdf_panel(cdf, point, protocols, style)
        for proto, result in results_by_protocol(point).items():
            rows = timeline_rows(result)
            got = [((t + rtt) / MS_PER_S, float(s)) for s, t, rtt, _st in rows if rtt is not None]
            gone = [(t / MS_PER_S, float(s)) for s, t, rtt, _st in rows if rtt is None]
            shade = color(proto, protocols)
            if got:
                arrivals.scatter(*zip(*got, strict=True), s=4 * style.marker, color=shade, linewidths=0,
                                 label=protocol_label(proto))
            if gone:
                lost_label = _("{protocol} lost").format(protocol=protocol_label(proto))
                arrivals.scatter(*zip(*gone, strict=True), s=25 * style.marker, marker="x", color=shade,
                                 linewidths=1.2, label=lost_label)
        arrivals.set_xlabel(_("time (s)"))
        arrivals.set_ylabel(_("sequence number"))
        if arrivals.has_data():
            # below the axis: the data runs along the whole diagonal, no corner is free
            arrivals.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), markerscale=1.5)
        _loss_panel(lost, [point], protocols, style)
        lost.set_xticks([])
        lost.legend(loc="upper center", bbox_to_anchor=(0.5, -0.02))  # below: clear of the labels
    for ax, title in zip((cdf, arrivals, lost), STORY_TITLES, strict=True):
        ax.set_title(_(title))
    fig.suptitle(point_label(point) if point else _("nothing measured"))
    _layout(fig)
    return fig


FIGURES = {
    "latency_cdf": latency_cdf_figure,
    "loss": loss_figure,
    "timeline": arrival_timeline_figure,
    "reordering": reordering_figure,
    "goodput": goodput_figure,
    "retransmissions": retransmissions_figure,
}


def figures_for(payload: Mapping[str, Any]) -> list[str]:
    """The probe figures this payload has something to show in: reordering only where some run saw
    it, goodput only where it says more than the loss does (lab.report.figures adds the flows')."""
    names = []
    for name in FIGURES:
        if name == "reordering" and not reordering_panels(payload):
            continue
        if name == "goodput" and not any(goodput_tells(p) for p in payload.get("points", [])):
            continue
        names.append(name)
    return names
