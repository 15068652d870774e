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

The echo server is the lab's own (lab.endpoints.server) with its datagram socket made UDP-Lite
(`--udp-lite`, the same header-only coverage), started as `python -m lab.protocols.udplite --host H
--port P`: the same loop, guard (its own address, low ports, floods, echo loops) and counters as
the UDP echo server, and never stopped by a peer's input.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from collections.abc import Mapping
from typing import Any

from lab.child import python_argv
from lab.endpoints.common import (
    HEADER_COVERAGE,
    IPPROTO_UDPLITE,
    UDPLITE_RECV_CSCOV,
    UDPLITE_SEND_CSCOV,
    udplite_socket,
)
from lab.i18n import N_
from lab.metric_registry import Metric
from lab.protocols import Requirement
from lab.protocols.common import family
from lab.protocols.udp import UDP

__all__ = ["HEADER_COVERAGE", "IPPROTO_UDPLITE", "UDPLITE_RECV_CSCOV", "UDPLITE_SEND_CSCOV", "UdpLite",
           "udplite_socket"]


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

    def sink_argv(self, host: str, port: int) -> list[str]:
        return [*super().sink_argv(host, port), "--udp-lite"]



# --- the echo server ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """`python -m lab.protocols.udplite --host H --port P`: the lab's echo server, serving UDP-Lite."""
    from lab.endpoints.server import main as serve

    parser = argparse.ArgumentParser(prog="python -m lab.protocols.udplite",
                                     description="UDP-Lite echo server (checksum over the header only)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    return serve(["udp", "--udp-lite", "--host", args.host, "--port", str(args.port)])


if __name__ == "__main__":
    sys.exit(main())
