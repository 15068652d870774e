"""From result.json data to the figures and sentences every report format shows. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Columns of the side-by-side table: (header, function of a Result dict -> display string).
US_PER_MS = 1000.0
TAIL_GROWTH_NOTABLE = 1.5  # a p99 at least 1.5x the p50 is worth a sentence about the tail...
TAIL_ABS_NOTABLE_US = 5000.0  # ...if it is also 5 ms longer (sub-ms loopback noise is not a story)


def fmt_ms(us: float | None) -> str:
    """Microseconds as a short millisecond string ('-' when missing)."""
    if us is None:
        return "-"
    ms = us / US_PER_MS
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.3f}"


def fmt_pct(ratio: float | None) -> str:
    """A ratio as a percentage string ('-' when missing)."""
    return "-" if ratio is None else f"{100 * ratio:.1f}%"


def fmt_rate(bps: float | None) -> str:
    """Bits per second with a unit."""
    if bps is None:
        return "-"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.2f} {unit}"
    return f"{bps:.0f} bit/s"


def retransmits(result: Mapping[str, Any]) -> int | None:
    """TCP segments retransmitted by both ends (None for protocols without TCP_INFO)."""
    from lab.metrics import retransmitted_segments

    return retransmitted_segments(result)


COLUMNS: tuple[tuple[str, Any], ...] = (
    ("sent", lambda r: str(r.get("sent", "-"))),
    ("received", lambda r: str(r.get("received", "-"))),
    ("loss", lambda r: fmt_pct(r.get("loss_ratio"))),
    ("expected loss", lambda r: fmt_pct(r.get("expected_loss_ratio"))),
    ("RTT p50 ms", lambda r: fmt_ms((r.get("rtt_us") or {}).get("p50"))),
    ("RTT p99 ms", lambda r: fmt_ms((r.get("rtt_us") or {}).get("p99"))),
    ("jitter ms", lambda r: fmt_ms(r.get("jitter_us"))),
    ("goodput", lambda r: fmt_rate(r.get("goodput_bps"))),
    ("retransmits", lambda r: "-" if retransmits(r) is None else str(retransmits(r))),
)


def protocols_of(payload: Mapping[str, Any]) -> list[str]:
    """Protocols in the order the scenario lists them."""
    listed = list((payload.get("scenario") or {}).get("protocols") or [])
    for point in payload.get("points", []):
        for result in point.get("results", []):
            if result["protocol"] not in listed:
                listed.append(result["protocol"])
    return listed


def results_by_protocol(point: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A point's results keyed by protocol name."""
    return {r["protocol"]: r for r in point.get("results", [])}


def expected_loss(point: Mapping[str, Any], result: Mapping[str, Any]) -> tuple[float | None, str]:
    """The loss a result should show, and where that figure comes from ('' = the link's round trip).

    A statistical loss expectation may predict more than the link's per-packet round-trip loss (a
    datagram of k IPv4 fragments is lost when any fragment is: 1-(1-e)^k); its check records the
    prediction it tested, and the report shows that one.
    """
    for check in (point.get("checks") or {}).get(result.get("protocol"), []):
        if check.get("metric") == "loss_ratio" and check.get("expected") is not None:
            label = check.get("expected_label") or ""
            return float(check["expected"]), "" if label == LINK_LABEL else label
    return result.get("expected_loss_ratio"), ""


LINK_LABEL = "link's expected loss"  # lab.scenario's label for a plain within_ci check


def side_by_side(point: Mapping[str, Any], protocols: list[str]) -> list[tuple[str, list[str]]]:
    """Rows (metric, [value per protocol]) for one point; skipped protocols show 'skipped'."""
    by_proto = results_by_protocol(point)
    rows = []
    for header, get in COLUMNS:
        cells = []
        for proto in protocols:
            result = by_proto.get(proto)
            if result and header == "expected loss":
                cells.append(fmt_pct(expected_loss(point, result)[0]))
                continue
            skipped = proto in (point.get("skipped") or {})
            cells.append(get(result) if result else "skipped" if skipped else "-")
        rows.append((header, cells))
    return rows


def queue_drops(result: Mapping[str, Any]) -> int:
    """Packets the link's queue dropped (rate + limit) during this result's run, both directions."""
    link = result.get("link") or {}
    return sum(
        int(d.get("dropped_queue", 0) or 0) for d in link.values() if isinstance(d, Mapping)
    )


def timeline_rows(result: Mapping[str, Any]) -> list[tuple[int, float, float | None, int]]:
    """The per-probe timeline as (seq, t_ms, rtt_ms | None, stream); 3-column rows of older
    result.json files (before the stream column) read as stream 0."""
    rows = (result.get("extras") or {}).get("timeline") or []
    return [(row[0], row[1], row[2], row[3] if len(row) > 3 else 0) for row in rows]


def stream_count(result: Mapping[str, Any]) -> int:
    """Logical streams of a run: from its head-of-line figures, else from its timeline (1 if neither)."""
    hol = (result.get("extras") or {}).get("hol") or {}
    if hol.get("streams"):
        return int(hol["streams"])
    return 1 + max((row[3] for row in timeline_rows(result)), default=0)


def longest_loss_run(result: Mapping[str, Any]) -> int:
    """Most consecutive sequence numbers lost, from the per-probe timeline (0 without one)."""
    longest = run = 0
    for _seq, _t, rtt, _stream in timeline_rows(result):
        run = run + 1 if rtt is None else 0
        longest = max(longest, run)
    return longest


def _point_sentence(point: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> list[str]:
    sentences = []
    by_proto = results_by_protocol(point)
    for proto, result in by_proto.items():
        name = proto.upper()
        sent, received, lost = result["sent"], result["received"], result["lost"]
        expected, source = expected_loss(point, result)
        rtt = result.get("rtt_us") or {}
        p50, p99 = rtt.get("p50"), rtt.get("p99")
        queued = queue_drops(result)
        if lost:
            predicted = ""
            if expected is not None and (expected or not queued):  # 0% says nothing about queue drops
                predicted = f" (the link predicted {fmt_pct(expected)}{f': {source}' if source else ''})"
            text = f"{name} lost {fmt_pct(result['loss_ratio'])} of probes ({lost} of {sent}){predicted}"
            if queued:
                text += f"; the link's queue was full and dropped {queued} packets"
                text += f" (median RTT {fmt_ms(p50)} ms)"
            burst = longest_loss_run(result)
            if burst > 1:
                text += f"; the longest run of consecutive losses was {burst} probes"
            sentences.append(text + ".")
        else:
            text = f"{name} delivered all {sent} probes"
            rexmit = retransmits(result)
            base = results_by_protocol(baseline).get(proto) if baseline else None
            base_p99 = ((base or {}).get("rtt_us") or {}).get("p99")
            if (
                base_p99
                and p99
                and p99 > TAIL_GROWTH_NOTABLE * base_p99
                and p99 - base_p99 > TAIL_ABS_NOTABLE_US
            ):
                text += (
                    f", but its p99 RTT grew from {fmt_ms(base_p99)} ms (at {baseline_label(baseline)})"
                    f" to {fmt_ms(p99)} ms"
                )
                if rexmit:
                    text += f" because {rexmit} lost segments were retransmitted"
            elif p50 and p99 and p99 > TAIL_GROWTH_NOTABLE * p50 and p99 - p50 > TAIL_ABS_NOTABLE_US:
                text += f"; its p99 RTT ({fmt_ms(p99)} ms) is well above its median ({fmt_ms(p50)} ms)"
                if rexmit:
                    text += f", the cost of {rexmit} retransmitted segments"
            elif expected:
                text += f" although the link dropped packets (about {fmt_pct(expected)} of round trips)"
                if rexmit:
                    text += f": it retransmitted {rexmit} segments"
            if queued:
                text += f"; the link's queue was full and dropped {queued} packets"
                if rexmit and str(rexmit) not in text:
                    text += f", which it recovered by retransmitting {rexmit} segments"
                text += f" (median RTT {fmt_ms(p50)} ms)"
            sentences.append(text + ".")
        if received < sent and lost == 0 and received:
            sentences.append(f"{name} received {received} of {sent}.")
        dup, reo, cor = result.get("duplicates", 0), result.get("reordered", 0), result.get("corrupted", 0)
        extras = [
            f"{n} {what}" for n, what in ((dup, "duplicates"), (reo, "reordered"), (cor, "corrupted")) if n
        ]
        if extras:
            sentences.append(f"{name} saw {', '.join(extras)}.")
        if (result.get("extras") or {}).get("interrupted"):
            planned = (point.get("traffic") or {}).get("count")
            of_planned = f" of the {planned} planned" if isinstance(planned, int) else ""
            sentences.append(f"{name}'s run was cut short after {sent} probes{of_planned}: its figures "
                             "cover those, and its expectations were not checked.")
    hol = head_of_line_sentence(point)
    if hol:
        sentences.append(hol)
    for proto, reason in (point.get("skipped") or {}).items():
        sentences.append(f"{proto.upper()} was skipped: {reason}")
    return sentences


def head_of_line_sentence(point: Mapping[str, Any]) -> str:
    """How many probes of each protocol waited behind another stream's loss ('' for one stream)."""
    figures = [
        (proto.upper(), result["sent"], (result.get("extras") or {}).get("hol"))
        for proto, result in results_by_protocol(point).items()
    ]
    figures = [(name, sent, hol) for name, sent, hol in figures if hol]
    if not figures:
        return ""
    streams = max(hol["streams"] for _name, _sent, hol in figures)
    blocking = [(name, sent, hol) for name, sent, hol in figures if hol["blocked"]]
    if not blocking:
        counts = ", ".join(f"{name}: 0" for name, _sent, _hol in figures)
        return (
            f"Head-of-line blocking ({streams} streams): no probe waited behind another stream's loss"
            f" ({counts})."
        )
    parts = [
        f"{hol['blocked']} of {sent} {name} probes waited behind another stream's retransmission"
        for name, sent, hol in blocking
    ]
    parts += [f"{name}: 0" for name, _sent, hol in figures if not hol["blocked"]]
    return (
        f"Head-of-line blocking ({streams} streams): a loss on one stream stalled the others: "
        + "; ".join(parts)
        + "."
    )


def baseline_label(point: Mapping[str, Any] | None) -> str:
    """How the story names the reference point: its sweep id, or its link for a single point."""
    if not point:
        return "-"
    return link_description(point) if point.get("id") == "base" else str(point["id"])


def what_happened(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One plain-language paragraph per sweep point: [(point id, paragraph)]."""
    points = payload.get("points", [])
    baseline = points[0] if points else None
    out = []
    for point in points:
        sentences = _point_sentence(point, baseline if point is not baseline else None)
        label = link_description(point) if point["id"] == "base" else point["id"]
        out.append((label, " ".join(sentences) or "Nothing was measured."))
    if payload.get("interrupted"):
        out.append(("interrupted", f"The run was interrupted ({interrupted_by(payload)}); these are the "
                    "points measured so far."))
    error = payload.get("error")
    if error:
        out.append(("error", f"Point {error.get('point', '?')} failed: {error.get('message', '?')}; the "
                    "points before it are shown."))
    return out


def interrupted_by(payload: Mapping[str, Any]) -> str:
    """What stopped an interrupted run: `Ctrl-C` (older files say nothing else), `SIGTERM`..."""
    return str(payload.get("interrupted_by") or "Ctrl-C")


def link_description(point: Mapping[str, Any]) -> str:
    """`loss 10%, delay 20ms` or `no impairment` for a point's link options."""
    link = point.get("link") or {}
    text = ", ".join(f"{k} {v}" for k, v in link.items())
    return text or "no impairment"


def counters_rows(point: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Rows (protocol, source, 'name=value ...') of link, kernel and tcp_info counters."""
    rows = []
    for result in point.get("results", []):
        for source in ("link", "kernel", "tcp_info"):
            data = result.get(source)
            if data:
                rows.append((result["protocol"], source, _flatten(data)))
    return rows


def _flatten(data: Any, prefix: str = "") -> str:
    """Nested counters as `a.b=1` lines; zero counters left out (they are the majority)."""
    if isinstance(data, Mapping):
        parts = [_flatten(v, f"{prefix}{k}.") for k, v in data.items()]
        return "\n".join(p for p in parts if p)
    if data == 0 or data is None:
        return ""
    return f"{prefix[:-1]}={data}"
