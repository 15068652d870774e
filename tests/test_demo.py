"""End to end: `lab demo` in a subprocess, and scenario files collected by pytest (pytester)."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser

import pytest

pytest_plugins = ["pytester"]

DEMO_TIMEOUT_S = 120  # the demo promises "under a minute"; twice that before we call it hung


@pytest.mark.privileged
def test_lab_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(  # --live, --capture and --slides too: one demo run checks them all
        [sys.executable, "-m", "lab", "demo", "--out", str(out), "--live", "--capture", "--slides"],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"report: {out / 'report.html'}" in proc.stdout.replace("\n", "")
    assert "TCP delivered all 500 probes" in proc.stdout.replace("\n", " ")
    payload = json.loads((out / "result.json").read_text())
    (point,) = payload["points"]
    results = {r["protocol"]: r for r in point["results"]}
    assert point["mode"] == "link" and set(results) == {"tcp", "udp"}
    assert results["tcp"]["received"] == results["tcp"]["sent"] == 500
    udp = results["udp"]
    print(f"demo: udp loss {udp['loss_ratio']:.4f}, expected {udp['expected_loss_ratio']:.4f}")
    assert all(c["passed"] for checks in point["checks"].values() for c in checks), point["checks"]
    HTMLParser().feed((out / "report.html").read_text())  # parses
    assert (out / "report.md").is_file()
    udp_rows = [line for line in proc.stdout.splitlines() if line.strip().startswith("UDP ")]
    assert udp_rows and "✗" in udp_rows[-1]  # the live strip, as the class saw it at the end
    pcap = out / "link.pcapng"
    assert pcap.is_file() and pcap.stat().st_size > 10_000
    assert f"capture: {pcap}" in proc.stdout.replace("\n", "")
    story = out / "slides" / "story.png"
    assert story.is_file() and f"slide: {story}" in proc.stdout.replace("\n", "")


SCENARIO = """
[scenario]
name = "tiny"
protocols = ["udp"]
{extra}
[traffic]
count = 30
rate = 300
timeout = 0.5
[sweep]
size = [64, 100]
[expect.udp]
loss_ratio = {expect}
"""


def _write(pytester: pytest.Pytester, extra: str = "", expect: str = "0") -> None:
    pytester.makeini("[pytest]\nwirelab_scenarios = scenarios\n")  # where the plugin collects scenarios
    pytester.mkdir("scenarios")
    pytester.path.joinpath("scenarios", "tiny.toml").write_text(SCENARIO.format(extra=extra, expect=expect))


def test_collects_points_times_protocols(pytester):
    _write(pytester)
    result = pytester.runpytest("scenarios", "--collect-only", "-q", "-p", "no:randomly")
    result.stdout.fnmatch_lines(
        ["scenarios/tiny.toml::tiny[[]size=64[]]::udp", "scenarios/tiny.toml::tiny[[]size=100[]]::udp"]
    )


def test_scenario_items_pass_and_fail_with_figures(pytester, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    _write(pytester, expect="{ min = 0.5 }")  # nothing is lost on an unimpaired run: must fail, readably
    result = pytester.runpytest_subprocess("scenarios", "-p", "no:randomly")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*tiny[[]size=64[]]::udp: 1 of 1 expectation(s) failed for udp:*",
            "*loss_ratio in [[]0.5, inf[]]: loss_ratio = 0, expected loss_ratio in [[]0.5, inf[]]*",
            "*config: link unimpaired*seed 1*",
        ]
    )


def test_slow_scenarios_are_marked(pytester):
    _write(pytester, extra="slow = true")
    result = pytester.runpytest("scenarios", "-m", "not slow", "--collect-only", "-q", "-p", "no:randomly")
    result.stdout.fnmatch_lines(["*2 deselected*"])


def test_invalid_scenario_is_a_collection_error_naming_file_and_key(pytester):
    _write(pytester, extra='seed = "one"')
    result = pytester.runpytest("scenarios", "-p", "no:randomly")
    result.stdout.fnmatch_lines(
        ["*scenarios/tiny.toml: [[]scenario[]] seed: must be an integer in 0..4294967295, got 'one'*"]
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED  # pytest stops on collection errors
