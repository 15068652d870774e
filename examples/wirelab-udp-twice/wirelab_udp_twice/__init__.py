"""`udp-twice`: every probe sent twice over UDP — redundancy instead of retransmission.

A complete wirelab protocol outside the lab's source tree (docs/architecture.md#how-to-add-a-protocol):
a `lab.protocols.Protocol` subclass with a name, its kernel transport and the lab echo server it
talks to, and a measuring client built on the public schedule `lab.schedule.ProbeSchedule`, which
keeps the send times, the arrivals and the run's bounds. Over a link that drops a share p of packets
each way, a probe needs both copies lost in a direction to vanish there: about p^2 instead of p.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable

from lab.errors import EndpointError
from lab.protocols import Protocol
from lab.records import RunRecord, TrafficPlan
from lab.schedule import ProbeSchedule
from lab.targets import lab_address, where
from lab.wire import frame

COPIES = 2


class UdpTwice(Protocol):
    name = "udp-twice"
    transport = "udp"  # the lab's link and relay carry it; the lab's UDP echo server answers it
    description = "every probe sent twice over UDP (redundancy: loss p becomes about p^2, twice the traffic)"
    style = "bold magenta"

    def run_client(self, address: tuple[str, int], plan: TrafficPlan, *,
                   progress: Callable[..., None] | None = None, deadline_s: float | None = None,
                   round_trip_s: float = 0.0) -> RunRecord:
        host, port = lab_address(address)  # refuses anything but loopback and the lab's link
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock, selectors.DefaultSelector() as sel:
            try:
                sock.connect((host, port))
            except OSError as exc:
                raise EndpointError(f"no echo server answering at {where((host, port))} ({exc})") from exc
            sel.register(sock, selectors.EVENT_READ)
            run = ProbeSchedule(self.name, plan, deadline_s=deadline_s, progress=progress)
            try:
                while not run.done(now := time.monotonic_ns()):
                    due = run.due_ns(now)
                    if due is not None and due <= now:
                        self._send(run, sock)
                        continue
                    if sel.select(run.wait_s(now)):
                        self._receive(run, sock)
            except KeyboardInterrupt:
                raise run.interrupted(time.monotonic_ns()) from None
            return run.record(time.monotonic_ns())

    def _send(self, run: ProbeSchedule, sock: socket.socket) -> None:
        seq, stream, payload, crc = run.next_probe()
        intended, sent_ns = run.stamp(seq)
        data = frame(seq, stream, intended, payload, crc)
        for _ in range(COPIES):
            try:
                sock.send(data)
            except ConnectionRefusedError:  # an ICMP port unreachable from an earlier send
                run.notes.icmp_refused += 1
        run.sent(seq, stream, intended, sent_ns)

    def _receive(self, run: ProbeSchedule, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536, socket.MSG_DONTWAIT)
        except (BlockingIOError, ConnectionRefusedError):
            return
        # The schedule decodes and books the reply (damaged ones too); anything else is counted.
        if not run.arrived_datagram(data, time.monotonic_ns()):
            run.unattributed += 1
