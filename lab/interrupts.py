"""Stop signals as interrupts: SIGTERM and SIGHUP unwind a command the way Ctrl-C does.

A measuring command (`lab run`, `lab demo`) catches `KeyboardInterrupt` to keep what it measured
and tear everything down. A `kill PID` (SIGTERM) or a closed terminal (SIGHUP) would otherwise end
the process at once and lose both; inside `interrupt_on_signals()` they raise `Terminated`, a
`KeyboardInterrupt` carrying the signal, so one code path serves all three and the exit status
still says which signal it was (128 + its number, as shells report).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_SIGINT = 128 + signal.SIGINT  # 130
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived; handled like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.signum,))


def _terminated(interrupt: BaseException | None) -> Terminated | None:
    # An interrupt may be re-raised as another (a client's RunInterrupted carrying its record):
    # the signal is then its cause.
    seen = 0
    while interrupt is not None and seen < 16:
        if isinstance(interrupt, Terminated):
            return interrupt
        interrupt, seen = interrupt.__cause__ or interrupt.__context__, seen + 1
    return None


def exit_status(interrupt: BaseException | None) -> int:
    """What the process should exit with after `interrupt`: 143 for SIGTERM, 129 for SIGHUP, else 130."""
    terminated = _terminated(interrupt)
    return 128 + terminated.signum if terminated is not None else EXIT_SIGINT


def signal_name(interrupt: BaseException | None) -> str:
    """'SIGTERM', 'SIGHUP' or 'Ctrl-C' (SIGINT), for messages."""
    terminated = _terminated(interrupt)
    return signal.Signals(terminated.signum).name if terminated is not None else "Ctrl-C"


@contextmanager
def interrupt_on_signals(*signums: int) -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP (or `signums`) raise `Terminated` in the main thread.

    Forked children inherit the handler; in them it exits at once with 128 + signum instead, since
    unwinding a child would run the parent's code (the CLI) a second time.
    """
    signums = signums or (signal.SIGTERM, signal.SIGHUP)
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers
        return
    owner = os.getpid()

    def handler(signum: int, _frame: object) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise Terminated(signum)

    saved = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, previous in saved.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)


@contextmanager
def stop_signals_recorded() -> Iterator[list[int] | None]:
    """Within the block, append SIGINT/SIGTERM/SIGHUP to the yielded list instead of acting on them.

    For code that must not be cut between two steps (reading a child's answer and keeping it): it
    polls the list at safe points, then replays the signal with `signal.raise_signal` so the
    handlers in force say what it means. Main thread only (elsewhere yields None and changes
    nothing); ignored signals stay ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    pending: list[int] = []
    saved = {}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            saved[signum] = signal.signal(signum, lambda got, _frame: pending.append(got))
    try:
        yield pending
    finally:
        for signum, previous in saved.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
