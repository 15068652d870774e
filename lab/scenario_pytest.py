"""pytest collection of scenario files: each sweep point x protocol is one test item.

Which files are scenarios is the plugin's rule (`lab.pytest_plugin.is_scenario_file`: the
`wirelab_scenarios` ini option, or a file named on the command line); this module reads them.

Node ids read `scenarios/loss-sweep.toml::loss-sweep[loss=5%]::udp`. An item runs its point for
its own protocol (a fresh link with the point's seed, so every protocol meets the same link
decisions) and asserts that protocol's expectations. Runs are cached per process and point, so
asking twice costs nothing. Why not one run per point for all protocols, as `lab run` does:
pytest-xdist's default scheduling spreads a point's tcp and udp items over both workers, and each
would then run the whole point, doubling the time. Every run binds port 0 and gets its own
namespaces, so workers never collide. Scenarios with `slow = true` are marked `slow`; items that
need the real link are marked `privileged` (skipped with the reason where CAP_NET_ADMIN is missing).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.errors import LabError, ScenarioError
from lab.scenario import Check, Scenario, SweepPoint, load_scenario

_CACHE: dict[tuple[str, str, int, str], Any] = {}  # (file, point id, seed, protocol) -> PointOutcome
GROUP_ITEM = "flows"  # the one item of a point whose [[flows]] run together


class ExpectationFailed(AssertionError):
    """A scenario expectation did not hold; the message lists measured, expected and interval."""


class ScenarioFile(pytest.File):
    """One scenario file; its children are the sweep points."""

    def collect(self) -> Iterator[pytest.Collector]:
        scenario = load_scenario(Path(self.path))
        seed = self.config.getoption("lab_seed", None)
        if seed is not None:  # --lab-seed N replays every scenario with another seed
            scenario = scenario.with_seed(seed)
        for point in scenario.points:
            yield ScenarioPoint.from_parent(
                self, name=f"{scenario.name}[{point.id}]", scenario=scenario, point=point
            )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ScenarioError):
            return str(excinfo.value)  # already names the file and the key: no traceback needed
        return super().repr_failure(excinfo, style)


class ScenarioPoint(pytest.Collector):
    """One sweep point; its children are the protocols."""

    def __init__(self, *, scenario: Scenario, point: SweepPoint, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        self.point = point

    def collect(self) -> Iterator[pytest.Item]:
        # A flow group (docs/architecture.md#flows-and-oracles) runs as one: its flows share the link.
        for proto in (GROUP_ITEM,) if self.point.flows else self.scenario.protocols:
            item = ScenarioItem.from_parent(
                self, name=proto, scenario=self.scenario, point=self.point, protocol=proto
            )
            if self.scenario.slow:
                item.add_marker(pytest.mark.slow)
            if self.scenario.privileged or (self.point.impaired and _needs_link(proto)):
                item.add_marker(pytest.mark.privileged)
            yield item


def _needs_link(protocol: str) -> bool:
    """Protocols the unprivileged relay cannot carry need the real link to be impaired."""
    from lab.protocols import get_protocol

    if protocol == GROUP_ITEM:
        return True  # flow groups run over the real link only

    return not get_protocol(protocol).relayable


class ScenarioItem(pytest.Item):
    """One protocol at one sweep point: its expectations are the assertions."""

    def __init__(self, *, scenario: Scenario, point: SweepPoint, protocol: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        self.point = point
        self.protocol = protocol

    def _outcome(self) -> Any:
        from lab.runner import run_point

        key = (str(self.path), self.point.id, self.point.seed, self.protocol)
        if key not in _CACHE:
            group = self.protocol == GROUP_ITEM
            outcome = run_point(self.scenario, self.point, protocols=None if group else (self.protocol,))
            outcome.evaluate()
            _CACHE[key] = outcome
        return _CACHE[key]

    def runtest(self) -> None:
        outcome = self._outcome()
        if self.protocol in outcome.skipped:
            pytest.skip(f"{self.protocol}: {outcome.skipped[self.protocol]}")
        if self.protocol == GROUP_ITEM and outcome.skipped and not outcome.flows:
            pytest.skip("; ".join(sorted(set(outcome.skipped.values()))))
        checks: list[Check] = (
            [c for name in outcome.checks for c in outcome.checks[name]] if self.protocol == GROUP_ITEM
            else outcome.checks.get(self.protocol, [])
        )
        failed = [c for c in checks if not c.passed]
        if failed:
            lines = [f"{len(failed)} of {len(checks)} expectation(s) failed for {self.protocol}:"]
            lines += [f"  {c.expectation.describe()}: {c.message}" for c in failed]
            lines.append(
                f"  config: link {dict(self.point.link) or 'unimpaired'} ({outcome.mode}), "
                f"traffic {self.point.traffic}, seed {self.point.seed}, mtu {self.point.mtu}"
            )
            raise ExpectationFailed("\n".join(lines))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ExpectationFailed | LabError):
            return f"{self.scenario.name}[{self.point.id}]::{self.protocol}: {excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return Path(self.path), None, f"scenario {self.scenario.name}[{self.point.id}]::{self.protocol}"
