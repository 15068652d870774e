"""The lab's pytest plugin (entry point `pytest11`): fixtures, markers, options, scenario files.

Installing wirelab loads this plugin into every pytest run of its environment, so it must be a good
guest in projects that are not wirelab: it registers the markers it applies (`slow`, `privileged`),
so `--strict-markers` projects need not declare them, and it collects scenario files only where the
user asks (see `is_scenario_file`), never a project's own `pyproject.toml` or other TOML files.
Fixtures import their machinery lazily so that loading the plugin costs nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import privileges

SCENARIOS_INI = "wirelab_scenarios"
MARKERS = {
    "slow": "long runs (full sweeps, floods, scenario files with `slow = true`); deselect them with "
    '`-m "not slow"`, as wirelab\'s `make test` does (`make test-all` runs them)',
    "privileged": "needs CAP_NET_ADMIN/CAP_NET_RAW (namespaces, TUN, raw sockets): root, or without "
    "root `python -m lab.userns -- pytest` (as `make test` does); skipped with a reason when missing",
}
_SCENARIO_ROOTS = pytest.StashKey[tuple[Path, ...]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lab", "wirelab")
    group.addoption(
        "--lab-seed",
        dest="lab_seed",
        metavar="N",
        type=int,
        default=None,
        help="seed of the impairment models of the lab fixtures; when given, it also overrides "
        "every scenario file's own seed (default: 1)",
    )
    parser.addini(
        SCENARIOS_INI,
        type="paths",
        default=[],
        help="folders (or files) whose *.toml files are wirelab scenario files, relative to the ini "
        "file; no other TOML file is collected, except one named on the command line",
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, description in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {description}")
    # abspath, as pytest's own file paths: normalised, symlinks kept, so the two compare equal
    roots = tuple(Path(os.path.abspath(path)) for path in config.getini(SCENARIOS_INI))
    for root in roots:
        if not root.exists():  # a typo would otherwise silently collect nothing
            config.issue_config_time_warning(
                pytest.PytestConfigWarning(f"{SCENARIOS_INI}: {root} does not exist"), stacklevel=2
            )
    config.stash[_SCENARIO_ROOTS] = roots


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged") is not None:
        reason = privileges.explain(privileges.CAP_NET_ADMIN, privileges.CAP_NET_RAW)
        if reason:
            pytest.skip(f"privileged test {reason}")


@pytest.fixture
def tcp_echo_server() -> Iterator[Any]:
    """A real TCP echo server on 127.0.0.1, ephemeral port: `.address`, `.stats`."""
    from lab.endpoints.server import running_server

    with running_server("tcp") as server:
        yield server


@pytest.fixture
def udp_echo_server() -> Iterator[Any]:
    """A real UDP echo server on 127.0.0.1, ephemeral port: `.address`, `.stats`."""
    from lab.endpoints.server import running_server

    with running_server("udp") as server:
        yield server


@pytest.fixture
def lab_seed(request: pytest.FixtureRequest) -> int:
    """The seed given with --lab-seed (default 1)."""
    seed = request.config.getoption("lab_seed")
    return 1 if seed is None else int(seed)


@pytest.fixture
def impaired_link(request: pytest.FixtureRequest, lab_seed: int) -> Iterator[Any]:
    """Factory: `impaired_link(loss="5%", delay="10ms")` -> a live link; all torn down after.
    One direction's own: `impaired_link(forward={"delay": "10ms"}, reverse={"delay": "2ms"})`."""
    reason = privileges.explain(privileges.CAP_NET_ADMIN)
    if reason:
        pytest.skip(f"impaired_link {reason}")
    from lab.link.session import LinkFactory

    factory = LinkFactory(seed=lab_seed, name_hint=request.node.name)
    try:
        yield factory
    finally:
        factory.close_all()


def is_scenario_file(file_path: Path, parent: pytest.Collector) -> bool:
    """Whether the user asked for this file to be collected as a scenario.

    The rule: a `*.toml` file at or below a path listed in the `wirelab_scenarios` ini option
    (wirelab's own pyproject lists `scenarios`), or one named on the command line (as pytest
    collects a `.py` file named there whatever `python_files` says). Without the option nothing
    else is: a project's `pyproject.toml`, or a TOML file among its tests, is never read as one.
    """
    if file_path.suffix != ".toml":
        return False
    if parent.session.isinitpath(file_path):
        return True
    roots = parent.config.stash.get(_SCENARIO_ROOTS, ())
    return any(file_path == root or root in file_path.parents for root in roots)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """Collect the scenario files `is_scenario_file` admits: each sweep point x protocol is a test item."""
    if is_scenario_file(file_path, parent):
        from lab.scenario_pytest import ScenarioFile

        return ScenarioFile.from_parent(parent, path=file_path)
    return None
