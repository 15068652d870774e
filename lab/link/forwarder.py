"""The link's packet forwarder: its own process, moving IP packets between the two TUN devices.

A helper process (`lab.child`): `python -m lab.link.forwarder --name NAME`, started by
`Forwarder.start` with the two TUN fds inherited; its setup message is the spec, which carries the
link's parsed configuration (`LinkConfig.to_wire`: numbers, no netem strings;
docs/architecture.md#link-configuration), so nothing is parsed here. Each direction reads its TUN
device (a blocking read while nothing is held; select with the next release time while the link
holds packets) and writes the other, in a process of its own forked from this one (`_ProcessHost`:
two directions sharing one interpreter fight over its GIL, a futex handoff for half the batches
of a TCP transfer, measured at ~30 % of the throughput) or, with a capture, both in threads of this
process (`_ThreadHost`: they write one pcapng file). The main thread answers the control channel and
asks the directions. Per direction one `DirectionModel` decides (forward: client->server with
`seed`, reverse: server->client with `seed + 1`, as `LinkConfig` does).

The kernel's offloads (docs/architecture.md#the-forwarder, lab.link.gso): where the TUN devices
have virtio_net_hdr, a direction whose impairment decides nothing per packet takes the kernel's
GSO batches (up to 64 KB of TCP) whole: no impairment (the fast path: read, write, count) or a
plain delay (one release time for the batch; as netem counts an skb, the batch is one packet
against `limit` and its bytes against `limit_bytes`, and one that does not fit is dropped whole, as
netem and bfifo drop an skb). Every other impairment (loss, duplicate, corrupt, reorder, jitter,
rate) and a capture need a verdict per packet: the direction switches the kernel's offloads off
(TUNSETOFFLOAD 0), so the sending kernel segments and checksums in C, and the few batches already
on their way are cut in software (lab.link.gso.segment).

Counters per direction count packets as they are on the wire (a batch of N segments is N packets,
its bytes include each segment's headers): the model's decisions (packets_in, dropped_*,
duplicated, delayed...) plus the forwarder's own: `forwarded`/`bytes_out` count packets actually
written to the other TUN device, `queued` those the link holds right now (in the final counters
`queued_at_close`: never delivered), `write_errors`, `ignored_non_ipv4` and, with a capture,
`not_captured` (packets after the capture's size limit). So packets_in + duplicated = forwarded +
dropped_loss + dropped_queue + queued + write_errors.

Requests on the channel (`lab.child.Request` -> `Reply`; Ready's info is the pid, a spec it cannot
use is answered with Failed):
  counters                     -> {"forward": {...}, "reverse": {...}}
  set (LinkConfig.to_wire())   -> None, or the LabError saying why not
  reseed                       -> None (random decisions restart from the seeds)
  stop                         -> final counters, then the process exits
End of file on the channel (the owner died) also stops the forwarder.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.child import (
    REQUEST_TIMEOUT_S,
    Channel,
    Child,
    Failed,
    Ready,
    Request,
    answer,
    python_argv,
    spawn,
    start_child,
)
from lab.errors import LabError
from lab.link import gso

if TYPE_CHECKING:
    from lab.link.models import DirectionModel, Impairment, LinkConfig

BATCH = 64  # packets read per readiness event while the link holds packets: amortises select calls
MAX_PACKET = 65535  # largest IPv4 datagram (RFC 791), and so the largest GSO batch
EXIT_CRASHED = 70  # sysexits.h EX_SOFTWARE
# Longest single wait in the loop: a release time far ahead (a slow rate) must never reach select as
# a timeout it cannot represent (1e-8bit gave OverflowError); waking once a second costs nothing.
MAX_WAIT_S = 1.0
STOP_WAIT_S = 2.0  # how long stop waits for a direction to finish the batch in hand
# A timed wait ends late, here (a 2-core VM) by ~30 µs + 0.5 % of the wait even with timer slack at
# 1 ns: 10 ms of delay became 10.2 ms. So a direction learns how late its waits end (an average,
# EARLY_GAIN per wait, each at most MAX_EARLY_S), stops sleeping that much before the next release and
# polls its device for the rest, as irtt's compensated and hybrid timers do: releases are on time at
# the cost of a short poll per release, and never early.
EARLY_GAIN = 0.1
MAX_EARLY_S = 300e-6
FORWARD, REVERSE = 0, 1
PR_SET_PDEATHSIG = 1  # linux/prctl.h
DIRECTIONS = ("forward", "reverse")
# the forwarder's own counters, beside the model's (forwarded/bytes_out are replaced by its writes)
EXTRA_KEYS = ("queued", "ignored_non_ipv4", "write_errors", "not_captured")
# How a direction treats what it reads (see the module docstring): FAST and BATCH take the kernel's
# GSO batches whole, PACKET asks the model about each packet on the wire.
FAST, BATCH_DELAY, PER_PACKET = "fast", "batch-delay", "per-packet"


def direction_mode(impairment: Impairment, capture_on: bool) -> str:
    """FAST (no impairment), BATCH_DELAY (a delay alone: the same for every segment of a batch) or
    PER_PACKET (anything that decides per packet, or a capture, which comments on each packet)."""
    if capture_on:
        return PER_PACKET
    if impairment.is_null:
        return FAST
    per_packet = (impairment.loss or impairment.gemodel is not None or impairment.jitter_s
                  or impairment.duplicate or impairment.corrupt or impairment.reorder
                  or impairment.rate_bps is not None)
    return PER_PACKET if per_packet else BATCH_DELAY


class HeldBatches:
    """The batches a delay-only direction holds whole: one heap entry per batch (release time,
    segments, bytes, bytes of each but the last), so holding and expiring cost one heap operation
    per batch, not per segment. Together with the model's own queue (per-packet entries) this is
    what the link holds; `move_into` hands the batches to the model as the per-segment entries its
    `decide` counts, when the direction starts deciding per packet."""

    __slots__ = ("heap", "packets", "bytes")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, int, int]] = []
        self.packets = 0  # segments, as the counters count them
        self.bytes = 0

    def expire(self, now: float) -> None:
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, packets, size, _ = heapq.heappop(heap)
            self.packets -= packets
            self.bytes -= size

    def add(self, at: float, packets: int, size: int, each: int) -> None:
        heapq.heappush(self.heap, (at, packets, size, each))
        self.packets += packets
        self.bytes += size

    def segments(self) -> list[tuple[float, int]]:
        """(release time, bytes) of every segment held, as the model's queue would list them."""
        out = []
        for at, packets, size, each in self.heap:
            out += [(at, each)] * (packets - 1) + [(at, size - (packets - 1) * each)]
        return out

    def move_into(self, model: DirectionModel) -> None:
        """Hand every segment to the model's own queue (emptying this one)."""
        if not self.heap:
            return
        model.absorb(self.segments())
        self.heap.clear()
        self.packets = self.bytes = 0


def admit_delayed(model: DirectionModel, batches: HeldBatches, count: int, size: int, each: int,
                  now: float) -> bool:
    """What netem does with one GSO batch (an skb of `count` segments, `size` wire bytes, `each` for
    all but the last) arriving at `now` under a delay-only impairment: the batch is one packet
    against `limit` and `size` bytes against `limit_bytes` (with the model's own queue, entries
    held from a per-packet spell, one packet each); it is held whole if it fits and dropped whole if
    not (netem's and bfifo's tail drop of an skb); an empty queue always takes it. Counters count
    its segments, as everywhere. True if held (in `batches`; the caller holds the frame).

    Why per batch and not per segment: a queue counted in segments caps a delayed link at `limit`
    segments per round trip (1000 for 20 ms is ~1.2 Gbit/s), where netem, which sees the same
    batches as skbs, carries several Gbit/s; the lab's `delay 10ms` should behave as netem's does.
    A bottleneck (`rate`) decides per packet, so bufferbloat experiments count packets on the wire.
    """
    batches.expire(now)
    c = model.counters
    c["packets_in"] += count
    c["bytes_in"] += size
    if not model.queue_has_room(size, now, also_held=len(batches.heap), also_bytes=batches.bytes):
        c["dropped_queue"] += count
        return False
    batches.add(now + model.impairment.delay_s, count, size, each)
    c["forwarded"] += count
    c["bytes_out"] += size
    c["delayed"] += count
    return True


class _Direction:
    """One direction: its model, mode, queue of frames to release, counts and the thread moving it.

    Frames are what the TUN devices read and write: with virtio_net_hdr (`hdr` = 10) the header
    first, else the bare packet (`hdr` = 0). Everything but the reading itself runs under `lock`,
    which the control thread takes to read counters or change the configuration.
    """

    def __init__(self, index: int, model: DirectionModel, seed: int, fds: tuple[int, int], hdr: int,
                 capture: Any, capture_lock: threading.Lock) -> None:
        self.index = index
        self.model = model
        self.seed = seed  # what `reseed` restarts the model from
        self.in_fd, self.out_fd = fds
        self.hdr = hdr
        self.capture = capture
        self.capture_lock = capture_lock
        self.lock = threading.Lock()
        self.mode = PER_PACKET
        self.offloaded = False  # what TUNSETOFFLOAD last set on in_fd
        self.batches = HeldBatches()  # in BATCH_DELAY mode: what the link holds, beside the model's queue
        # (at, order, frame's parts, packets, bytes): a frame is written whole with writev, so a
        # packet and its virtio_net_hdr are never copied into one buffer
        self.heap: list[tuple[float, int, tuple[bytes, ...], int, int]] = []
        self.order = 0  # tie-breaker: equal release times keep decision order
        self.fast_packets = 0  # entered through the fast path (the model never saw them)
        self.fast_bytes = 0
        self.out_packets = 0  # written to the other TUN device
        self.out_bytes = 0
        self.queued = 0  # packets (segments) in the release queue now
        self.ignored = 0
        self.write_errors = 0
        self.not_captured = 0

    # --- control (called with `lock` held) ---
    def configure(self, impairment: Impairment, seed: int) -> None:
        """Apply `impairment` from the next packet on; turn the kernel's offloads on or off to suit."""
        self.batches.move_into(self.model)  # whatever decides next sees every segment held
        self.model.update(impairment)
        self.seed = seed
        self.mode = direction_mode(impairment, self.capture is not None)
        wanted = bool(self.hdr) and self.mode != PER_PACKET
        if wanted != self.offloaded and gso.set_offloads(self.in_fd, wanted):
            self.offloaded = wanted
        # refused: batches still arrive in PER_PACKET mode and are cut in software; none arrive in
        # the others, which then simply see packets one by one

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

    # --- the direction's thread ---
    def run(self) -> None:
        """Move packets until the device goes away (the process ends with the control thread).

        The common cases (one plain packet, fast or per packet) are inlined here: this loop runs once
        per packet on the wire, and a method call or an attribute lookup is a visible share of it."""
        fd, out_fd, hdr, lock, heap = self.in_fd, self.out_fd, self.hdr, self.lock, self.heap
        size = MAX_PACKET + hdr
        read, writev, monotonic, wait = os.read, os.writev, time.monotonic, select.select
        decide, take, zero, push = self.model.decide, self.take, gso.ZERO_HDR, heapq.heappush
        blocking = None
        early = 0.0  # how long before a release time to stop sleeping (see EARLY_GAIN)
        try:
            while True:
                if not heap:  # nothing to release: sleep in read itself, the fewest syscalls per packet
                    if blocking is not True:
                        os.set_blocking(fd, True)
                        blocking = True
                    frames: list[bytes] = [read(fd, size)]
                else:
                    if blocking is not False:
                        os.set_blocking(fd, False)
                        blocking = False
                    frames = []
                    start = monotonic()
                    timeout = heap[0][0] - start - early
                    if timeout > 0:  # sleep until `early` before the next release...
                        timeout = min(MAX_WAIT_S, timeout)
                        ready = wait((fd,), (), (), timeout)[0]
                        if not ready:  # the kernel woke us this late: aim that much earlier next time
                            late = min(max(0.0, monotonic() - start - timeout), MAX_EARLY_S)
                            early += (late - early) * EARLY_GAIN
                    else:  # ...then poll (reading what arrives) until it is due
                        ready = wait((fd,), (), (), 0)[0]
                    if ready:
                        for _ in range(BATCH):
                            try:
                                frames.append(read(fd, size))
                            except BlockingIOError:
                                break
                with lock:
                    mode = self.mode  # configure changes it only under this lock
                    every_frame_taken = mode is BATCH_DELAY or self.capture is not None
                    for frame in frames:
                        if every_frame_taken or len(frame) <= hdr or hdr and (frame[0] or frame[1]) \
                                or frame[hdr] >> 4 != 4:
                            take(frame)  # delay batches, captures, GSO batches, partial checksums, noise
                        elif mode is FAST:
                            try:
                                os.write(out_fd, frame)
                            except OSError:
                                self.write_errors += 1
                            else:
                                self.out_packets += 1
                                self.out_bytes += len(frame) - hdr
                            self.fast_packets += 1
                            self.fast_bytes += len(frame) - hdr
                        else:  # PER_PACKET, one plain packet: a view, not a copy, behind its header
                            packet = memoryview(frame)[hdr:] if hdr else frame
                            now = monotonic()
                            for release in decide(packet, now).releases:
                                if release.packet is packet:  # untouched: the frame as read (its
                                    parts = (frame,)  # header says nothing: no GSO, no partial checksum)
                                else:
                                    parts = (zero, release.packet) if hdr else (release.packet,)
                                if release.at > now:
                                    self.order += 1
                                    self.queued += 1
                                    push(heap, (release.at, self.order, parts, 1, len(release.packet)))
                                    continue
                                try:
                                    writev(out_fd, parts)
                                except OSError:
                                    self.write_errors += 1
                                else:
                                    self.out_packets += 1
                                    self.out_bytes += len(release.packet)
                    if heap and heap[0][0] <= (now := monotonic()):
                        self.release_due(now)
        except OSError:  # the device went away (namespace deleted): this direction is over
            return

    def release_due(self, now: float) -> None:
        """Write what is due at `now` (called with `lock` held)."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, _, parts, packets, size = heapq.heappop(heap)
            self.queued -= packets
            self.write(parts, packets, size)

    def write(self, parts: tuple[bytes, ...], packets: int, size: int) -> None:
        """Write one frame (one packet or a batch; header and packet as `parts`) to the other TUN
        device, counting the outcome."""
        try:
            os.writev(self.out_fd, parts)
        except OSError:
            self.write_errors += packets
        else:
            self.out_packets += packets
            self.out_bytes += size

    def hold(self, at: float, parts: tuple[bytes, ...], packets: int, size: int) -> None:
        self.order += 1
        self.queued += packets
        heapq.heappush(self.heap, (at, self.order, parts, packets, size))

    def take(self, frame: bytes) -> None:
        """Handle one frame just read (called with `lock` held)."""
        hdr = self.hdr
        if len(frame) <= hdr or frame[hdr] >> 4 != 4:
            self.ignored += 1  # IPv6 noise; the lab's link is IPv4
            return
        mode = self.mode
        if mode is PER_PACKET:  # (run() handles the common case, a plain packet without capture)
            self.take_packets(frame, time.monotonic())
            return
        if hdr and frame[1]:
            packets, size, each = gso.wire_size(frame)
        else:
            packets = 1
            size = each = len(frame) - hdr
        if mode is FAST:
            self.fast_packets += packets
            self.fast_bytes += size
            self.write((frame,), packets, size)
            return
        now = time.monotonic()  # BATCH_DELAY: held whole, or dropped whole (admit_delayed counts it)
        if admit_delayed(self.model, self.batches, packets, size, each, now):
            self.hold(now + self.model.impairment.delay_s, (frame,), packets, size)

    def take_packets(self, frame: bytes, now: float) -> None:
        """Ask the model about each packet on the wire `frame` holds (a batch is cut first and a
        partial checksum completed: corrupt and the capture need it whole)."""
        hdr = self.hdr
        prefix = gso.ZERO_HDR if hdr else b""
        if not hdr:
            packets = [frame]
        elif frame[1] or frame[0] & gso.F_NEEDS_CSUM:
            packets = gso.segment(frame)
        else:
            packets = [frame[hdr:]]
        for packet in packets:
            verdict = self.model.decide(packet, now)
            if self.capture is not None:
                self.capture_packet(packet, verdict.notes)
            for release in verdict.releases:
                parts = (prefix, release.packet) if hdr else (release.packet,)
                if release.at <= now:
                    self.write(parts, 1, len(release.packet))
                else:
                    self.hold(release.at, parts, 1, len(release.packet))

    def capture_packet(self, packet: bytes | memoryview, notes: tuple[str, ...]) -> None:
        comment = "; ".join(notes) or "forwarded"
        with self.capture_lock:
            captured = self.capture.packet(self.index, time.time_ns(), bytes(packet), comment)
        if not captured:
            self.not_captured += 1


def _config_from_wire(data: Any) -> Any:
    """The owner's parsed LinkConfig, rebuilt from its wire form (numbers; no netem string parsed)."""
    from lab.link.models import LinkConfig

    return LinkConfig.from_wire(data)


def _frame_header_len(client_fd: int, server_fd: int) -> int:
    """10 (virtio_net_hdr) if both TUN devices carry it, 0 if neither (a kernel that refused it)."""
    with_hdr = (gso.has_vnet_hdr(client_fd), gso.has_vnet_hdr(server_fd))
    if with_hdr[0] != with_hdr[1]:
        raise LabError("the link's TUN devices disagree about IFF_VNET_HDR: recreate the link")
    return gso.VNET_HDR_LEN if with_hdr[0] else 0


def _directions(config: Any, fds: tuple[int, int], hdr: int, capture: Any) -> list[_Direction]:
    """One _Direction per way (forward: client fd -> server fd, reverse), seeded as `config` says."""
    from lab.link.models import DirectionModel

    capture_lock = threading.Lock()
    dirs = []
    for index, (impairment, seed) in enumerate(((config.forward, config.forward_seed),
                                                (config.reverse, config.reverse_seed))):
        ends = fds if index == FORWARD else (fds[1], fds[0])
        direction = _Direction(index, DirectionModel(impairment, seed), seed, ends, hdr, capture,
                               capture_lock)
        direction.configure(impairment, seed)
        dirs.append(direction)
    return dirs


def _run_direction(direction: _Direction, name: str) -> None:
    """Move a direction's packets; a bug in it ends the whole forwarder loudly (the owner notices:
    in a direction's own process, through the forwarder's SIGCHLD)."""
    try:
        direction.run()
    except Exception:
        print(f"lab link {name}: the forwarder crashed ({DIRECTIONS[direction.index]}):\n"
              f"{traceback.format_exc()}", file=sys.stderr, end="", flush=True)
        os._exit(EXIT_CRASHED)


def _direction_request(direction: _Direction, op: str, argument: Any) -> Any:
    """One request to a direction, wherever it runs: counters [final], configure (impairment, seed),
    reseed, stop (final counters; the direction's lock stays taken, so it moves nothing more)."""
    if op == "stop":
        direction.lock.acquire(timeout=STOP_WAIT_S)
        return direction.counters(final=True)
    with direction.lock:
        if op == "counters":
            return direction.counters(final=bool(argument))
        if op == "configure":
            direction.configure(*argument)
            return None
        if op == "reseed":
            direction.model.reseed(direction.seed)
            return None
    raise LabError(f"unknown forwarder direction request {op!r}")


class _ThreadHost:
    """A direction moved by a thread of the forwarder's own process (used with a capture: both
    directions write one pcapng file)."""

    def __init__(self, direction: _Direction, name: str) -> None:
        self.direction = direction
        threading.Thread(target=_run_direction, args=(direction, name),
                         name=f"forwarder-{DIRECTIONS[direction.index]}", daemon=True).start()

    def request(self, op: str, argument: Any = None) -> Any:
        return _direction_request(self.direction, op, argument)

    def halt(self) -> None:
        """Make sure the direction is not mid-write (the process is about to end)."""
        self.direction.lock.acquire(timeout=STOP_WAIT_S)


class _ProcessHost:
    """A direction moved by a process of its own, forked from the forwarder (no GIL shared with the
    other direction), answering `_direction_request`s on a socket pair. It dies with the forwarder
    (PR_SET_PDEATHSIG, and the end of its socket); the forwarder ends with it (`_end_with_children`)."""

    def __init__(self, direction: _Direction, name: str, close_in_child: list[int]) -> None:
        ours, theirs = socket.socketpair()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            try:
                ours.close()
                for fd in close_in_child:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                _serve_direction(direction, Channel(theirs), name, parent)
            finally:
                os._exit(EXIT_CRASHED)
        theirs.close()
        self.direction_name = DIRECTIONS[direction.index]
        self.pid = pid
        self.channel = Channel(ours)
        close_in_child.append(ours.fileno())  # the next direction's process must not hold it

    def request(self, op: str, argument: Any = None) -> Any:
        try:
            self.channel.send(Request(op, argument))
            reply = self.channel.receive(timeout=REQUEST_TIMEOUT_S)
        except (EOFError, OSError, TimeoutError) as exc:
            raise LabError(f"the forwarder's {self.direction_name} process did not answer {op!r} "
                           f"({type(exc).__name__})") from None
        if reply.error is not None:
            raise reply.error
        if op == "stop":
            self._reap()
        return reply.value

    def halt(self) -> None:
        """Stop the direction's process (it has nothing to say: the forwarder is ending; the caller has
        told `_end_with_children` so)."""
        self.channel.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _serve_direction(direction: _Direction, control: Channel, name: str, parent: int) -> None:
    """A direction's process: the direction moves packets in the main thread, a thread answers the
    forwarder; the process ends on stop, when the forwarder goes, or when the device goes and the
    forwarder has asked for the final counters."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the forwarder died before the line above
        os._exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def control_loop() -> None:
        while answer(control, lambda op, argument: _direction_request(direction, op, argument)):
            pass
        os._exit(0)  # stopped, or the forwarder is gone

    threading.Thread(target=control_loop, name="direction-control", daemon=True).start()
    _run_direction(direction, name)
    threading.Event().wait()  # the device is gone: wait for the forwarder to stop us


def _end_with_children(name: str, stopped: list[bool]) -> None:
    """A direction's process that ends before the forwarder stops it (a crash, a kill) ends the
    forwarder, saying so: the owner then reports a dead forwarder, instead of a link that silently
    carries nothing one way."""

    def on_child(signum: int, frame: object) -> None:
        if stopped:
            return
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not pid:  # a child stopped or continued (SIGSTOP, a debugger), not ended
            return
        how = f"was killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else \
            f"exited with status {os.WEXITSTATUS(status)}"
        print(f"lab link {name}: a direction's process (pid {pid}) {how}; the forwarder ends with it",
              file=sys.stderr, flush=True)
        os._exit(EXIT_CRASHED)

    signal.signal(signal.SIGCHLD, on_child)


def serve(spec: Mapping[str, Any], control: Channel) -> None:
    """The forwarder's main loop (runs until stop, control EOF or SIGTERM)."""
    client_fd, server_fd = spec["fds"]
    try:
        config = _config_from_wire(spec["link"])
        hdr = _frame_header_len(client_fd, server_fd)
        capture = _open_capture(spec.get("capture"), spec.get("capture_limit"))
    except (OSError, LabError) as exc:  # the owner checked first; still, say why instead of a traceback
        control.send(Failed(exc if isinstance(exc, LabError) else LabError(str(exc))))
        return
    dirs = _directions(config, (client_fd, server_fd), hdr, capture)
    name = spec.get("name", "?")
    hosts: list[_ThreadHost | _ProcessHost] = []
    stopped: list[bool] = []  # set before the directions are stopped on purpose
    try:
        if capture is None:
            _end_with_children(name, stopped)
            close_in_child = [control.fileno()]
            hosts = [_ProcessHost(direction, name, close_in_child) for direction in dirs]
        else:
            hosts = [_ThreadHost(direction, name) for direction in dirs]
        control.send(Ready(os.getpid()))
        handle = _control_handler(hosts, capture, stopped)
        while answer(control, handle):
            pass  # answer() returns when no request is buffered; the next receive blocks
    finally:
        if not stopped:  # (stop has stopped them already)
            stopped.append(True)
            for host in hosts:
                host.halt()
        if capture is not None:
            capture.close()


def _open_capture(path: str | None, limit: int | None) -> Any:
    if not path:
        return None
    from lab.link.pcapng import CaptureFile

    return CaptureFile(path, limit, interfaces=("client->server", "server->client"))


def _control_handler(hosts: list[_ThreadHost] | list[_ProcessHost], capture: Any,
                     stopped: list[bool]) -> Callable[[str, Any], Any]:
    """What answers the owner's requests (see the module's docstring)."""

    def handle(op: str, argument: Any) -> Any:
        if op == "counters":
            return {name: host.request("counters") for name, host in zip(DIRECTIONS, hosts, strict=True)}
        if op == "stop":
            stopped.append(True)
            final = {name: host.request("stop") for name, host in zip(DIRECTIONS, hosts, strict=True)}
            if capture is not None:
                capture.close()  # the directions are stopped, so nothing writes to it any more
            return final
        if op == "set":
            config = _config_from_wire(argument)
            for host, impairment, seed in zip(hosts, (config.forward, config.reverse),
                                              (config.forward_seed, config.reverse_seed), strict=True):
                host.request("configure", (impairment, seed))
            return None
        if op == "reseed":
            for host in hosts:
                host.request("reseed")
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
