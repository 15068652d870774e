"""The anchor table's session-wide collector (tests/benchmarks/anchor_rows.py).

`make bench` sets WIRELAB_ANCHORS_JSON: the rows measured in the session, and the ones it never
reached (as not measured), are written there when it ends, for `tools/bench_table.py` to print.
The link's rows come from the forwarder's own benchmark, read from pytest-benchmark's results.
Every benchmark runs with the CPUs held out of idle states where root may (`anchors.cpus_held_awake`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.benchmarks.anchor_rows import FORWARDER_TEST, MACHINE_NOTES, ROWS, AnchorTable, forwarder_rows
from tests.benchmarks.anchors import cpus_held_awake

ANCHORS_JSON_ENV = "WIRELAB_ANCHORS_JSON"
_tables: list[AnchorTable] = []  # the session's table, for the hook below


@pytest.fixture(scope="session", autouse=True)
def cpus_awake() -> Iterator[None]:
    """The session's benchmarks run with the CPUs kept awake: an idle virtual CPU takes tens of µs to
    wake, which would be most of every round trip measured here (lab's and anchors' alike)."""
    with cpus_held_awake() as what:
        MACHINE_NOTES["idle_states"] = what
        yield


@pytest.fixture(scope="session")
def anchor_table() -> Iterator[AnchorTable]:
    table = AnchorTable(ROWS)
    _tables.append(table)
    yield table
    if target := os.environ.get(ANCHORS_JSON_ENV):
        table.write(Path(target))


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list, output_json: dict) -> None:
    """At the session's end (with --benchmark-json): add the forwarder benchmark's figures to the table."""
    target = os.environ.get(ANCHORS_JSON_ENV)
    if not target:
        return
    table = _tables[0] if _tables else AnchorTable(ROWS)
    for bench in output_json.get("benchmarks", []):
        if bench.get("name") == FORWARDER_TEST:
            for row in forwarder_rows(bench.get("extra_info") or {}):
                table.add(row)
    table.write(Path(target))
