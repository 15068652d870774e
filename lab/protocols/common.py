"""Socket helpers the protocols' measuring clients share (the schedule itself is lab.schedule)."""

from __future__ import annotations

import errno
import ipaddress
import selectors
import socket
import struct
import time
from collections.abc import Callable, Iterator

from lab.errors import EndpointError
from lab.records import TrafficPlan
from lab.targets import where
from lab.timestamps import ANCILLARY_BYTES, receive_stamp

# Sends in one burst before a loop drains replies again (keeps the receive buffer from filling
# while a late sender catches up).
MAX_BURST = 32
# Ask for big socket buffers so an open-loop burst is not dropped by our own socket (the kernel
# caps them at net.core.rmem_max/wmem_max; that is fine).
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
CONNECT_TIMEOUT_MIN_S = 3.0
CONNECT_TIMEOUT_MAX_S = 10.0
FD_SETSIZE = 1024  # sys/select.h: select(2) handles descriptors below this
# Datagrams drained per wake-up before a loop checks its send schedule again.
MAX_DRAIN = 256
RECV_BUFSIZE = 65536  # larger than any UDP payload (65507 over IPv4, 65527 over IPv6)


def family(host: str) -> socket.AddressFamily:
    """AF_INET6 for an IPv6 address, else AF_INET."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


def selector(socks: list[socket.socket]) -> selectors.BaseSelector:
    """A selector with µs timeouts for a client's few sockets."""
    # select(2) takes a timeout in µs; epoll and poll round it up to whole milliseconds, which
    # would make a paced sender wake up to 1 ms late and book that as latency. We watch at most
    # a few dozen sockets, where select(2) costs nothing extra — but it cannot watch a descriptor
    # numbered FD_SETSIZE or above (a process with many files open), so fall back then.
    if max(s.fileno() for s in socks) < FD_SETSIZE:
        return selectors.SelectSelector()
    return selectors.DefaultSelector()


def big_buffers(sock: socket.socket) -> None:
    """Ask for SOCKET_BUFFER_BYTES of receive and send buffer (a smaller one only drops more in bursts)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
    except OSError:
        pass


def connected_datagram_socket(address: tuple[str, int], over: str,
                              sock: socket.socket | None = None) -> socket.socket:
    """A non-blocking datagram socket (`sock`, or a new UDP one) with big buffers, connected to
    `address`: replies come only from there and ICMP errors surface. The one-line EndpointError
    (naming `over`) when it cannot even be connected; the socket is closed then."""
    sock = sock or socket.socket(family(address[0]), socket.SOCK_DGRAM)
    try:
        big_buffers(sock)
        try:
            sock.connect(address)
        except OSError as exc:
            raise unreachable(address, over, exc, connected=False) from exc
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def connect_timeout_s(plan: TrafficPlan, round_trip_s: float = 0.0) -> float:
    """How long a handshake may take: the usual 3-10 s, plus room for a slow path.

    A SYN and its SYN-ACK cross the path once each; the kernel resends a lost SYN after 1 s, 3 s,
    7 s..., so three round trips on top of the usual bound let a lossy, slow link (`delay = "2s"`)
    complete the handshake instead of reporting "no echo server answering".
    """
    usual = min(max(plan.timeout, CONNECT_TIMEOUT_MIN_S), CONNECT_TIMEOUT_MAX_S)
    return usual + 3 * max(0.0, round_trip_s)


def connected_stream(address: tuple[str, int], over: str, prepare: Callable[[socket.socket], None] | None,
                     timeout_s: float, *, answering: str = "echo server", hint: str = "") -> socket.socket:
    """A TCP socket connected to `address` within `timeout_s`; `prepare` sets its options before
    connect, so the whole connection, handshake included, runs with them (a congestion control
    chosen after it would leave a moment under the default). Else the one-line `unreachable` error
    (`over`, `answering`, `hint` as there); the socket is closed on any failure."""
    sock = socket.socket(family(address[0]), socket.SOCK_STREAM)
    try:
        if prepare is not None:
            prepare(sock)
        sock.settimeout(timeout_s)
        sock.connect(address)
    except OSError as exc:
        sock.close()
        raise unreachable(address, over, exc, connected=True, answering=answering, hint=hint) from exc
    except BaseException:
        sock.close()
        raise
    return sock


def unreachable(address: tuple[str, int], over: str, exc: OSError, *, connected: bool,
                answering: str = "echo server", hint: str = "") -> EndpointError:
    """The one-line EndpointError for a failed connect/send to an echo server (or to what
    `answering` names, e.g. "discard sink"; `hint` is appended, e.g. how to start one).

    `over` names the protocol in the message; `connected` says whether it runs over a connection
    (a refused or reset connection reads differently from an ICMP port unreachable).
    """
    if connected and isinstance(exc, ConnectionResetError):  # accepted, then reset at once
        return EndpointError(f"the {answering} at {where(address)} closed the connection before any "
                             f"reply (it may be full: see its --max-conns){hint}")
    if isinstance(exc, ConnectionRefusedError):
        why = "connection refused" if connected else "port unreachable: nothing listening"
    elif isinstance(exc, TimeoutError):
        why = "no answer to connect"
    elif exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        why = "host unreachable"
    else:
        why = exc.strerror or str(exc)
    return EndpointError(f"no {answering} answering at {where(address)} over {over} ({why}){hint}")


def received_datagrams(sock: socket.socket,
                       refused: Callable[[OSError], None]) -> Iterator[tuple[bytes, int]]:
    """The datagrams waiting on `sock` (at most MAX_DRAIN), each with when it was read (monotonic ns).

    An ICMP error for an earlier send (ConnectionRefusedError: nothing listens there) goes to
    `refused`, which may raise; otherwise draining goes on.
    """
    for _ in range(MAX_DRAIN):
        try:
            data = sock.recv(RECV_BUFSIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except ConnectionRefusedError as exc:
            refused(exc)
            continue
        yield data, time.monotonic_ns()


def received_stamped_datagrams(sock: socket.socket,
                               refused: Callable[[OSError], None]) -> Iterator[tuple[bytes, int, int | None]]:
    """`received_datagrams` with each datagram's kernel receive stamp (CLOCK_REALTIME ns, None if
    it has none): for a socket whose timestamps `lab.timestamps.enable` turned on."""
    for _ in range(MAX_DRAIN):
        try:
            data, ancillary, _, _ = sock.recvmsg(RECV_BUFSIZE, ANCILLARY_BYTES, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except ConnectionRefusedError as exc:
            refused(exc)
            continue
        yield data, time.monotonic_ns(), receive_stamp(ancillary) if ancillary else None

_TIMEVAL = struct.Struct("@ll")  # struct timeval, for SO_RCVTIMEO
RECEIVE_TIMEOUT_SLACK_S = 0.001  # a ping-pong wait is set again only when it changed more than this
DONTWAIT = int(socket.MSG_DONTWAIT)


class ReceiveTimeout:
    """A ping-pong client's wait in the receive call itself (SO_RCVTIMEO on a blocking socket), so a
    reply wakes it straight into `recvmsg`, not into select() and then `recvmsg`. Set again only when
    the wait changed by more than RECEIVE_TIMEOUT_SLACK_S: not each probe, which would put a system
    call more between send and reply."""

    __slots__ = ("sock", "wait_s")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.wait_s = 0.0  # as last set (0: not yet)

    def flags(self, wait_s: float) -> int:
        """Bound the next receive by `wait_s` (> 0); its flags: 0 to wait, DONTWAIT for `wait_s` <= 0."""
        if wait_s <= 0:
            return DONTWAIT
        if abs(wait_s - self.wait_s) > RECEIVE_TIMEOUT_SLACK_S:
            whole = int(wait_s)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                 _TIMEVAL.pack(whole, max(1, int((wait_s - whole) * 1_000_000))))
            self.wait_s = wait_s
        return 0
