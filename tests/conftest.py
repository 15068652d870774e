"""Fixtures shared by the lab's own tests (the user-facing ones live in lab.pytest_plugin)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

CLEANUP_LOCK = "/tmp/wirelab-tests-cleanup.lock"  # one `lab cleanup` test at a time, machine-wide


@pytest.fixture
def cleanup_turn() -> Iterator[None]:
    """One cleanup test at a time across xdist workers: a cleanup reaps *every* dead run's leftovers,
    so a concurrent one would take this test's leftovers (and the removal message) away."""
    # Read-only is enough for flock, and works whoever created the file (root, or a student's run).
    fd = os.open(CLEANUP_LOCK, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@pytest.fixture
def portuguese() -> Iterator[None]:
    """The lab speaks Portuguese for this test (lab.i18n), and English again after it."""
    from lab import i18n

    i18n.set_language("pt")
    yield
    i18n.set_language("en")


def real_root() -> bool:
    """Root of the machine itself, not of a user namespace (where other uids are not mapped)."""
    if os.geteuid() != 0:
        return False
    try:
        fields = Path("/proc/self/uid_map").read_text().split()
    except OSError:
        return False
    return fields[:3] == ["0", "0", "4294967295"]
