"""The link's packet forwarder: its own process, moving IP packets between the two TUN devices.

A helper process (`lab.child`): `python -m lab.link.forwarder --name NAME`, started by
`Forwarder.start` with the two TUN fds inherited; its setup message is the spec, which carries the
link's parsed configuration (`LinkConfig.to_wire`: numbers, no netem strings;
docs/architecture.md#link-configuration), so nothing is parsed here. One select loop serves both
TUN fds and the control channel; packets the model delays wait in a heap ordered by release time.
Per direction one `DirectionModel` decides (forward: client->server with `seed`, reverse:
server->client with `seed + 1`, as `LinkConfig` does). A null impairment
takes a fast path: read, write, count.

Counters per direction: the model's decisions (packets_in, dropped_*, duplicated, delayed...) plus
the forwarder's own: `forwarded`/`bytes_out` count packets actually written to the other TUN
device, `queued` those the link holds right now (in the final counters `queued_at_close`: never
delivered), `write_errors`, `ignored_non_ipv4` and, with a capture, `not_captured` (packets after
the capture's size limit). So packets_in + duplicated = forwarded + dropped_loss + dropped_queue +
queued + write_errors.

Requests on the channel (`lab.child.Request` -> `Reply`; Ready's info is the pid, a spec it cannot
use is answered with Failed):
  counters                     -> {"forward": {...}, "reverse": {...}}
  set (LinkConfig.to_wire())   -> None, or the LabError saying why not
  reseed                       -> None (random decisions restart from the seeds)
  stop                         -> final counters, then the process exits
End of file on the channel (the owner died) also stops the forwarder.
"""

from __future__ import annotations

import heapq
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.child import Channel, Child, Failed, Ready, answer, python_argv, spawn, start_child
from lab.errors import LabError

if TYPE_CHECKING:
    from lab.link.models import LinkConfig

BATCH = 64  # packets read per readiness event per fd: amortises select calls under load
MAX_PACKET = 65535  # largest IPv4 datagram (RFC 791)
EXIT_CRASHED = 70  # sysexits.h EX_SOFTWARE
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


def serve(spec: Mapping[str, Any], control: Channel) -> None:
    """The forwarder's main loop (runs until stop, control EOF or SIGTERM)."""
    client_fd, server_fd = spec["fds"]
    control_fd = control.fileno()
    try:
        config = _config_from_wire(spec["link"])
        capture = _open_capture(spec.get("capture"), spec.get("capture_limit"))
    except (OSError, LabError) as exc:  # the owner checked first; still, say why instead of a traceback
        control.send(Failed(exc if isinstance(exc, LabError) else LabError(str(exc))))
        return
    dirs = _directions(config, capture is not None)  # with a capture every packet gets a comment

    out_fds = (server_fd, client_fd)
    heap: list[tuple[float, int, int, bytes]] = []
    order = 0  # tie-breaker: equal release times keep decision order
    # select(), not epoll: epoll_wait's timeout is whole milliseconds (rounded up), which released
    # every delayed packet up to 1 ms late; select's is microseconds. Three fds: no cost to speak of.
    watched = [client_fd, server_fd, control_fd]
    handle = _control_handler(dirs, capture)
    control.send(Ready(os.getpid()))

    read, monotonic, wait = os.read, time.monotonic, select.select
    try:
        while True:
            timeout = None if not heap else min(MAX_WAIT_S, max(0.0, heap[0][0] - monotonic()))
            for fd in wait(watched, (), (), timeout)[0]:
                if fd == control_fd:
                    if not answer(control, handle):
                        return  # stopped (final counters sent) or the owner is gone
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


def _control_handler(dirs: list[_Direction], capture: Any) -> Callable[[str, Any], Any]:
    """What answers the owner's requests (see the module's docstring)."""
    capture_on = capture is not None

    def handle(op: str, argument: Any) -> Any:
        if op == "counters":
            return _counters(dirs)
        if op == "stop":
            if capture is not None:
                capture.close()  # before the final counters: closing may count what it could not write
            return _counters(dirs, final=True)
        if op == "set":
            _apply_config(dirs, _config_from_wire(argument), capture_on)
            return None
        if op == "reseed":
            for direction in dirs:
                direction.model.reseed(direction.seed)
            return None
        raise LabError(f"unknown forwarder request {op!r}")

    return handle


# --- the owner's side -------------------------------------------------------------------------
class Forwarder:
    """Handle on a running forwarder process: counters, set, stop. Thread-safe."""

    def __init__(self, child: Child) -> None:
        self._child = child
        self.final_counters: dict[str, dict[str, int]] | None = None

    @property
    def pid(self) -> int:
        """The forwarder's process id."""
        return self._child.pid

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
        spec = {
            "name": name,
            "fds": [fds[0], fds[1]],
            "link": config.to_wire(),
            "capture": str(capture) if capture else None,
            "capture_limit": capture_limit,
        }
        # new_session: Ctrl-C goes to the owner, who stops us and reads the final counters
        child = spawn("the link forwarder", python_argv("lab.link.forwarder", "--name", name), setup=spec,
                      pass_fds=fds, new_session=True)
        return cls(child)

    def exit_description(self) -> str:
        """'exited with status 1' / 'was killed by SIGKILL' / 'is still running' (for messages)."""
        return self._child.exit_description()

    @property
    def alive(self) -> bool:
        """True while the forwarder process runs."""
        return self._child.alive

    def counters(self) -> dict[str, dict[str, int]]:
        """Per-direction counters right now (or the final ones after stop)."""
        if self.final_counters is not None:
            return self.final_counters
        return self._child.request("counters")

    def set(self, config: LinkConfig) -> None:
        """Apply `config` (already parsed and validated by the owner) to the running link."""
        self._child.request("set", config.to_wire())

    def reseed(self) -> None:
        """Restart both directions' random decisions from the link's seeds."""
        self._child.request("reseed")

    def stop(self) -> dict[str, dict[str, int]] | None:
        """Stop the forwarder, returning its final counters (None if it could not answer)."""
        self._child.close()
        if self.final_counters is None:
            self.final_counters = self._child.final
        return self.final_counters


def main(argv: list[str] | None = None) -> int:
    """Entry point of the forwarder process."""
    import argparse

    parser = argparse.ArgumentParser(prog="lab.link.forwarder")
    parser.add_argument("--name", required=True, help="link name (lets `lab cleanup` recognise us)")
    args = parser.parse_args(argv)
    control, spec = start_child("lab.link.forwarder.Forwarder.start")
    for ignored in (signal.SIGINT, signal.SIGHUP):  # the owner decides when we stop
        signal.signal(ignored, signal.SIG_IGN)

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    from lab.timing import fine_timers

    try:
        with fine_timers():  # release delayed packets on time, not up to 50 µs late
            serve(spec, control)
    except Exception:  # a bug: say whose, loudly (the owner notices the exit and says so too)
        print(f"lab link {args.name}: the forwarder crashed:\n{traceback.format_exc()}", file=sys.stderr,
              end="", flush=True)
        return EXIT_CRASHED
    return 0


if __name__ == "__main__":
    sys.exit(main())
