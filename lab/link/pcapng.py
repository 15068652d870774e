"""A minimal pcapng writer with per-packet comments (scapy 2.8's PcapNgWriter cannot write them).

Block layouts from the pcapng spec (draft-ietf-opsawg-pcapng): a Section Header Block, one
Interface Description Block per link direction (LINKTYPE_RAW: the packets are bare IP, as read
from TUN), then one Enhanced Packet Block per packet with an `opt_comment` saying what the link
did. Wireshark shows the comment as `frame.comment`; scapy's rdpcap reads it as `pkt.comment`.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 0x00000001
EPB_TYPE = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D
LINKTYPE_RAW = 101  # tcpdump.org link-layer header types: raw IPv4/IPv6
OPT_ENDOFOPT = 0
OPT_COMMENT = 1
IF_NAME = 2
IF_TSRESOL = 9
TSRESOL_NS = 9  # if_tsresol: 10^-9 s, so timestamps are plain time.time_ns()
SNAPLEN = 0  # 0 = no limit (pcapng spec)


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad(value)


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


class PcapNgWriter:
    """Writes a pcapng file: `add_interface(name)` -> id, then `packet(id, ts_ns, data, comment)`."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._interfaces = 0
        body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)  # version 1.0, unknown length
        body += _option(OPT_COMMENT, b"written by wirelab's link forwarder") + _option(OPT_ENDOFOPT, b"")
        stream.write(_block(SHB_TYPE, body))

    def add_interface(self, name: str) -> int:
        """Declare an interface (one per link direction); returns its id for `packet`."""
        body = struct.pack("<HHI", LINKTYPE_RAW, 0, SNAPLEN)
        body += _option(IF_NAME, name.encode()) + _option(IF_TSRESOL, bytes([TSRESOL_NS]))
        body += _option(OPT_ENDOFOPT, b"")
        self._stream.write(_block(IDB_TYPE, body))
        self._interfaces += 1
        return self._interfaces - 1

    def packet(self, interface: int, ts_ns: int, data: bytes, comment: str = "") -> None:
        """Append one packet with an optional comment."""
        body = struct.pack(
            "<IIIII", interface, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(data), len(data)
        ) + _pad(data)
        if comment:
            body += _option(OPT_COMMENT, comment.encode()) + _option(OPT_ENDOFOPT, b"")
        self._stream.write(_block(EPB_TYPE, body))

    def flush(self) -> None:
        """Push buffered blocks to the file."""
        self._stream.flush()
