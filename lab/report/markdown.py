"""report.md: the same summary as the HTML page, readable in a terminal or a pull request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lab.report.summary import counters_rows, link_description, protocols_of, side_by_side, what_happened


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def render_markdown(payload: Mapping[str, Any]) -> str:
    """The Markdown report for one result.json payload."""
    scenario = payload.get("scenario") or {}
    protocols = protocols_of(payload)
    lines = [f"# {scenario.get('name', '?')}", ""]
    if scenario.get("description"):
        lines += [scenario["description"], ""]
    lines += [f"Seed {payload.get('seed')}, started {payload.get('started_at', '?')}.", ""]
    if payload.get("interrupted"):
        lines += ["**Interrupted (Ctrl-C): only the points measured before that are shown.**", ""]
    lines += ["## What happened", ""]
    for point_id, text in what_happened(payload):
        lines += [f"- **{point_id}**: {text}"]
    lines += ["", "## Summary", ""]
    for point in payload.get("points", []):
        lines += [f"### {point['id']}", "", f"Link: {link_description(point)}.", ""]
        lines += [_row(["", *[p.upper() for p in protocols]]), _row(["---"] * (len(protocols) + 1))]
        lines += [_row([header, *cells]) for header, cells in side_by_side(point, protocols)]
        lines.append("")
        for proto, checks in (point.get("checks") or {}).items():
            for check in checks:
                verdict = "pass" if check["passed"] else "**FAIL**"
                lines.append(f"- {proto}: `{check['expectation']}` {verdict}: {check['message']}")
        for proto, reason in (point.get("skipped") or {}).items():
            lines.append(f"- {proto} skipped: {reason}")
        counters = counters_rows(point)
        if counters:
            lines += ["", "Counters:", ""]
            for proto, source, text in counters:
                lines += [
                    f"- {proto} {source}:",
                    "",
                    "  ```",
                    *[f"  {t}" for t in text.splitlines()],
                    "  ```",
                ]
        lines.append("")
    atlas = payload.get("atlas") or []
    if atlas:
        matched = sum(1 for row in atlas if row.get("matches_expected"))
        lines += ["## Malformed-packet atlas", ""]
        lines += [f"{matched} of {len(atlas)} cases behaved as expected.", ""]
        lines += [_row(["case", "layer", "defect", "expected", "verdict", "server alive"])]
        lines += [_row(["---"] * 6)]
        for row in atlas:
            expected = row.get("expected_verdict") or ""
            if isinstance(expected, list):
                expected = " or ".join(str(e) for e in expected)
            verdict = str(row.get("verdict", ""))
            lines.append(
                _row(
                    [
                        str(row.get("name", "?")),
                        str(row.get("layer", "")),
                        str(row.get("defect", "")),
                        str(expected),
                        verdict if row.get("matches_expected") else f"**{verdict}** (unexpected)",
                        "yes" if row.get("server_alive") else "**no**",
                    ]
                )
            )
        lines.append("")
    env = payload.get("environment") or {}
    if env:
        lines += ["## Environment", ""]
        lines += [f"- {k}: {v}" for k, v in _flat(env)]
        lines.append("")
    return "\n".join(lines)


def _flat(env: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in env.items():
        if isinstance(value, Mapping):
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out
