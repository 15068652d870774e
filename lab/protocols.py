"""The protocol registry: a protocol is a name bound to a measuring client and an echo-server kind.

The runner, metrics and report look protocols up here and never branch on a name, so a new one
(an ARQ-over-UDP teaching protocol, QUIC...) plugs in by adding an entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lab.endpoints.client import run_tcp, run_udp
from lab.errors import ConfigError
from lab.records import RunRecord, TrafficPlan

# client(address, plan, *, progress=None, deadline_s=None) -> RunRecord
ClientFn = Callable[..., RunRecord]


@dataclass(frozen=True, slots=True, kw_only=True)
class Protocol:
    """A measurable protocol: how to run its client, and which echo server it talks to."""

    name: str
    client: ClientFn
    server_kind: str  # the `kind` to give lab.endpoints.server.EchoServer / running_server
    transport: str  # "tcp" or "udp": which kernel transport carries it (for firewalls, counters)
    description: str = ""

    def run(self, address: tuple[str, int], plan: TrafficPlan, **kw: Any) -> RunRecord:
        """Run this protocol's measuring client against `address`."""
        return self.client(address, plan, **kw)


PROTOCOLS: dict[str, Protocol] = {
    "tcp": Protocol(
        name="tcp", client=run_tcp, server_kind="tcp", transport="tcp",
        description="probes framed on one TCP connection (reliable, in order)",
    ),
    "udp": Protocol(
        name="udp", client=run_udp, server_kind="udp", transport="udp",
        description="one probe per UDP datagram (no retransmission, no ordering)",
    ),
}


def get_protocol(name: str) -> Protocol:
    """The registered protocol called `name`; ConfigError listing the known ones otherwise."""
    try:
        return PROTOCOLS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(PROTOCOLS))
        raise ConfigError(f"unknown protocol {name!r}: known protocols are {known}") from None
