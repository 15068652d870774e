"""The kernel's offloads on the link's TUN devices: virtio_net_hdr, GSO batches, partial checksums.

With IFF_VNET_HDR (lab.link.netns) every packet read from or written to a TUN device is preceded
by a 10-byte `struct virtio_net_hdr` (linux/virtio_net.h, little-endian on the lab's hosts):

    flags u8 | gso_type u8 | hdr_len u16 | gso_size u16 | csum_start u16 | csum_offset u16

and TUNSETOFFLOAD lets the kernel hand the forwarder what it would hand a NIC: TCP segments as one
GSO batch of up to 64 KB (gso_type TCPV4/TCPV6, gso_size = the MSS) and checksums left partial
(flags NEEDS_CSUM: the field holds the pseudo-header sum, the rest starts at csum_start). Written
unchanged into the other TUN device, the receiving kernel takes the batch as GRO would have made it.

This module is the forwarder's arithmetic on them, pure and stdlib only: how many packets a batch
is on the wire and how many bytes (`wire_size`), cutting a batch into those packets the way the
kernel's software GSO does (`segment`), and completing a partial checksum (`complete_checksum`).
See docs/architecture.md#the-forwarder for which impairments take batches whole.
"""

from __future__ import annotations

import fcntl
import struct
from array import array

VNET_HDR_LEN = 10  # sizeof(struct virtio_net_hdr); TUNSETVNETHDRSZ is left at this default
ZERO_HDR = bytes(VNET_HDR_LEN)  # a plain packet: no GSO, checksum complete (the receiver verifies it)
_HDR = struct.Struct("<BBHHHH")

# linux/virtio_net.h
F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_TCPV6 = 0, 1, 4
GSO_ECN = 0x80  # the batch carries CWR (the kernel sets it only on the first segment)

# linux/if_tun.h
TUNGETIFF = 0x800454D2
TUNSETOFFLOAD = 0x400454D0
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6

_TCP = 6
_UDP = 17
_TCP_FIN, _TCP_PSH, _TCP_CWR = 0x01, 0x08, 0x80


def has_vnet_hdr(fd: int) -> bool:
    """True if the TUN device open at `fd` was made with IFF_VNET_HDR (asked with TUNGETIFF)."""
    try:
        flags = struct.unpack("16sH", fcntl.ioctl(fd, TUNGETIFF, bytes(18)))[1]
    except OSError:
        return False
    return bool(flags & IFF_VNET_HDR)


def set_offloads(fd: int, on: bool) -> bool:
    """Turn checksum and TCP segmentation offload on (or all off) for what the kernel hands us on
    `fd`; False if the kernel refused (the device then stays as it was)."""
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS if on else 0)
    except OSError:
        return False
    return True


def _ones_sum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """RFC 1071 ones'-complement sum of `data` in host order words (little-endian), folded to 16 bits;
    pack the complement with '<H' to get the network-order field."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = start + sum(array("H", bytes(data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _fold_field(total: int) -> bytes:
    """The checksum field for a folded sum (0 sent as 0xFFFF, as the kernel does for UDP)."""
    return struct.pack("<H", (~total & 0xFFFF) or 0xFFFF)


def wire_size(frame: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """(packets, bytes, bytes of each but the last) a frame read from a vnet-header TUN device is on
    the wire: 1 and its IP length unless it is a TCP GSO batch, which is ceil(payload / gso_size)
    segments, each with its own copy of the IP and TCP headers."""
    gso_type = frame[1] & ~GSO_ECN
    size = len(frame) - VNET_HDR_LEN
    if gso_type not in (GSO_TCPV4, GSO_TCPV6):
        return 1, size, size
    mss = frame[4] | frame[5] << 8
    headers = _tcp_headers_len(frame)
    payload = size - headers
    if mss <= 0 or payload <= mss:
        return 1, size, size
    count = -(-payload // mss)
    return count, size + (count - 1) * headers, headers + mss


def _tcp_headers_len(frame: bytes | bytearray | memoryview) -> int:
    ip = VNET_HDR_LEN
    ip_len = (frame[ip] & 0x0F) * 4 if frame[ip] >> 4 == 4 else 40
    return ip_len + (frame[ip + ip_len + 12] >> 4) * 4


def complete_checksum(packet: bytes | bytearray | memoryview, csum_start: int, csum_offset: int) -> bytes:
    """`packet` (bare IP) with the partial checksum at csum_start + csum_offset made whole, as the
    kernel's skb_checksum_help does: the field holds the pseudo-header sum, so summing from
    csum_start over the rest and complementing gives the full checksum."""
    data = bytearray(packet)
    field = csum_start + csum_offset
    data[field:field + 2] = _fold_field(_ones_sum(memoryview(data)[csum_start:]))
    return bytes(data)


def _ipv4_header_checksum(header: bytearray) -> None:
    header[10:12] = b"\0\0"
    header[10:12] = _fold_field(_ones_sum(header))


def segment(frame: bytes | bytearray | memoryview) -> list[bytes]:
    """The bare IP packets `frame` (vnet header first) is on the wire, each with a complete checksum.

    A TCPV4 batch is cut as the kernel's tcp_gso_segment cuts it: payload in gso_size pieces, IP id
    counting up from the batch's, total length and header checksum per segment, sequence numbers
    advancing, FIN and PSH only on the last segment, CWR only on the first. A single packet with a
    partial checksum gets it completed. Anything else (an IPv6 batch: the lab's link is IPv4) is
    returned whole.
    """
    flags, gso_type, _, mss, csum_start, csum_offset = _HDR.unpack_from(frame)
    packet = memoryview(frame)[VNET_HDR_LEN:]
    if gso_type & ~GSO_ECN != GSO_TCPV4 or packet[0] >> 4 != 4:
        if flags & F_NEEDS_CSUM:
            return [complete_checksum(packet, csum_start, csum_offset)]
        return [bytes(packet)]
    ihl = (packet[0] & 0x0F) * 4
    doff = (packet[ihl + 12] >> 4) * 4
    headers = ihl + doff
    payload = packet[headers:]
    if mss <= 0:
        mss = max(1, len(payload))
    ip_id = packet[4] << 8 | packet[5]
    seq = int.from_bytes(packet[ihl + 4:ihl + 8], "big")
    tcp_flags = packet[ihl + 13]
    pseudo_addresses = _ones_sum(packet[12:20], _TCP << 8)  # source, destination, zero + protocol
    starts = range(0, max(len(payload), 1), mss)
    out = []
    for index, start in enumerate(starts):
        piece = payload[start:start + mss]
        last = index == len(starts) - 1
        ip = bytearray(packet[:ihl])
        ip[2:4] = (headers + len(piece)).to_bytes(2, "big")
        ip[4:6] = ((ip_id + index) & 0xFFFF).to_bytes(2, "big")
        _ipv4_header_checksum(ip)
        tcp = bytearray(packet[ihl:headers])
        tcp[4:8] = ((seq + start) & 0xFFFFFFFF).to_bytes(4, "big")
        own_flags = tcp_flags
        if not last:
            own_flags &= ~(_TCP_FIN | _TCP_PSH)
        if index:
            own_flags &= ~_TCP_CWR
        tcp[13] = own_flags
        tcp[16:18] = b"\0\0"
        segment_len = doff + len(piece)
        # pseudo-header length word, in the same host-order words as the rest of the sum
        pseudo = pseudo_addresses + ((segment_len & 0xFF) << 8 | segment_len >> 8)
        tcp[16:18] = _fold_field(_ones_sum(bytes(tcp) + bytes(piece), pseudo))
        out.append(bytes(ip) + bytes(tcp) + bytes(piece))
    return out
