"""Unprivileged fallback: a loopback UDP relay that applies the link models to datagrams.

    client --> relay.address --[forward model]--> upstream (e.g. an echo server)
    client <-- relay.address <--[reverse model]-- upstream

No namespaces, no TUN, no root: UDP experiments run anywhere. The relay runs in its own process
(the GIL of the measuring process would distort latency) with a timer heap for delayed datagrams.
Each client address gets its own upstream socket (like a NAT mapping), so replies go back to the
client that sent; the oldest mapping is recycled beyond `MAX_CLIENTS`.

Differences from the real link (`lab.link.forwarder`):
- The models see each datagram behind a synthetic 28-byte IPv4 header (IHL=7, i.e. the size of
  IPv4 + UDP headers), so byte counters and the rate limit count what a real packet would carry
  and corruption always lands in the datagram itself.
- Corruption therefore DOES reach the application: there is no kernel UDP checksum between the
  relay and the receiver to drop the datagram, so it arrives with a flipped bit (a probe shows a
  CRC mismatch). Through the real link the kernel drops it and counts `UdpInCsumErrors`.
- TCP cannot be impaired this way (a relay would terminate TCP and hide its retransmissions):
  that needs the namespaces and CAP_NET_ADMIN, see `tcp_needs_privileges_message()`.
"""

from __future__ import annotations

import heapq
import ipaddress
import selectors
import signal
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from lab import privileges
from lab.child import Channel, Child, Failed, Ready, answer, python_argv, spawn, start_child
from lab.errors import EndpointError, LabError, TargetRefusedError
from lab.link.models import LinkConfig

MAX_CLIENTS = 256  # client mappings kept at once (each holds one upstream socket)
RECV_SIZE = 65536  # larger than any UDP payload (65507 over IPv4, RFC 768 / RFC 791)
BATCH = 64  # datagrams read per readiness event, so one busy socket cannot starve the others
MAX_WAIT_S = 0.1  # longest select() sleep, so control messages are answered promptly
SOCKET_BUFFER = 1 << 20  # 1 MiB: a burst of datagrams queued by the rate limit must not overflow
# A stand-in IPv4 header: version 4, IHL 7 (28 bytes = IPv4 20 + UDP 8). The models read only the
# IHL nibble and the length, so the remaining bytes stay zero.
_FAKE_HEADER = bytes([0x47]) + bytes(27)
_FAKE_HEADER_SIZE = len(_FAKE_HEADER)


def tcp_needs_privileges_message(label: str = "TCP", transport: str = "tcp") -> str:
    """What to tell a user who asked to impair a protocol the relay cannot carry (TCP, or a protocol
    on another IP protocol such as UDP-Lite), without the privileges the real link needs."""
    lacking = privileges.missing(privileges.CAP_NET_ADMIN)
    why = f" (this process lacks {', '.join(lacking)})" if lacking else ""
    below = (f"below {label}" if transport == "tcp"
             else f"below {label} (the loopback relay carries plain UDP only)")
    # Says more than privileges.explain(): namespaces also need CAP_SYS_ADMIN (unshare and a bind
    # mount under /run/netns), and UDP still works without any of it.
    return (
        f"impairing {label} needs root: it happens {below}, on an emulated link between two network "
        f"namespaces, which takes CAP_NET_ADMIN and CAP_SYS_ADMIN{why}; run with sudo. "
        "UDP runs impaired without root, through the loopback UDP relay."
        f"{privileges.userns_note()}"
    )


def _require_loopback(host: str, what: str) -> str:
    """The normalised loopback address `host` names; TargetRefusedError for anything else.

    Checked with the clients' own normalisation (no DNS lookup; ::ffff:127.0.0.1 is 127.0.0.1),
    so the relay never forwards anywhere a client could not send itself.
    """
    from lab.targets import check_lab_target

    try:
        address = check_lab_target(host)
    except TargetRefusedError:
        address = None
    if address is None or not ipaddress.ip_address(address).is_loopback:
        raise TargetRefusedError(
            f"the UDP relay only works on loopback: {what} {host!r} is not 127.0.0.0/8 or ::1; "
            "for a real link use `lab link` (needs CAP_NET_ADMIN)"
        )
    return address


class UdpRelay:
    """A UDP relay process on loopback applying `config` (forward: client->upstream); a context manager."""

    def __init__(self, config: LinkConfig, upstream: tuple[str, int], *, host: str = "127.0.0.1") -> None:
        port = upstream[1]
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise EndpointError(f"upstream port must be 1..65535, got {port!r}")
        self._upstream = (_require_loopback(upstream[0], "upstream"), port)
        self._host = _require_loopback(host, "relay address")
        self._config = config
        self._child: Child | None = None
        self._final: dict[str, dict[str, int]] | None = None
        self.address: tuple[str, int] = ("", 0)

    @property
    def config(self) -> LinkConfig:
        """The impairment currently applied."""
        return self._config

    def __enter__(self) -> UdpRelay:
        # A helper process (lab.child: a fresh interpreter, never a fork of this threaded process).
        self._child = spawn("the UDP relay", python_argv("lab.link.relay"),
                            setup=(self._config, self._upstream, self._host))
        self.address = tuple(self._child.info)[:2]  # type: ignore[assignment]
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _request(self, op: str, argument: Any = None) -> Any:
        if self._child is None:
            raise EndpointError("the UDP relay is not running (use it inside `with UdpRelay(...)`)")
        return self._child.request(op, argument)

    def counters(self) -> dict[str, dict[str, int]]:
        """{'forward': {...}, 'reverse': {...}}: model counters plus send_errors; final after exit."""
        if self._final is not None and self._child is None:
            return self._final
        return self._request("counters")

    def set(self, *, direction: str | None = None, forward: Mapping[str, object] | None = None,
            reverse: Mapping[str, object] | None = None, **options: object) -> LinkConfig:
        """Change the impairment while running, e.g. relay.set(loss="20%"), or one direction's,
        relay.set(forward={"delay": "10ms"}); returns the new config."""
        config = self._config.with_options(options, direction=direction, forward=forward,
                                           reverse=reverse)  # raises ConfigError here
        self._request("set", config)
        self._config = config
        return config

    def close(self) -> None:
        """Stop the process (keeping its final counters); idempotent, never raises."""
        child, self._child = self._child, None
        if child is not None:
            child.close()
            self._final = child.final

    @property
    def pid(self) -> int | None:
        """The relay process id while running (None before start and after exit)."""
        return self._child.pid if self._child is not None else None


# --- the relay process ---------------------------------------------------------------------------
class _Relay:
    """The event loop inside the relay process."""

    def __init__(self, conn: Channel, config: LinkConfig, upstream: tuple[str, int], host: str) -> None:
        self.conn = conn
        self.upstream = upstream
        self.forward, self.reverse = config.build_models()
        self.errors = {"forward": 0, "reverse": 0}
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.front = socket.socket(family, socket.SOCK_DGRAM)
        self.front.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        self.front.bind((host, 0))
        self.front.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.front, selectors.EVENT_READ, None)
        self.selector.register(conn.fileno(), selectors.EVENT_READ, "control")
        self.clients: OrderedDict[tuple[Any, ...], socket.socket] = OrderedDict()
        self.timers: list[tuple[float, int, bool, Any, bytes]] = []  # (at, seq, forward?, key, data)
        self.seq = 0

    def close(self) -> None:
        for sock in self.clients.values():
            sock.close()
        self.clients.clear()
        self.selector.close()
        self.front.close()

    def counters(self) -> dict[str, dict[str, int]]:
        return {
            "forward": {**self.forward.counters, "send_errors": self.errors["forward"]},
            "reverse": {**self.reverse.counters, "send_errors": self.errors["reverse"]},
        }

    def upstream_socket(self, client: tuple[Any, ...]) -> socket.socket:
        """The socket that carries `client`'s datagrams upstream (made on first use)."""
        sock = self.clients.get(client)
        if sock is not None:
            self.clients.move_to_end(client)
            return sock
        if len(self.clients) >= MAX_CLIENTS:
            _, oldest = self.clients.popitem(last=False)
            self.selector.unregister(oldest)
            oldest.close()
        family = socket.AF_INET6 if ":" in self.upstream[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sock.setblocking(False)
        sock.connect(self.upstream)
        self.selector.register(sock, selectors.EVENT_READ, client)
        self.clients[client] = sock
        return sock

    def transmit(self, forward: bool, client: tuple[Any, ...], data: bytes) -> None:
        """Send one datagram now: upstream for `client`, or back to `client`."""
        try:
            if forward:
                sock = self.clients.get(client)
                if sock is None:  # the mapping was recycled while the datagram waited
                    sock = self.upstream_socket(client)
                sock.send(data)
            else:
                self.front.sendto(data, client)
        except OSError:  # full buffer, upstream gone (ICMP refused): the datagram is lost, as on a wire
            self.errors["forward" if forward else "reverse"] += 1

    def admit(self, forward: bool, client: tuple[Any, ...], data: bytes, now: float) -> None:
        """Run one datagram through its direction's model; send or schedule the copies."""
        model = self.forward if forward else self.reverse
        verdict = model.decide(_FAKE_HEADER + data, now)
        for release in verdict.releases:
            payload = release.packet[_FAKE_HEADER_SIZE:]
            if release.at <= now:
                self.transmit(forward, client, payload)
            else:
                self.seq += 1
                heapq.heappush(self.timers, (release.at, self.seq, forward, client, payload))

    def read(self, sock: socket.socket, client: tuple[Any, ...] | None) -> None:
        """Drain up to BATCH datagrams from a socket (front: from clients; else: replies)."""
        for _ in range(BATCH):
            try:
                if client is None:
                    data, sender = sock.recvfrom(RECV_SIZE)
                    self.upstream_socket(sender)
                    self.admit(True, sender, data, time.monotonic())
                else:
                    data = sock.recv(RECV_SIZE)
                    self.admit(False, client, data, time.monotonic())
            except BlockingIOError:
                return
            except OSError:  # e.g. ICMP port unreachable reported on a connected socket
                if client is not None:
                    self.errors["forward"] += 1
                return

    def handle(self, op: str, argument: Any) -> Any:
        """Answer one request from the parent (counters, set, stop)."""
        if op == "set":
            config: LinkConfig = argument
            self.forward.update(config.forward)
            self.reverse.update(config.reverse)
            return None
        if op in ("counters", "stop"):
            return self.counters()
        raise LabError(f"unknown relay request {op!r}")

    def run(self) -> None:
        """Serve until told to stop or the parent goes away."""
        while True:
            now = time.monotonic()
            timers = self.timers
            while timers and timers[0][0] <= now:
                _, _, forward, client, data = heapq.heappop(timers)
                self.transmit(forward, client, data)
            wait = MAX_WAIT_S if not timers else min(MAX_WAIT_S, max(0.0, timers[0][0] - now))
            for key, _ in self.selector.select(wait):
                if key.data == "control":
                    if not answer(self.conn, self.handle):
                        return  # stopped, or the parent is gone
                else:
                    self.read(key.fileobj, key.data)  # type: ignore[arg-type]


def _relay_main() -> int:
    """`python -m lab.link.relay`, started by UdpRelay: bind, announce the address, serve, close."""
    # Ctrl-C reaches the whole process group; the parent decides when the relay stops (or its
    # death closes the channel, which stops us too).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn, (config, upstream, host) = start_child("lab.link.relay.UdpRelay")
    with conn:
        try:
            relay = _Relay(conn, config, upstream, host)
        except OSError as exc:
            conn.send(Failed(EndpointError(f"cannot bind a UDP socket on {host}: {exc}")))
            return 1
        try:
            conn.send(Ready(relay.front.getsockname()))
            from lab.timing import fine_timers

            with fine_timers():  # release delayed datagrams on time, not up to 50 µs late
                relay.run()
        finally:
            relay.close()
    return 0


def relay_counters_total(counters: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """Sum of both directions' counters (for a one-line summary)."""
    total: dict[str, int] = {}
    for direction in counters.values():
        for key, value in direction.items():
            total[key] = total.get(key, 0) + value
    return total


if __name__ == "__main__":
    sys.exit(_relay_main())
