"""`udp`: one probe per UDP datagram (RFC 768): no retransmission, no ordering, nothing held back.

One connected socket per logical stream; one `selectors` loop in one thread both paces the sends
and drains the replies, so no GIL hand-off between a sender and a receiver thread distorts the
timestamps. The schedule and the record are `lab.schedule.ProbeSchedule`'s. A datagram protocol
that differs only in its socket (UDP-Lite, ...) subclasses `UDP` and overrides `open_socket`.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

from lab.errors import CrcMismatchError, RemoteWireError
from lab.protocols import Protocol
from lab.protocols.common import MAX_BURST, big_buffers, family, received_datagrams, selector, unreachable
from lab.records import RunRecord, TrafficPlan
from lab.schedule import ProbeSchedule
from lab.targets import lab_address
from lab.timing import fine_timers
from lab.wire import EOF, HEADER_SIZE, Probe, StreamDecoder, frame


class UDP(Protocol):
    name = "udp"
    transport = "udp"
    description = "one probe per UDP datagram (no retransmission, no ordering)"
    style = "bold red"

    def open_socket(self, host: str) -> socket.socket:
        """A datagram socket for one logical stream (subclasses change the socket type or options)."""
        return socket.socket(family(host), socket.SOCK_DGRAM)

    def run_client(self, address: tuple[str, int], plan: TrafficPlan, *,
                   progress: Callable[..., None] | None = None, deadline_s: float | None = None,
                   round_trip_s: float = 0.0) -> RunRecord:
        """Probes as datagrams, one connected socket per logical stream (no handshake: `round_trip_s`
        is not needed)."""
        host, port = lab_address(address)
        socks: list[socket.socket] = []
        sel: selectors.BaseSelector | None = None
        try:
            for _ in range(plan.streams):
                sock = self.open_socket(host)
                socks.append(sock)
                big_buffers(sock)
                try:
                    # connect() filters replies to the server's address and surfaces ICMP errors.
                    sock.connect((host, port))
                except OSError as exc:
                    raise self.unreachable((host, port), exc) from exc
            sel = selector(socks)
            for sock in socks:
                sel.register(sock, selectors.EVENT_READ)
            run = ProbeSchedule(self.name, plan, deadline_s=deadline_s, progress=progress)
            with fine_timers():
                try:
                    self._loop(run, socks, sel, (host, port))
                except KeyboardInterrupt:
                    raise run.interrupted(time.monotonic_ns()) from None
            return run.record(time.monotonic_ns())
        finally:
            if sel is not None:
                sel.close()
            for sock in socks:
                sock.close()

    def run_bulk(self, address: tuple[str, int], plan: Any, *, progress: Callable[..., None] | None = None,
                 round_trip_s: float = 0.0) -> Any:
        """Datagrams paced at `plan.rate_bps` (required) to the sink (lab.bulk.datagrams)."""
        from lab.bulk.datagrams import run_datagram_bulk

        return run_datagram_bulk(self, address, plan, progress=progress, round_trip_s=round_trip_s)

    def unreachable(self, address: tuple[str, int], exc: OSError) -> Exception:
        return unreachable(address, self.label, exc, connected=False)

    def _loop(self, run: ProbeSchedule, socks: list[socket.socket], sel: selectors.BaseSelector,
              address: tuple[str, int]) -> None:
        max_payload = run.plan.size - HEADER_SIZE
        while True:
            for seq, stream, payload, crc, intended, sent_ns in run.due_probes(MAX_BURST):
                try:
                    socks[stream].send(frame(seq, stream, intended, payload, crc))
                except ConnectionRefusedError as exc:  # an earlier datagram drew ICMP port unreachable
                    self._refused(run, address, exc)
                    continue  # the probe was not sent; try it again
                except OSError as exc:
                    raise self.unreachable(address, exc) from exc
                run.sent(seq, stream, intended, sent_ns)
            now = time.monotonic_ns()
            if run.done(now):
                return
            wait_s = 0.0 if run.burst >= MAX_BURST else run.wait_s(now)
            for key, _ in sel.select(wait_s):
                self._drain(run, key.fileobj, max_payload, address)  # type: ignore[arg-type]

    def _drain(self, run: ProbeSchedule, sock: socket.socket, max_payload: int,
               address: tuple[str, int]) -> None:
        for data, recv_ns in received_datagrams(sock, lambda exc: self._refused(run, address, exc)):
            if run.arrived_datagram(data, recv_ns):
                continue
            merged = split_merged_reply(data, max_payload)
            if merged is None:
                run.unattributed += 1  # too damaged to know which probe it was
                continue
            # Several whole probes in one datagram: the echo server does not keep datagram
            # boundaries (socat's UDP-LISTEN...PIPE passes them through a pipe). Each probe did
            # come back, so it counts; the note tells the user the server is not RFC 862.
            run.notes.merged_replies += 1
            for part, intact in merged:
                run.arrived(part, recv_ns, intact=intact)

    def _refused(self, run: ProbeSchedule, address: tuple[str, int], exc: OSError) -> None:
        if not run.arrivals:
            raise self.unreachable(address, exc) from exc
        # A server that answered before and is gone now: keep the record, note it.
        run.notes.icmp_refused += 1


def split_merged_reply(data: bytes, max_payload: int) -> list[tuple[Probe, bool]] | None:
    """(probe, intact) for each of the 2+ whole probes back to back in `data`; None otherwise."""
    if not data:
        return None
    decoder = StreamDecoder(max_payload=max_payload, max_buffer=len(data))
    out: list[tuple[Probe, bool]] = []
    try:
        decoder.receive_data(data)
        decoder.receive_data(b"")
        while True:
            try:
                item = decoder.next_message()
            except CrcMismatchError as exc:
                if not isinstance(exc.probe, Probe):
                    return None
                out.append((exc.probe, False))
                continue
            if item is EOF:
                break
            assert isinstance(item, Probe)
            out.append((item, True))
    except RemoteWireError:
        return None
    return out if len(out) >= 2 else None
