"""Issue 8, the files a user hands the lab: defect 3 (unbounded reads of scenario and result files),
defect 11 (hand-edited result.json documents) and defect 16 (a scenario name that is a path).

The reads that used to grow without bound run in a child process with a 1 GiB address-space limit and
a timeout, so a regression fails the test instead of exhausting the machine.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from lab.cli import main
from lab.errors import LabError, ScenarioError
from lab.scenario import SCENARIO_FILE_LIMIT, load_scenario, parse_scenario, safe_name

DATA = Path(__file__).resolve().parent / "data"
ADDRESS_SPACE = 1 << 30  # the unfixed reader hit 24 GB; 1 GiB is far above what a refusal needs


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def lab_bounded(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m lab ARGS` in a child limited to 1 GiB and 30 s."""
    return subprocess.run(
        [sys.executable, "-m", "lab", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        preexec_fn=_limit_memory,
    )


def lab_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`lab ARGS` in-process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as info:
        main(list(args))
        raise SystemExit(0)
    return int(info.value.code or 0), capsys.readouterr().err


def assert_one_error_line(stderr: str, *needles: str) -> None:
    assert stderr.startswith("lab: error: ") and stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in stderr, stderr


# --- defect 3: scenario files ---------------------------------------------------------------------
def test_defect_3_lab_run_dev_zero_is_refused_at_once() -> None:
    done = lab_bounded("run", "/dev/zero")
    assert done.returncode == 2, done.stderr[-500:]
    assert_one_error_line(
        done.stderr, "/dev/zero: is a character device; a scenario file must be a regular file"
    )


def test_defect_3_scenario_symlink_to_dev_zero_fifo_and_directory_are_refused(tmp_path: Path) -> None:
    (tmp_path / "zero.toml").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo.toml")  # no writer: a blocking open would hang here
    (tmp_path / "dir.toml").mkdir()
    kinds = (("zero.toml", "a character device"), ("fifo.toml", "a FIFO"), ("dir.toml", "a directory"))
    for name, kind in kinds:
        done = lab_bounded("run", str(tmp_path / name))
        assert done.returncode == 2, done.stderr[-500:]
        assert_one_error_line(done.stderr, f"{name}: is {kind}; a scenario file must be a regular file")


def test_defect_3_scenario_over_the_size_limit_is_refused_without_reading_it(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    with open(big, "wb") as f:
        f.truncate(64 * SCENARIO_FILE_LIMIT)  # sparse: 64 MiB of zeros that take no disk
    with pytest.raises(ScenarioError) as info:
        load_scenario(big)
    assert str(info.value) == f"{big}: 64 MiB is over the 1 MiB limit for a scenario file"
    # just under the limit is still read (and judged as TOML)
    edge = tmp_path / "edge.toml"
    edge.write_text("#" * (SCENARIO_FILE_LIMIT - 1) + "\n", encoding="utf-8")
    assert load_scenario(edge).name == "edge"


def test_defect_3_scenario_that_is_not_utf8_or_not_toml_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[scenario]\nname = "\xff"\n')
    with pytest.raises(ScenarioError, match=r"bad.toml: cannot read scenario file: not UTF-8 \(byte 19\)"):
        load_scenario(bad)
    for text, message in (
        ("a = " + "[" * 100_000 + "]" * 100_000, "not valid TOML: nested too deeply"),
        ("a = " + "9" * 5000, "not valid TOML: Exceeds the limit (4300 digits)"),
        ("[scenario]\n" + "x." * 40 + "y = 1", "nested deeper than 16 levels"),
        ('[link]\n"a\\nb\\u001b[2J" = 1', r"[link] a\nb\x1b[2J: unknown key"),
        ("[scenario]\nname = {" + "a." * 3000 + "b = 1}", "nested deeper than 16 levels"),
    ):
        with pytest.raises(ScenarioError) as info:
            parse_scenario(text, source="x.toml")
        assert message in str(info.value) and "\n" not in str(info.value)


# --- defect 16: a scenario name that is a path ----------------------------------------------------
@pytest.mark.parametrize(
    "name, slug",
    [
        ("..", "scenario"),
        (".", "scenario"),
        (".hidden", "hidden"),
        ("loss-sweep", "loss-sweep"),
        ("perte_é.v2", "perte_-.v2"),
        ("a" * 100, "a" * 64),
    ],
)
def test_defect_16_scenario_names_become_safe_file_names(name: str, slug: str) -> None:
    scenario = parse_scenario(f'[scenario]\nname = "{name}"\n', source="x.toml")
    assert scenario.name == name  # shown in reports as written
    assert scenario.slug == slug == safe_name(name)


def test_defect_16_name_dotdot_without_out_writes_under_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`name = ".."` and no --out used to write result.json into the current folder."""
    work = tmp_path / "work"
    work.mkdir()
    scenario = tmp_path / "dots.toml"
    scenario.write_text(
        '[scenario]\nname = ".."\nprotocols = ["udp"]\n[traffic]\ncount = 5\n', encoding="utf-8"
    )
    monkeypatch.chdir(work)
    code, err = lab_main(capsys, "run", str(scenario))
    assert code == 0, err
    assert (work / "reports" / "scenario" / "result.json").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["reports"]
    assert sorted(p.name for p in (work / "reports").iterdir()) == ["scenario"]
    assert json.loads((work / "reports" / "scenario" / "result.json").read_text())["scenario"]["name"] == ".."


def test_name_length_is_bounded() -> None:
    with pytest.raises(ScenarioError, match=r"\[scenario\] name: must be 1 to 100 letters"):
        parse_scenario(f'[scenario]\nname = "{"a" * 101}"\n', source="x.toml")


def test_lab_error_is_the_base_of_scenario_errors() -> None:
    assert issubclass(ScenarioError, LabError)


# --- defect 3: result.json ------------------------------------------------------------------------
SAMPLE = DATA / "sample-run"


def test_defect_3_result_json_symlink_to_dev_zero_fifo_and_directory_are_refused(tmp_path: Path) -> None:
    kinds = {"zero": "a character device", "fifo": "a FIFO", "dir": "a directory"}
    for name, kind in kinds.items():
        run = tmp_path / name
        run.mkdir()
        target = run / "result.json"
        if name == "zero":
            target.symlink_to("/dev/zero")
        elif name == "fifo":
            os.mkfifo(target)
        else:
            target.mkdir()
        done = lab_bounded("report", str(run))
        assert done.returncode == 2, done.stderr[-500:]
        assert_one_error_line(done.stderr, f"{target}: is {kind}; a result file must be a regular file")


def test_defect_3_result_json_over_the_size_limit_is_refused_without_reading_it(tmp_path: Path) -> None:
    from lab.report import RESULT_FILE_LIMIT, load_result

    with open(tmp_path / "result.json", "wb") as f:
        f.truncate(RESULT_FILE_LIMIT + 1)
    with pytest.raises(LabError) as info:
        load_result(tmp_path)
    assert (
        str(info.value) == f"{tmp_path / 'result.json'}: 64.0 MiB is over the 64 MiB limit for a result file"
    )


# --- defect 11: hand-edited result.json -------------------------------------------------------------
def sample_with(tmp_path: Path, edit) -> Path:
    """tests/data/sample-run's result.json, edited by `edit(document)`, in a fresh run folder."""
    document = json.loads((SAMPLE / "result.json").read_text(encoding="utf-8"))
    edit(document)
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "result.json").write_text(json.dumps(document), encoding="utf-8")
    return run


def _set(path: str, value):
    """An edit that sets the value at `path` (`points.0.results.1.rtt_us.p50`)."""

    def edit(document):
        *parents, last = [int(k) if k.isdigit() else k for k in path.split(".")]
        for key in parents:
            document = document[key]
        document[last] = value

    return edit


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("points.0.results.1.rtt_us.p50", "x", "points[0].results[1].rtt_us.p50: expected a number, got 'x'"),
        ("points.0.results.0.sent", None, "points[0].results[0].sent: expected an integer, got null"),
        (
            "points.1.results.1.loss_ratio",
            math.nan,
            "points[1].results[1].loss_ratio: expected a finite number, got NaN",
        ),
        (
            "points.1.results.0.jitter_us",
            math.inf,
            "points[1].results[0].jitter_us: expected a finite number, got Infinity",
        ),
        (
            "points.0.results.0.loss_ratio",
            1.5,
            "points[0].results[0].loss_ratio: expected a number from 0 to 1, got 1.5",
        ),
        (
            "points.0.results.0.timeline.3",
            [1],
            "points[0].results[0].timeline[3]: expected a list of 3 or 4 items, got 1",
        ),
        (
            "points.0.results.0.timeline.1",
            [0, "a", 1.0],
            "points[0].results[0].timeline[1][1]: expected a number, got 'a'",
        ),
        (
            "points.0.checks.tcp.0.passed",
            "yes",
            "points[0].checks.tcp[0].passed: expected true or false, got 'yes'",
        ),
        ("points.0.traffic.streams", 0, "points[0].traffic.streams: expected an integer from 1 to 64, got 0"),
        ("points.0.id", {"a": 1}, "points[0].id: expected a string, got an object"),
        ("points", {}, "points: expected a list, got an object"),
        ("scenario.protocols", "tcp", "scenario.protocols: expected a list, got 'tcp'"),
        (
            "scenario.description",
            "\ud800",
            "scenario.description: a string holds an unpaired surrogate ('\\ud800')",
        ),
    ],
)
def test_defect_11_a_wrong_value_is_one_line_naming_its_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], path: str, value, message: str
) -> None:
    run = sample_with(tmp_path, _set(path, value))
    code, err = lab_main(capsys, "report", str(run))
    assert code == 2
    assert err == f"lab: error: {run / 'result.json'}: {message}\n"


def test_defect_11_a_huge_stream_index_is_refused_not_drawn(tmp_path: Path) -> None:
    """The timeline drew one series per stream up to the largest index: 10**9 of them (unfixed, the
    child runs out of its 1 GiB)."""
    run = sample_with(tmp_path, _set("points.0.results.0.timeline.0", [0, 0.0, 1.0, 10**9]))
    done = lab_bounded("report", str(run))
    assert done.returncode == 2, done.stderr[-500:]
    assert done.stderr == (
        f"lab: error: {run / 'result.json'}: points[0].results[0].timeline[0][3]: expected an "
        "integer from 0 to 63, got 1000000000\n"
    )


def test_defect_11_nesting_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text(
        '{"format": "wirelab-result/1", "points": ' + "[" * 100_000 + "]" * 100_000 + "}"
    )
    code, err = lab_main(capsys, "report", str(run))
    assert (code, err) == (
        2,
        f"lab: error: {run / 'result.json'}: not a readable result file (JSON nested too deeply)\n",
    )
    deep = sample_with(tmp_path, _set("environment.x", json.loads("[" * 40 + "]" * 40)))
    code, err = lab_main(capsys, "report", str(deep))
    assert code == 2 and err.startswith(f"lab: error: {deep / 'result.json'}: environment.x[0][0]")
    assert err.endswith(": nested deeper than 32 levels\n")
    huge = sample_with(tmp_path, lambda d: None)
    (huge / "result.json").write_text('{"format": "wirelab-result/1", "seed": ' + "9" * 5000 + "}")
    code, err = lab_main(capsys, "report", str(huge))
    assert (
        code == 2
        and "not a readable result file (Exceeds the limit (4300 digits)" in err
        and err.count("\n") == 1
    )


def test_defect_11_mathtext_and_html_in_texts_are_plain_text_in_every_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A point id `$\\frac{$` broke matplotlib's mathtext parser; report.md passed `<script>` through."""

    def edit(document):
        document["points"][0]["id"] = "$\\frac{$"
        document["scenario"]["description"] = "<script>alert(1)</script>"
        document["points"][1]["results"][0]["protocol"] = "<b>x</b>"

    run = sample_with(tmp_path, edit)
    code, err = lab_main(capsys, "report", str(run))
    assert (code, err) == (0, "")
    html = (run / "report.html").read_text(encoding="utf-8")
    markdown = (run / "report.md").read_text(encoding="utf-8")
    assert "<!-- $\\frac{$ -->" in html  # drawn as the characters it is (matplotlib names each text)
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in markdown and "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown
    assert "<b>" not in markdown and "&lt;B&gt;X&lt;/B&gt;" in markdown
    assert "### $\\frac{$" in markdown


def test_defect_11_a_minimal_valid_document_renders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Keys the runner always writes but a document may leave out (traffic, checks, atlas columns...)
    used to reach jinja2's StrictUndefined."""
    run = tmp_path / "run"
    run.mkdir()
    minimal = {
        "format": "wirelab-result/1",
        "scenario": {"name": "m"},
        "points": [
            {
                "id": "a",
                "results": [{"protocol": "udp", "sent": 3, "received": 2, "lost": 1, "loss_ratio": 0.33}],
            }
        ],
        "atlas": [{}],
    }
    (run / "result.json").write_text(json.dumps(minimal), encoding="utf-8")
    code, err = lab_main(capsys, "report", str(run))
    assert (code, err) == (0, "")
    assert "UDP lost 33.0% of probes (1 of 3)" in (run / "report.md").read_text(encoding="utf-8")


def test_a_report_that_cannot_be_written_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = sample_with(tmp_path, lambda document: None)
    (run / "report.html").mkdir()  # renaming the new report over it fails (even as root)
    (run / "report.html" / "keep").touch()
    code, err = lab_main(capsys, "report", str(run))
    assert code == 2
    assert err.startswith(f"lab: error: {run / 'report.html'}: cannot write (") and err.count("\n") == 1
    assert sorted(p.name for p in run.iterdir()) == ["report.html", "result.json"]  # no temporary left
