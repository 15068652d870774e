"""Where the atlas may aim: checked before any packet is built (standard library only)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from lab.errors import ConfigError

DEFAULT_ADDRESS = "198.18.0.2"  # the lab's server address (DESIGN.md: NAME-server)
DEFAULT_PEER = "198.18.0.1"  # the virtual peer "on the wire" (DESIGN.md: NAME-client)
SANDBOX_PREFIXLEN = 24


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxAddresses:
    """The address the sandbox's servers own, and the virtual peer packets come from."""

    address: str
    peer: str
    prefixlen: int = SANDBOX_PREFIXLEN


def plan_target(target: str | None) -> SandboxAddresses:
    """Check `target` (TargetRefusedError unless loopback or 198.18.0.0/15) and plan the sandbox.

    The sandbox owns the target address itself, in a private namespace, so the atlas never
    reaches anything but the lab's own servers. A loopback target keeps the default TUN address:
    packets "from the wire" cannot be addressed to 127/8 (the kernel drops them as martians).
    """
    if target is None:
        return SandboxAddresses(address=DEFAULT_ADDRESS, peer=DEFAULT_PEER)
    from lab.endpoints.client import check_lab_target

    checked = ipaddress.ip_address(check_lab_target(target))
    if checked.is_loopback:
        return SandboxAddresses(address=DEFAULT_ADDRESS, peer=DEFAULT_PEER)
    if checked.version != 4:
        raise ConfigError(f"the atlas speaks IPv4 only; give a 198.18.0.0/15 address, not {target}")
    net = ipaddress.ip_network(f"{checked}/{SANDBOX_PREFIXLEN}", strict=False)
    if checked in (net.network_address, net.broadcast_address):
        raise ConfigError(f"{target} is the network or broadcast address of {net}; pick a host address")
    peer = net.network_address + (2 if int(checked) - int(net.network_address) == 1 else 1)
    return SandboxAddresses(address=str(checked), peer=str(peer))
