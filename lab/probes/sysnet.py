"""The sandbox's system plumbing: a private network namespace, a TUN device, per-namespace sysctls.

Everything here runs inside the atlas's child process. `unshare(CLONE_NEWNET)` gives the calling
thread (the child's main thread, before any other thread exists) a namespace that the kernel frees
when the process exits — so teardown is guaranteed even if the child is killed.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct

from lab.errors import EndpointError

CLONE_NEWNET = 0x40000000  # linux/sched.h
TUNSETIFF = 0x400454CA  # linux/if_tun.h: _IOW('T', 202, int)
IFF_TUN = 0x0001  # linux/if_tun.h
ETH_P_IP = 0x0800  # linux/if_ether.h
# With packet information (no IFF_NO_PI) every frame carries a 4-byte header (flags, protocol):
# we declare ETH_P_IP ourselves, as an Ethernet header would, so a packet with a wrong version
# nibble still reaches ip_rcv() instead of being refused by the TUN driver's version sniffing.
PI_HEADER = struct.Struct("!HH")
PI_SIZE = PI_HEADER.size
TUN_READ_SIZE = 65535 + PI_SIZE  # the largest IPv4 packet plus the PI header
LINK_MTU = 1500  # Ethernet's MTU: what the "wire" in front of the TUN carries

# Per-namespace sysctls set inside the private namespace only (never the host's):
SANDBOX_SYSCTLS = {
    # Reassembly timeout 30 s -> 1 s, so "missing last fragment" is observed, not waited for.
    "net/ipv4/ipfrag_time": "1",
    # ICMP errors to one peer are rate limited (1/s after a burst of 6); the atlas sends many.
    "net/ipv4/icmp_ratelimit": "0",
    # Out-of-window/challenge ACKs are limited to one per 500 ms per socket (RFC 5961 §7).
    "net/ipv4/tcp_invalid_ratelimit": "0",
    # Half-open connections of the SYN flood retransmit SYN-ACKs 5 times (63 s); once is enough.
    "net/ipv4/tcp_synack_retries": "1",
    # The flood case expects SYN cookies when the queue is full: the kernel's default, pinned.
    "net/ipv4/tcp_syncookies": "1",
}


def unshare_network() -> None:
    """Move the calling thread into a new, private network namespace (needs CAP_NET_ADMIN)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise EndpointError(f"unshare(CLONE_NEWNET) failed: {os.strerror(err)} (needs CAP_NET_ADMIN)")


def open_tun(name: str) -> int:
    """Create TUN device `name` (with packet information) in this namespace; return its fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN))
    except OSError:
        os.close(fd)
        raise
    return fd


def write_sysctl(key: str, value: str) -> bool:
    """Write /proc/sys/KEY in this namespace; False if the kernel has no such knob."""
    try:
        with open(f"/proc/sys/{key}", "w", encoding="ascii") as knob:
            knob.write(value)
    except OSError:
        return False
    return True


def configure(tun_name: str, address: str, prefixlen: int) -> dict[str, bool]:
    """Bring lo and the TUN up, address the TUN, keep IPv6 chatter off it; which sysctls took."""
    from pyroute2 import IPRoute

    applied = {key: write_sysctl(key, value) for key, value in SANDBOX_SYSCTLS.items()}
    write_sysctl(f"net/ipv6/conf/{tun_name}/disable_ipv6", "1")
    with IPRoute() as ipr:
        (lo,) = ipr.link_lookup(ifname="lo")
        ipr.link("set", index=lo, state="up")
        (tun,) = ipr.link_lookup(ifname=tun_name)
        ipr.addr("add", index=tun, address=address, prefixlen=prefixlen)
        ipr.link("set", index=tun, state="up", mtu=LINK_MTU)
    return applied


def frame(packet: bytes) -> bytes:
    """Prefix an IPv4 packet with the TUN packet-information header."""
    return PI_HEADER.pack(0, ETH_P_IP) + packet


def unframe(data: bytes) -> tuple[int, bytes]:
    """Split a TUN frame into (ethertype, packet)."""
    if len(data) < PI_SIZE:
        return 0, b""
    _flags, proto = PI_HEADER.unpack_from(data)
    return proto, data[PI_SIZE:]
