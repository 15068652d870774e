"""Measuring clients: ping-pong and paced open-loop probes over UDP or TCP, against any echo server.

A client only *records* (a `RunRecord`: every send and every arrival with monotonic timestamps);
`lab.metrics` turns records into figures. Each run is one `selectors` loop in one thread that both
paces the sends and drains the replies, so no GIL hand-off between a sender and a receiver thread
distorts the timestamps. Every run is bounded by an overall deadline, so it always ends.

Open loop keeps each probe's *intended* send time (start + i/rate) even when the sender falls
behind, so a stall shows up as latency instead of vanishing (coordinated omission).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import selectors
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lab.errors import CrcMismatchError, EndpointError, RemoteWireError, TargetRefusedError
from lab.records import RTT_KEYS, Arrival, Result, RunRecord, Send, TrafficPlan
from lab.timing import fine_timers
from lab.wire import (
    EOF,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    NEED_DATA,
    VERSION,
    Probe,
    StreamDecoder,
    decode_untrusted_datagram,
    make_payload,
)

Progress = Callable[[int, int], None]

NS_PER_S = 1_000_000_000
# Sends in one burst before the loop drains replies again (keeps the receive buffer from filling
# while a late sender catches up).
MAX_BURST = 32
# Datagrams drained per wake-up before the loop checks the send schedule again.
MAX_DRAIN = 256
UDP_RECV_BUFSIZE = 65536  # larger than any UDP payload (65507 over IPv4, 65527 over IPv6)
# Ask for a big receive buffer so an open-loop burst is not dropped by our own socket (the kernel
# caps it at net.core.rmem_max; that is fine).
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
# Bound of bytes queued in the client for a TCP connection that does not drain; beyond it the
# sender waits (and open loop falls behind schedule, which the intended times record).
TCP_OUTBUF_LIMIT = 4 * 1024 * 1024
OUTBUF_FULL_POLL_NS = 10_000_000  # re-check the deadline this often while the send buffer is full
TCP_DECODER_BUFFER = 1024 * 1024
TCP_RECV_CHUNK = 256 * 1024
CONNECT_TIMEOUT_MIN_S = 3.0
CONNECT_TIMEOUT_MAX_S = 10.0
# A paced sender sleeps until this long before a probe is due, then polls: waking from a sleep
# costs tens of µs in Python, which would otherwise be booked as latency of every probe.
SPIN_NS = 100_000
FD_SETSIZE = 1024  # sys/select.h: select(2) handles descriptors below this
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C'd program
PROGRESS_INTERVAL_NS = 100_000_000  # report progress at most 10 times a second

LAB_NETWORK = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544 benchmarking range, the lab's links
_LOCALHOST_NAMES = ("localhost", "localhost.localdomain")
_ALLOWED = "the lab only sends to loopback (127.0.0.0/8, ::1) or its own namespaces (198.18.0.0/15)"
_NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
ROUTES_PATH = "/proc/net/route"  # this network namespace's main routing table (IPv4)
_RTF_GATEWAY = 0x0002  # linux/route.h
_RTF_REJECT = 0x0200  # an unreachable/prohibit route: nothing is sent through it


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address | None] | None:
    """(what kind of address, the IPv4 address inside) for IPv6 forms that carry one; else None."""
    if ip.sixtofour is not None:
        return "a 6to4 address (routed to a 6to4 relay)", ip.sixtofour
    if ip.teredo is not None:
        return "a Teredo address (routed to a Teredo relay)", ip.teredo[1]
    if any(ip in prefix for prefix in _NAT64_PREFIXES):
        return "a NAT64 address (routed to a NAT64 gateway)", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    high = int(ip) >> 32
    if high == 0:  # ::a.b.c.d, deprecated by RFC 4291 (:: and ::1 are handled before)
        return "an IPv4-compatible address (deprecated, RFC 4291)", ipaddress.IPv4Address(int(ip))
    if high == 0xFFFF0000:  # ::ffff:0:a.b.c.d, SIIT (RFC 2765)
        return "an IPv4-translated address (SIIT)", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def check_lab_target(host: str) -> str:
    """Normalise `host` once; return the address to send to if the lab may, else raise TargetRefusedError.

    Allowed: loopback (127.0.0.0/8, ::1) and 198.18.0.0/15 (the lab's own namespaces). The result
    is the one canonical form every later check and the connect itself must use: "localhost" is
    127.0.0.1 (other names are refused, not looked up, so no DNS query leaves); an IPv4-mapped
    address (::ffff:198.18.0.2) is its IPv4 address, because that is where the kernel sends it.
    Refused as well: other IPv6 forms that merely embed an IPv4 address (IPv4-compatible, 6to4,
    NAT64, Teredo, SIIT) — they are IPv6 destinations reached through relays and gateways
    elsewhere — and scoped addresses (fe80::1%eth0), which name an interface, not the lab.
    """
    if not isinstance(host, str):
        raise TargetRefusedError(f"refusing target {host!r}: give an IP address as text; {_ALLOWED}")
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    lowered = name.lower().rstrip(".")
    if lowered in _LOCALHOST_NAMES or lowered.endswith(".localhost"):  # RFC 6761 §6.3
        return "127.0.0.1"
    if "%" in name:
        raise TargetRefusedError(f"refusing target {host!r}: scoped addresses (%interface) are not "
                                 f"lab addresses; {_ALLOWED}")
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        raise TargetRefusedError(
            f"refusing target {host!r}: give an IP address — {_ALLOWED}"
        ) from None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # the kernel sends ::ffff:a.b.c.d as IPv4 to a.b.c.d
        elif ip == ipaddress.IPv6Address("::1"):
            return "::1"
        elif (embedded := _embedded_ipv4(ip)) is not None:
            kind, inner = embedded
            raise TargetRefusedError(
                f"refusing target {host}: {kind} embedding {inner} is an IPv6 destination elsewhere, "
                f"not {inner}; give the IPv4 address itself — {_ALLOWED}"
            )
    if ip.is_loopback or (ip.version == 4 and ip in LAB_NETWORK):
        return str(ip)
    raise TargetRefusedError(
        f"refusing target {host}: {_ALLOWED}; use `lab link` to get a lab address"
    )


def ip_in_lab_network(ip: str) -> bool:
    """True for addresses of the lab's own links (198.18.0.0/15), IPv4-mapped forms included."""
    try:
        addr = ipaddress.ip_address(ip.strip().strip("[]"))
    except (ValueError, AttributeError):
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    addr = mapped if mapped is not None else addr
    return addr.version == 4 and addr in LAB_NETWORK


def _lab_route_missing(ip: str, routes_path: str | None = None) -> str | None:
    """Why traffic to a 198.18.0.0/15 target would leave this machine (None if it stays on a link).

    A lab address belongs inside a lab link's namespaces, reached on-link through its TUN device.
    From anywhere else the route to it is the default one or goes through a gateway, towards a
    real network that must not see lab traffic. Fails closed: an unreadable table is a refusal.
    Only the main table is read (what `ip route` shows); policy routing is not looked at.
    """
    if not ip_in_lab_network(ip):
        return None
    address = ipaddress.ip_address(ip.strip().strip("[]"))
    address = getattr(address, "ipv4_mapped", None) or address
    target = int(address)
    path = routes_path or ROUTES_PATH
    best: tuple[int, int, str, int, int] | None = None  # (prefix, -metric, iface, flags, gateway)
    try:
        with open(path, encoding="ascii") as table:
            next(table, None)  # header line
            for line in table:
                fields = line.split()
                if len(fields) < 8:
                    continue
                # /proc/net/route prints addresses as host-order (little-endian) hex.
                dest = int.from_bytes(bytes.fromhex(fields[1]), "little")
                gateway = int.from_bytes(bytes.fromhex(fields[2]), "little")
                flags, metric = int(fields[3], 16), int(fields[6])
                mask = int.from_bytes(bytes.fromhex(fields[7]), "little")
                if target & mask != dest:
                    continue
                candidate = (mask.bit_count(), -metric, fields[0], flags, gateway)
                if best is None or candidate[:2] > best[:2]:
                    best = candidate
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return (f"cannot read the routing table {path} ({exc}) to check that {address} stays on "
                "this machine")
    if best is None or best[3] & _RTF_REJECT:
        return None  # no route: the kernel refuses to send (or the address is local)
    prefix, _, iface, flags, gateway = best
    inside = ("lab addresses are used inside a lab link (`ip netns exec NAME-client lab send ...`)")
    if prefix == 0:
        return f"{address} is only reachable through the default route via {iface} here; {inside}"
    if flags & _RTF_GATEWAY:
        return (f"{address} is routed through gateway {ipaddress.IPv4Address(gateway)} via {iface} "
                f"here, off this machine; {inside}")
    return None


def resolve_lab_target(host: str, *, routes_path: str | None = None) -> str:
    """`check_lab_target`, then refuse a lab address this namespace could only reach off the machine.

    Returns the normalised address: the one to connect to. Everything happens before any socket
    exists, so a refused target never sees a packet (nor a DNS query).
    """
    ip = check_lab_target(host)
    if ip_in_lab_network(ip) and (why := _lab_route_missing(ip, routes_path)):
        raise TargetRefusedError(f"refusing target {ip}: {why}")
    return ip


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a client run; `.record` holds what it observed up to then.

    A `KeyboardInterrupt`, so callers that stop on Ctrl-C (the runner) still do; `lab send` uses
    the record to print what was measured, as ping does.
    """

    def __init__(self, record: RunRecord, result: Result | None = None) -> None:
        super().__init__()
        self.record = record
        self.result = result  # set by whoever measured the record (e.g. a link, with its counters)

    def __reduce__(self) -> tuple[Any, ...]:
        # It crosses a process boundary (a client run inside a namespace): keep the record.
        return (type(self), (self.record, self.result))


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


def _lab_address(address: tuple[str, int]) -> tuple[str, int]:
    """(normalised host, port) a client may send to: every sender checks, before any socket exists."""
    return resolve_lab_target(address[0]), int(address[1])


def _where(address: tuple[str, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _selector(socks: list[socket.socket]) -> selectors.BaseSelector:
    # select(2) takes a timeout in µs; epoll and poll round it up to whole milliseconds, which
    # would make a paced sender wake up to 1 ms late and book that as latency. We watch at most
    # a few dozen sockets, where select(2) costs nothing extra — but it cannot watch a descriptor
    # numbered FD_SETSIZE or above (a process with many files open), so fall back then.
    if max(s.fileno() for s in socks) < FD_SETSIZE:
        return selectors.SelectSelector()
    return selectors.DefaultSelector()


def _frame(seq: int, stream: int, send_ns: int, payload: bytes, crc: int) -> bytes:
    # Same bytes as lab.wire.encode(Probe(...)), but with the payload's CRC computed ahead of the
    # timestamp so that stamping and sending are back to back.
    return HEADER.pack(MAGIC, VERSION, 0, stream, seq, send_ns, len(payload), crc) + payload


@dataclass(slots=True)
class _Run:
    """State shared by the UDP and TCP loops: the schedule, the record, the bounds."""

    protocol: str
    plan: TrafficPlan
    deadline_ns: int
    progress: Progress | None
    start_ns: int = 0
    next_seq: int = 0
    waiting: int | None = None  # ping-pong: the seq in flight
    waiting_until: int = 0
    last_sent_ns: int = 0
    answered: set[int] = field(default_factory=set)
    sends: list[Send] = field(default_factory=list)
    arrivals: list[Arrival] = field(default_factory=list)
    unattributed: int = 0
    extras: dict[str, object] = field(default_factory=dict)
    _progress_ns: int = 0
    _arrivals_seen: int = 0

    @property
    def timeout_ns(self) -> int:
        return round(self.plan.timeout * NS_PER_S)

    def intended_ns(self, seq: int) -> int:
        assert self.plan.rate is not None
        return self.start_ns + round(seq * NS_PER_S / self.plan.rate)

    def due_ns(self, now: int) -> int | None:
        """When the next probe may go (None once all are sent)."""
        if self.next_seq >= self.plan.count:
            return None
        if self.plan.rate is not None:
            return self.intended_ns(self.next_seq)
        if self.waiting is not None:
            return self.waiting_until  # ping-pong: the one in flight times out
        return now

    def tail_end_ns(self) -> int:
        """When to stop listening once everything is sent (unless every probe is answered)."""
        # Both modes listen for one timeout after the last send, so stragglers of ping-pong
        # (late replies of earlier probes) are recorded too.
        return self.last_sent_ns + self.timeout_ns

    def done(self, now: int) -> bool:
        if now >= self.deadline_ns:
            self.extras["deadline_hit"] = True
            return True
        if self.next_seq < self.plan.count:
            return False
        if len(self.answered) >= len(self.sends):
            return True  # every probe answered: nothing left to wait for
        return now >= self.tail_end_ns()

    def wait_s(self, now: int) -> float:
        """How long the loop may sleep before it must act even if no reply arrives."""
        due = self.due_ns(now)
        if due is not None and self.plan.rate is not None:
            due -= SPIN_NS  # wake early and poll the last stretch (see SPIN_NS)
        target = min(due if due is not None else self.tail_end_ns(), self.deadline_ns)
        return max(0, target - now) / NS_PER_S

    def next_probe(self) -> tuple[int, int, bytes, int]:
        """(seq, stream, payload, crc) of the probe to send next."""
        seq = self.next_seq
        payload = make_payload(self.plan.size - HEADER_SIZE, seq)
        return seq, seq % self.plan.streams, payload, zlib.crc32(payload)

    def stamp(self, seq: int) -> tuple[int, int]:
        """(intended_ns, sent_ns) for a probe about to be sent right now."""
        now = time.monotonic_ns()
        # Ping-pong has no schedule: it means to send exactly when it does.
        return (self.intended_ns(seq) if self.plan.rate is not None else now), now

    def sent(self, seq: int, stream: int, intended_ns: int, sent_ns: int) -> None:
        self.sends.append(
            Send(seq=seq, intended_ns=intended_ns, sent_ns=sent_ns, size=self.plan.size, stream=stream)
        )
        self.next_seq = seq + 1
        self.last_sent_ns = sent_ns
        if self.plan.rate is None:
            self.waiting, self.waiting_until = seq, sent_ns + self.timeout_ns
        self.report(sent_ns)

    def arrived(self, probe: Probe, recv_ns: int, *, intact: bool) -> None:
        self.arrivals.append(Arrival(seq=probe.seq, recv_ns=recv_ns, intact=intact, stream=probe.stream))
        if probe.seq < self.next_seq:  # a seq never sent must not make the run look complete
            self.answered.add(probe.seq)
        if probe.seq == self.waiting:
            self.waiting = None  # any reply, even a damaged one, settles the probe in flight

    def report(self, now: int, *, final: bool = False) -> None:
        if self.progress is not None and (final or now - self._progress_ns >= PROGRESS_INTERVAL_NS):
            self._progress_ns = now
            if getattr(self.progress, "wants_arrivals", False):
                self.progress(len(self.sends), self.plan.count, self.new_arrivals())
            else:
                self.progress(len(self.sends), self.plan.count)

    def new_arrivals(self) -> list[tuple[int, float]]:
        """(seq, RTT ms from the intended send) of intact replies since the last call (live views)."""
        out = []
        for arrival in self.arrivals[self._arrivals_seen:]:
            if arrival.intact and 0 <= arrival.seq < len(self.sends):
                send = self.sends[arrival.seq]
                if send.seq == arrival.seq:
                    out.append((arrival.seq, (arrival.recv_ns - send.intended_ns) / 1e6))
        self._arrivals_seen = len(self.arrivals)
        return out

    def interrupted(self, now: int) -> RunInterrupted:
        """The exception carrying this run's record when Ctrl-C stops it at `now`.

        Probes still inside their timeout window and unanswered are neither received nor lost
        yet: they leave the record (counted in `extras["undecided"]`) instead of showing as loss.
        """
        open_ = {s.seq for s in self.sends
                 if s.seq not in self.answered and now < s.sent_ns + self.timeout_ns}
        self.sends = [s for s in self.sends if s.seq not in open_]
        self.extras["interrupted"] = True
        if open_:
            self.extras["undecided"] = len(open_)
        # No final progress report: the callback may be what raised (or is being interrupted).
        return RunInterrupted(self.record(now, report=False))

    def record(self, ended_ns: int, *, report: bool = True) -> RunRecord:
        if report:
            self.report(ended_ns, final=True)
        return RunRecord(
            protocol=self.protocol,
            plan=self.plan,
            started_ns=self.start_ns,
            ended_ns=ended_ns,
            sends=self.sends,
            arrivals=self.arrivals,
            unattributed_corrupt=self.unattributed,
            extras=dict(self.extras),
        )


def _deadline_ns(plan: TrafficPlan, deadline_s: float | None, now: int) -> int:
    if deadline_s is None:
        deadline_s = plan.deadline_s()
    if deadline_s <= 0:
        raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
    return now + round(deadline_s * NS_PER_S)


def connect_timeout_s(plan: TrafficPlan, round_trip_s: float = 0.0) -> float:
    """How long a TCP handshake may take: the usual 3-10 s, plus room for a slow path.

    A SYN and its SYN-ACK cross the path once each; the kernel resends a lost SYN after 1 s, 3 s,
    7 s..., so three round trips on top of the usual bound let a lossy, slow link (`delay = "2s"`)
    complete the handshake instead of reporting "no echo server answering".
    """
    usual = min(max(plan.timeout, CONNECT_TIMEOUT_MIN_S), CONNECT_TIMEOUT_MAX_S)
    return usual + 3 * max(0.0, round_trip_s)


def _unreachable(address: tuple[str, int], proto: str, exc: OSError) -> EndpointError:
    if proto == "TCP" and isinstance(exc, ConnectionResetError):  # accepted, then reset at once
        return EndpointError(f"the echo server at {_where(address)} closed the connection before any "
                             "reply (it may be full: see its --max-conns)")
    if isinstance(exc, ConnectionRefusedError):
        why = "connection refused" if proto == "TCP" else "port unreachable: nothing listening"
    elif isinstance(exc, TimeoutError):
        why = "no answer to connect"
    elif exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        why = "host unreachable"
    else:
        why = exc.strerror or str(exc)
    return EndpointError(f"no echo server answering at {_where(address)} over {proto} ({why})")


def run_client(
    protocol: str,
    address: tuple[str, int],
    plan: TrafficPlan,
    *,
    progress: Progress | None = None,
    deadline_s: float | None = None,
    round_trip_s: float = 0.0,
) -> RunRecord:
    """Run one measuring client of `protocol` ("tcp", "udp", ...) against an echo server."""
    from lab.protocols import get_protocol

    return get_protocol(protocol).client(
        address, plan, progress=progress, deadline_s=deadline_s, round_trip_s=round_trip_s
    )


# --- UDP -----------------------------------------------------------------------------------------
def run_udp(
    address: tuple[str, int],
    plan: TrafficPlan,
    *,
    progress: Progress | None = None,
    deadline_s: float | None = None,
    round_trip_s: float = 0.0,  # unused: UDP has no handshake (the protocols share one signature)
) -> RunRecord:
    """Probes as UDP datagrams, one connected socket per logical stream."""
    host, port = _lab_address(address)
    socks: list[socket.socket] = []
    sel: selectors.BaseSelector | None = None
    try:
        for _ in range(plan.streams):
            sock = socket.socket(_family(host), socket.SOCK_DGRAM)
            socks.append(sock)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
            except OSError:
                pass  # a smaller buffer only means more drops in huge bursts
            try:
                # connect() filters replies to the server's address and surfaces ICMP errors.
                sock.connect((host, port))
            except OSError as exc:
                raise _unreachable((host, port), "UDP", exc) from exc
        sel = _selector(socks)
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ)
        now = time.monotonic_ns()
        run = _Run("udp", plan, _deadline_ns(plan, deadline_s, now), progress, start_ns=now)
        with fine_timers():
            try:
                _udp_loop(run, socks, sel, (host, port))
            except KeyboardInterrupt:
                raise run.interrupted(time.monotonic_ns()) from None
        return run.record(time.monotonic_ns())
    finally:
        if sel is not None:
            sel.close()
        for sock in socks:
            sock.close()


def _udp_loop(
    run: _Run, socks: list[socket.socket], sel: selectors.BaseSelector, address: tuple[str, int]
) -> None:
    max_payload = run.plan.size - HEADER_SIZE
    while True:
        now = time.monotonic_ns()
        burst = 0
        while burst < MAX_BURST and (due := run.due_ns(now)) is not None and due <= now:
            seq, stream, payload, crc = run.next_probe()
            intended, sent_ns = run.stamp(seq)
            burst += 1
            try:
                socks[stream].send(_frame(seq, stream, intended, payload, crc))
            except ConnectionRefusedError as exc:  # an earlier datagram drew ICMP port unreachable
                _refused(run, address, exc)
                continue  # the probe was not sent; try it again
            except OSError as exc:
                raise _unreachable(address, "UDP", exc) from exc
            run.sent(seq, stream, intended, sent_ns)
            now = time.monotonic_ns()
        if run.done(now):
            return
        wait_s = 0.0 if burst >= MAX_BURST else run.wait_s(now)
        for key, _ in sel.select(wait_s):
            _udp_drain(run, key.fileobj, max_payload, address)  # type: ignore[arg-type]


def _udp_drain(run: _Run, sock: socket.socket, max_payload: int, address: tuple[str, int]) -> None:
    for _ in range(MAX_DRAIN):
        try:
            data = sock.recv(UDP_RECV_BUFSIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except ConnectionRefusedError as exc:
            _refused(run, address, exc)
            continue
        recv_ns = time.monotonic_ns()
        try:
            probe = decode_untrusted_datagram(data, max_payload=max_payload)
        except CrcMismatchError as exc:
            if isinstance(exc.probe, Probe):
                run.arrived(exc.probe, recv_ns, intact=False)
            else:
                run.unattributed += 1
        except RemoteWireError:
            merged = split_merged_reply(data, max_payload)
            if merged is None:
                run.unattributed += 1  # too damaged to know which probe it was
                continue
            # Several whole probes in one datagram: the echo server does not keep datagram
            # boundaries (socat's UDP-LISTEN...PIPE passes them through a pipe). Each probe did
            # come back, so it counts; the note tells the user the server is not RFC 862.
            run.extras["merged_replies"] = int(run.extras.get("merged_replies", 0)) + 1  # type: ignore[call-overload]
            for part, intact in merged:
                run.arrived(part, recv_ns, intact=intact)
        else:
            run.arrived(probe, recv_ns, intact=True)


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


def _refused(run: _Run, address: tuple[str, int], exc: OSError) -> None:
    if not run.arrivals:
        raise _unreachable(address, "UDP", exc) from exc
    # A server that answered before and is gone now: keep the record, note it.
    run.extras["icmp_refused"] = int(run.extras.get("icmp_refused", 0)) + 1  # type: ignore[call-overload]


# --- TCP -----------------------------------------------------------------------------------------
def run_tcp(
    address: tuple[str, int],
    plan: TrafficPlan,
    *,
    progress: Progress | None = None,
    deadline_s: float | None = None,
    round_trip_s: float = 0.0,
) -> RunRecord:
    """Probes framed back to back on one TCP connection; logical streams share it.

    `round_trip_s` is the path's known round-trip delay (a lab link's), so the handshake gets time
    to cross it (see `connect_timeout_s`).
    """
    from lab.kernel import tcp_info

    host, port = _lab_address(address)
    connect_timeout = connect_timeout_s(plan, round_trip_s)
    if deadline_s is not None:
        connect_timeout = min(connect_timeout, deadline_s)
    try:
        sock = socket.create_connection((host, port), timeout=connect_timeout)
    except OSError as exc:
        raise _unreachable((host, port), "TCP", exc) from exc
    with sock, _selector([sock]) as sel:
        # Latency is what we measure: do not let Nagle hold a probe back waiting for an ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        now = time.monotonic_ns()
        run = _Run("tcp", plan, _deadline_ns(plan, deadline_s, now), progress, start_ns=now)
        run.extras["tcp_nodelay"] = True
        with fine_timers():
            try:
                _tcp_loop(run, sock, sel, (host, port))
            except KeyboardInterrupt:
                raise run.interrupted(time.monotonic_ns()) from None
        ended = time.monotonic_ns()
        # If the connection is already gone, the record stands without TCP_INFO.
        with contextlib.suppress(OSError):
            run.extras["tcp_info"] = tcp_info(sock)
        return run.record(ended)


def _tcp_loop(
    run: _Run, sock: socket.socket, sel: selectors.BaseSelector, address: tuple[str, int]
) -> None:
    decoder = StreamDecoder(max_payload=run.plan.size - HEADER_SIZE, max_buffer=TCP_DECODER_BUFFER)
    outbuf = bytearray()
    sel.register(sock, selectors.EVENT_READ)
    writing = False
    while True:
        now = time.monotonic_ns()
        burst = 0
        while (
            burst < MAX_BURST
            and len(outbuf) < TCP_OUTBUF_LIMIT
            and (due := run.due_ns(now)) is not None
            and due <= now
        ):
            seq, stream, payload, crc = run.next_probe()
            intended, sent_ns = run.stamp(seq)
            # Stamped when handed to the connection; bytes still queued in our buffer behind a
            # stalled connection wait there, which is part of the latency the application sees.
            outbuf += _frame(seq, stream, intended, payload, crc)
            run.sent(seq, stream, intended, sent_ns)
            burst += 1
            now = time.monotonic_ns()
        if outbuf and not _tcp_flush(run, sock, outbuf, address):
            return
        if run.done(now):
            return
        if bool(outbuf) != writing:
            writing = bool(outbuf)
            sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0))
        if burst >= MAX_BURST:
            wait_s = 0.0
        elif len(outbuf) >= TCP_OUTBUF_LIMIT:  # only a writable socket or a reply can help now
            wait_s = min(run.deadline_ns - now, OUTBUF_FULL_POLL_NS) / NS_PER_S
        else:
            wait_s = run.wait_s(now)
        for _, events in sel.select(wait_s):
            if events & selectors.EVENT_READ and not _tcp_receive(run, sock, decoder, address):
                return


def _tcp_flush(run: _Run, sock: socket.socket, outbuf: bytearray, address: tuple[str, int]) -> bool:
    try:
        n = sock.send(outbuf)
    except BlockingIOError:
        return True
    except OSError as exc:
        return _tcp_broken(run, address, f"send failed: {exc.strerror or exc}", exc)
    del outbuf[:n]
    return True


def _tcp_receive(run: _Run, sock: socket.socket, decoder: StreamDecoder, address: tuple[str, int]) -> bool:
    """Read what is there and decode it; False when the connection is over."""
    try:
        data = sock.recv(min(TCP_RECV_CHUNK, decoder.max_buffer - decoder.buffered))
    except BlockingIOError:
        return True
    except OSError as exc:
        return _tcp_broken(run, address, f"receive failed: {exc.strerror or exc}", exc)
    recv_ns = time.monotonic_ns()
    try:
        decoder.receive_data(data)
        while True:
            try:
                item = decoder.next_message()
            except CrcMismatchError as exc:
                if isinstance(exc.probe, Probe):
                    run.arrived(exc.probe, recv_ns, intact=False)
                continue
            if item is NEED_DATA:
                return True
            if item is EOF:
                return _tcp_broken(run, address, SERVER_CLOSED, None)
            assert isinstance(item, Probe)
            run.arrived(item, recv_ns, intact=True)
    except RemoteWireError as exc:
        # The byte stream is desynchronised: nothing after this point can be attributed.
        run.unattributed += 1
        return _tcp_broken(run, address, f"reply stream unreadable: {exc}", None)


SERVER_CLOSED = "the echo server closed the connection"


def _tcp_broken(run: _Run, address: tuple[str, int], why: str, exc: OSError | None) -> bool:
    if not run.arrivals:
        if why == SERVER_CLOSED or isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            # What a server at its connection limit does to a newcomer (ours closes the longest
            # idle connection instead, so this is another server, or ours evicting us).
            raise EndpointError(f"the echo server at {_where(address)} closed the connection before any "
                                "reply (it may be full: see its --max-conns)") from exc
        raise EndpointError(f"echo server at {_where(address)} over TCP gave no reply ({why})") from exc
    if run.next_seq < run.plan.count or len(run.answered) < len(run.sends):
        run.extras["connection_ended"] = why
    return False


# --- `lab send` ----------------------------------------------------------------------------------
def send_command(protocol: str, host: str, port: int, plan: TrafficPlan, as_json: bool) -> int:
    """`lab send`: measure against an echo server, print a summary (or the result as JSON)."""
    from lab.metrics import compute_result
    from lab.protocols import get_protocol

    get_protocol(protocol)  # unknown protocol: a ConfigError listing the known ones
    ip = resolve_lab_target(host)  # normalised once; refused before any socket exists
    code = 0
    try:
        record = run_client(protocol, (ip, port), plan)
    except RunInterrupted as stopped:
        record, code = stopped.record, EXIT_INTERRUPTED
    result = compute_result(record)
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        print(format_summary(result, _where((ip, port))))
    return code


def _fmt_us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def format_summary(result: Result, where: str) -> str:
    """A short human summary of one result (what `lab send` prints without --json).

    Each line of times is in the unit its median fits: µs on loopback, ms over a 40 ms link.
    """

    def unit_of(us: float | None) -> tuple[str, float]:
        return ("ms", 1000.0) if us is not None and us >= 1000 else ("µs", 1.0)

    def times(label: str, figures: dict, keys: tuple[str, ...]) -> str:
        unit, scale = unit_of(figures.get("p50"))
        values = "  ".join(
            f"{k} {_fmt_us(None if figures.get(k) is None else figures[k] / scale)}" for k in keys
        )
        return label.format(unit=unit) + values

    lo, hi = result.loss_ci95
    rtt = result.rtt_us
    lines = [
        f"{result.protocol} {where}: {result.sent} sent, {result.received} received, "
        f"{result.lost} lost ({100 * result.loss_ratio:.2f}%, 95% CI {100 * lo:.2f}-{100 * hi:.2f}%)",
        times("rtt {unit}: ", rtt, RTT_KEYS),
    ]
    if result.lost and result.rtt_censored_us:
        # Lost probes stay in the latency picture, each counted as waiting the whole timeout.
        label = f"rtt {{unit}} with the {result.lost} lost at the {result.timeout_s:g} s timeout: "
        lines.append(times(label, result.rtt_censored_us, ("p50", "p90", "p99")))
    if result.rtt_uncorrected_us is not None:
        lines.append(times("rtt {unit} from actual send (uncorrected): ", result.rtt_uncorrected_us,
                           ("p50", "p99", "max")))
    j_unit, j_scale = unit_of(result.jitter_us)
    lines.append(
        f"jitter {result.jitter_us / j_scale:.{3 if j_unit == 'ms' else 1}f} {j_unit}  late {result.late}  "
        f"duplicates {result.duplicates}  reordered {result.reordered}  corrupted {result.corrupted}  "
        f"goodput {result.goodput_bps / 1e6:.3f} Mbit/s  in {result.duration_s:.2f} s"
    )
    if result.tcp_info:
        info = result.tcp_info
        srtt, rttvar = info.get("rtt_us"), info.get("rttvar_us")
        t_unit, t_scale = unit_of(srtt if isinstance(srtt, int | float) else None)
        shown = [
            _fmt_us(v / t_scale) if isinstance(v, int | float) else str(v) for v in (srtt, rttvar)
        ]
        lines.append(
            f"tcp_info: srtt {shown[0]} {t_unit}  rttvar {shown[1]} {t_unit}  "
            f"cwnd {info.get('snd_cwnd')}  retransmits {info.get('total_retrans')}"
        )
    lines += [f"note: {note}" for note in notes(result)]
    return "\n".join(lines)


def notes(result: Result) -> list[str]:
    """Sentences for what a result's extras say went unusually (nothing here goes unmentioned)."""
    x = result.extras
    out = []
    if x.get("interrupted"):
        undecided = x.get("undecided", 0)
        out.append(f"interrupted (Ctrl-C): the figures cover the {result.sent} probes settled by then"
                   + (f"; {undecided} still inside their timeout were left out" if undecided else ""))
    if result.sent and not result.received and not result.late and not result.corrupted:
        out.append("no probe came back: is an echo server (RFC 862) listening there? "
                   "`lab serve` starts one")
    if x.get("deadline_hit"):
        out.append("the run hit its overall deadline before every probe was sent and settled")
    if x.get("connection_ended"):
        out.append(f"the connection ended early: {x['connection_ended']}")
    if x.get("merged_replies"):
        out.append(f"{x['merged_replies']} replies held several probes in one datagram: this echo "
                   "server does not keep datagram boundaries (e.g. socat UDP-LISTEN with PIPE); "
                   "their probes count as received")
    if x.get("icmp_refused"):
        out.append(f"{x['icmp_refused']} sends drew ICMP port unreachable: the echo server went away")
    if x.get("unknown_seq"):
        out.append(f"{x['unknown_seq']} replies carried a sequence number that was never sent")
    if x.get("rtt_clamped"):
        out.append(f"{x['rtt_clamped']} RTT values were outside HdrHistogram's range (1 µs to 1 h) "
                   "and were clamped into it for the percentiles; min, max and mean are exact")
    return out
