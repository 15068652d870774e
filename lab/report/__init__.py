"""Reports of a run: result.json (the data), report.html (self-contained), report.md.

`result.json` layout (format "wirelab-result/1")::

    {"format", "scenario": {...}, "seed", "started_at", "finished_at", "interrupted",
     "environment": {kernel, python, packages, ...},
     "points": [{"id", "link": {options}, "link_config": {...} | null, "traffic": {plan},
                 "mode": "link" | "relay" | "loopback", "results": [Result dicts],
                 "skipped": {protocol: reason}, "checks": {protocol: [check dicts]}}],
     "atlas": [...] (optional)}

Each Result may carry `extras["timeline"]`: [[seq, t_ms, rtt_ms | null, stream], ...] (t_ms: intended
send time since the run started; rtt null = lost; stream absent in older files = 0), downsampled to at
most TIMELINE_MAX_POINTS entries; a multi-stream run also `extras["hol"]` (lab.metrics.head_of_line).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lab.errors import LabError

FORMAT = "wirelab-result/1"
RESULT_FILE = "result.json"
HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"
PACKAGES = (
    "wirelab",
    "typer",
    "rich",
    "hdrhistogram",
    "scipy",
    "numpy",
    "pyroute2",
    "scapy",
    "matplotlib",
    "jinja2",
    "pytest",
    "hypothesis",
    "pytest-benchmark",
)


def environment() -> dict[str, Any]:
    """Where the run happened: kernel, Python and package versions."""
    import os
    import platform
    from importlib import metadata

    uname = os.uname()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "kernel": f"{uname.sysname} {uname.release} {uname.version}",
        "machine": uname.machine,
        "hostname": uname.nodename,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": versions,
    }


def load_result(directory: Path) -> dict[str, Any]:
    """Read DIR/result.json; LabError says what is wrong with it."""
    path = Path(directory) / RESULT_FILE
    if not Path(directory).is_dir():
        raise LabError(f"{directory}: not a directory; give the run directory that holds {RESULT_FILE}")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabError(f"{path}: not found; run `lab run SCENARIO.toml --out {directory}` first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabError(f"{path}: not a readable result file ({exc})") from exc
    if (
        not isinstance(payload, dict)
        or payload.get("format") != FORMAT
        or not isinstance(payload.get("points"), list)
    ):
        raise LabError(f'{path}: not a wirelab result (expected "format": "{FORMAT}" and a points list)')
    for i, point in enumerate(payload["points"]):
        if not isinstance(point, dict) or "id" not in point or not isinstance(point.get("results"), list):
            raise LabError(f"{path}: points[{i}] is malformed (needs an id and a results list)")
        for result in point["results"]:
            if not isinstance(result, dict) or not {
                "protocol",
                "sent",
                "received",
                "lost",
                "loss_ratio",
            } <= set(result):
                raise LabError(f"{path}: points[{i}] holds a result without protocol/sent/received/lost")
    return payload


def write_report(directory: Path, payload: Mapping[str, Any]) -> dict[str, Path]:
    """Write result.json, report.html and report.md into `directory`; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"json": directory / RESULT_FILE}
    _atomic_write(paths["json"], json.dumps(payload, indent=1, sort_keys=False, default=str) + "\n")
    paths.update(render_files(directory, payload))
    return paths


def render_files(directory: Path, payload: Mapping[str, Any]) -> dict[str, Path]:
    """Write report.html and report.md from a payload (result.json is left alone)."""
    from lab.report.html import render_html
    from lab.report.markdown import render_markdown
    from lab.report.plots import render_plots

    directory = Path(directory)
    html_path, md_path = directory / HTML_FILE, directory / MARKDOWN_FILE
    _atomic_write(html_path, render_html(payload, render_plots(payload)))
    _atomic_write(md_path, render_markdown(payload))
    return {"html": html_path, "markdown": md_path}


def render_command(directory: Path) -> int:
    """`lab report DIR`: re-render report.html and report.md from DIR/result.json."""
    payload = load_result(directory)
    paths = render_files(Path(directory), payload)
    print(f"wrote {paths['html']}")
    print(f"wrote {paths['markdown']}")
    return 0


def _atomic_write(path: Path, text: str) -> None:
    # A report half-written by a Ctrl-C would be worse than the previous one: write, then rename.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
