"""The self-contained report.html: a jinja2 template shipped as package data, plots inlined as SVG."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lab import i18n
from lab.i18n import _
from lab.report.appearance import colour, label
from lab.report.flows import flow_table, flow_traffic, group_line, has_flows, prediction_notes
from lab.report.summary import (
    atlas_row,
    counters_rows,
    flat_environment,
    interrupted_by,
    link_description,
    link_drop_line,
    point_label,
    protocols_of,
    retransmission_notes,
    side_by_side,
    what_happened,
    why_text,
)

TEMPLATE = "report.html.j2"


def _traffic_description(point: Mapping[str, Any]) -> str:
    if has_flows(point) and not point.get("results"):
        return flow_traffic(point)
    t = point.get("traffic") or {}
    pace = _("{rate}/s open loop").format(rate=f"{t['rate']:g}") if t.get("rate") else _("ping-pong")
    fields = {"count": t.get("count", "?"), "size": t.get("size", "?"), "pace": pace}
    fields["timeout"] = t.get("timeout", "?")
    if t.get("streams", 1) > 1:
        return _("{count} × {size} B, {pace}, timeout {timeout} s, {streams} streams").format(
            streams=t["streams"], **fields
        )
    return _("{count} × {size} B, {pace}, timeout {timeout} s").format(**fields)


def _probes_ran(point: Mapping[str, Any]) -> bool:
    """A point of probe runs (its side-by-side table), not one of bulk flows only."""
    return bool(point.get("results")) or not has_flows(point)


def render_html(payload: Mapping[str, Any], plots: Mapping[str, str]) -> str:
    """The report page for one result.json payload and its SVG plots."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("lab.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=False,
        undefined=jinja2.StrictUndefined,
    )
    # The page's text through lab.i18n: `{{ _("...") }}` and `{% trans %}` in the template.
    env.add_extension("jinja2.ext.i18n")
    env.install_gettext_callables(gettext=i18n._, ngettext=i18n.ngettext, newstyle=True)
    protocols = protocols_of(payload)
    points = payload.get("points", [])
    tables = []
    for point in points:
        checks = [(proto, check) for proto, items in (point.get("checks") or {}).items() for check in items]
        tables.append(
            {
                "id": point_label(point),
                "link": link_description(point),
                "drop_line": link_drop_line(point),
                "traffic": _traffic_description(point),
                "rows": side_by_side(point, protocols) if _probes_ran(point) else [],
                "checks": checks,
                "skipped": list((point.get("skipped") or {}).items()),
                # bulk points and flow groups (lab.report.flows): goodput measured beside predicted
                "flows": flow_table(point),
                "group": group_line(point),
                "predictions": prediction_notes(point),
            }
        )
    names = {str(r.get("protocol")) for p in points for r in p.get("results", [])}
    names.update(proto for p in points for proto in (p.get("skipped") or {}))
    counters = [(point_label(p), *row) for p in points for row in counters_rows(p)]
    scenario = payload.get("scenario") or {}
    # The template gets only values computed here, each present: a key a (valid) result.json may
    # leave out must not reach jinja2's StrictUndefined.
    return env.get_template(TEMPLATE).render(
        lang=i18n.language(),
        scenario={"name": scenario.get("name", "?"), "description": scenario.get("description", "")},
        protocols=protocols,
        # each protocol's heading and colour, from the registry (the template branches on no name)
        labels={p: label(p) for p in (*protocols, *names)},
        headings=[label(p) for p in protocols],
        colours={p: colour(p, protocols) for p in protocols},
        seed=payload.get("seed"),
        started_at=payload.get("started_at", "?"),
        interrupted=bool(payload.get("interrupted")),
        interrupted_by=interrupted_by(payload),
        modes=sorted({str(p.get("mode", "?")) for p in points}) or ["-"],
        points=points,
        streams=max([int((p.get("traffic") or {}).get("streams", 1)) for p in points], default=1),
        story=what_happened(payload),
        why=why_text(payload),
        rexmit_notes=retransmission_notes(payload),
        tables=tables,
        plots={name: plots.get(name, "") for name in PLOT_NAMES},
        counters=counters,
        atlas=[atlas_row(row) for row in payload.get("atlas") or []],
        environment=flat_environment(payload.get("environment") or {}),
    )


# Every plot the template can show; one missing from `plots` (nothing to show) leaves its section out.
PLOT_NAMES = ("latency_cdf", "loss", "timeline", "reordering", "goodput", "retransmissions",
              "flow_oracle", "flow_goodput", "flow_cwnd", "flow_fairness", "flow_latency")

