"""Issue 8, runs: stop signals and errors keep what was measured; bad plans are refused up front.

Real `lab run`/`lab demo` processes, real signals, real links where root allows (loopback
otherwise). After each, the run's namespaces, helper processes and state files are gone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import lab.runner as runner
from lab.cli import main
from lab.errors import ConfigError, EndpointError, LabError
from lab.link.netns import STATE_DIR
from lab.records import MAX_RUN_MB_ENV, MAX_RUN_SECONDS_ENV, RunLimits, TrafficPlan, run_limits
from lab.scenario import parse_scenario
from tests.conftest import real_root

# 300 probes at 100/s: 3 s a protocol, so a signal 2 s after the run starts lands inside TCP's run.
SLOW = "[traffic]\ncount = 300\nrate = 100\ntimeout = 0.5\n"


def _lab(*args: str, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lab", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "100"},
        start_new_session=True,  # its own process group: a "terminal Ctrl-C" reaches all of it
        **popen,  # type: ignore[arg-type]
    )


def _owned_state(pid: int) -> list[dict]:
    """The link state files a process owns (namespaces, helper pids), while it runs."""
    states = []
    for path in STATE_DIR.glob("*.json") if STATE_DIR.is_dir() else ():
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if state.get("owner_pid") == pid:
            states.append(state)
    return states


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _wait_for_point(proc: subprocess.Popen[str], seconds: float) -> list[dict]:
    """Let the run measure for about `seconds` after its link is up (from the start without root),
    remembering the links it made (to check they are gone later)."""
    seen: dict[str, dict] = {}
    start = time.monotonic()
    end = start + seconds
    up_by = start + 15  # a loaded machine may take a while to start Python and build the link
    while time.monotonic() < end and proc.poll() is None:
        for state in _owned_state(proc.pid):
            if not seen:
                end = time.monotonic() + seconds
            seen[state["name"]] = state
        if not seen and os.geteuid() == 0 and time.monotonic() < up_by:
            end = time.monotonic() + seconds
        time.sleep(0.05)
    return list(seen.values())


def _assert_link_gone(states: list[dict]) -> None:
    namespaces = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
                     .stdout.split())
    for state in states:
        assert not (STATE_DIR / f"{state['name']}.json").exists(), state
        assert not set(state["namespaces"]) & namespaces, state
        for pid in state.get("pids", []):
            assert not _alive(pid), f"helper {pid} of {state['name']} outlived the run"


def _group_gone(pgid: int, within_s: float = 10.0) -> bool:
    """True once no live process is left in group `pgid` (zombies awaiting their reaper don't count)."""
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        members = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                    members.append(entry)
        if not members:
            return True
        time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen[str], signum: int) -> tuple[str, str]:
    if signum == signal.SIGKILL:
        proc.kill()  # no teardown at all: its helpers still hold the pipes, so do not read them
        proc.wait(timeout=30)
        return "", ""
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)  # what a terminal's Ctrl-C does: the whole foreground group
    else:
        proc.send_signal(signum)  # `kill PID`, or the terminal going away (SIGHUP to the leader)
    try:
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_defect_4_stop_signal_keeps_the_protocol_run_in_progress(tmp_path, signum):
    """Interrupting `lab run` mid-TCP keeps TCP's partial run (marked interrupted); exit 128+signal."""
    path = tmp_path / "slow.toml"
    path.write_text(SLOW + '[link]\ndelay = "1ms"\n')
    out = tmp_path / "out"
    proc = _lab("run", str(path), "--out", str(out))
    states = _wait_for_point(proc, 1.5)
    stdout, stderr = _stop(proc, signum)
    assert proc.returncode == 128 + signum, stderr
    payload = json.loads((out / "result.json").read_text())
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    assert payload["interrupted"] is True and payload["interrupted_by"] == name
    assert len(payload["points"]) == 1, (stdout, stderr)
    (point,) = payload["points"]  # was `points: 0` before: the run in progress was thrown away
    assert point["interrupted"] is True
    (first,) = point["results"]
    assert 0 < first["sent"] < 300, first["sent"]
    assert first["notes"]["interrupted"] is True
    assert first["received"] > 0
    assert "interrupted" in point["skipped"]["udp"] and name in point["skipped"]["udp"]
    assert point["checks"] == {}  # a cut-short run is not judged against whole-run expectations
    report = (out / "report.md").read_text()
    assert f"TCP's run was cut short after {first['sent']} probes of the 300 planned" in report
    assert f"The run was interrupted ({name})" in report
    assert (out / "report.html").is_file()
    assert f"interrupted ({name})" in stdout
    _assert_link_gone(states)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGHUP", "SIGKILL"])
def test_defect_4_lab_demo_stopped_by_any_signal_leaves_nothing(tmp_path, signum, cleanup_turn):
    """`lab demo` stopped mid-run: the report of what ran (not for SIGKILL); nothing left behind
    (after SIGKILL, `lab cleanup` removes what the dead run left)."""
    out = tmp_path / "demo"
    proc = _lab("demo", "--out", str(out))
    states = _wait_for_point(proc, 2.0)
    _stop(proc, signum)
    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        if states:  # root: the dead run's link is still there until `lab cleanup`
            cleaned = subprocess.run([sys.executable, "-m", "lab", "cleanup"], capture_output=True,
                                     text=True, timeout=60)
            assert cleaned.returncode == 0, cleaned.stderr
        assert _group_gone(proc.pid), "the echo server in the dead run's namespace outlived cleanup"
        proc.stdout.close()
        proc.stderr.close()
    else:
        assert proc.returncode == 128 + signum
        payload = json.loads((out / "result.json").read_text())
        assert payload["interrupted"] is True
        assert payload["points"] and payload["points"][0]["results"]
    _assert_link_gone(states)


def test_defect_5_a_failing_point_keeps_the_points_before_it(tmp_path, monkeypatch):
    """The second point fails: the first one is written, and the error names the failing point."""
    real_run_point = runner.run_point
    calls = []

    def second_point_fails(scenario, point, **kwargs):
        calls.append(point.id)
        if len(calls) == 2:
            raise EndpointError("no echo server answering at 198.18.0.2:7007 over TCP (no answer to connect)")
        return real_run_point(scenario, point, **kwargs)

    monkeypatch.setattr(runner, "run_point", second_point_fails)
    plan = parse_scenario("[traffic]\ncount = 20\nrate = 400\ntimeout = 0.5\n[sweep]\nsize = [64, 80, 96]\n",
                          source="three.toml", default_name="three")
    with pytest.raises(LabError) as caught:
        runner.run_scenario(plan, out=tmp_path)
    message = str(caught.value)
    assert message.startswith("point size=80 failed: no echo server answering")
    assert str(tmp_path) in message
    payload = json.loads((tmp_path / "result.json").read_text())
    assert [p["id"] for p in payload["points"]] == ["size=64"]
    assert payload["error"] == {"point": "size=80", "message": str(caught.value.__cause__)}
    assert all(r["sent"] == 20 for r in payload["points"][0]["results"])


@pytest.mark.privileged
def test_defect_5_connect_timeout_sized_from_the_link_delay(tmp_path):
    """A 3.5 s one-way delay: the handshake takes longer than the old 3 s connect bound."""
    from lab.link.session import open_link

    with open_link(delay="3500ms", direction="forward", seed=3) as link:
        result = link.run("tcp", count=1, timeout=3.0)
    assert result.sent == 1  # before: "no echo server answering ... (no answer to connect)"


def test_connect_timeout_grows_with_the_round_trip():
    from lab.protocols.common import CONNECT_TIMEOUT_MIN_S, connect_timeout_s

    plan = TrafficPlan(timeout=1.0)
    assert connect_timeout_s(plan) == CONNECT_TIMEOUT_MIN_S
    assert connect_timeout_s(plan, round_trip_s=4.0) == pytest.approx(CONNECT_TIMEOUT_MIN_S + 12.0)


def test_defect_6_out_is_a_file_refused_before_measuring(tmp_path, monkeypatch, capsys):
    target = tmp_path / "taken"
    target.write_text("precious")
    monkeypatch.setattr(runner, "run_point", _must_not_measure)
    scenario_file = tmp_path / "s.toml"
    scenario_file.write_text("[traffic]\ncount = 5\n")
    with pytest.raises(SystemExit) as code:
        main(["run", str(scenario_file), "--out", str(target)])
    assert code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lab: error: output folder {target}: exists and is not a directory; choose another --out"]
    assert target.read_text() == "precious"


def _must_not_measure(*_args, **_kwargs):
    raise AssertionError("measured before checking the output folder")


def test_defect_6_folder_of_another_user_refused_before_measuring(request, monkeypatch):
    """reports/demo made by root, then `lab demo` by a student: one line, before any measuring.

    The student is a forked child that drops to uid 'nobody' (the kernel then really refuses the
    write) and runs the real `lab demo` entry point with measuring disabled.
    """
    if not real_root():
        pytest.skip("needs the machine's root (not a user namespace's), to make a folder that belongs to "
                    "someone else and become 'nobody'")
    shared = Path(tempfile.mkdtemp(prefix="wirelab-sudo-demo-"))  # /tmp/pytest-of-root is root-only
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    shared.chmod(0o755)
    out = shared / "demo"
    out.mkdir(mode=0o755)  # root's, not writable by others
    monkeypatch.setattr(runner, "run_point", _must_not_measure)
    # 'nobody' may not read this Python's library (it can live under /root): the same path, refused
    # for another reason first, imports here everything the child will need
    taken = shared / "taken"
    taken.write_text("")
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(taken)])
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child leaves through os._exit
        code = 99
        try:
            os.close(read_end)
            sys.stderr = os.fdopen(write_end, "w", buffering=1)  # pytest captured the real one
            os.environ["WIRELAB_USERNS"] = "off"  # this process, as it is (a re-exec would lose the patch)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            main(["demo", "--out", str(out)])
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 98
        except BaseException as exc:
            print(f"unexpected {exc!r}", file=sys.stderr)
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as stderr:
        err = stderr.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"lab: error: output folder {out}: cannot write there"), err
    assert f"{out} belongs to root" in lines[0]
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(("argv", "needle"), [
    (["send", "udp", "127.0.0.1", "9", "--rate", "1e-300"], "rate 1e-300/s with count 100 takes"),
    (["send", "udp", "127.0.0.1", "9", "--rate", "1e-9"], "over the 3600 s limit of one run"),
    (["send", "udp", "127.0.0.1", "9", "--rate", "nan"], "rate must be > 0"),
    (["send", "udp", "127.0.0.1", "9", "--timeout", "inf"], "timeout must be > 0 and <= 3600"),
])
def test_defect_7_rate_bounds_on_the_command_line(argv, needle, capsys):
    with pytest.raises(SystemExit) as code:
        main(argv)
    assert code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lab: error: ") and needle in err[0], err


@pytest.mark.parametrize(("traffic", "needle"), [
    ("count = 10\nrate = 1e-300", "[traffic] rate: rate 1e-300/s with count 10 takes"),
    ("count = 10\nrate = 1e-9", "over the 3600 s limit of one run"),
    ("duration = 5\nrate = 1e-9", "[traffic] rate: rate 1e-09/s with count 1 takes"),
])
def test_defect_7_rate_bounds_in_scenario_files(traffic, needle):
    with pytest.raises(ConfigError) as caught:
        parse_scenario(f"[traffic]\n{traffic}\n", source="x.toml", default_name="x")
    assert needle in str(caught.value)
    assert str(caught.value).startswith("x.toml: ")


def test_defect_14_huge_runs_refused_naming_the_limit_and_how_to_raise_it(capsys):
    with pytest.raises(ConfigError) as caught:
        parse_scenario("[traffic]\ncount = 10000000\nrate = 1\n", source="x.toml", default_name="x")
    message = str(caught.value)
    assert "1024 MB limit of one run" in message and MAX_RUN_MB_ENV in message
    with pytest.raises(ConfigError) as caught:
        parse_scenario("[traffic]\ncount = 1000000\nrate = 1\n", source="x.toml", default_name="x")
    assert "11.6 days" in str(caught.value) and MAX_RUN_SECONDS_ENV in str(caught.value)
    with pytest.raises(SystemExit) as code:
        main(["send", "udp", "127.0.0.1", "9", "--count", "10000000"])
    assert code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and MAX_RUN_MB_ENV in err[0]


def test_defect_14_limits_can_be_raised_and_bad_values_are_named(monkeypatch):
    monkeypatch.setenv(MAX_RUN_MB_ENV, "8000")
    monkeypatch.setenv(MAX_RUN_SECONDS_ENV, "1e8")
    assert run_limits() == RunLimits(1e8, 8000)
    TrafficPlan(count=10_000_000, rate=1)  # accepted once both limits are raised
    monkeypatch.setenv(MAX_RUN_MB_ENV, "lots")
    with pytest.raises(ConfigError, match=f"{MAX_RUN_MB_ENV} must be a whole number"):
        TrafficPlan()
    monkeypatch.setenv(MAX_RUN_MB_ENV, "100")
    monkeypatch.setenv(MAX_RUN_SECONDS_ENV, "-1")
    with pytest.raises(ConfigError, match=f"{MAX_RUN_SECONDS_ENV} must be a positive number"):
        TrafficPlan()


def test_defect_14_ping_pong_deadline_never_exceeds_the_time_limit():
    # ping-pong has no schedule to refuse; its overall deadline stops it at the limit instead
    plan = TrafficPlan(count=1_000_000, timeout=3600)
    assert plan.deadline_s() <= run_limits().seconds + 10
    assert TrafficPlan(count=100, rate=100).deadline_s() == pytest.approx(1.5 + 1.0 + 5.0)


@pytest.mark.parametrize("impaired", [False, True], ids=["loopback", "relay"])
def test_defect_4_interrupted_run_is_kept_in_every_mode(monkeypatch, impaired):
    """Without the link (plain loopback, or the relay without privileges) a stop keeps the run in
    progress too, with its timeline (and the relay's counters)."""
    monkeypatch.setattr(runner, "has_link_privileges", lambda: False)
    link = '[link]\nloss = "10%"\n' if impaired else ""
    plan = parse_scenario(f"[scenario]\nprotocols = [\"udp\"]\n[traffic]\ncount = 400\nrate = 400\n"
                          f"timeout = 0.3\n{link}", source="x.toml", default_name="x")

    def progress(_proto):
        def report(sent, _total):
            if sent >= 100:
                raise KeyboardInterrupt  # what Ctrl-C does in the middle of the run
        return report

    kept = []
    with pytest.raises(KeyboardInterrupt):
        runner.run_point(plan, plan.points[0], progress=progress, on_result=kept.append)
    result = kept[-1].results["udp"]
    assert kept[-1].interrupted and result.notes.interrupted
    assert 50 <= result.sent < 400 and len(result.timeline) == result.sent  # the undecided left out
    assert (result.link is not None) == impaired
