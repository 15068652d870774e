"""The link's packet forwarder: its own process, moving IP packets between the two TUN devices.

Run as `python -m lab.link.forwarder --spec JSON` with the TUN fds and one end of a control
socketpair inherited. One select loop serves both TUN fds and the control socket; packets the
model delays wait in a heap ordered by release time. Per direction one `DirectionModel` decides
(forward: client->server with `seed`, reverse: server->client with `seed + 1`, as `LinkConfig`
does). A null impairment takes a fast path: read, write, count.

Control protocol (SOCK_SEQPACKET, one JSON object per message, one reply each):
  {"op": "counters"}                            -> {"forward": {...}, "reverse": {...}}
  {"op": "set", "options": {...}, "direction": D} -> {"ok": true} | {"error": "..."}
  {"op": "reseed"}                              -> {"ok": true} (random decisions restart from the seeds)
  {"op": "stop"}                                -> final counters, then the process exits
End of file on the control socket (the owner died) also stops the forwarder.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lab.errors import ConfigError, LabError

BATCH = 64  # packets read per readiness event per fd: amortises select calls under load
MAX_PACKET = 65535  # largest IPv4 datagram (RFC 791)
CONTROL_MAX = 1 << 20  # bound on one control message
READY_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 5.0
FORWARD, REVERSE = 0, 1
DIRECTIONS = ("forward", "reverse")
EXTRA_KEYS = ("ignored_non_ipv4", "write_errors")  # forwarder's own counters, beside the model's


class _Direction:
    """One direction's state: model, fast-path flag and the forwarder's own counts."""

    __slots__ = ("model", "fast", "fast_packets", "fast_bytes", "ignored", "write_errors")

    def __init__(self, model: Any, fast: bool) -> None:
        self.model = model
        self.fast = fast
        self.fast_packets = 0
        self.fast_bytes = 0
        self.ignored = 0
        self.write_errors = 0

    def counters(self) -> dict[str, int]:
        out = dict(self.model.counters)
        for key in ("packets_in", "forwarded"):
            out[key] += self.fast_packets
        for key in ("bytes_in", "bytes_out"):
            out[key] += self.fast_bytes
        out["ignored_non_ipv4"] = self.ignored
        out["write_errors"] = self.write_errors
        return out


def _build_config(spec: Mapping[str, Any]) -> Any:
    from lab.link.models import LinkConfig

    return LinkConfig.from_options(spec["options"], direction=spec["direction"], seed=spec["seed"])


def serve(spec: Mapping[str, Any]) -> None:
    """The forwarder's main loop (runs until stop, control EOF or SIGTERM)."""
    from lab.link.models import DirectionModel

    client_fd, server_fd, control_fd = spec["fds"]
    control = socket.socket(fileno=control_fd)
    config = _build_config(spec)
    impairments = (config.forward, config.reverse)
    seeds = (config.seed, config.seed + 1)
    dirs = [_Direction(DirectionModel(impairments[d], seeds[d]), impairments[d].is_null) for d in (0, 1)]
    capture = _open_capture(spec.get("capture"))
    if capture is not None:
        for d in dirs:
            d.fast = False  # every packet gets a comment: go through the model

    out_fds = (server_fd, client_fd)
    heap: list[tuple[float, int, int, bytes]] = []
    order = 0  # tie-breaker: equal release times keep decision order
    # select(), not epoll: epoll_wait's timeout is whole milliseconds (rounded up), which released
    # every delayed packet up to 1 ms late; select's is microseconds. Three fds: no cost to speak of.
    watched = [client_fd, server_fd, control_fd]
    control.sendall(json.dumps({"ready": True, "pid": os.getpid()}).encode())

    read, write, monotonic, wait = os.read, os.write, time.monotonic, select.select
    try:
        while True:
            timeout = None if not heap else max(0.0, heap[0][0] - monotonic())
            for fd in wait(watched, (), (), timeout)[0]:
                if fd == control_fd:
                    reply, stop = _handle_control(control, dirs, config, capture is not None)
                    if stop or reply is None:
                        return _finish(control, dirs, capture)
                    config = reply.pop("_config", config)
                    control.sendall(json.dumps(reply).encode())
                    continue
                d = FORWARD if fd == client_fd else REVERSE
                state = dirs[d]
                out = out_fds[d]
                for _ in range(BATCH):
                    try:
                        packet = read(fd, MAX_PACKET)
                    except BlockingIOError:
                        break
                    except OSError:  # the device went away (namespace deleted): stop reading it
                        watched.remove(fd)
                        break
                    if packet[0] >> 4 != 4:
                        state.ignored += 1  # IPv6 noise; the lab's link is IPv4
                        continue
                    if state.fast:
                        state.fast_packets += 1
                        state.fast_bytes += len(packet)
                        try:
                            write(out, packet)
                        except OSError:
                            state.write_errors += 1
                        continue
                    now = monotonic()
                    verdict = state.model.decide(packet, now)
                    if capture is not None:
                        capture.packet(d, time.time_ns(), packet, "; ".join(verdict.notes) or "forwarded")
                    for release in verdict.releases:
                        if release.at <= now:
                            try:
                                write(out, release.packet)
                            except OSError:
                                state.write_errors += 1
                        else:
                            order += 1
                            heapq.heappush(heap, (release.at, order, d, release.packet))
            if heap:
                now = monotonic()
                while heap and heap[0][0] <= now:
                    _, _, d, packet = heapq.heappop(heap)
                    try:
                        write(out_fds[d], packet)
                    except OSError:
                        dirs[d].write_errors += 1
    finally:
        if capture is not None:
            capture.flush()


def _open_capture(path: str | None) -> Any:
    if not path:
        return None
    from lab.link.pcapng import PcapNgWriter

    writer = PcapNgWriter(open(path, "wb"))  # noqa: SIM115 - lives as long as the loop
    writer.add_interface("client->server")
    writer.add_interface("server->client")
    return writer


def _counters(dirs: list[_Direction]) -> dict[str, dict[str, int]]:
    return {name: dirs[i].counters() for i, name in enumerate(DIRECTIONS)}


def _handle_control(
    control: socket.socket, dirs: list[_Direction], config: Any, capture_on: bool
) -> tuple[dict[str, Any] | None, bool]:
    """Answer one control message. (None, True) means the owner is gone."""
    data = control.recv(CONTROL_MAX)
    if not data:
        return None, True
    try:
        message = json.loads(data)
        op = message["op"]
    except (ValueError, KeyError, TypeError):
        return {"error": "bad control message"}, False
    if op == "counters":
        return _counters(dirs), False
    if op == "stop":
        return {}, True
    if op == "set":
        try:
            new = config.with_options(message["options"], direction=message["direction"])
        except LabError as exc:
            return {"error": str(exc)}, False
        for i, impairment in enumerate((new.forward, new.reverse)):
            dirs[i].model.update(impairment)
            dirs[i].fast = impairment.is_null and not capture_on
        return {"ok": True, "_config": new}, False
    if op == "reseed":
        for direction, seed in zip(dirs, (config.forward_seed, config.reverse_seed), strict=True):
            direction.model.reseed(seed)
        return {"ok": True}, False
    return {"error": f"unknown op {op!r}"}, False


def _finish(control: socket.socket, dirs: list[_Direction], capture: Any) -> None:
    if capture is not None:
        capture.flush()
    with contextlib.suppress(OSError):
        control.sendall(json.dumps(_counters(dirs)).encode())


# --- the owner's side -------------------------------------------------------------------------
class Forwarder:
    """Handle on a running forwarder process: counters, set, stop. Thread-safe."""

    def __init__(self, process: subprocess.Popen[bytes], control: socket.socket) -> None:
        self.process = process
        self._control = control
        self._lock = threading.Lock()
        self.final_counters: dict[str, dict[str, int]] | None = None

    @property
    def pid(self) -> int:
        """The forwarder's process id."""
        return self.process.pid

    @classmethod
    def start(
        cls,
        fds: tuple[int, int],
        *,
        name: str,
        options: Mapping[str, object],
        direction: str,
        seed: int,
        capture: Path | None = None,
    ) -> Forwarder:
        """Spawn the forwarder on the two TUN fds (client, server); returns when it is ready."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        spec = {
            "name": name,
            "fds": [fds[0], fds[1], theirs.fileno()],
            "options": dict(options),
            "direction": direction,
            "seed": seed,
            "capture": str(capture) if capture else None,
        }
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "lab.link.forwarder", "--name", name, "--spec", json.dumps(spec)],
                pass_fds=(fds[0], fds[1], theirs.fileno()),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C goes to the owner, who stops us and reads counters
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        forwarder = cls(process, ours)
        try:
            ready = forwarder._receive(READY_TIMEOUT_S)
            if not ready.get("ready"):
                raise LabError(f"the link forwarder did not start: {ready}")
        except BaseException:
            forwarder.kill()
            raise
        return forwarder

    def _receive(self, timeout: float) -> dict[str, Any]:
        self._control.settimeout(timeout)
        try:
            data = self._control.recv(CONTROL_MAX)
        except TimeoutError:
            raise LabError(f"the link forwarder (pid {self.pid}) did not answer within {timeout} s") from None
        if not data:
            code = self.process.poll()
            raise LabError(f"the link forwarder (pid {self.pid}) exited (status {code}); see its stderr")
        return json.loads(data)

    def request(self, message: Mapping[str, Any], timeout: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        """Send one control message and return the reply."""
        with self._lock:
            try:
                self._control.sendall(json.dumps(message).encode())
            except OSError as exc:
                raise LabError(f"the link forwarder (pid {self.pid}) is gone: {exc}") from exc
            return self._receive(timeout)

    def counters(self) -> dict[str, dict[str, int]]:
        """Per-direction counters right now (or the final ones after stop)."""
        if self.final_counters is not None:
            return self.final_counters
        return self.request({"op": "counters"})

    def set(self, options: Mapping[str, object], direction: str) -> None:
        """Change the impairment of the running link."""
        reply = self.request({"op": "set", "options": dict(options), "direction": direction})
        if "error" in reply:
            raise ConfigError(reply["error"])

    def reseed(self) -> None:
        """Restart both directions' random decisions from the link's seeds."""
        reply = self.request({"op": "reseed"})
        if "error" in reply:
            raise LabError(reply["error"])

    def stop(self) -> dict[str, dict[str, int]] | None:
        """Stop the forwarder, returning its final counters (None if it could not answer)."""
        if self.final_counters is None and self.process.poll() is None:
            with contextlib.suppress(LabError, ValueError):
                self.final_counters = self.request({"op": "stop"})
        self.kill()
        return self.final_counters

    def kill(self) -> None:
        """Make sure the process is gone and reaped; close the control socket."""
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        self._control.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the forwarder process."""
    import argparse

    parser = argparse.ArgumentParser(prog="lab.link.forwarder")
    parser.add_argument("--name", required=True, help="link name (lets `lab cleanup` recognise us)")
    parser.add_argument("--spec", required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner decides when we stop

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    from lab.timing import fine_timers

    with fine_timers():  # release delayed packets on time, not up to 50 µs late
        serve(json.loads(args.spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
