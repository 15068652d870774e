"""The atlas's child process: a private namespace with the lab's servers, driven over a pipe.

`Sandbox` (parent side) starts the child, which unshares its network namespace, creates the TUN
and the echo servers, then answers requests ("run" a case, "inject" raw packets) until closed.
The namespace belongs to the child alone, so it disappears with it — even on SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import traceback
from multiprocessing.connection import Connection
from typing import Any

from lab.errors import EndpointError
from lab.probes.targets import SandboxAddresses

START_TIMEOUT_S = 20.0  # spawning Python and importing scapy/pyroute2 takes ~1 s; allow slow CI
REQUEST_TIMEOUT_S = 30.0  # the slowest case (1 MiB app stream) is bounded at 5 s
PARENT_SILENCE_S = 600.0  # the child exits if its parent says nothing for this long
JOIN_TIMEOUT_S = 5.0


def _child_main(requests: Connection, conn: Connection, addresses: SandboxAddresses, seed: int) -> None:
    """Child process entry: build the sandbox, then serve requests until told to stop."""
    from lab.probes.catalogue import BY_NAME
    from lab.probes.execute import Env

    try:
        env = Env(addresses, seed=seed)
        env.__enter__()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    try:
        conn.send(("ready", env.info()))
        while requests.poll(PARENT_SILENCE_S):
            try:
                command, argument = requests.recv()
            except EOFError:
                break
            if command == "close":
                break
            try:
                if command == "run":
                    conn.send(("ok", env.run_case(BY_NAME[argument])))
                elif command == "inject":
                    conn.send(("ok", env.inject(list(argument))))
                else:
                    conn.send(("error", f"unknown sandbox request {command!r}"))
            except Exception as exc:  # noqa: BLE001 - the request fails, the sandbox stays up
                conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        env.__exit__(None, None, None)
        conn.close()
        requests.close()


def main() -> None:
    """`python -m lab.probes.sandbox ADDRESS PEER SEED [APP_ADDRESS]`: requests on stdin, answers on
    stdout."""
    address, peer, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    app_address = sys.argv[4] if len(sys.argv) > 4 else None
    requests = Connection(os.dup(sys.stdin.fileno()), writable=False)
    answers = Connection(os.dup(sys.stdout.fileno()), readable=False)
    sys.stdout = sys.stderr  # nothing but answers may reach the pipe
    _child_main(requests, answers, SandboxAddresses(address=address, peer=peer, app_address=app_address),
                seed)


class Sandbox:
    """Parent-side handle of the atlas's child process (a context manager)."""

    def __init__(self, addresses: SandboxAddresses, *, seed: int = 1) -> None:
        self.addresses = addresses
        self.seed = seed
        self.info: dict[str, Any] = {}
        self._conn: Connection | None = None
        self._out: Connection | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: Any = None

    def __enter__(self) -> Sandbox:
        # A fresh interpreter (not fork: the parent may be threaded, e.g. pytest or rich).
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "lab.probes.sandbox", self.addresses.address, self.addresses.peer,
             str(self.seed), *([self.addresses.app_address] if self.addresses.app_address else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._conn = Connection(os.dup(self._proc.stdout.fileno()), writable=False)
        self._out = Connection(os.dup(self._proc.stdin.fileno()), readable=False)
        try:
            status, payload = self._receive(START_TIMEOUT_S, "start")
            if status != "ready":
                raise EndpointError(f"the probe sandbox could not start: {payload}")
            self.info = payload
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _receive(self, timeout: float, what: str) -> tuple[str, Any]:
        assert self._conn is not None
        if not self._conn.poll(timeout):
            raise EndpointError(f"the probe sandbox did not answer {what} within {timeout:.0f} s")
        try:
            return self._conn.recv()
        except EOFError:
            raise EndpointError(f"the probe sandbox exited during {what}: {self._stderr_tail()}") from None

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        except (OSError, ValueError):
            return "(no diagnostics)"
        return lines[-1] if lines else "(no diagnostics)"

    def _request(self, command: str, argument: Any) -> Any:
        if self._conn is None:
            raise EndpointError("the probe sandbox is closed")
        self._out.send((command, argument))
        status, payload = self._receive(REQUEST_TIMEOUT_S, command)
        if status != "ok":
            raise EndpointError(f"probe sandbox request {command} failed: {payload}")
        return payload

    def run_case(self, name: str) -> dict[str, Any]:
        """Run one catalogue case inside the sandbox; its JSON-able result."""
        return self._request("run", name)

    def inject(self, packets: list[bytes]) -> dict[str, Any]:
        """Write raw IPv4 packets into the sandbox's TUN; errors, replies and server liveness."""
        return self._request("inject", list(packets))

    def close(self) -> None:
        """Stop the child (politely, then by force); its namespace goes with it."""
        if self._out is not None:
            with contextlib.suppress(OSError, ValueError):
                self._out.send(("close", None))
            self._out.close()
            self._out = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            try:
                self._proc.wait(JOIN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(JOIN_TIMEOUT_S)
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe is not None:
                    pipe.close()
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


if __name__ == "__main__":
    main()
