"""The runner on real loopback sockets: loopback and relay modes, linked mode (privileged), Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lab.runner as runner
from lab.records import Arrival, RunRecord, Send, TrafficPlan
from lab.scenario import parse_scenario

QUICK = """
[traffic]
count = 60
rate = 300
timeout = 0.5
"""


def scenario(extra: str = ""):
    return parse_scenario(QUICK + extra, source="quick.toml", default_name="quick")


@pytest.fixture
def unprivileged(monkeypatch):
    """Run as an unprivileged user would (mode choice only: sockets stay real)."""
    monkeypatch.setattr(runner, "has_link_privileges", lambda: False)


def test_timeline_from_record():
    ms = 1_000_000
    record = RunRecord(
        protocol="udp",
        plan=TrafficPlan(count=3, timeout=0.1),
        started_ns=0,
        ended_ns=500 * ms,
        sends=[Send(seq=i, intended_ns=10 * i * ms, sent_ns=10 * i * ms, size=64) for i in range(3)],
        arrivals=[
            Arrival(seq=0, recv_ns=5 * ms),
            Arrival(seq=0, recv_ns=6 * ms),
            Arrival(seq=2, recv_ns=400 * ms),
        ],
    )
    # seq 0 answered in 5 ms (its duplicate ignored), 1 lost, 2 answered after the 100 ms timeout
    assert runner.timeline_from_record(record) == [[0, 0.0, 5.0, 0], [1, 10.0, None, 0], [2, 20.0, None, 0]]
    assert len(runner.timeline_from_record(record, max_points=2)) == 2


def test_loopback_mode_runs_both(unprivileged, tmp_path):
    outcome = runner.run_scenario(
        scenario("[expect.tcp]\nloss_ratio = 0\n[expect.udp]\nloss_ratio = 0\n"), out=tmp_path
    )
    (point,) = outcome.points
    assert point.mode == "loopback" and set(point.results) == {"tcp", "udp"}
    for proto, result in point.results.items():
        assert result.sent == 60 and result.received == 60, (proto, result.to_dict())
        assert len(result.timeline) == 60
    assert not outcome.failed_checks
    payload = json.loads((tmp_path / "result.json").read_text())
    assert payload["points"][0]["mode"] == "loopback" and not payload["interrupted"]
    assert (tmp_path / "report.html").is_file() and (tmp_path / "report.md").is_file()


def test_relay_mode_impairs_udp_and_skips_tcp(unprivileged):
    plan = scenario('[link]\nloss = "20%"\n[expect.udp]\nloss_ratio = "within_ci"\n')
    outcome = runner.run_scenario(plan)
    (point,) = outcome.points
    assert point.mode == "relay"
    assert "tcp" in point.skipped and "CAP_NET_ADMIN" in point.skipped["tcp"]
    udp = point.results["udp"]
    assert udp.expected_loss_ratio == pytest.approx(1 - 0.8 * 0.8)
    assert udp.link, "relay counters recorded"
    assert point.checks["udp"][0].passed, point.checks["udp"][0].message


def test_privileged_scenario_skips_without_link(unprivileged):
    outcome = runner.run_scenario(scenario('[scenario]\nprivileged = true\n[link]\nloss = "1%"\n'))
    assert outcome.points[0].mode == "skipped"
    assert set(outcome.points[0].skipped) == {"tcp", "udp"}


def test_ctrl_c_keeps_measured_points(unprivileged, tmp_path, monkeypatch):
    plan = scenario("[sweep]\ncount = [20, 30, 40]\n")
    real = runner.run_point
    calls = []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what Ctrl-C raises in the main thread
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_point", interrupt_second)
    outcome = runner.run_scenario(plan, out=tmp_path)
    assert outcome.interrupted and [p.point.id for p in outcome.points] == ["count=20"]
    payload = json.loads((tmp_path / "result.json").read_text())
    assert payload["interrupted"] is True and len(payload["points"]) == 1
    assert "interrupted" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("expect, code", [("loss_ratio = 0", 0), ("loss_ratio = { min = 0.5 }", 1)])
def test_run_command_exit_code_follows_expectations(unprivileged, tmp_path, expect, code, capsys):
    path = tmp_path / "s.toml"
    path.write_text(QUICK + f'[scenario]\nprotocols = ["udp"]\n[expect.udp]\n{expect}\n')
    assert runner.run_command(path, tmp_path / "out", None, False) == code
    printed = capsys.readouterr().out
    assert f"report: {tmp_path / 'out' / 'report.html'}" in printed.replace("\n", "")
    assert ("expectation failed" in printed) == bool(code)


def test_lab_run_sigint_writes_partial_result(tmp_path):
    """A real SIGINT to `lab run` mid-sweep: exit 130, result.json marked interrupted."""
    path = tmp_path / "scenarios" / "slowish.toml"
    path.parent.mkdir()
    path.write_text("[traffic]\ncount = 200\nrate = 100\ntimeout = 0.5\n[sweep]\nsize = [64, 65, 66, 67]\n")
    out = tmp_path / "out"
    env = {**os.environ, "COLUMNS": "100"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab", "run", str(path), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        time.sleep(3.5)  # each protocol takes 2-3 s: interrupt well before the 4 points are done
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    payload = json.loads((out / "result.json").read_text())
    assert payload["interrupted"] is True
    assert len(payload["points"]) < 4, [p["id"] for p in payload["points"]]
    for point in payload["points"]:  # a point cut short keeps its protocols, finished or cut short
        assert point["results"]
        assert all(r["sent"] == 200 or r["notes"]["interrupted"] for r in point["results"])
    assert (out / "report.html").is_file()


@pytest.mark.privileged
def test_linked_mode_runs_both_over_one_link(tmp_path):
    plan = scenario(
        '[link]\nloss = "10%"\ndelay = "2ms"\n[expect.tcp]\nloss_ratio = 0\n'
        '[expect.udp]\nloss_ratio = "within_ci"\n'
    )
    outcome = runner.run_scenario(plan, out=tmp_path)
    (point,) = outcome.points
    assert point.mode == "link" and set(point.results) == {"tcp", "udp"}
    for result in point.results.values():
        assert result.expected_loss_ratio == pytest.approx(0.19)
        assert result.link is not None
        assert result.timeline, "per-probe timeline for the report"
    assert not outcome.failed_checks, [c.message for _, _, c in outcome.failed_checks]
    assert Path(tmp_path / "report.html").is_file()


@pytest.mark.parametrize(
    "text, args, message",
    [
        (QUICK, ["--seed", "-1"], "lab: error: --seed: must be an integer in 0..4294967295, got -1"),
        ('[link]\nloss = "150%"\n', [], "[link] loss: must be between 0% and 100%, got 150%"),
        ("[traffic]\ncount = 0\n", [], "[traffic] count: count must be between 1 and 10000000, got 0"),
    ],
)
def test_lab_run_refuses_bad_input_before_running(tmp_path, text, args, message):
    """Bad scenario files and options: exit 2, one line naming the file/option and key, nothing written."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "lab", "run", str(path), "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    if not args:
        assert proc.stderr.startswith(f"lab: error: {path}: ")
    assert not out.exists()


@pytest.mark.privileged
def test_atlas_scenario_puts_the_probe_atlas_in_the_report(tmp_path):
    """`atlas = true`: the malformed-packet catalogue runs after the points; its rows reach every output."""
    from html.parser import HTMLParser

    plan = scenario('[scenario]\nprotocols = ["udp"]\natlas = true\n')
    outcome = runner.run_scenario(plan, out=tmp_path)
    assert outcome.atlas, "the atlas ran"
    contract = {"name", "layer", "defect", "expected_verdict", "verdict", "matches_expected", "server_alive"}
    assert all(contract <= set(row) for row in outcome.atlas)
    payload = json.loads((tmp_path / "result.json").read_text())
    assert [row["name"] for row in payload["atlas"]] == [row["name"] for row in outcome.atlas]
    html = (tmp_path / "report.html").read_text()
    HTMLParser().feed(html)
    section = html[html.index('<section id="atlas">') : html.index('<section id="environment">')]
    for row in outcome.atlas:
        assert f"<td>{row['name']}</td>" in section
    matched = sum(1 for row in outcome.atlas if row["matches_expected"])
    assert f"{matched} of {len(outcome.atlas)} cases behaved as expected." in section
    assert "## Malformed-packet atlas" in (tmp_path / "report.md").read_text()


def test_side_by_side_table_splits_many_protocols_to_fit_the_terminal() -> None:
    """Eleven protocols in 80 columns: several tables with the same rows, none wider than 80."""
    from rich.console import Console

    from lab.metrics import compute_result
    from lab.protocols import names
    from lab.records import RunRecord, TrafficPlan
    from lab.report.appearance import appearance
    from lab.runner import PointOutcome, side_by_side_table
    from lab.scenario import parse_scenario

    protocols = list(names())
    listed = ", ".join(f'"{p}"' for p in protocols)
    scenario = parse_scenario(f"[scenario]\nname = 'wide'\nprotocols = [{listed}]\n")
    outcome = PointOutcome(point=scenario.points[0], mode="loopback")
    plan = TrafficPlan(count=1)
    for proto in protocols:
        record = RunRecord(protocol=proto, plan=plan, started_ns=0, ended_ns=1)
        outcome.results[proto] = compute_result(record)
    console = Console(width=80, record=True, highlight=False)
    console.print(side_by_side_table(scenario, outcome, width=80))
    lines = console.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80
    headers = [line for line in lines if line.startswith("┃")]
    assert len(headers) >= 2  # more than one table
    shown = " ".join(headers)
    assert all(appearance(proto).label in shown for proto in protocols)
