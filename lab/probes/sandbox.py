"""The atlas's child process: a private namespace with the lab's servers, driven over its channel.

`Sandbox` (parent side) starts the child (a helper process, `lab.child`), which unshares its network
namespace, creates the TUN and the echo servers, then answers requests ("run" a case, "inject" raw
packets) until closed. The namespace belongs to the child alone, so it disappears with it — even on
SIGKILL.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

from lab.child import Child, Failed, Ready, answer, python_argv, spawn, start_child
from lab.errors import EndpointError, LabError
from lab.probes.targets import SandboxAddresses

PARENT_SILENCE_S = 600.0  # the child exits if its parent says nothing for this long


def main() -> int:
    """`python -m lab.probes.sandbox`, started by `Sandbox`: build the sandbox, answer requests."""
    from lab.probes.catalogue import BY_NAME
    from lab.probes.execute import Env

    channel, (addresses, seed) = start_child("lab.probes.sandbox.Sandbox")
    with channel:
        env = Env(addresses, seed=seed)
        try:
            env.__enter__()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
            why = exc if isinstance(exc, LabError) else EndpointError(f"{type(exc).__name__}: {exc}")
            channel.send(Failed(why))
            return 1

        def handle(op: str, argument: Any) -> Any:
            try:
                if op == "run":
                    return env.run_case(BY_NAME[argument])
                if op == "inject":
                    return env.inject(list(argument))
                if op == "stop":
                    return None
            except Exception as exc:  # noqa: BLE001 - the request fails, the sandbox stays up
                raise EndpointError(f"probe sandbox request {op} failed: {type(exc).__name__}: {exc}\n"
                                    f"{traceback.format_exc()}") from None
            raise EndpointError(f"unknown sandbox request {op!r}")

        try:
            channel.send(Ready(env.info()))
            while channel.readable(PARENT_SILENCE_S) and answer(channel, handle):
                pass
        finally:
            env.__exit__(None, None, None)
    return 0


class Sandbox:
    """Parent-side handle of the atlas's child process (a context manager)."""

    def __init__(self, addresses: SandboxAddresses, *, seed: int = 1) -> None:
        self.addresses = addresses
        self.seed = seed
        self.info: dict[str, Any] = {}
        self._proc: Child | None = None

    def __enter__(self) -> Sandbox:
        # A fresh interpreter (not fork: the parent may be threaded, e.g. pytest or rich).
        self._proc = spawn("the probe sandbox", python_argv("lab.probes.sandbox"),
                           setup=(self.addresses, self.seed), quiet=True)  # scapy's chatter: errors only
        self.info = self._proc.info
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, op: str, argument: Any) -> Any:
        if self._proc is None:
            raise EndpointError("the probe sandbox is closed")
        return self._proc.request(op, argument)

    def run_case(self, name: str) -> dict[str, Any]:
        """Run one catalogue case inside the sandbox; its JSON-able result."""
        return self._request("run", name)

    def inject(self, packets: list[bytes]) -> dict[str, Any]:
        """Write raw IPv4 packets into the sandbox's TUN; errors, replies and server liveness."""
        return self._request("inject", list(packets))

    def close(self) -> None:
        """Stop the child (politely, then by force); its namespace goes with it. Idempotent."""
        child, self._proc = self._proc, None
        if child is not None:
            child.close()


if __name__ == "__main__":
    sys.exit(main())
