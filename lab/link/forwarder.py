"""The link's packet forwarder: its own process, moving IP packets between the two TUN devices.

Run as `python -m lab.link.forwarder --spec JSON` with the TUN fds and one end of a control
socketpair inherited. The spec carries the link's parsed configuration (`LinkConfig.to_wire`:
numbers, no netem strings; docs/architecture.md#link-configuration), so nothing is parsed here.
One select loop serves both TUN fds and the control socket; packets the model delays wait in a
heap ordered by release time. Per direction one `DirectionModel` decides (forward: client->server
with `seed`, reverse: server->client with `seed + 1`, as `LinkConfig` does). A null impairment
takes a fast path: read, write, count.

Counters per direction: the model's decisions (packets_in, dropped_*, duplicated, delayed...) plus
the forwarder's own: `forwarded`/`bytes_out` count packets actually written to the other TUN
device, `queued` those the link holds right now (in the final counters `queued_at_close`: never
delivered), `write_errors`, `ignored_non_ipv4` and, with a capture, `not_captured` (packets after
the capture's size limit). So packets_in + duplicated = forwarded + dropped_loss + dropped_queue +
queued + write_errors.

Control protocol (SOCK_SEQPACKET, one JSON object per message, one reply each):
  {"ready": true, "pid": N} | {"error": "..."}  <- sent once at start (error: it could not start)
  {"op": "counters"}                            -> {"forward": {...}, "reverse": {...}}
  {"op": "set", "config": LinkConfig.to_wire()} -> {"ok": true} | {"error": "..."}
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
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.errors import ConfigError, LabError

if TYPE_CHECKING:
    from lab.link.models import LinkConfig

BATCH = 64  # packets read per readiness event per fd: amortises select calls under load
MAX_PACKET = 65535  # largest IPv4 datagram (RFC 791)
CONTROL_MAX = 1 << 20  # bound on one control message
READY_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 5.0
EXIT_CRASHED = 70  # sysexits.h EX_SOFTWARE
EXIT_WAIT_S = 1.0  # how long a dead forwarder's exit status is waited for (for the message)
# Longest single wait in the loop: a release time far ahead (a slow rate) must never reach select as
# a timeout it cannot represent (1e-8bit gave OverflowError); waking once a second costs nothing.
MAX_WAIT_S = 1.0
FORWARD, REVERSE = 0, 1
DIRECTIONS = ("forward", "reverse")
# the forwarder's own counters, beside the model's (forwarded/bytes_out are replaced by its writes)
EXTRA_KEYS = ("queued", "ignored_non_ipv4", "write_errors", "not_captured")


class _Direction:
    """One direction's state: model, fast-path flag and the forwarder's own counts."""

    __slots__ = ("model", "seed", "fast", "fast_packets", "fast_bytes", "out_packets", "out_bytes",
                 "queued", "ignored", "write_errors", "not_captured")

    def __init__(self, model: Any, seed: int, fast: bool) -> None:
        self.model = model
        self.seed = seed  # what `reseed` restarts the model from
        self.fast = fast
        self.fast_packets = 0  # entered through the fast path (the model never saw them)
        self.fast_bytes = 0
        self.out_packets = 0  # written to the other TUN device
        self.out_bytes = 0
        self.queued = 0  # in the delay heap now
        self.ignored = 0
        self.write_errors = 0
        self.not_captured = 0

    def counters(self, *, final: bool = False) -> dict[str, int]:
        out = dict(self.model.counters)
        out["packets_in"] += self.fast_packets
        out["bytes_in"] += self.fast_bytes
        # the model counts a packet forwarded when it decides to release it; only a write delivers it
        out["forwarded"] = self.out_packets
        out["bytes_out"] = self.out_bytes
        out["queued_at_close" if final else "queued"] = self.queued
        out["ignored_non_ipv4"] = self.ignored
        out["write_errors"] = self.write_errors
        out["not_captured"] = self.not_captured
        return out

    def write(self, fd: int, packet: bytes) -> None:
        """Write one packet to the other TUN device, counting the outcome."""
        try:
            os.write(fd, packet)
        except OSError:
            self.write_errors += 1
        else:
            self.out_packets += 1
            self.out_bytes += len(packet)


def _config_from_wire(data: Any) -> Any:
    """The owner's parsed LinkConfig, rebuilt from its wire form (numbers; no netem string parsed)."""
    from lab.link.models import LinkConfig

    return LinkConfig.from_wire(data)


def _directions(config: Any, capture_on: bool) -> list[_Direction]:
    """One _Direction per way (forward, reverse), each with its model seeded as `config` says."""
    from lab.link.models import DirectionModel

    dirs = []
    for impairment, seed in ((config.forward, config.forward_seed), (config.reverse, config.reverse_seed)):
        dirs.append(_Direction(DirectionModel(impairment, seed), seed, impairment.is_null and not capture_on))
    return dirs


def _apply_config(dirs: list[_Direction], config: Any, capture_on: bool) -> None:
    """Switch the running link to `config` from the next packet on (counters and RNG state carry on;
    a later reseed starts from `config`'s seeds). With a capture every packet goes through the model,
    which writes its comment."""
    for d, impairment, seed in zip(dirs, (config.forward, config.reverse),
                                   (config.forward_seed, config.reverse_seed), strict=True):
        d.model.update(impairment)
        d.seed = seed
        d.fast = impairment.is_null and not capture_on


def serve(spec: Mapping[str, Any]) -> None:
    """The forwarder's main loop (runs until stop, control EOF or SIGTERM)."""
    client_fd, server_fd, control_fd = spec["fds"]
    control = socket.socket(fileno=control_fd)
    try:
        config = _config_from_wire(spec["link"])
        capture = _open_capture(spec.get("capture"), spec.get("capture_limit"))
    except (OSError, LabError) as exc:  # the owner checked first; still, say why instead of a traceback
        with contextlib.suppress(OSError):
            control.sendall(json.dumps({"error": str(exc)}).encode())
        return
    dirs = _directions(config, capture is not None)  # with a capture every packet gets a comment

    out_fds = (server_fd, client_fd)
    heap: list[tuple[float, int, int, bytes]] = []
    order = 0  # tie-breaker: equal release times keep decision order
    # select(), not epoll: epoll_wait's timeout is whole milliseconds (rounded up), which released
    # every delayed packet up to 1 ms late; select's is microseconds. Three fds: no cost to speak of.
    watched = [client_fd, server_fd, control_fd]
    control.sendall(json.dumps({"ready": True, "pid": os.getpid()}).encode())

    read, monotonic, wait = os.read, time.monotonic, select.select
    try:
        while True:
            timeout = None if not heap else min(MAX_WAIT_S, max(0.0, heap[0][0] - monotonic()))
            for fd in wait(watched, (), (), timeout)[0]:
                if fd == control_fd:
                    reply, stop = _handle_control(control, dirs, capture is not None)
                    if stop or reply is None:
                        return _finish(control, dirs, capture, stop and reply is not None)
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
                        state.write(out, packet)
                        continue
                    now = monotonic()
                    verdict = state.model.decide(packet, now)
                    if capture is not None and not capture.packet(
                            d, time.time_ns(), packet, "; ".join(verdict.notes) or "forwarded"):
                        state.not_captured += 1
                    for release in verdict.releases:
                        if release.at <= now:
                            state.write(out, release.packet)
                        else:
                            order += 1
                            state.queued += 1
                            heapq.heappush(heap, (release.at, order, d, release.packet))
            if heap:
                now = monotonic()
                while heap and heap[0][0] <= now:
                    _, _, d, packet = heapq.heappop(heap)
                    dirs[d].queued -= 1
                    dirs[d].write(out_fds[d], packet)
    finally:
        if capture is not None:
            capture.close()


def _open_capture(path: str | None, limit: int | None) -> Any:
    if not path:
        return None
    from lab.link.pcapng import CaptureFile

    return CaptureFile(path, limit, interfaces=("client->server", "server->client"))


def _counters(dirs: list[_Direction], *, final: bool = False) -> dict[str, dict[str, int]]:
    return {name: dirs[i].counters(final=final) for i, name in enumerate(DIRECTIONS)}


def _handle_control(
    control: socket.socket, dirs: list[_Direction], capture_on: bool
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
            new = _config_from_wire(message.get("config"))
        except LabError as exc:
            return {"error": str(exc)}, False
        _apply_config(dirs, new, capture_on)
        return {"ok": True}, False
    if op == "reseed":
        for direction in dirs:
            direction.model.reseed(direction.seed)
        return {"ok": True}, False
    return {"error": f"unknown op {op!r}"}, False


def _finish(control: socket.socket, dirs: list[_Direction], capture: Any, answer: bool) -> None:
    if capture is not None:
        capture.close()
    if answer:
        with contextlib.suppress(OSError):
            control.sendall(json.dumps(_counters(dirs, final=True)).encode())


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
        config: LinkConfig,
        capture: Path | None = None,
        capture_limit: int | None = None,
    ) -> Forwarder:
        """Spawn the forwarder on the two TUN fds (client, server) applying `config` (parsed: the
        child gets its numbers); returns when it is ready."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        spec = {
            "name": name,
            "fds": [fds[0], fds[1], theirs.fileno()],
            "link": config.to_wire(),
            "capture": str(capture) if capture else None,
            "capture_limit": capture_limit,
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
                raise LabError(f"the link forwarder did not start: {ready.get('error', ready)}")
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
            raise LabError(f"the link forwarder (pid {self.pid}) {self.exit_description()}; "
                           "the link no longer carries packets (its error, if any, is above)")
        return json.loads(data)

    def exit_description(self) -> str:
        """'exited with status 1' / 'was killed by SIGKILL' / 'is still running' (for messages)."""
        try:
            code = self.process.wait(timeout=EXIT_WAIT_S)  # EOF comes just before the exit status
        except subprocess.TimeoutExpired:
            return "stopped answering (it is still running)"
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with status {code}"

    @property
    def alive(self) -> bool:
        """True while the forwarder process runs."""
        return self.process.poll() is None

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

    def set(self, config: LinkConfig) -> None:
        """Apply `config` (already parsed and validated by the owner) to the running link."""
        reply = self.request({"op": "set", "config": config.to_wire()})
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
    for ignored in (signal.SIGINT, signal.SIGHUP):  # the owner decides when we stop
        signal.signal(ignored, signal.SIG_IGN)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    from lab.timing import fine_timers

    try:
        with fine_timers():  # release delayed packets on time, not up to 50 µs late
            serve(json.loads(args.spec))
    except Exception:  # a bug: say whose, loudly (the owner notices the exit and says so too)
        print(f"lab link {args.name}: the forwarder crashed:\n{traceback.format_exc()}", file=sys.stderr,
              end="", flush=True)
        return EXIT_CRASHED
    return 0


if __name__ == "__main__":
    sys.exit(main())
