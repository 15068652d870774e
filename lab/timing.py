"""Timer precision for the lab's paced loops (the measuring client, the forwarder, the relay)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

# prctl(2) options from linux/prctl.h; the kernel's default slack of 50 µs delays every wake-up,
# which a paced sender would book as latency and a delaying forwarder would add to every delay.
PR_SET_TIMERSLACK = 29
PR_GET_TIMERSLACK = 30
FINE_TIMER_SLACK_NS = 1


@contextlib.contextmanager
def fine_timers() -> Iterator[None]:
    """Shrink this thread's timer slack to 1 ns while the block runs; restore it after."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        previous = libc.prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)
        changed = previous > 0 and libc.prctl(PR_SET_TIMERSLACK, FINE_TIMER_SLACK_NS, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux, or no libc: run with the default slack
        changed = False
    try:
        yield
    finally:
        if changed:
            libc.prctl(PR_SET_TIMERSLACK, previous, 0, 0, 0)
