"""The plugin as a guest in someone else's project, and the package's dependency hygiene.

Installing wirelab loads its pytest plugin into every pytest run of that environment, so the
plugin must declare the markers it uses and collect scenario files only where asked; and a package
installed into other people's environments declares ranges, not pins (the pins live in
constraints.txt, which `make` installs). The pytest runs are real subprocesses of this environment's
Python, in a throwaway project, loading the plugin from its `pytest11` entry point as a user's
pytest does.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent

SCENARIO = """\
[scenario]
name = "tiny"
protocols = ["udp"]
[traffic]
count = 10
[sweep]
size = [64, 100]
[expect.udp]
loss_ratio = 0
"""


# The environment's other plugins play no part here; hypothesis's alone takes seconds to import.
UNRELATED_PLUGINS = [f"-pno:{name}" for name in ("cacheprovider", "hypothesispytest", "benchmark", "xdist")]


def run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in `project`, as its user would run it (no options inherited from this run)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "pytest", *UNRELATED_PLUGINS, *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write(project: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = project / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def pyproject(extra: str = "") -> str:
    return (
        '[project]\nname = "someones-app"\nversion = "1.0"\n'
        "[tool.pytest.ini_options]\n"
        'addopts = "--strict-markers --strict-config"\ntestpaths = ["tests"]\n' + extra
    )


# --- markers ---------------------------------------------------------------------------------------


def test_strict_markers_project_uses_the_plugins_markers_without_declaring_them(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pyproject.toml": pyproject(),  # declares no markers at all
            "tests/test_app.py": "import pytest\n\n"
            "@pytest.mark.slow\ndef test_long():\n    pass\n\n"
            "@pytest.mark.privileged\ndef test_root():\n    pass\n",
        },
    )
    proc = run_pytest(tmp_path, "-q", "-rs")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"\b2 (passed|skipped)|1 passed, 1 skipped", proc.stdout), proc.stdout


# --- where scenario files are collected ------------------------------------------------------------

USER_PROJECT = {
    "config.toml": "[server]\nport = 8080\n",
    "tests/test_app.py": "def test_app():\n    pass\n",
    "tests/data/fixture.toml": 'title = "not a scenario"\n',
    "tests/scenarios/lookalike.toml": SCENARIO,  # looks like one, in a folder named scenarios
    "scenarios/tiny.toml": SCENARIO,
}


def collected(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line for line in proc.stdout.splitlines() if "::" in line]


def test_no_toml_is_collected_unless_asked(tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": pyproject(), **USER_PROJECT})
    # Even naming the folders (not the files) on the command line asks for no scenario.
    proc = run_pytest(tmp_path, "--collect-only", "-q", ".", "tests", "scenarios")
    assert collected(proc) == ["tests/test_app.py::test_app"]


def test_scenarios_collected_from_the_ini_option_only(tmp_path: Path) -> None:
    option = 'wirelab_scenarios = ["scenarios", "nowhere"]\n'
    write(tmp_path, {"pyproject.toml": pyproject(option), **USER_PROJECT})
    proc = run_pytest(tmp_path, "--collect-only", "-q", ".", "-W", "default::pytest.PytestConfigWarning")
    assert collected(proc) == [
        "scenarios/tiny.toml::tiny[size=64]::udp",
        "scenarios/tiny.toml::tiny[size=100]::udp",
        "tests/test_app.py::test_app",
    ]
    assert f"wirelab_scenarios: {tmp_path / 'nowhere'} does not exist" in proc.stdout


def test_a_toml_file_named_on_the_command_line_is_collected(tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": pyproject(), **USER_PROJECT})
    proc = run_pytest(tmp_path, "--collect-only", "-q", "tests/scenarios/lookalike.toml")
    assert collected(proc) == [
        "tests/scenarios/lookalike.toml::tiny[size=64]::udp",
        "tests/scenarios/lookalike.toml::tiny[size=100]::udp",
    ]


# --- dependencies: ranges in pyproject, exact versions in constraints.txt ----------------------------


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    lines = project["dependencies"] + [line for extra in extras for line in extra]
    return [Requirement(line) for line in lines]


def pins() -> dict[str, str]:
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not NAME==VERSION"
            pinned[canonicalize_name(name)] = version.strip()
    return pinned


def test_dependencies_are_ranges_that_hold_their_pinned_version() -> None:
    pinned = pins()
    for req in declared_requirements():
        operators = sorted(spec.operator for spec in req.specifier)
        assert operators == ["<", ">="], f"pyproject.toml: {req} should read NAME>=TESTED,<NEXT_MAJOR"
        name = canonicalize_name(req.name)
        assert name in pinned, f"constraints.txt has no pin for {req.name}"
        pin = pinned[name]
        assert req.specifier.contains(pin), f"constraints.txt pins {name}=={pin}, outside {req}"


def test_constraints_pin_every_transitive_dependency() -> None:
    """Walk the installed wirelab[dev]'s requirements: each distribution reached has its pin."""
    pinned, reached, todo = pins(), set(), [("wirelab", {"dev"})]
    while todo:
        name, extras = todo.pop()
        for line in metadata.distribution(name).requires or []:
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
                continue
            if canonicalize_name(req.name) not in reached:
                reached.add(canonicalize_name(req.name))
                todo.append((req.name, set(req.extras)))
    assert reached - set(pinned) == set()


def test_make_installs_with_the_constraints() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\$\(STAMP\): pyproject\.toml constraints\.txt$", makefile, re.M)
    assert "pip install --quiet -c constraints.txt -e '.[dev]'" in makefile
    assert re.search(r"^constraints:$", makefile, re.M), "the target that refreshes constraints.txt"


@pytest.mark.parametrize("marker", ["slow", "privileged"])
def test_pyproject_leaves_the_plugins_markers_to_the_plugin(marker: str) -> None:
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert not any(line.startswith(f"{marker}:") for line in ini.get("markers", []))
