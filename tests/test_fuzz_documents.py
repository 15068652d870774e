"""Issue 8's fuzzing: any scenario file or result.json document ends as a report or one line
`lab: error: ...` (exit 2), never a traceback. Driven through the real entry point, `lab.cli.main`.

The result.json documents are mutations of one made by a real `lab run` of a tiny unimpaired scenario
(once per module) and random JSON. Rendering the plots takes about a second, so most examples stop at
validation (an invalid document is refused there; a valid one renders its Markdown and HTML without
the plots) and a few go through the whole `lab report`.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import io
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lab.cli import main
from lab.errors import LabError, ScenarioError
from lab.report import load_result
from lab.report.html import render_html
from lab.report.markdown import render_markdown
from lab.report.plots import figures_for
from lab.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
TINY = '[scenario]\nname = "tiny"\n[traffic]\ncount = 12\nrate = 400\ntimeout = 0.5\n'
DEEP = "\x00deep\x00"  # a value replaced by 100 000 nested arrays once the document is text
NESTED = "[" * 100_000 + "]" * 100_000
HOSTILE_TEXT = (
    "$\\frac{$",
    "$x$",
    "$",
    "\\",
    "<script>alert(1)</script>",
    "</pre><img src=x onerror=alert(1)>",
    "-->",
    "{{ 7*7 }}",
    "{% raw %}",
    "\ud800",
    "a\nb\r\nc",
    "\x1b[31mred",
    "\u202eevil",
    "🙂",
    "",
    "_nolegend_",
    "%s%d%%",
    "|",
    "```",
    "# heading",
    "x" * 5000,
)
SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


# --- the entry point, in-process ----------------------------------------------------------------------
def run_lab(*args: str) -> tuple[int, str, str]:
    """`lab ARGS` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_report_or_one_error(code: int, stderr: str) -> None:
    assert code in (0, 2), (code, stderr[-2000:])
    if code == 0:
        assert stderr == "", stderr[-2000:]
    else:
        assert stderr.startswith("lab: error: ") and stderr.count("\n") == 1, stderr[-2000:]
        assert stderr.endswith("\n")


# --- a real result.json ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A result.json written by `lab run` of a tiny unimpaired scenario (loopback, or the link as root)."""
    base = tmp_path_factory.mktemp("real-run")
    scenario = base / "tiny.toml"
    scenario.write_text(TINY, encoding="utf-8")
    out = base / "out"
    done = subprocess.run(
        [sys.executable, "-m", "lab", "run", str(scenario), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return out, json.loads((out / "result.json").read_text(encoding="utf-8"))


def test_a_result_from_the_current_runner_round_trips_through_lab_report(real_run) -> None:
    out, payload = real_run
    assert {r["protocol"] for p in payload["points"] for r in p["results"]} == {"tcp", "udp"}
    (out / "report.html").unlink()
    code, stdout, stderr = run_lab("report", str(out))
    assert (code, stderr) == (0, "")
    assert f"wrote {out / 'report.html'}" in stdout
    html = (out / "report.html").read_text(encoding="utf-8")
    # one <svg> per plot with something to show (goodput and reordering only where they tell something)
    assert html.count("<svg") == len(figures_for(payload)) and "TCP delivered all 12 probes" in html
    assert load_result(out) == payload


# --- result.json documents ---------------------------------------------------------------------------
def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*prefix, i))


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 63, 64, 3001, 2**63, 2**64 + 1, 10**400]),
    st.floats(),  # NaN and infinities included
    st.sampled_from([0.0, 1.0, 1.5, -0.5, 1e15, 1e16, 1e308]),
    st.text(max_size=12),
    st.sampled_from(HOSTILE_TEXT),
)
HOSTILE_VALUES = st.one_of(
    SCALARS,
    st.just(DEEP),
    st.lists(SCALARS, max_size=5),
    st.dictionaries(st.sampled_from(["p50", "streams", "blocked", "x", "$", ""]), SCALARS, max_size=3),
)


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], values: st.SearchStrategy[Any] = HOSTILE_VALUES) -> Any:
    """`base` with one to three places replaced, deleted, added to or wrapped."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        # hypothesis favours the first choices: the root and "format" (which end everything) go last
        paths = sorted(_paths(doc), key=lambda p: p in ((), ("format",)))
        path = draw(st.sampled_from(paths))
        if not path:
            return draw(values)
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "wrap"]))
        if op == "replace":
            parent[key] = draw(values)
        elif op == "delete":
            del parent[key]
        elif op == "add" and isinstance(parent[key], dict):
            added = draw(st.sampled_from(["extra", "id", "timeline", "hol", "notes", "observations", "$x$"]))
            parent[key][added] = draw(values)
        elif op == "add" and isinstance(parent[key], list):
            parent[key].append(draw(values))
        else:
            parent[key] = draw(st.sampled_from([[parent[key]], {"x": parent[key]}]))
    return doc


JSON_KEYS = st.sampled_from(["format", "scenario", "points", "results", "id", "protocol", "sent", "x"])
RANDOM_JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(JSON_KEYS, inner, max_size=4),
    max_leaves=20,
)
FORMATTED = st.fixed_dictionaries(
    {"format": st.sampled_from(["wirelab-result/2", "wirelab-result/1"])},
    optional={"scenario": RANDOM_JSON, "points": st.lists(RANDOM_JSON, max_size=3)},
)


def write_document(directory: Path, document: Any) -> None:
    text = json.dumps(document, allow_nan=True).replace(json.dumps(DEEP), NESTED)
    (directory / "result.json").write_text(text, encoding="utf-8")


def check_document(document: Any, *, render_plots: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="wirelab-fuzz-") as tmp:
        directory = Path(tmp)
        write_document(directory, document)
        try:
            payload = load_result(directory)
        except LabError as exc:
            message = str(exc)
            assert message.startswith(f"{directory / 'result.json'}: ") and "\n" not in message, message
            # the command says exactly this, in one line, exit 2
            code, _out, err = run_lab("report", str(directory))
            assert (code, err) == (2, f"lab: error: {message}\n")
            return
        if render_plots:
            code, _out, err = run_lab("report", str(directory))
            assert_report_or_one_error(code, err)
            assert code == 0, err  # it validated, so it must render
            html = (directory / "report.html").read_text(encoding="utf-8")
            markdown = (directory / "report.md").read_text(encoding="utf-8")
        else:
            html = render_html(payload, {})
            markdown = render_markdown(payload)
        assert "<script" not in html and "<img" not in html
        prose = markdown_prose(markdown)
        assert "<script" not in prose and "<img" not in prose


def markdown_prose(markdown: str) -> str:
    """Markdown without its code blocks and code spans, whose text a viewer shows literally."""
    kept, fence = [], ""
    for line in markdown.splitlines():
        stripped = line.strip()
        if fence:
            fence = "" if stripped == fence else fence
            continue
        if re.fullmatch(r"`{3,}", stripped):
            fence = stripped
            continue
        kept.append(re.sub(r"(`+)(.+?)\1", "", line))
    return "\n".join(kept)


@settings(max_examples=100, **SETTINGS)
@given(data=st.data())
def test_fuzz_mutated_result_documents_validate_or_fail_in_one_line(real_run, data) -> None:
    check_document(data.draw(mutated(real_run[1])), render_plots=False)


V1_SAMPLE = json.loads(
    (Path(__file__).resolve().parent / "data" / "sample-run-v1" / "result.json").read_text(encoding="utf-8")
)


@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_fuzz_mutated_v1_documents_validate_or_fail_in_one_line(data) -> None:
    """A "wirelab-result/1" file is checked as what it is, then converted: neither step may crash."""
    check_document(data.draw(mutated(V1_SAMPLE)), render_plots=False)


@settings(max_examples=60, **SETTINGS)
@given(document=st.one_of(RANDOM_JSON, FORMATTED))
def test_fuzz_random_json_documents_fail_in_one_line(document) -> None:
    check_document(document, render_plots=False)


def _text_paths(base: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [p for p in _paths(base) if p and isinstance(_get(base, p), str) and p != ("format",)]


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


@st.composite
def hostile_texts(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    """`base` with up to four of its texts (ids, protocol names, messages...) made hostile: valid
    documents, mostly, so they reach the plots."""
    doc = copy.deepcopy(base)
    for path in draw(st.lists(st.sampled_from(_text_paths(base)), min_size=1, max_size=4, unique=True)):
        parent = _get(doc, path[:-1])
        parent[path[-1]] = draw(st.sampled_from(HOSTILE_TEXT) | st.text(max_size=8))
    return doc


@settings(max_examples=4, **SETTINGS)
@given(data=st.data())
def test_fuzz_hostile_texts_render_the_whole_report(real_run, data) -> None:
    check_document(data.draw(hostile_texts(real_run[1])), render_plots=True)


# --- scenario files -------------------------------------------------------------------------------------
class Accepted(LabError):
    """Stands in for the run: the fuzz judges the file, it does not measure anything."""


def _refuse_to_run(scenario: Any, **_kwargs: Any) -> Any:
    raise Accepted("accepted (the fuzz does not run scenarios)")


def _toml_key(key: str) -> str:
    return key if key and all(c.isalnum() or c in "-_." for c in key) and key.isascii() else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON escapes are TOML basic-string escapes (surrogates are refused)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


def toml_text(tables: dict[str, dict[str, Any]]) -> str:
    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


TOML_SCALARS = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, 1, -1, 64, 65, 10_000_000, 10**9]),
    st.floats(),
    st.sampled_from(["5%", "150%", "20ms", "1e-300bit", "1mbit", "gemodel 1% 30%", "both", "up", ".."]),
    st.sampled_from(HOSTILE_TEXT),
    st.text(max_size=10),
    st.sampled_from(
        [datetime.date(1979, 5, 27), datetime.time(7, 32), datetime.datetime(1979, 5, 27, 7, 32)]
    ),
)
TOML_VALUES = st.one_of(
    TOML_SCALARS,
    st.lists(TOML_SCALARS, max_size=4),
    st.dictionaries(st.sampled_from(["min", "max", "x"]), TOML_SCALARS, max_size=2),
)
SECTION_KEYS = {
    "scenario": ["name", "description", "protocols", "seed", "capture", "mtu", "slow", "privileged", "atlas"],
    "traffic": ["count", "size", "rate", "timeout", "streams", "duration"],
    "link": [
        "loss",
        "delay",
        "jitter",
        "distribution",
        "reorder",
        "duplicate",
        "corrupt",
        "rate",
        "limit",
        "direction",
    ],
    "sweep": ["loss", "delay", "count", "link.rate", "traffic.rate", "rate", "x"],
    "expect.udp": ["loss_ratio", "rtt_p50_ms", "hol_blocked", "x"],
    'expect."loss=5%".tcp': ["loss_ratio", "retransmits"],
    "x": ["y"],
}
TOML_DOCUMENTS = st.dictionaries(
    st.sampled_from(list(SECTION_KEYS)),
    st.just(None),
    max_size=5,
).flatmap(
    lambda tables: st.fixed_dictionaries(
        {
            table: st.dictionaries(st.sampled_from(SECTION_KEYS[table]), TOML_VALUES, max_size=4)
            for table in tables
        }
    )
)
SHIPPED = sorted(p.read_text(encoding="utf-8") for p in SCENARIOS.glob("*.toml"))


@st.composite
def edited_scenarios(draw: st.DrawFn) -> str:
    """A shipped scenario with a line replaced, deleted or duplicated, or a hostile line added."""
    lines = draw(st.sampled_from(SHIPPED)).splitlines()
    i = draw(st.integers(0, max(0, len(lines) - 1)))
    op = draw(st.sampled_from(["replace", "delete", "duplicate", "insert"]))
    key = draw(st.sampled_from([k for keys in SECTION_KEYS.values() for k in keys]))
    line = f"{_toml_key(key)} = {_toml_value(draw(TOML_VALUES))}"
    if op == "replace" and lines:
        lines[i] = line
    elif op == "delete" and lines:
        del lines[i]
    elif op == "duplicate" and lines:
        lines.insert(i, lines[i])
    else:
        lines.insert(i, line)
    return "\n".join(lines) + "\n"


def check_scenario(content: str | bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="wirelab-fuzz-") as tmp:
        path = Path(tmp) / "fuzz.toml"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", errors="surrogatepass")
        try:
            load_scenario(path)
            expected = f"lab: error: {Accepted('accepted (the fuzz does not run scenarios)')}\n"
        except ScenarioError as exc:
            expected = f"lab: error: {exc}\n"
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("lab.runner.run_scenario", _refuse_to_run)
            code, _out, err = run_lab("run", str(path), "--out", str(Path(tmp) / "out"))
        assert_report_or_one_error(code, err)
        assert (code, err) == (2, expected)


@settings(max_examples=100, **SETTINGS)
@given(document=TOML_DOCUMENTS)
def test_fuzz_generated_scenarios_load_or_fail_in_one_line(document) -> None:
    check_scenario(toml_text(document))


@settings(max_examples=100, **SETTINGS)
@given(content=st.one_of(edited_scenarios(), st.text(max_size=200), st.binary(max_size=200)))
def test_fuzz_edited_and_random_scenario_files_load_or_fail_in_one_line(content) -> None:
    check_scenario(content)
