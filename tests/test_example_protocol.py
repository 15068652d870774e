"""The worked example of "how to add a protocol": examples/wirelab-udp-twice, installed on its own.

The package is installed into a temporary folder (pip --target, no network) and found through its
`wirelab.protocols` entry point only: nothing in lab/ names it. It then shows up in `lab send
--help`, `lab protocols`, a `lab run` of its scenario and as a third column of the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "wirelab-udp-twice"


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import shutil

    # Built from a copy: a build writes build/ and *.egg-info beside the sources (a student's clone
    # may not even be writable).
    source = tmp_path_factory.mktemp("src") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (target / "wirelab_udp_twice").is_dir()
    return target


def lab(*args: str, path: Path | None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(path or ""), str(ROOT)) if p))
    return subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout, stdin=subprocess.DEVNULL)


def test_the_example_needs_nothing_in_lab() -> None:
    named_in_lab = [p for p in (ROOT / "lab").rglob("*.py") if "udp-twice" in p.read_text()
                    or "udp_twice" in p.read_text()]
    assert named_in_lab == []
    files = {p.relative_to(EXAMPLE).as_posix() for p in EXAMPLE.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts}
    assert files == {"README.md", "pyproject.toml", "scenario.toml", "wirelab_udp_twice/__init__.py"}


def test_installed_example_shows_up_in_the_cli(plugin_path: Path) -> None:
    without = lab("send", "--help", path=None)
    assert "udp-twice" not in without.stdout
    helped = lab("send", "--help", path=plugin_path)
    choices = "".join(helped.stdout.split())  # the choice list wraps over lines
    assert helped.returncode == 0 and "|udp-twice>" in choices, helped.stdout
    listed = lab("protocols", path=plugin_path)
    assert "udp-twice" in listed.stdout and "[wirelab_udp_twice]" in listed.stdout, listed.stdout


def test_installed_example_runs_in_a_scenario_beside_tcp_and_udp(plugin_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = lab("run", str(EXAMPLE / "scenario.toml"), "--out", str(out), path=plugin_path, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    payload = json.loads((out / "result.json").read_text())
    (point,) = payload["points"]
    results = {r["protocol"]: r for r in point["results"]}
    assert "udp-twice" in results and "udp" in results
    # Redundancy works: fewer probes lost than plain UDP over the same seeded link, and the second
    # copies came back as duplicates, never as extra deliveries.
    assert results["udp-twice"]["loss_ratio"] < results["udp"]["loss_ratio"]
    assert results["udp-twice"]["duplicates"] > 0
    assert results["udp-twice"]["received"] <= results["udp-twice"]["sent"]
    assert "UDP-TWICE" in (out / "report.md").read_text()
    assert "UDP-TWICE" in (out / "report.html").read_text()


def test_a_broken_plugin_is_reported_and_the_lab_still_works(tmp_path: Path) -> None:
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[wirelab.protocols]\nbroken = no_such_module:Proto\n")
    listed = lab("protocols", path=tmp_path)
    assert listed.returncode == 0
    assert "tcp" in listed.stdout and "not loaded" in listed.stdout and "no_such_module" in listed.stdout
    unknown = lab("send", "broken", "127.0.0.1", "7", path=tmp_path)
    assert unknown.returncode == 2 and "broken" in unknown.stderr
