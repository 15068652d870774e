"""The bulk flows' formats (docs/architecture.md#bulk-traffic). Sans-IO: bytes in, bytes out.

A byte stream (TCP, a QUIC stream, ARQ's delivered bytes) starts with a `HELLO` (32 bytes: magic
"WLBK", version, mode, flow id, the flow's start on CLOCK_MONOTONIC, the sampling interval), then
carries blocks: a 20-byte header (magic "Wb", length, seq, CRC-32) and `length` payload bytes. The
CRC-32 covers the payload, then the header's length and seq, so a sender computes its constant
payload's CRC once and only the 12 header bytes per block. The payload is always `pattern`: the
sink compares it byte for byte (memcmp, some 40 times faster than a CRC in Python) and checks the
header's CRC against the one that payload has. After the sender's end of stream the
sink answers one `SUMMARY` (magic "WLSM", a length, JSON) and closes.

A datagram flow opens a TCP control connection to the sink's port with a HELLO of mode
`MODE_DATAGRAMS`, which the sink acknowledges (`ACCEPTED`) before the first datagram is sent (or it
could arrive before the flow is known); each datagram has a 32-byte header (magic "Wd", version,
flags, flow id, seq, send time, CRC-32 over the payload then the header's first 28 bytes). At the
end the sender sends `END` (sent datagrams and bytes, how long the flow must be quiet) on the
control connection and the sink answers a SUMMARY once every datagram arrived or the flow stayed
quiet that long.

A stream that does not start with the magic is a plain RFC 863 discard client (nc): counted,
never answered.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from lab.errors import RemoteWireError

VERSION = 1
HELLO_MAGIC = b"WLBK"
MODE_STREAM = 1  # blocks follow on this connection
MODE_DATAGRAMS = 2  # this connection controls a datagram flow of the same flow id
MODES = (MODE_STREAM, MODE_DATAGRAMS)
HELLO = struct.Struct("!4sBBHQQQ")  # magic, version, mode, reserved, flow id, start ns, interval ns
BLOCK_MAGIC = b"Wb"
BLOCK = struct.Struct("!2sHIQI")  # magic, reserved, payload length, seq, crc32
BLOCK_SIZE = 64 * 1024  # payload bytes per block a sender writes
MAX_BLOCK = 1 << 20  # larger declared lengths are garbage
DATAGRAM_MAGIC = b"Wd"
DATAGRAM = struct.Struct("!2sBBQQQI")  # magic, version, flags, flow id, seq, send ns, crc32
ACCEPTED = b"WLOK"  # the sink's answer to a datagram flow's hello: its datagrams are counted from now
END_MAGIC = b"WLEN"
END = struct.Struct("!4sQQQ")  # magic, datagrams sent, bytes sent, quiet ns
MAX_QUIET_S = 10.0  # the longest quiet an END may ask for
MAX_END_WAIT_S = 60.0  # the sink answers an END by then whatever still arrives (a queue draining)
SUMMARY_MAGIC = b"WLSM"
SUMMARY_HEAD = struct.Struct("!4sI")
MAX_SUMMARY = 8 * 1024 * 1024
MIN_INTERVAL_NS = 10_000_000  # as lab.bulk.MIN_INTERVAL_S
MAX_INTERVAL_NS = 600 * 10**9


@dataclass(frozen=True, slots=True)
class Hello:
    mode: int
    flow_id: int
    start_ns: int
    interval_ns: int

    def encode(self) -> bytes:
        return HELLO.pack(HELLO_MAGIC, VERSION, self.mode, 0, self.flow_id, self.start_ns, self.interval_ns)

    @classmethod
    def decode(cls, data: bytes) -> Hello:
        """RemoteWireError for anything but a well-formed hello of this version."""
        if len(data) != HELLO.size:
            raise RemoteWireError(f"a bulk hello is {HELLO.size} bytes, got {len(data)}")
        magic, version, mode, _reserved, flow_id, start_ns, interval_ns = HELLO.unpack(data)
        if magic != HELLO_MAGIC or version != VERSION or mode not in MODES:
            raise RemoteWireError("not a bulk hello of version 1")
        if not MIN_INTERVAL_NS <= interval_ns <= MAX_INTERVAL_NS:
            raise RemoteWireError(f"bulk hello interval out of range: {interval_ns} ns")
        return cls(mode, flow_id, start_ns, interval_ns)


PATTERN_PERIOD = 256
_PATTERN_BASE = bytes((i * 131 + 7) & 0xFF for i in range(PATTERN_PERIOD))  # 131 is odd: all 256 values
PATTERN = _PATTERN_BASE * ((MAX_BLOCK + 2 * PATTERN_PERIOD) // PATTERN_PERIOD)  # any offset, any length
_pattern_crcs: dict[int, int] = {}


def pattern(size: int) -> bytes:
    """The payload every block carries (its first `size` bytes): deterministic, not all one value,
    repeating every PATTERN_PERIOD bytes."""
    if size <= len(PATTERN):
        return PATTERN[:size]
    return (_PATTERN_BASE * (size // PATTERN_PERIOD + 1))[:size]


def pattern_crc(size: int) -> int:
    """zlib.crc32 of `pattern(size)` (kept for the few sizes a flow uses)."""
    crc = _pattern_crcs.get(size)
    if crc is None:
        if len(_pattern_crcs) >= 64:
            _pattern_crcs.clear()
        crc = _pattern_crcs[size] = zlib.crc32(pattern(size))
    return crc


class BlockWriter:
    """Encodes a sender's blocks: `block(length)` is one block of the pattern, seq counting up."""

    def __init__(self, block_size: int = BLOCK_SIZE) -> None:
        self.seq = 0
        self.resize(block_size)

    def resize(self, block_size: int) -> None:
        """Blocks of `block_size` payload bytes from the next one on (a fast sender writes bigger
        blocks: fewer system calls and copies per byte; the sink takes any length up to MAX_BLOCK)."""
        self.block_size = max(1, min(block_size, MAX_BLOCK))
        self._payload = pattern(self.block_size)
        self._crc = pattern_crc(self.block_size)
        self._frame = bytearray(BLOCK.size) + self._payload  # `view`'s buffer: header, then the payload

    def block(self, length: int | None = None) -> bytes:
        """The next block's bytes: header + `length` (at most block_size) payload bytes."""
        return bytes(self.view(length))

    def view(self, length: int | None = None) -> memoryview:
        """The next block as a view of one buffer this writer keeps, valid until the next call: only
        the header is written (a block of megabytes is not copied to prepend 24 bytes, which took a
        sixth of a multi-Gbit/s sender's time)."""
        length = self.block_size if length is None else min(length, self.block_size)
        crc = self._crc if length == self.block_size else zlib.crc32(memoryview(self._payload)[:length])
        head = struct.pack("!IQ", length, self.seq)
        BLOCK.pack_into(self._frame, 0, BLOCK_MAGIC, 0, length, self.seq, zlib.crc32(head, crc))
        self.seq += 1
        return memoryview(self._frame)[:BLOCK.size + length]


def datagram(flow_id: int, seq: int, send_ns: int, payload: bytes, payload_crc: int) -> bytes:
    """One datagram of a flow: header + payload (`payload_crc` = zlib.crc32(payload), computed once)."""
    head = struct.pack("!2sBBQQQ", DATAGRAM_MAGIC, VERSION, 0, flow_id, seq, send_ns)
    return head + struct.pack("!I", zlib.crc32(head, payload_crc)) + payload


@dataclass(frozen=True, slots=True)
class DatagramHeader:
    flow_id: int
    seq: int
    send_ns: int
    intact: bool


def parse_datagram(data: bytes) -> DatagramHeader | None:
    """The header of one of our datagrams (intact: its CRC matches); None if it is not one."""
    if len(data) < DATAGRAM.size or data[:2] != DATAGRAM_MAGIC or data[2] != VERSION:
        return None
    _magic, _version, _flags, flow_id, seq, send_ns, crc = DATAGRAM.unpack_from(data)
    view = memoryview(data)
    intact = zlib.crc32(view[:DATAGRAM.size - 4], zlib.crc32(view[DATAGRAM.size:])) == crc
    return DatagramHeader(flow_id, seq, send_ns, intact)


def encode_end(sent: int, bytes_sent: int, quiet_ns: int) -> bytes:
    return END.pack(END_MAGIC, sent, bytes_sent, quiet_ns)


def decode_end(data: bytes) -> tuple[int, int, int]:
    """(sent, bytes_sent, quiet_ns) of an END; RemoteWireError if it is not one."""
    if len(data) != END.size or data[:4] != END_MAGIC:
        raise RemoteWireError("not a bulk END message")
    _magic, sent, bytes_sent, quiet_ns = END.unpack(data)
    return sent, bytes_sent, quiet_ns


def encode_summary(summary: dict[str, Any]) -> bytes:
    body = json.dumps(summary, separators=(",", ":")).encode()
    return SUMMARY_HEAD.pack(SUMMARY_MAGIC, len(body)) + body


class SummaryReader:
    """Collects a sink's SUMMARY from the bytes that come back; `.value` once complete."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.value: dict[str, Any] | None = None

    def feed(self, data: bytes) -> dict[str, Any] | None:
        """Add bytes; the summary once it is whole (RemoteWireError for anything else)."""
        if self.value is not None:
            return self.value
        self._buffer += data
        if len(self._buffer) < SUMMARY_HEAD.size:
            return None
        magic, length = SUMMARY_HEAD.unpack_from(self._buffer)
        if magic != SUMMARY_MAGIC or length > MAX_SUMMARY:
            raise RemoteWireError("the sink's answer is not a bulk summary (is this a wirelab sink?)")
        if len(self._buffer) < SUMMARY_HEAD.size + length:
            return None
        try:
            value = json.loads(bytes(self._buffer[SUMMARY_HEAD.size:SUMMARY_HEAD.size + length]))
        except ValueError as exc:
            raise RemoteWireError(f"the sink's summary is not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise RemoteWireError("the sink's summary is not a JSON object")
        self.value = value
        return value
