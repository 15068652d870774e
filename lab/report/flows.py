"""The report's words and tables for bulk points and flow groups (docs/architecture.md#flows-and-oracles).

Pure: result.json data in, sentences and table rows out. `headline` is the report's first paragraph
for a scenario with flows (the story across its points: the Mathis curve, the shares, the queue's
delay); `point_story` one point's paragraph; `flow_rows` the summary table of goodput measured
beside predicted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lab.i18n import N_, _
from lab.metric_registry import US_PER_MS, format_rate
from lab.report.appearance import label as protocol_label

ORACLE_NAMES = {"mathis": N_("Mathis"), "link_rate": N_("link rate"), "textbook": N_("ARQ textbook")}
FLOW_HEADERS = (N_("flow"), N_("protocol"), N_("direction"), N_("start"), N_("goodput"), N_("predicted"),
                N_("measured / predicted"), N_("retransmits"), N_("RTT p50"))
DIRECTION_NAMES = {"upload": N_("upload"), "download": N_("download")}  # a bulk flow's BulkPlan.direction
# the load's way in the RPM lines (lab.flows.group_figures' load_direction)
LOADED_RPM = {"upload": N_("RPM under upload load {rpm}"), "download": N_("RPM under download load {rpm}"),
              "both": N_("RPM under load both ways {rpm}")}


def has_flows(point: Mapping[str, Any]) -> bool:
    return bool(point.get("flows"))


def any_flows(payload: Mapping[str, Any]) -> bool:
    return any(has_flows(p) for p in payload.get("points", []))


def bulk_flows(point: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [f for f in point.get("flows") or [] if f.get("kind") == "bulk"]


def probe_flows(point: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [f for f in point.get("flows") or [] if f.get("kind") == "probes"]


def link_rate(point: Mapping[str, Any]) -> float | None:
    """The forward rate (bits/s) the flows' predictions recorded, None for an unrated link."""
    for flow in point.get("flows") or []:
        rate = ((flow.get("predictions") or {}).get("link_rate") or {}).get("rate_bps")
        if rate:
            return float(rate)
    return None


def main_prediction(flow: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """The prediction a flow is best compared with: Mathis (TCP with loss), the ARQ textbook, else
    the link's rate (a ceiling, not a forecast)."""
    predictions = flow.get("predictions") or {}
    for name in ("mathis", "textbook", "link_rate"):
        if predictions.get(name, {}).get("goodput_bps"):
            return name, predictions[name]
    return None


def _mbit(bps: float | None) -> str:
    return "-" if bps is None else f"{bps / 1e6:.3g}"


def _flow_name(flow: Mapping[str, Any], alone: bool = False) -> str:
    """`TCP-RENO` for a protocol alone; `tcp-cubic-2 (TCP-CUBIC)` for a flow of a group."""
    name, proto = str(flow.get("name")), str(flow.get("protocol"))
    return protocol_label(proto) if alone else f"{name} ({protocol_label(proto)})"


def _sending_rate(flow: Mapping[str, Any]) -> float | None:
    return ((flow.get("bulk") or {}).get("plan") or {}).get("rate_bps")


def flow_traffic(point: Mapping[str, Any]) -> str:
    """What a flows point sent: `4 bulk flows` / `1 bulk flow, 1 probes flow` (its table has the rest)."""
    bulk, probes = len(bulk_flows(point)), len(probe_flows(point))
    text = _("{count} bulk flow(s)").format(count=bulk)
    return text + (", " + _("{count} probes flow(s)").format(count=probes) if probes else "")


def _direction(flow: Mapping[str, Any]) -> str:
    """A bulk flow's way ('-' for probes): results from before downloads existed are uploads."""
    if flow.get("kind") != "bulk":
        return "-"
    return _(DIRECTION_NAMES.get(str(flow.get("direction") or "upload"), str(flow.get("direction"))))


def flow_rows(point: Mapping[str, Any]) -> list[list[str]]:
    """One row per flow: name, protocol, direction, start, goodput, predicted (which oracle), ratio,
    retransmits, RTT p50 (probes flows)."""
    rows = []
    for flow in point.get("flows") or []:
        goodput = flow.get("goodput_bps")
        predicted, ratio = "-", "-"
        best = main_prediction(flow) if flow.get("kind") == "bulk" else None
        if best is not None:
            name, prediction = best
            predicted = f"{format_rate(prediction['goodput_bps'])} ({_(ORACLE_NAMES[name])})"
            if goodput is not None:
                ratio = f"{goodput / prediction['goodput_bps']:.2f}"
        rexmit = flow.get("bulk_retransmits")
        p50 = (flow.get("rtt_us") or {}).get("p50")
        rows.append([
            str(flow.get("name")), protocol_label(str(flow.get("protocol"))), _direction(flow),
            f"{float(flow.get('start_s') or 0):g} s",
            format_rate(goodput) if flow.get("kind") == "bulk" else _("probes"),
            predicted, ratio, "-" if rexmit is None else str(rexmit),
            "-" if p50 is None else f"{p50 / US_PER_MS:.1f} ms",
        ])
    return rows


def flow_table(point: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """`flow_rows` with their translated headers, leaving out the columns that say nothing here: one
    that is '-' in every row, the start when every flow started at once, the protocol when every
    flow is named after its protocol, the direction when every bulk flow uploads (the default)."""
    rows = flow_rows(point)
    headers = [_(h) for h in FLOW_HEADERS]
    flows = point.get("flows") or []
    dropped = {i for i in range(len(headers)) if rows and all(r[i] == "-" for r in rows)}
    if all(not f.get("start_s") for f in flows):
        dropped.add(FLOW_HEADERS.index(N_("start")))
    if all(f.get("direction", "upload") == "upload" for f in flows):
        dropped.add(FLOW_HEADERS.index(N_("direction")))
    if all(f.get("name") == f.get("protocol") for f in flows):
        dropped.add(FLOW_HEADERS.index(N_("protocol")))
    keep = [i for i in range(len(headers)) if i not in dropped]
    return [headers[i] for i in keep], [[row[i] for i in keep] for row in rows]


def prediction_notes(point: Mapping[str, Any]) -> list[str]:
    """Every prediction's inputs, one line each: the constant, p, RTT and MSS used for Mathis."""
    notes = []
    for flow in bulk_flows(point):
        for name, prediction in (flow.get("predictions") or {}).items():
            if name != "link_rate" and prediction.get("label"):
                predicted = format_rate(prediction["goodput_bps"])
                notes.append(f"{flow.get('name')}: {prediction['label']} = {predicted}")
    return notes


def group_line(point: Mapping[str, Any]) -> str:
    """Jain's index and RPM, idle and loaded, as one line ('' when the point has neither)."""
    group = point.get("group") or {}
    parts = []
    if group.get("jain_index") is not None:
        parts.append(_("Jain's index {jain}").format(jain=f"{group['jain_index']:.3f}"))
    if group.get("rpm_idle") is not None:
        parts.append(_("RPM idle {rpm}").format(rpm=f"{group['rpm_idle']:.0f}"))
    if group.get("rpm_loaded") is not None:
        loaded = LOADED_RPM.get(str(group.get("load_direction") or "upload"), LOADED_RPM["upload"])
        parts.append(_(loaded).format(rpm=f"{group['rpm_loaded']:.0f}"))
    return " · ".join(parts)


# --- the story -------------------------------------------------------------------------------------
def point_story(point: Mapping[str, Any]) -> str:
    """One point's paragraph: who got what (and what was predicted), fairness, latency under load."""
    sentences = []
    flows = bulk_flows(point)
    rate = link_rate(point)
    if flows:
        shares = []
        alone = not point.get("group")
        for flow in flows:
            goodput = format_rate(flow.get("goodput_bps"))
            text = _("{flow} got {goodput}").format(flow=_flow_name(flow, alone), goodput=goodput)
            sending = _sending_rate(flow)
            if sending:
                lost = ((flow.get("bulk") or {}).get("datagrams") or {}).get("loss_ratio")
                text += " " + (_("(sending at {rate}, {lost} of its datagrams lost)").format(
                    rate=format_rate(sending), lost=f"{100 * lost:.1f}%") if lost is not None
                    else _("(sending at {rate})").format(rate=format_rate(sending)))
            best = main_prediction(flow)
            if best is not None and best[0] != "link_rate" and flow.get("goodput_bps") is not None:
                name, prediction = best
                text += " " + _("({ratio} x the {oracle} prediction, {predicted})").format(
                    ratio=f"{flow['goodput_bps'] / prediction['goodput_bps']:.2f}",
                    oracle=_(ORACLE_NAMES[name]),
                    predicted=format_rate(prediction["goodput_bps"]))
            shares.append(text)
        sentences.append("; ".join(shares) + ".")
        total = sum(float(f.get("goodput_bps") or 0) for f in flows)
        if rate and len(flows) > 1 and not alone:  # "together" only for flows that shared the link
            sentences.append(_("Together {total} of the link's {rate} ({share})").format(
                total=format_rate(total), rate=format_rate(rate), share=f"{100 * total / rate:.0f}%")
                + (", " + _("Jain's index {jain}").format(jain=f"{point['group']['jain_index']:.3f}")
                   if (point.get("group") or {}).get("jain_index") is not None else "") + ".")
    group = point.get("group") or {}
    idle, loaded = (group.get("idle_rtt_us") or {}).get("p50"), (group.get("rtt_us") or {}).get("p50")
    if loaded is not None:
        said = LOADED_SENTENCE.get(str(group.get("load_direction") or "upload"), LOADED_SENTENCE["upload"])
        sentence = _(said).format(
            loaded=f"{loaded / US_PER_MS:.1f}", rpm=f"{group.get('rpm_loaded', 0):.0f}")
        if idle is not None:
            sentence += ", " + _("against {idle} ms idle (RPM {rpm}): the queue added {added} ms").format(
                idle=f"{idle / US_PER_MS:.1f}", rpm=f"{group.get('rpm_idle', 0):.0f}",
                added=f"{(loaded - idle) / US_PER_MS:.0f}")
        sentences.append(sentence + ".")
    return " ".join(sentences)


LOADED_SENTENCE = {"upload": N_("Probes under the upload load: RTT p50 {loaded} ms (RPM {rpm})"),
                   "download": N_("Probes under the download load: RTT p50 {loaded} ms (RPM {rpm})"),
                   "both": N_("Probes under the load both ways: RTT p50 {loaded} ms (RPM {rpm})")}


def headline(payload: Mapping[str, Any]) -> str:
    """The report's first paragraph for a scenario with flows: the story across its points, only
    what a point's own paragraph (`point_story`, printed below it) does not say already: the curve
    across a sweep, a group's fair share in one sentence, latency compared across points."""
    points = [p for p in payload.get("points", []) if has_flows(p)]
    if not points:
        return ""
    if all(not p.get("group") for p in points):  # each protocol alone ([traffic] kind = "bulk")
        return _curve_headline(points)
    loaded = [p for p in points if (p.get("group") or {}).get("rpm_loaded") is not None]
    parts = [_group_headline(p) for p in points if p not in loaded]
    parts += [_latency_headline(loaded)] if len(loaded) > 1 else []
    return " ".join(part for part in parts if part)


def _group_headline(point: Mapping[str, Any]) -> str:
    """One group in a sentence: `4 TCP-CUBIC flows shared 10.00 Mbit/s: Jain's index 0.997 (2.26 to
    2.58 Mbit/s each)`; "" when the flows differ (who got what is the point's own paragraph)."""
    flows = bulk_flows(point)
    rate = link_rate(point)
    jain = (point.get("group") or {}).get("jain_index")
    protocols = {str(f.get("protocol")) for f in flows}
    goodputs = [float(f.get("goodput_bps") or 0) for f in flows]
    if len(flows) > 1 and len(protocols) == 1 and jain is not None:
        shared = _("{count} {protocol} flows shared {rate}: Jain's index {jain} ({low} to {high} each).")
        return shared.format(
            count=len(flows), protocol=protocol_label(protocols.pop()),
            rate=format_rate(rate) if rate else _("the link"), jain=f"{jain:.3f}",
            low=format_rate(min(goodputs)), high=format_rate(max(goodputs)))
    return ""


def _curve_headline(points: list[Mapping[str, Any]]) -> str:
    """Each protocol alone at every point: its goodput across the sweep, beside Mathis."""
    by_protocol: dict[str, list[str]] = {}
    mathis_seen = False
    for point in points:
        for flow in bulk_flows(point):
            cell = _mbit(flow.get("goodput_bps")) + (f" @ {point.get('id')}" if len(points) > 1 else "")
            best = main_prediction(flow)
            if best is not None and best[0] != "link_rate" and flow.get("goodput_bps") is not None:
                name, prediction = best
                mathis_seen = mathis_seen or name == "mathis"
                ratio = f"{flow['goodput_bps'] / prediction['goodput_bps']:.2f}"
                cell += " " + _("({ratio} x {oracle})").format(ratio=ratio, oracle=_(ORACLE_NAMES[name]))
            by_protocol.setdefault(str(flow.get("protocol")), []).append(cell)
    parts = [f"{protocol_label(proto)}: {', '.join(cells)}" for proto, cells in by_protocol.items()]
    text = _("Goodput in Mbit/s of each protocol alone on the link: {parts}.").format(parts="; ".join(parts))
    if mathis_seen:
        text += " " + _("Mathis's model (MSS/RTT x C/sqrt(p)) describes a loss-driven TCP; a ratio far "
                        "above 1 is a sender that does not halve its window on each loss.")
    return text


def _latency_headline(points: list[Mapping[str, Any]]) -> str:
    """Latency under load across the points (the queue limit): idle vs loaded RTT and RPM."""
    parts = []
    for point in points:
        group = point.get("group") or {}
        loaded = (group.get("rtt_us") or {}).get("p50")
        if loaded is not None:
            way = _(DIRECTION_NAMES.get(str(group.get("load_direction")), N_("load both ways")))
            parts.append(_("{point} ({way}): {loaded} ms (RPM {rpm})").format(
                point=point.get("id"), way=way, loaded=f"{loaded / US_PER_MS:.1f}",
                rpm=f"{group.get('rpm_loaded', 0):.0f}"))
    idle = [(p.get("group") or {}).get("idle_rtt_us", {}) or {} for p in points]
    idle_p50 = [i.get("p50") for i in idle if i.get("p50") is not None]
    text = _("RTT p50 of probes while a bulk flow filled the queue: {parts}").format(parts="; ".join(parts))
    if idle_p50:
        text += "; " + _("idle it was {idle} ms").format(idle=f"{min(idle_p50) / US_PER_MS:.1f}")
    return text + ". " + _("A longer queue lets the bulk flow keep more packets waiting in front of "
                           "every probe: the delay grows with the limit (bufferbloat).")
