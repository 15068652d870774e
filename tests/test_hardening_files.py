"""Issue 8, the files a user hands the lab: defect 3 (unbounded reads of scenario and result files),
defect 11 (hand-edited result.json documents) and defect 16 (a scenario name that is a path).

The reads that used to grow without bound run in a child process with a 1 GiB address-space limit and
a timeout, so a regression fails the test instead of exhausting the machine.
"""

from __future__ import annotations

import json
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
    bad.write_bytes(b"[scenario]\nname = \"\xff\"\n")
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
