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

import contextlib
import heapq
import ipaddress
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from lab import privileges
from lab.errors import EndpointError, LabError, TargetRefusedError
from lab.link.models import LinkConfig

MAX_CLIENTS = 256  # client mappings kept at once (each holds one upstream socket)
RECV_SIZE = 65536  # larger than any UDP payload (65507 over IPv4, RFC 768 / RFC 791)
BATCH = 64  # datagrams read per readiness event, so one busy socket cannot starve the others
MAX_WAIT_S = 0.1  # longest select() sleep, so control messages are answered promptly
READY_TIMEOUT_S = 30.0  # a spawned interpreter on a loaded 2-core CI box can take seconds
STOP_TIMEOUT_S = 5.0
SOCKET_BUFFER = 1 << 20  # 1 MiB: a burst of datagrams queued by the rate limit must not overflow
# A stand-in IPv4 header: version 4, IHL 7 (28 bytes = IPv4 20 + UDP 8). The models read only the
# IHL nibble and the length, so the remaining bytes stay zero.
_FAKE_HEADER = bytes([0x47]) + bytes(27)
_FAKE_HEADER_SIZE = len(_FAKE_HEADER)


def tcp_needs_privileges_message() -> str:
    """What to tell a user who asked for TCP impairment without the privileges it needs."""
    lacking = privileges.missing(privileges.CAP_NET_ADMIN)
    why = f" (this process lacks {', '.join(lacking)})" if lacking else ""
    # Says more than privileges.explain(): namespaces also need CAP_SYS_ADMIN (unshare and a bind
    # mount under /run/netns), and UDP still works without any of it.
    return (
        "impairing TCP needs root: it happens below TCP, on an emulated link between two network "
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
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()  # one request/reply on the pipe at a time
        self._final: dict[str, dict[str, int]] | None = None
        self.address: tuple[str, int] = ("", 0)

    @property
    def config(self) -> LinkConfig:
        """The impairment currently applied."""
        return self._config

    def __enter__(self) -> UdpRelay:
        # A fresh interpreter (`python -m lab.link.relay`), not fork: the measuring process has
        # threads (echo servers, xdist) whose locks a forked child would inherit mid-use; and not
        # multiprocessing's spawn, which re-imports the caller's __main__ (breaks scripts without a
        # `__main__` guard and code fed on stdin). The control channel is a socketpair.
        ours, theirs = socket.socketpair()
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "lab.link.relay", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env,
            )
        except OSError as exc:
            ours.close()
            raise EndpointError(f"cannot start the UDP relay process: {exc}") from exc
        finally:
            theirs.close()
        self._conn = parent = Connection(ours.detach())
        try:
            parent.send((self._config, self._upstream, self._host))
            if not parent.poll(READY_TIMEOUT_S):
                raise EndpointError(f"the UDP relay did not start within {READY_TIMEOUT_S:g}s")
            kind, value = parent.recv()
            if kind != "ready":
                raise EndpointError(f"the UDP relay could not start: {value}")
            self.address = tuple(value)[:2]  # type: ignore[assignment]
        except (EOFError, OSError) as exc:
            self._shutdown()
            raise EndpointError(f"the UDP relay process exited while starting ({exc})") from exc
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._shutdown()

    def _request(self, message: tuple[Any, ...]) -> Any:
        """Send one control message and wait for its reply."""
        with self._lock:
            conn = self._conn
            if conn is None or self._process is None or self._process.poll() is not None:
                raise EndpointError("the UDP relay is not running")
            try:
                conn.send(message)
                if not conn.poll(STOP_TIMEOUT_S):
                    raise EndpointError("the UDP relay did not answer")
                return conn.recv()
            except (EOFError, OSError) as exc:
                raise EndpointError(f"lost contact with the UDP relay process ({exc})") from exc

    def counters(self) -> dict[str, dict[str, int]]:
        """{'forward': {...}, 'reverse': {...}}: model counters plus send_errors; final after exit."""
        if self._final is not None and self._conn is None:
            return self._final
        return self._request(("counters",))

    def set(self, *, direction: str | None = None, **options: object) -> LinkConfig:
        """Change the impairment while running, e.g. relay.set(loss="20%"); returns the new config."""
        config = self._config.with_options(options, direction=direction)  # raises ConfigError here
        self._request(("set", config))
        self._config = config
        return config

    def _shutdown(self) -> None:
        """Ask the process to stop (keeping its final counters), then make sure it is gone."""
        process, conn = self._process, self._conn
        if conn is not None:
            with contextlib.suppress(LabError):
                if process is not None and process.poll() is None:
                    self._final = self._request(("stop",))
            with self._lock:
                conn.close()
                self._conn = None
        if process is not None:
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            self._process = None

    @property
    def pid(self) -> int | None:
        """The relay process id while running (None before start and after exit)."""
        return self._process.pid if self._process is not None else None


# --- the relay process ---------------------------------------------------------------------------
class _Relay:
    """The event loop inside the relay process."""

    def __init__(self, conn: Connection, config: LinkConfig, upstream: tuple[str, int], host: str) -> None:
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
        self.selector.register(conn, selectors.EVENT_READ, "control")
        self.clients: OrderedDict[tuple[Any, ...], socket.socket] = OrderedDict()
        self.timers: list[tuple[float, int, bool, Any, bytes]] = []  # (at, seq, forward?, key, data)
        self.seq = 0
        self.running = True

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

    def control(self) -> None:
        """Answer one message from the parent; EOF (parent gone) stops the relay."""
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            self.running = False
            return
        kind = message[0]
        if kind == "counters":
            self.conn.send(self.counters())
        elif kind == "set":
            config: LinkConfig = message[1]
            self.forward.update(config.forward)
            self.reverse.update(config.reverse)
            self.conn.send("ok")
        elif kind == "stop":
            self.running = False
            self.conn.send(self.counters())

    def run(self) -> None:
        """Serve until told to stop or the parent goes away."""
        while self.running:
            now = time.monotonic()
            timers = self.timers
            while timers and timers[0][0] <= now:
                _, _, forward, client, data = heapq.heappop(timers)
                self.transmit(forward, client, data)
            wait = MAX_WAIT_S if not timers else min(MAX_WAIT_S, max(0.0, timers[0][0] - now))
            for key, _ in self.selector.select(wait):
                if key.data == "control":
                    self.control()
                    if not self.running:
                        return
                else:
                    self.read(key.fileobj, key.data)  # type: ignore[arg-type]


def _relay_main(conn: Connection, config: LinkConfig, upstream: tuple[str, int], host: str) -> None:
    """Entry point of the relay process: bind, announce the address, serve, close everything."""
    # Ctrl-C reaches the whole process group; the parent decides when the relay stops (or its
    # death closes the pipe, which stops us too).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        relay = _Relay(conn, config, upstream, host)
    except OSError as exc:
        conn.send(("error", f"cannot bind a UDP socket on {host}: {exc}"))
        conn.close()
        return
    try:
        conn.send(("ready", relay.front.getsockname()))
        from lab.timing import fine_timers

        with fine_timers():  # release delayed datagrams on time, not up to 50 µs late
            relay.run()
    finally:
        relay.close()
        conn.close()


def relay_counters_total(counters: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """Sum of both directions' counters (for a one-line summary)."""
    total: dict[str, int] = {}
    for direction in counters.values():
        for key, value in direction.items():
            total[key] = total.get(key, 0) + value
    return total


def _child_main(argv: list[str]) -> int:
    """`python -m lab.link.relay FD`: read (config, upstream, host) from the socketpair FD, serve."""
    conn = Connection(int(argv[1]))
    try:
        config, upstream, host = conn.recv()
    except (EOFError, OSError):
        conn.close()
        return 1
    _relay_main(conn, config, upstream, host)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv))
