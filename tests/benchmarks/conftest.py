"""The anchor table's session-wide collector (tests/benchmarks/anchor_rows.py).

`make bench` sets WIRELAB_ANCHORS_JSON: the rows measured in the session, and the ones it never
reached (as not measured), are written there when it ends, for `tools/bench_table.py` to print.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.benchmarks.anchor_rows import ROWS, AnchorTable

ANCHORS_JSON_ENV = "WIRELAB_ANCHORS_JSON"


@pytest.fixture(scope="session")
def anchor_table() -> Iterator[AnchorTable]:
    table = AnchorTable(ROWS)
    yield table
    if target := os.environ.get(ANCHORS_JSON_ENV):
        table.write(Path(target))
