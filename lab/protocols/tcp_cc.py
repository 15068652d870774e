"""`tcp-reno`, `tcp-cubic`, `tcp-bbr`: TCP with a chosen congestion control on both ends.

The same client as `tcp` (lab.protocols.tcp), with TCP_CONGESTION set on its socket, against an
echo server of its own: the lab's echo server started with `--tcp-congestion NAME`, which sets it
on the listening socket (Linux copies a listener's algorithm to every connection it accepts) and
names it in its ready message. Which algorithm a run's client really used is read back from the
socket into `observations["tcp"]["congestion_control"]` (plain `tcp` records the system default
the same way). The kernel only offers what is listed in
/proc/sys/net/ipv4/tcp_available_congestion_control (a module such as tcp_bbr adds its name),
and a process without CAP_NET_ADMIN may only pick those in tcp_allowed_congestion_control: both
are checked before any socket exists (`Requirement`, docs/architecture.md#protocols).
"""

from __future__ import annotations

import errno
import socket
from typing import ClassVar

from lab.protocols import Requirement
from lab.protocols.tcp import TCP, TCP_CONGESTION

AVAILABLE_PATH = "/proc/sys/net/ipv4/tcp_available_congestion_control"
ALLOWED_PATH = "/proc/sys/net/ipv4/tcp_allowed_congestion_control"


def _listed(path: str) -> list[str]:
    try:
        with open(path, encoding="ascii") as file:
            return file.read().split()
    except OSError:
        return []


def available_congestion_controls() -> list[str]:
    """The algorithms this kernel offers (net.ipv4.tcp_available_congestion_control)."""
    return _listed(AVAILABLE_PATH)


def congestion_control_problem(name: str) -> str | None:
    """None if a socket of this process can use `name`; else one sentence saying why not and what
    is available. Tries the option on a fresh, unconnected socket (nothing is sent)."""
    available = available_congestion_controls()
    listed = ", ".join(available) or "none listed"
    hint = f" ({AVAILABLE_PATH}: {listed}; as root, `modprobe tcp_{name}` may add it)"
    if available and name not in available:
        return f"needs the {name} TCP congestion control, which this kernel does not offer{hint}"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            set_congestion_control(probe, name)
    except OSError as exc:
        if exc.errno == errno.EPERM:
            allowed = ", ".join(_listed(ALLOWED_PATH)) or "none"
            return (f"needs the {name} TCP congestion control, which only CAP_NET_ADMIN may choose here "
                    f"({ALLOWED_PATH}: {allowed})")
        return f"needs the {name} TCP congestion control: {exc.strerror or exc}{hint}"
    return None


def set_congestion_control(sock: socket.socket, name: str) -> None:
    """Set TCP_CONGESTION on `sock` (OSError as the kernel gives it: ENOENT unknown, EPERM not allowed)."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, name.encode("ascii"))


class CongestionControlled(TCP):
    """TCP with `algorithm` on both ends; a subclass names the protocol and the algorithm."""

    algorithm: ClassVar[str]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "algorithm" in cls.__dict__:
            algorithm = cls.algorithm
            cls.requires = (Requirement(f"the {algorithm} TCP congestion control",
                                        check_fn=lambda: congestion_control_problem(algorithm)),)

    def prepare_socket(self, sock: socket.socket) -> None:
        super().prepare_socket(sock)
        # Called before connect (lab.protocols.tcp): the handshake and the probes run under ours.
        set_congestion_control(sock, self.algorithm)

    def server_argv(self, host: str, port: int) -> list[str]:
        return [*super().server_argv(host, port), "--tcp-congestion", self.algorithm]

    def sink_argv(self, host: str, port: int) -> list[str]:
        return [*super().sink_argv(host, port), "--tcp-congestion", self.algorithm]


class TcpReno(CongestionControlled):
    name = "tcp-reno"
    algorithm = "reno"
    description = "TCP with Reno congestion control on both ends (loss halves the window)"
    style = "bold cyan"


class TcpCubic(CongestionControlled):
    name = "tcp-cubic"
    algorithm = "cubic"
    description = "TCP with CUBIC congestion control on both ends (Linux's usual default)"
    style = "bold magenta"


class TcpBbr(CongestionControlled):
    name = "tcp-bbr"
    algorithm = "bbr"
    description = "TCP with BBR congestion control on both ends (paces by bandwidth and RTT, not loss)"
    style = "bold green"
