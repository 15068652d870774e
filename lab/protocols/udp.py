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

from lab import timestamps
from lab.errors import CrcMismatchError, RemoteWireError
from lab.protocols import Protocol
from lab.protocols.common import (
    MAX_BURST,
    RECV_BUFSIZE,
    ReceiveTimeout,
    big_buffers,
    family,
    received_datagrams,
    received_stamped_datagrams,
    selector,
    unreachable,
)
from lab.records import RunRecord, TrafficPlan
from lab.schedule import NS_PER_S, ProbeSchedule
from lab.targets import lab_address
from lab.timing import fine_timers
from lab.wire import EOF, FLAG_LOSS_QUERY, HEADER_SIZE, SEEN_BITS, VERSION_2, Probe, StreamDecoder, frame

# The closing loss query (docs/architecture.md#timestamps-and-one-way-delay): at most this many
# questions, each asked at most LOSS_QUERY_TRIES times, waiting up to LOSS_QUERY_WAIT_S (or the
# probes' timeout, if shorter) for each answer.
MAX_LOSS_QUERIES = 32
LOSS_QUERY_TRIES = 3
LOSS_QUERY_WAIT_S = 1.0


class UDP(Protocol):
    name = "udp"
    transport = "udp"
    description = "one probe per UDP datagram (no retransmission, no ordering)"
    style = "bold red"
    bulk_driver = "lab.bulk.datagrams:run_datagram_bulk"  # its open_socket, paced at the plan's rate

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
            run = ProbeSchedule(self.name, plan, deadline_s=deadline_s, progress=progress,
                                wire_version=VERSION_2)
            refused = next(filter(None, (timestamps.enable(sock) for sock in socks)), None)
            if refused is None:
                run.timestamps = timestamps.KERNEL
                stamping = _Stamping(run, socks)
            else:
                run.notes.timestamps_fallback = refused
                stamping = None
            with fine_timers():
                try:
                    self._loop(run, socks, sel, (host, port), stamping)
                    ended = time.monotonic_ns()
                    if stamping is not None:
                        stamping.collect(range(len(socks)))
                    if run.version == VERSION_2 and not run.notes.deadline_hit:
                        self._ask_about_losses(run, socks, sel, (host, port), stamping)
                except KeyboardInterrupt:
                    raise run.interrupted(time.monotonic_ns()) from None
            return run.record(ended)
        finally:
            if sel is not None:
                sel.close()
            for sock in socks:
                sock.close()

    def unreachable(self, address: tuple[str, int], exc: OSError) -> Exception:
        return unreachable(address, self.label, exc, connected=False)

    def _loop(self, run: ProbeSchedule, socks: list[socket.socket], sel: selectors.BaseSelector,
              address: tuple[str, int], stamping: _Stamping | None) -> None:
        max_payload = run.plan.size - HEADER_SIZE
        version = run.version
        # Ping-pong over one socket waits in the receive call (`_await_reply`); the receive calls
        # that drain pass MSG_DONTWAIT, so they never block on the now blocking socket.
        blocking = run.plan.rate is None and len(socks) == 1
        receive_timeout = ReceiveTimeout(socks[0])
        if blocking:
            socks[0].setblocking(True)
        burst = 1 if blocking else MAX_BURST
        while True:
            held = None
            for seq, stream, payload, crc, intended, sent_ns in run.due_probes(burst):
                data = frame(seq, stream, intended, payload, crc, version)
                if blocking:  # ping-pong means to send when it does: its clock starts at the send
                    intended = sent_ns = time.monotonic_ns()
                try:
                    socks[stream].send(data)
                except ConnectionRefusedError as exc:  # an earlier datagram drew ICMP port unreachable
                    self._refused(run, address, exc)
                    continue  # the probe was not sent; try it again
                except OSError as exc:
                    raise self.unreachable(address, exc) from exc
                if blocking:
                    # Ping-pong: straight to sleep in the receive call; the send is booked when the
                    # client wakes (the reply's wait is known already), so on a busy machine no
                    # bookkeeping of ours competes with the echo server for a CPU meanwhile.
                    held = (seq, stream, intended, sent_ns)
                    continue
                run.sent(seq, stream, intended, sent_ns)
                if stamping is not None:
                    stamping.sent(seq, stream)
            if stamping is not None and stamping.waiting and not blocking:
                # The kernel stamps a send as it leaves, before send() returns on loopback and
                # TUN: collect them now, or their error-queue entries would wake select() again.
                # (A blocking receive sleeps through them: `_await_reply` collects after the reply.)
                stamping.collect(stamping.waiting)
            if held is not None:
                until = min(held[3] + run.timeout_ns, run.deadline_ns)
                self._await_reply(run, socks[0], (until - held[3]) / NS_PER_S, max_payload, address,
                                  stamping, receive_timeout, held)
                continue
            now = time.monotonic_ns()
            if run.done(now):
                return
            wait_s = 0.0 if run.burst >= MAX_BURST else run.wait_s(now)
            if blocking:
                self._await_reply(run, socks[0], wait_s, max_payload, address, stamping, receive_timeout)
                continue
            for key, _ in sel.select(wait_s):
                self._drain(run, key.fileobj, max_payload, address, stamping)  # type: ignore[arg-type]

    def _await_reply(self, run: ProbeSchedule, sock: socket.socket, wait_s: float, max_payload: int,
                     address: tuple[str, int], stamping: _Stamping | None,
                     receive_timeout: ReceiveTimeout, held: tuple[int, int, int, int] | None = None) -> None:
        """Ping-pong on one socket: sleep in the receive call itself (SO_RCVTIMEO bounds it), so a
        reply wakes the client straight into `recvmsg`, not into select() and then `recvmsg`.
        `held`: the probe just sent, (seq, stream, intended_ns, sent_ns), booked on waking."""
        flags = receive_timeout.flags(wait_s)
        try:
            try:
                if stamping is None:
                    data, ancillary = sock.recv(RECV_BUFSIZE, flags), None
                else:
                    data, ancillary, _, _ = sock.recvmsg(RECV_BUFSIZE, timestamps.ANCILLARY_BYTES, flags)
                recv_ns = time.monotonic_ns()
            finally:
                if held is not None:  # sent before anything came back: booked first
                    run.sent(*held)
                    if stamping is not None:
                        stamping.sent(held[0], held[1])
        except (BlockingIOError, InterruptedError):  # the wait is over (SO_RCVTIMEO): back to the schedule
            return
        except ConnectionRefusedError as exc:
            self._refused(run, address, exc)
            return
        kernel_ns = timestamps.receive_stamp(ancillary) if ancillary else None
        self._book(run, data, recv_ns, kernel_ns, max_payload)
        if stamping is not None and stamping.logs[0]:
            stamping.collect((0,))

    def _drain(self, run: ProbeSchedule, sock: socket.socket, max_payload: int,
               address: tuple[str, int], stamping: _Stamping | None = None) -> None:
        if stamping is None:
            for data, recv_ns in received_datagrams(sock, lambda exc: self._refused(run, address, exc)):
                self._book(run, data, recv_ns, None, max_payload)
                if run.waiting is None and run.plan.rate is None:
                    break
            return
        for data, recv_ns, kernel_ns in received_stamped_datagrams(
                sock, lambda exc: self._refused(run, address, exc)):
            self._book(run, data, recv_ns, kernel_ns, max_payload)
            if run.waiting is None and run.plan.rate is None:
                break  # ping-pong: the reply awaited is in; another would wake the loop again
        stream = stamping.stream_of[sock]
        if stamping.logs[stream]:
            stamping.collect((stream,))  # late transmit stamps wake the socket too

    def _book(self, run: ProbeSchedule, data: bytes, recv_ns: int, kernel_ns: int | None,
              max_payload: int) -> None:
        if run.arrived_datagram(data, recv_ns, kernel_ns):
            return
        merged = split_merged_reply(data, max_payload)
        if merged is None:
            run.unattributed += 1  # too damaged to know which probe it was
            return
        # Several whole probes in one datagram: the echo server does not keep datagram
        # boundaries (socat's UDP-LISTEN...PIPE passes them through a pipe). Each probe did
        # come back, so it counts; the note tells the user the server is not RFC 862.
        run.notes.merged_replies += 1
        for part, intact in merged:
            run.arrived(part, recv_ns, intact=intact, kernel_ns=kernel_ns)

    def _refused(self, run: ProbeSchedule, address: tuple[str, int], exc: OSError) -> None:
        if not run.arrivals:
            raise self.unreachable(address, exc) from exc
        # A server that answered before and is gone now: keep the record, note it.
        run.notes.icmp_refused += 1

    def _ask_about_losses(self, run: ProbeSchedule, socks: list[socket.socket], sel: selectors.BaseSelector,
                          address: tuple[str, int], stamping: _Stamping | None) -> None:
        """The closing loss query: ask the server which of the unanswered probes it received, for
        those no reply's report covered (the last ones of a run); bounded and retried."""
        from lab.metrics import loss_directions

        max_payload = run.plan.size - HEADER_SIZE
        wait_ns = round(min(run.plan.timeout, LOSS_QUERY_WAIT_S) * NS_PER_S)
        server = run.observations.setdefault("server", {})
        for stream, seq in _loss_queries(run, loss_directions):
            for _ in range(LOSS_QUERY_TRIES):
                asked = len(run.loss_reports)
                server["loss_queries"] = server.get("loss_queries", 0) + 1
                try:
                    socks[stream].send(frame(seq, stream, 0, b"", 0, VERSION_2, FLAG_LOSS_QUERY))
                except OSError:
                    return  # the server is gone: what the replies said stands
                until = min(time.monotonic_ns() + wait_ns, run.deadline_ns)
                while len(run.loss_reports) == asked and (now := time.monotonic_ns()) < until:
                    for key, _ in sel.select((until - now) / NS_PER_S):
                        self._drain(run, key.fileobj, max_payload, address, stamping)  # type: ignore[arg-type]
                if len(run.loss_reports) > asked:
                    break
                if time.monotonic_ns() >= run.deadline_ns:
                    return


def _loss_queries(run: ProbeSchedule, loss_directions: Callable[..., Any]) -> list[tuple[int, int]]:
    """(stream, seq) of the loss queries to ask: each covers the SEEN_BITS seqs below its seq, the
    highest unknown of its stream first; none when the server wrote no report at all."""
    lost = [s.seq for s in run.sends if s.seq not in run.answered]
    if not lost:
        return []
    verdict = loss_directions(run.plan.streams, run.arrivals, run.loss_reports, lost)
    if verdict is None:
        return []
    unknown = sorted(verdict[2], reverse=True)
    queries: list[tuple[int, int]] = []
    streams = run.plan.streams
    covered: dict[int, int] = {}  # stream -> lowest seq the queries so far cover
    for seq in unknown:
        stream = seq % streams
        if seq >= covered.get(stream, 1 << 64):
            continue
        queries.append((stream, seq + 1))
        covered[stream] = seq + 1 - SEEN_BITS
        if len(queries) >= MAX_LOSS_QUERIES:
            break
    return queries


class _Stamping:
    """The kernel's transmit stamps of a run's sockets, matched to their probes (lab.timestamps)."""

    def __init__(self, run: ProbeSchedule, socks: list[socket.socket]) -> None:
        self.run = run
        self.socks = socks
        self.stream_of = {sock: stream for stream, sock in enumerate(socks)}
        self.logs = [timestamps.TransmitLog() for _ in socks]
        self.counts = [0] * len(socks)  # sends so far per socket: the kernel's OPT_ID keys
        self.waiting: set[int] = set()  # streams with sends whose stamps are not collected yet

    def sent(self, seq: int, stream: int) -> None:
        self.logs[stream].sent(seq, self.counts[stream])
        self.counts[stream] += 1
        self.waiting.add(stream)

    def collect(self, streams: Any) -> None:
        """Book the stamps the kernel has for these streams' sends (as many reads as awaited)."""
        run = self.run
        for stream in list(streams):
            log = self.logs[stream]
            if log:
                for seq, stamp in log.stamped(timestamps.transmit_stamps(self.socks[stream], len(log))):
                    run.kernel_sent(seq, stamp)
            self.waiting.discard(stream)


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
