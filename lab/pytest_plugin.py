"""The lab's pytest plugin (entry point `pytest11`): fixtures, markers, options, scenario files.

Fixtures import their machinery lazily so that loading the plugin costs nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lab import privileges


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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "privileged: needs CAP_NET_ADMIN/CAP_NET_RAW (namespaces, TUN, raw sockets): root, or "
        "without root `python -m lab.userns -- pytest` (as `make test` does); skipped with a "
        "reason when missing",
    )


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
    """Factory: `impaired_link(loss="5%", delay="10ms")` -> a live link; all torn down after."""
    reason = privileges.explain(privileges.CAP_NET_ADMIN)
    if reason:
        pytest.skip(f"impaired_link {reason}")
    from lab.link.session import LinkFactory

    factory = LinkFactory(seed=lab_seed, name_hint=request.node.name)
    try:
        yield factory
    finally:
        factory.close_all()


def pytest_collect_file(file_path: Any, parent: pytest.Collector) -> pytest.Collector | None:
    """Collect scenarios/*.toml: each sweep point x protocol becomes a test item."""
    if file_path.suffix == ".toml" and file_path.parent.name == "scenarios":
        from lab.scenario_pytest import ScenarioFile

        return ScenarioFile.from_parent(parent, path=file_path)
    return None
