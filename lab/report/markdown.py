"""report.md: the same summary as the HTML page, readable in a terminal or a pull request.

Every text taken from result.json (names, ids, messages, reasons, counters) is plain text here as it
is in report.html: `<`, `>` and `&` are escaped (a Markdown viewer would otherwise render a
`<script>` or `<img>` a hand-edited file holds), each value stays on its one line, and code spans
and fences are longer than any backtick run inside them.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from typing import Any

from lab.i18n import _
from lab.report.appearance import label
from lab.report.flows import flow_table, group_line, has_flows, prediction_notes
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

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_BLOCK_START = re.compile(r"^(\s*)([#>+*=|`~-]|\d+[.)])")  # would start a heading, quote, list...


def _text(value: Any) -> str:
    """A value as one line of Markdown text that shows exactly its characters."""
    return html.escape(_UNPRINTABLE.sub(" ", str(value)), quote=False)


def _paragraph(value: Any) -> str:
    """`_text` that may begin a line: a leading `#`, `>`, `-`... is escaped, not a heading or list."""
    return _BLOCK_START.sub(lambda m: m.group(1) + "\\" + m.group(2), _text(value))


def _code(value: Any) -> str:
    """A value as an inline code span (shown literally, so not HTML-escaped)."""
    text = _UNPRINTABLE.sub(" ", str(value))
    fence = "`" * (1 + max((len(run) for run in re.findall("`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _row(cells: list[str]) -> str:
    """A table row of cells already made Markdown (data through `_text`)."""
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def render_markdown(payload: Mapping[str, Any]) -> str:
    """The Markdown report for one result.json payload."""
    scenario = payload.get("scenario") or {}
    protocols = protocols_of(payload)
    lines = [f"# {_text(scenario.get('name', '?'))}", ""]
    if scenario.get("description"):
        lines += [_paragraph(scenario["description"]), ""]
    started = _("Seed {seed}, started {started}.")
    started = started.format(seed=_text(payload.get("seed")), started=_text(payload.get("started_at", "?")))
    lines += [started, ""]
    if payload.get("interrupted"):
        banner = _("Interrupted ({signal}): only the points measured before that are shown.")
        lines += [f"**{banner.format(signal=_text(interrupted_by(payload)))}**", ""]
    lines += ["## " + _("What happened"), ""]
    for point_id, text in what_happened(payload):
        lines += [f"- **{_text(point_id)}**: {_text(text)}"]
    why = why_text(payload)
    if why:
        lines += ["", _paragraph(why)]
    lines += ["", "## " + _("Summary"), ""]
    for point in payload.get("points", []):
        link = _("Link: {link}.").format(link=_text(link_description(point)))
        lines += [f"### {_text(point_label(point))}", "", link, ""]
        drop_line = link_drop_line(point)
        if drop_line:
            lines += [_paragraph(drop_line) + ".", ""]
        if point.get("results") or not has_flows(point):
            lines += [_row(["", *[_text(label(p)) for p in protocols]]), _row(["---"] * (len(protocols) + 1))]
            lines += [_row([header, *map(_text, cells)]) for header, cells in side_by_side(point, protocols)]
            lines.append("")
        if has_flows(point):  # bulk points and flow groups: goodput measured beside predicted
            headers, rows = flow_table(point)
            lines += [_row(headers), _row(["---"] * len(headers))]
            lines += [_row([_text(c) for c in cells]) for cells in rows]
            lines.append("")
            extra = [group_line(point), *prediction_notes(point)]
            lines += [f"- {_text(line)}" for line in extra if line] + [""]
        for proto, checks in (point.get("checks") or {}).items():
            for check in checks:
                verdict = _("pass") if check["passed"] else "**" + _("FAIL") + "**"
                lines.append(
                    f"- {_text(proto)}: {_code(check['expectation'])} {verdict}: {_text(check['message'])}"
                )
        for proto, reason in (point.get("skipped") or {}).items():
            skipped = _("{protocol} skipped: {reason}").format(protocol=_text(proto), reason=_text(reason))
            lines.append(f"- {skipped}")
        counters = counters_rows(point)
        if counters:
            lines += ["", _("Counters:"), ""]
            for proto, source, text in counters:
                body = [_UNPRINTABLE.sub(" ", t) for t in text.splitlines()]
                fence = "`" * max(3, 1 + max((len(r) for t in body for r in re.findall("`+", t)), default=0))
                lines += [f"- {_text(proto)} {source}:", "", f"  {fence}", *[f"  {t}" for t in body]]
                lines.append(f"  {fence}")
        lines.append("")
    notes = retransmission_notes(payload)
    if notes:
        lines += ["## " + _("Retransmissions and link drops"), ""]
        lines += [f"- **{_text(point_id)}**: {_text(text)}" for point_id, text in notes]
        lines.append("")
    atlas = [atlas_row(row) for row in payload.get("atlas") or []]
    if atlas:
        matched = sum(1 for row in atlas if row["matches_expected"])
        lines += ["## " + _("Malformed-packet atlas"), ""]
        behaved = _("{matched} of {total} cases behaved as expected.")
        lines += [behaved.format(matched=matched, total=len(atlas)), ""]
        lines += [_row([_("case"), _("layer"), _("defect"), _("expected"), _("verdict"), _("server alive")])]
        lines += [_row(["---"] * 6)]
        for row in atlas:
            verdict = _text(row["verdict"])
            if not row["matches_expected"]:
                verdict = _("{verdict} (unexpected)").format(verdict=f"**{verdict}**")
            alive = _("yes") if row["server_alive"] else "**" + _("no") + "**"
            cells = [_text(row[key]) for key in ("name", "layer", "defect", "expected_verdict")]
            lines.append(_row([*cells, verdict, alive]))
        lines.append("")
    env = payload.get("environment") or {}
    if env:
        lines += ["## " + _("Environment"), ""]
        lines += [f"- {_text(k)}: {_text(v)}" for k, v in flat_environment(env)]
        lines.append("")
    return "\n".join(lines)

