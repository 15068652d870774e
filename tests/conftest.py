"""Fixtures shared by the lab's own tests (the user-facing ones live in lab.pytest_plugin)."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator

import pytest

CLEANUP_LOCK = "/tmp/wirelab-tests-cleanup.lock"  # one `lab cleanup` test at a time, machine-wide


@pytest.fixture
def cleanup_turn() -> Iterator[None]:
    """One cleanup test at a time across xdist workers: a cleanup reaps *every* dead run's leftovers,
    so a concurrent one would take this test's leftovers (and the removal message) away."""
    with open(CLEANUP_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture
def portuguese() -> Iterator[None]:
    """The lab speaks Portuguese for this test (lab.i18n), and English again after it."""
    from lab import i18n

    i18n.set_language("pt")
    yield
    i18n.set_language("en")
