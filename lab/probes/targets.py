"""Where the atlas may aim: checked before any packet is built (standard library only)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from lab.errors import ConfigError

DEFAULT_ADDRESS = "198.18.0.2"  # NAME-server (docs/architecture.md#addresses-and-network-rules)
DEFAULT_PEER = "198.18.0.1"  # the virtual peer "on the wire": NAME-client's address
SANDBOX_PREFIXLEN = 24


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxAddresses:
    """The address the sandbox's servers own, and the virtual peer packets come from."""

    address: str
    peer: str
    prefixlen: int = SANDBOX_PREFIXLEN
    # Where application cases (real sockets) go: a loopback target gets echo servers of its own on
    # that loopback address, inside the sandbox; None means the TUN address, like everything else.
    app_address: str | None = None

    @property
    def app_target(self) -> str:
        """The address application cases connect to."""
        return self.app_address or self.address

    def describe(self) -> str:
        """One line for people: where the crafted packets and the real sockets go."""
        wire = (f"crafted packets enter the sandbox's TUN from peer {self.peer} to echo servers "
                f"on {self.address}")
        if self.app_address is None:
            return f"{wire}; application cases use real sockets to the same servers"
        return (f"{wire} (a packet from a wire cannot be addressed to loopback: the kernel drops it "
                f"as a martian); application cases use real sockets to echo servers on "
                f"{self.app_address}, inside the same private namespace")


def plan_target(target: str | None) -> SandboxAddresses:
    """Check `target` (TargetRefusedError unless loopback or 198.18.0.0/15) and plan the sandbox.

    The sandbox owns the target address itself, in a private namespace, so the atlas never
    reaches anything but the lab's own servers. A loopback target keeps the default TUN address
    for crafted packets — "from the wire" they cannot be addressed to 127/8 or ::1 (the kernel
    drops them as martians) — and sends the application cases to servers on that loopback address.
    """
    if target is None:
        return SandboxAddresses(address=DEFAULT_ADDRESS, peer=DEFAULT_PEER)
    from lab.targets import check_lab_target

    checked = ipaddress.ip_address(check_lab_target(target))
    if checked.is_loopback:
        return SandboxAddresses(address=DEFAULT_ADDRESS, peer=DEFAULT_PEER, app_address=str(checked))
    if checked.version != 4:
        raise ConfigError(f"the atlas speaks IPv4 only; give a 198.18.0.0/15 address, not {target}")
    net = ipaddress.ip_network(f"{checked}/{SANDBOX_PREFIXLEN}", strict=False)
    if checked in (net.network_address, net.broadcast_address):
        raise ConfigError(f"{target} is the network or broadcast address of {net}; pick a host address")
    peer = net.network_address + (2 if int(checked) - int(net.network_address) == 1 else 1)
    return SandboxAddresses(address=str(checked), peer=str(peer))
