"""Running bulk flows: on loopback (`run_bulk_loopback`), and in a namespace, one blocking
(`Link.bulk`) or several at once (`Link.start_bulk`).

A flow runs in a forked child inside the link's client namespace (a download's: the server's;
lab.child.fork_call, as `call_in_netns`); `flow_in_namespace` is what that child runs: the
protocol's `run_bulk`, with an interrupted flow raised as `BulkInterrupted` (carrying its
result) so the parent's interrupt handling (lab.link.session) hands it back instead of dropping
it. `BulkFlow` is the handle of a flow started without waiting: its child starts at once, a
thread collects its outcome, and `.result()` returns the BulkResult (interrupted ones too,
`stopped="interrupted"`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lab.bulk.plan import BulkInterrupted, BulkPlan, BulkResult
from lab.errors import HelperProcessError, LabError

if TYPE_CHECKING:
    pass


def flow_in_namespace(protocol: str, address: tuple[str, int], plan: BulkPlan, *,
                      progress: Callable[..., None] | None = None, round_trip_s: float = 0.0) -> BulkResult:
    """Run one flow of `protocol` here (the child's namespace); BulkInterrupted if it was interrupted."""
    from lab.protocols import get_protocol

    chosen = get_protocol(protocol)
    chosen.require_available()
    try:
        result = chosen.run_bulk(address, plan, progress=progress, round_trip_s=round_trip_s)
    except KeyboardInterrupt:  # before the flow started (connecting, waiting for its start time)
        raise BulkInterrupted(BulkResult(protocol=chosen.name, interval_s=plan.interval_s,
                                         stopped="interrupted", plan=plan.to_dict())) from None
    if result.stopped == "interrupted":
        raise BulkInterrupted(result)
    return result


class BulkFlow:
    """A flow running in its own child (started by `Link.start_bulk`): wait with `.result()`.

    `progress` reports reach the caller from the collecting thread. `interrupt()` asks the flow to
    stop now (SIGINT to its child: it ends like a Ctrl-C, keeping what it measured); a Ctrl-C at the
    terminal reaches the children by itself.
    """

    def __init__(self, name: str, child: Any, progress: Callable[..., None] | None) -> None:
        self.name = name
        self._child = child
        self._progress = progress
        self._value: BulkResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._collect, name=f"bulk {name}", daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        from lab.child import Progress, Reply

        try:
            while True:
                message = self._child.next_message(None)
                if isinstance(message, Progress) and self._progress is not None:
                    with contextlib.suppress(Exception):  # a broken display must not lose the flow
                        self._progress(*message.report)
                if isinstance(message, Reply):
                    if isinstance(message.error, BulkInterrupted):
                        self._value = message.error.result
                    elif message.error is not None:
                        self._error = message.error
                    else:
                        self._value = message.value
                    return
        except BaseException as exc:  # the child died: HelperProcessError
            self._error = exc
        finally:
            self._child.close()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def interrupt(self) -> None:
        """Stop the flow now; it still answers with what it measured."""
        if not self.done:
            with contextlib.suppress(OSError, ProcessLookupError):
                self._child.process.send_signal(signal.SIGINT)

    def result(self, timeout: float | None = None) -> BulkResult:
        """The flow's BulkResult once it ended (its error re-raised); LabError if not within `timeout`."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise LabError(f"bulk flow {self.name} has not ended within {timeout:g} s")
        if self._error is not None:
            raise self._error
        if self._value is None:
            raise HelperProcessError(f"bulk flow {self.name} ended without a result")
        return self._value

    def close(self) -> None:
        """Stop the flow if it still runs (interrupt, a short wait, then its child is killed)."""
        if not self.done:
            self.interrupt()
            self._thread.join(5.0)
        if not self.done:
            self._child.close()
            self._thread.join(5.0)


def start_flow_in_netns(ns: str, protocol: str, address: tuple[str, int], plan: BulkPlan, *,
                        progress: Callable[..., None] | None = None, round_trip_s: float = 0.0) -> BulkFlow:
    """Fork a child into namespace `ns` running one flow; its handle at once."""
    from lab.child import Progress, fork_call
    from lab.link.netns import enter_netns

    def inside(channel: Any) -> BulkResult:
        enter_netns(ns)

        def relay(*report: Any) -> None:
            channel.send(Progress(report))

        return flow_in_namespace(protocol, address, plan, progress=relay if progress else None,
                                 round_trip_s=round_trip_s)

    name = f"{protocol} in {ns}"
    return BulkFlow(name, fork_call(f"the bulk flow {name}", inside), progress)
