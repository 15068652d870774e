"""`udplite`: UDP-Lite (RFC 3828) with a checksum over the 8-byte header only; and its echo server.

UDP's checksum covers the whole datagram, so the receiving kernel drops a datagram with one bit
flipped anywhere (the namespace's `UdpInCsumErrors` grows) and the application never sees it.
UDP-Lite lets the sender choose how much the checksum covers; covering only its header, a datagram
whose payload was damaged on the way is delivered as it is, and the lab's own CRC-32 in each probe
counts it as `corrupted`. A link with `corrupt` shows the difference side by side: what
checksums are for, and who should check what (docs/architecture.md#protocols).

Linux only (IPPROTO_UDPLITE, `UdpLite` counters in /proc/net/snmp), and deprecated there: newer
kernels may not have it, which `unavailable()` says before any run. The kernel transport is not
UDP (IP protocol 136), so the unprivileged loopback relay cannot carry it (`relayable` is False):
it runs on the real link, or on loopback without impairment.

The echo server is this module too: `python -m lab.protocols.udplite --host H --port P`, a helper
process (lab.child: Ready({"udp": [host, port], ...}) or Failed on its channel) that echoes each
datagram with the same coverage, refuses what the lab's UDP echo server refuses (lab.endpoints.common
UdpGuard: its own address, low ports, floods, echo loops), and never stops on a peer's input.
"""

from __future__ import annotations

import argparse
import errno
import select
import signal
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any

from lab.child import Channel, Failed, Ready, child_channel, python_argv
from lab.endpoints.common import UdpGuard, resolve_bind
from lab.errors import EndpointError, LabError
from lab.i18n import N_
from lab.metric_registry import Metric
from lab.protocols import Requirement
from lab.protocols.common import family
from lab.protocols.udp import UDP

IPPROTO_UDPLITE = getattr(socket, "IPPROTO_UDPLITE", 136)  # netinet/in.h
UDPLITE_SEND_CSCOV = 10  # linux/udp.h: bytes the checksum covers on sending (0: all)
UDPLITE_RECV_CSCOV = 11  # linux/udp.h: the least coverage accepted on receiving
HEADER_COVERAGE = 8  # the UDP-Lite header only: a damaged payload still reaches the application
RECV_BUFSIZE = 65536
SERVER_SOCKET_BUFFER = 1 << 20  # as the lab's UDP echo server: a burst is not dropped at once


def udplite_socket(sock_family: int = socket.AF_INET, coverage: int = HEADER_COVERAGE) -> socket.socket:
    """A UDP-Lite datagram socket whose checksum covers `coverage` bytes, both ways (OSError if the
    kernel has no UDP-Lite)."""
    sock = socket.socket(sock_family, socket.SOCK_DGRAM, IPPROTO_UDPLITE)
    try:
        sock.setsockopt(IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV, coverage)
        sock.setsockopt(IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV, coverage)
    except BaseException:
        sock.close()
        raise
    return sock


def udplite_problem() -> str | None:
    """None if this kernel offers UDP-Lite; else one sentence saying it does not."""
    try:
        udplite_socket().close()
    except OSError as exc:
        if exc.errno in (errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT, errno.EAFNOSUPPORT):
            return ("needs UDP-Lite (IP protocol 136) in the kernel, which this one does not offer "
                    "(Linux deprecated it; kernels built without CONFIG_INET have none)")
        return f"needs a UDP-Lite socket: {exc.strerror or exc}"
    return None


CHECKSUM_COUNTERS = ("UdpInCsumErrors", "UdpLiteInCsumErrors", "TcpInCsumErrors")


def checksum_drops(result: Mapping[str, Any]) -> int | None:
    """Datagrams and segments the kernels at both ends dropped for a bad checksum during a run (the
    namespaces' InCsumErrors deltas); None where no kernel counters were read (a loopback run)."""
    kernel = result.get("kernel") or {}
    if not kernel:
        return None
    return sum(int((kernel.get(side) or {}).get(name, 0)) for side in ("client", "server")
               for name in CHECKSUM_COUNTERS)


def _point_has_checksum_drops(point: Mapping[str, Any]) -> bool:
    return any(checksum_drops(r) for r in point.get("results", []))


CHECKSUM_DROPS = Metric(
    name="checksum_drops", unit="packets", read=checksum_drops,
    doc="packets the kernels at both ends dropped for a bad checksum (InCsumErrors; linked runs only)",
    label=N_("dropped for bad checksum"), shown=_point_has_checksum_drops,
)


class UdpLite(UDP):
    name = "udplite"
    transport = "udp"  # the client and the link treat it as UDP; the kernel sees IP protocol 136
    description = "one probe per UDP-Lite datagram, checksum over the header only (damage reaches the app)"
    style = "bold yellow"
    requires = (Requirement("UDP-Lite in the kernel", check_fn=udplite_problem),)
    metrics = (CHECKSUM_DROPS,)

    @property
    def relayable(self) -> bool:
        return False  # the loopback relay carries UDP (protocol 17) only

    def open_socket(self, host: str) -> socket.socket:
        return udplite_socket(family(host))

    def server_argv(self, host: str, port: int) -> list[str]:
        return python_argv("lab.protocols.udplite", "--host", host, "--port", str(port))

    def server_address(self, ready: Mapping[str, Any]) -> tuple[str, int]:
        host, port = ready["udp"]
        return str(host), int(port)


# --- the echo server --------------------------------------------------------------------------------
class UdpLiteEcho:
    """A UDP-Lite echo server: one bound socket, answered in a blocking loop until the process ends."""

    def __init__(self, host: str, port: int) -> None:
        sock_family, sockaddr = resolve_bind(host, port, socket.SOCK_DGRAM)
        try:
            self.sock = udplite_socket(sock_family)
        except OSError as exc:
            raise EndpointError(f"cannot open a UDP-Lite socket: {exc.strerror or exc}") from exc
        try:
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                self.sock.setsockopt(socket.SOL_SOCKET, option, SERVER_SOCKET_BUFFER)
            self.sock.bind(sockaddr)
        except OSError as exc:
            self.sock.close()
            raise EndpointError(f"cannot listen on UDP-Lite {host}:{port}: {exc.strerror or exc}") from exc
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.guard = UdpGuard(self.address)
        self.counts = {"datagrams_in": 0, "datagrams_out": 0, "refused": 0, "errors": 0}

    def serve_forever(self, channel: Channel | None = None) -> None:
        """Echo every datagram back to its sender; nothing a peer sends ends the loop. With the
        parent's `channel`, return when it closes (the parent is gone: no orphan keeps serving)."""
        watched = [self.sock] if channel is None else [self.sock, channel]
        while True:
            readable, _, _ = select.select(watched, [], [])
            if channel is not None and channel in readable:
                return
            self.echo_one()

    def echo_one(self) -> None:
        """Receive one datagram and answer it (unless the guard refuses it)."""
        try:
            data, peer = self.sock.recvfrom(RECV_BUFSIZE)
        except OSError:  # e.g. ECONNREFUSED: an ICMP error for an earlier echo to a gone client
            self.counts["errors"] += 1
            return
        self.counts["datagrams_in"] += 1
        if self.guard.refusal(peer, data, time.monotonic()):
            self.counts["refused"] += 1
            return
        try:
            self.sock.sendto(data, peer)
        except OSError:  # a full send buffer, an unreachable peer: that datagram only
            self.counts["errors"] += 1
            return
        self.counts["datagrams_out"] += 1

    def close(self) -> None:
        self.sock.close()


def main(argv: list[str] | None = None) -> int:
    """The helper process: bind, answer Ready (or Failed), echo until SIGTERM (or its parent is gone)."""
    parser = argparse.ArgumentParser(prog="python -m lab.protocols.udplite",
                                     description="UDP-Lite echo server (checksum over the header only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    channel = child_channel()
    try:
        server = UdpLiteEcho(args.host, args.port)
    except LabError as exc:
        if channel is not None:
            channel.send(Failed(exc))
        print(f"lab: {exc}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    info = {"udp": list(server.address), "checksum_coverage": HEADER_COVERAGE}
    if channel is not None:
        channel.send(Ready(info))
    else:
        print(f"UDP-Lite echo listening on {server.address[0]}:{server.address[1]}", flush=True)
    try:
        server.serve_forever(channel)
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
