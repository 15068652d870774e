"""Reports of a run: result.json (the data), report.html (self-contained), report.md.

`lab report DIR --slides` (write_slides) adds DIR/slides/: projector-sized PNG and SVG figures.

`result.json` layout (format "wirelab-result/2")::

    {"format", "scenario": {...}, "seed", "started_at", "finished_at", "interrupted",
     "environment": {kernel, python, packages, ...},
     "points": [{"id", "link": {options}, "link_config": {...} | null, "traffic": {plan},
                 "mode": "link" | "relay" | "loopback", "results": [Result dicts],
                 "skipped": {protocol: reason}, "checks": {protocol: [check dicts]}}],
     "atlas": [...] (optional)}

Each Result (lab.records.Result, docs/architecture.md#result-object) carries `notes`, `observations`,
`hol` (several streams only) and `timeline`: [[seq, t_ms, rtt_ms | null, stream], ...] (t_ms: intended
send time since the run started; rtt null = lost; stream absent in older files = 0), downsampled to at
most TIMELINE_MAX_POINTS entries.

`lab report` also reads "wirelab-result/1" files, where those four lived in a free-form `extras` (and
TCP_INFO in `tcp_info`): such a file is checked against its own format, then converted on load
(`upgrade`), so everything downstream sees one layout.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lab.errors import LabError
from lab.files import write_atomic

FORMAT = "wirelab-result/2"
FORMAT_V1 = "wirelab-result/1"  # read, converted on load
READABLE_FORMATS = (FORMAT, FORMAT_V1)
RESULT_FILE = "result.json"
# The largest result the runner writes (200 sweep points x 2 protocols x 3000 timeline rows) is
# about 35 MB; a bigger file is not one of ours, and parsing it would cost gigabytes.
RESULT_FILE_LIMIT = 64 * 1024 * 1024
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
    """Read and validate DIR/result.json (lab.report.schema); LabError says, in one line, what is wrong.

    Only a regular file of at most RESULT_FILE_LIMIT bytes is read (a result.json that is a symlink
    to /dev/zero would otherwise be read forever).
    """
    from lab.files import read_limited
    from lab.report.schema import SchemaError, describe, validate

    path = Path(directory) / RESULT_FILE
    if not Path(directory).is_dir():
        raise LabError(f"{directory}: not a directory; give the run directory that holds {RESULT_FILE}")
    try:
        data = read_limited(path, RESULT_FILE_LIMIT, "a result file")
        payload = json.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise LabError(f"{path}: not found; run `lab run SCENARIO.toml --out {directory}` first") from None
    except OSError as exc:
        raise LabError(f"{path}: not a readable result file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise LabError(f"{path}: not a readable result file (not UTF-8: byte {exc.start})") from None
    except RecursionError:
        raise LabError(f"{path}: not a readable result file (JSON nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, and an integer of more than 4300 digits
        raise LabError(f"{path}: not a readable result file ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") not in READABLE_FORMATS:
        got = describe(payload.get("format")) if isinstance(payload, dict) else describe(payload)
        raise LabError(f'{path}: not a wirelab result (expected "format": "{FORMAT}", got {got})')
    try:
        validate(payload, payload["format"])  # an older file's errors name the places it has
        if payload["format"] == FORMAT_V1:
            payload = upgrade(payload)
            validate(payload, FORMAT)
    except SchemaError as exc:
        raise LabError(f"{path}: {exc}") from None
    return payload


def upgrade(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A "wirelab-result/1" document in today's format (lab.records.result_from_v1 for each result)."""
    from lab.records import result_from_v1

    if payload.get("format") != FORMAT_V1:
        return dict(payload)
    points = [
        {**point, "results": [result_from_v1(r) for r in point.get("results", [])]}
        for point in payload.get("points", [])
    ]
    return {**payload, "format": FORMAT, "points": points}


def write_report(directory: Path, payload: Mapping[str, Any]) -> dict[str, Path]:
    """Write result.json, report.html and report.md into `directory`; returns their paths."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LabError(f"{directory}: cannot create the report folder ({exc.strerror or exc})") from None
    paths = {"json": directory / RESULT_FILE}
    write_atomic(paths["json"], to_json(payload) + "\n")
    paths.update(render_files(directory, payload))
    return paths


def to_json(payload: Mapping[str, Any]) -> str:
    """result.json text: indented, but a list of plain values on one line (a timeline row takes ~25
    bytes instead of ~90: the largest run the runner can write, 200 points x 2 protocols x 3000
    rows, is ~42 MiB instead of ~89). Values JSON cannot hold become strings; NaN and infinities
    become null (not measured)."""
    try:
        return _json_text(payload, 0)
    except ValueError:  # a NaN or infinity somewhere: rare, so only then copy the whole payload
        return _json_text(_finite(payload), 0)


def _json_text(value: Any, level: int) -> str:
    def dumps(v: Any) -> str:
        return json.dumps(v, default=str, allow_nan=False)

    containers = dict | list | tuple
    if isinstance(value, dict):
        if not value:
            return "{}"
        pad = "\n" + " " * (level + 1)
        keys = [k if isinstance(k, str) else dumps(k) for k in value]  # json's own key conversion
        inner = ",".join(
            f"{pad}{dumps(k)}: {_json_text(v, level + 1)}" for k, v in zip(keys, value.values(), strict=True)
        )
        return "{" + inner + "\n" + " " * level + "}"
    if not isinstance(value, list | tuple) or not any(isinstance(v, containers) for v in value):
        return dumps(value)
    pad = "\n" + " " * (level + 1)
    if all(isinstance(v, list | tuple) and not any(isinstance(x, containers) for x in v) for v in value):
        return "[" + pad + ("," + pad).join(map(dumps, value)) + "\n" + " " * level + "]"  # timeline rows
    inner = ",".join(f"{pad}{_json_text(v, level + 1)}" for v in value)
    return "[" + inner + "\n" + " " * level + "]"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def render_files(directory: Path, payload: Mapping[str, Any]) -> dict[str, Path]:
    """Write report.html and report.md from a payload (result.json is left alone)."""
    from lab.report.figures import render_plots
    from lab.report.html import render_html
    from lab.report.markdown import render_markdown

    directory = Path(directory)
    html_path, md_path = directory / HTML_FILE, directory / MARKDOWN_FILE
    write_atomic(html_path, render_html(payload, render_plots(payload)))
    write_atomic(md_path, render_markdown(payload))
    return {"html": html_path, "markdown": md_path}


def render_command(directory: Path, slides: bool = False) -> int:
    """`lab report DIR [--slides]`: re-render report.html and report.md from DIR/result.json, and with
    `slides` the projector-sized figures in DIR/slides/."""
    payload = load_result(directory)
    paths = render_files(Path(directory), payload)
    print(f"wrote {paths['html']}")
    print(f"wrote {paths['markdown']}")
    if slides:
        written = write_slides(Path(directory), payload)
        print(f"wrote {len(written)} slide files in {Path(directory) / 'slides'}")
    return 0


def write_slides(directory: Path, payload: Mapping[str, Any]) -> list[Path]:
    """Each report plot as a 16:9 PNG and SVG with 20 pt text, plus the one-slide story figure, in
    DIR/slides/ (lab.report.slides); returns the paths written."""
    from lab.report.slides import write_slides as write

    return write(directory, payload)
