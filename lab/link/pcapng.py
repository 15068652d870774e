"""A minimal pcapng writer with per-packet comments (scapy 2.8's PcapNgWriter cannot write them).

Block layouts from the pcapng spec (draft-ietf-opsawg-pcapng): a Section Header Block, one
Interface Description Block per link direction (LINKTYPE_RAW: the packets are bare IP, as read
from TUN), then one Enhanced Packet Block per packet with an `opt_comment` saying what the link
did. Wireshark shows the comment as `frame.comment`; scapy's rdpcap reads it as `pkt.comment`.

A capture has a size limit (like tcpdump's -C, but it stops instead of rotating): the packet that
would cross it is written as a notice instead — its headers only are dropped (captured length 0,
original length kept) and its comment says the capture stopped there — and nothing after it.
"""

from __future__ import annotations

import contextlib
import struct
import sys
from collections.abc import Sequence
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
DEFAULT_CAPTURE_LIMIT = 256 * 2**20  # bytes: a few minutes of a busy link; iperf3 fills it in seconds
MIN_CAPTURE_LIMIT = 64 * 2**10  # room for the headers, some packets and the notice
MAX_CAPTURE_LIMIT = 64 * 2**30


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad(value)


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


def _packet_block(interface: int, ts_ns: int, data: bytes, comment: str, original_length: int) -> bytes:
    body = struct.pack(
        "<IIIII", interface, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(data), original_length
    ) + _pad(data)
    if comment:
        body += _option(OPT_COMMENT, comment.encode()) + _option(OPT_ENDOFOPT, b"")
    return _block(EPB_TYPE, body)


def _notice(limit: int, verdict: str) -> str:
    from lab.link.params import format_size

    return (f"capture limit {format_size(limit)} reached: this packet and all later ones are not captured "
            f"(the link still handles them; see the not_captured counters). This packet: {verdict}")


NOTICE_VERDICT_MAX = 200  # characters of the packet's own comment kept in the notice


class PcapNgWriter:
    """Writes a pcapng file: `add_interface(name)` -> id, then `packet(id, ts_ns, data, comment)`.

    With `limit` (bytes), the file never grows past it: `packet` returns False once it stopped.
    """

    def __init__(self, stream: BinaryIO, limit: int | None = None) -> None:
        self._stream = stream
        self._interfaces = 0
        self.limit = limit
        self.size = 0  # bytes written so far
        self.stopped = False  # the limit was reached
        # the notice is the largest block written once the next packet no longer fits
        self._notice_room = 0 if limit is None else len(
            _packet_block(0, 0, b"", _notice(limit, "x" * NOTICE_VERDICT_MAX), 0)) + 16
        body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)  # version 1.0, unknown length
        body += _option(OPT_COMMENT, b"written by wirelab's link forwarder") + _option(OPT_ENDOFOPT, b"")
        self._write(_block(SHB_TYPE, body))

    def _write(self, block: bytes) -> None:
        self._stream.write(block)
        self.size += len(block)

    def add_interface(self, name: str) -> int:
        """Declare an interface (one per link direction); returns its id for `packet`."""
        body = struct.pack("<HHI", LINKTYPE_RAW, 0, SNAPLEN)
        body += _option(IF_NAME, name.encode()) + _option(IF_TSRESOL, bytes([TSRESOL_NS]))
        body += _option(OPT_ENDOFOPT, b"")
        self._write(_block(IDB_TYPE, body))
        self._interfaces += 1
        return self._interfaces - 1

    def packet(self, interface: int, ts_ns: int, data: bytes, comment: str = "") -> bool:
        """Append one packet with an optional comment; False if the size limit stopped the capture."""
        if self.stopped:
            return False
        block = _packet_block(interface, ts_ns, data, comment, len(data))
        if self.limit is not None and self.size + len(block) + self._notice_room > self.limit:
            self.stopped = True
            verdict = comment[:NOTICE_VERDICT_MAX] or "forwarded"
            self._write(_packet_block(interface, ts_ns, b"", _notice(self.limit, verdict), len(data)))
            return False
        self._write(block)
        return True

    def flush(self) -> None:
        """Push buffered blocks to the file."""
        self._stream.flush()


class CaptureFile:
    """The forwarder's capture: a PcapNgWriter on a file that stops (never crashes) at its limit
    or on a write error such as a full disk, saying so once on stderr."""

    def __init__(self, path: str, limit: int | None, *, interfaces: Sequence[str]) -> None:
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - lives as long as the forwarder's loop
        try:
            self._writer = PcapNgWriter(self._file, limit)
            for name in interfaces:
                self._writer.add_interface(name)
        except BaseException:
            self._file.close()
            raise
        self.error: str | None = None

    @property
    def stopped(self) -> bool:
        """True once nothing more is captured (limit reached or write error)."""
        return self._writer.stopped or self.error is not None

    def packet(self, interface: int, ts_ns: int, data: bytes, comment: str) -> bool:
        """Capture one packet; False if it was not captured (the capture has stopped)."""
        if self.error is not None:
            return False
        was_stopped = self._writer.stopped
        try:
            captured = self._writer.packet(interface, ts_ns, data, comment)
        except OSError as exc:
            self.error = str(exc)
            print(f"lab: capture {self.path} stopped: {exc}", file=sys.stderr, flush=True)
            return False
        if not captured and not was_stopped:
            print(f"lab: capture {self.path} stopped at its size limit "
                  f"({self._writer.size} bytes written); the link goes on", file=sys.stderr, flush=True)
        return captured

    def close(self) -> None:
        """Flush and close the file (errors are already reported; a full disk must not crash us)."""
        with contextlib.suppress(OSError):
            self._file.close()
