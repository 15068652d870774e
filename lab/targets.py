"""Where the lab may send: loopback and its own namespaces, decided before any socket exists.

Every sender (measuring clients of every protocol, probes, floods) normalises its target once with
`resolve_lab_target` and sends only to what it returns (docs/architecture.md#addresses-and-network-rules).
"""

from __future__ import annotations

import ipaddress

from lab.errors import TargetRefusedError

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



def lab_address(address: tuple[str, int]) -> tuple[str, int]:
    """(normalised host, port) a client may send to: every sender checks, before any socket exists."""
    return resolve_lab_target(address[0]), int(address[1])


def where(address: tuple[str, int]) -> str:
    """`host:port`, IPv6 hosts in brackets (for messages)."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

