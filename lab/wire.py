"""Probe message format — sans-IO: bytes in, probes or errors out; no sockets, no clocks.

A probe is a fixed 32-byte header followed by the payload::

    offset size field
    0      4    magic     b"WLAB"
    4      1    version   1
    5      1    flags     reserved bits for protocols built on top (0 today)
    6      2    stream    logical stream id (head-of-line experiments multiplex several)
    8      8    seq       sequence number
    16     8    send_ns   sender's monotonic clock when it meant to send, in ns
    24     4    length    payload length in bytes
    28     4    crc32     CRC-32 (zlib) of the payload

All integers are big-endian (network order). Decoding untrusted bytes raises only
`RemoteWireError` subclasses; misuse of this API raises `LocalWireError`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Final

from lab.errors import (
    BadMagicError,
    BadVersionError,
    CrcMismatchError,
    LengthError,
    LocalWireError,
    RemoteWireError,
    TruncatedError,
)

MAGIC: Final = b"WLAB"
VERSION: Final = 1
HEADER = struct.Struct("!4sBBHQQII")
HEADER_SIZE: Final = HEADER.size  # 32
# The largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP) bounds what one datagram can carry.
MAX_UDP_PAYLOAD: Final = 65507
DEFAULT_MAX_PAYLOAD: Final = MAX_UDP_PAYLOAD - HEADER_SIZE
_U16, _U32, _U64 = (1 << 16) - 1, (1 << 32) - 1, (1 << 64) - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    """One probe message: a sequence number, the intended send time and a payload."""

    seq: int
    send_ns: int
    payload: bytes = b""
    stream: int = 0
    flags: int = 0

    def __post_init__(self) -> None:
        for name, value, top in (
            ("seq", self.seq, _U64),
            ("send_ns", self.send_ns, _U64),
            ("stream", self.stream, _U16),
            ("flags", self.flags, 0xFF),
        ):
            if not isinstance(value, int) or not 0 <= value <= top:
                raise LocalWireError(f"probe {name} must be an integer in 0..{top}, got {value!r}")
        if not isinstance(self.payload, bytes | bytearray | memoryview):
            raise LocalWireError(f"probe payload must be bytes, got {type(self.payload).__name__}")
        if len(self.payload) > _U32:
            raise LocalWireError("probe payload longer than the 32-bit length field")

    @property
    def wire_size(self) -> int:
        """Bytes this probe takes on the wire (header + payload)."""
        return HEADER_SIZE + len(self.payload)


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
"""Returned by `StreamDecoder.next_message` when more bytes are needed."""
EOF: Final = _Sentinel("EOF")
"""Returned by `StreamDecoder.next_message` once the peer closed cleanly between messages."""


def encode(probe: Probe) -> bytes:
    """Serialise a probe to its wire form."""
    payload = bytes(probe.payload)
    header = HEADER.pack(
        MAGIC,
        VERSION,
        probe.flags,
        probe.stream,
        probe.seq,
        probe.send_ns,
        len(payload),
        zlib.crc32(payload),
    )
    return header + payload


def frame(seq: int, stream: int, send_ns: int, payload: bytes, crc: int) -> bytes:
    """The bytes of `encode(Probe(...))`, for a hot path: the payload's CRC is computed ahead.

    A client computes the CRC before it stamps the send time, so stamping and sending are back to
    back. The caller guarantees the field ranges `Probe` would check.
    """
    return HEADER.pack(MAGIC, VERSION, 0, stream, seq, send_ns, len(payload), crc) + payload


def make_payload(size: int, seq: int = 0) -> bytes:
    """A deterministic, seq-dependent payload of `size` bytes (so a misdelivered payload shows)."""
    if size < 0:
        raise LocalWireError(f"payload size must be >= 0, got {size}")
    pattern = seq.to_bytes(8, "big") + b"wirelab-"
    return (pattern * (size // len(pattern) + 1))[:size]


def _parse_header(
    view: bytes | memoryview, max_payload: int
) -> tuple[int, int, int, int, int, int]:
    """Validate a header; return (flags, stream, seq, send_ns, length, crc)."""
    try:
        magic, version, flags, stream, seq, send_ns, length, crc = HEADER.unpack_from(view, 0)
    except struct.error as exc:
        raise TruncatedError(
            f"message shorter than the {HEADER_SIZE}-byte header ({len(view)} bytes)"
        ) from exc
    if magic != MAGIC:
        raise BadMagicError(f"bad magic {bytes(magic)!r} (expected {MAGIC!r}): not a wirelab probe")
    if version != VERSION:
        raise BadVersionError(f"unsupported probe version {version} (this lab speaks {VERSION})")
    if length > max_payload:
        raise LengthError(f"declared payload length {length} is over the maximum {max_payload}")
    return flags, stream, seq, send_ns, length, crc


def _check_crc(probe: Probe, crc: int) -> Probe:
    actual = zlib.crc32(probe.payload)
    if actual != crc:
        raise CrcMismatchError(
            f"payload CRC-32 {actual:#010x} does not match header {crc:#010x} (seq {probe.seq})",
            probe=probe,
        )
    return probe


def decode_untrusted_datagram(
    data: bytes | bytearray | memoryview, *, max_payload: int = DEFAULT_MAX_PAYLOAD
) -> Probe:
    """Decode one probe from one datagram received from the network.

    Raises `TruncatedError` if the datagram is shorter than its header or declared payload,
    `LengthError` if it is longer (trailing bytes) or the length is over `max_payload`,
    `BadMagicError`, `BadVersionError`, or `CrcMismatchError` (whose `.probe` holds what arrived).
    """
    view = memoryview(data)
    flags, stream, seq, send_ns, length, crc = _parse_header(view, max_payload)
    end = HEADER_SIZE + length
    if len(view) < end:
        raise TruncatedError(f"datagram carries {len(view) - HEADER_SIZE} of {length} payload bytes")
    if len(view) > end:
        raise LengthError(f"datagram has {len(view) - end} bytes after the declared payload")
    probe = Probe(
        seq=seq, send_ns=send_ns, payload=bytes(view[HEADER_SIZE:end]), stream=stream, flags=flags
    )
    return _check_crc(probe, crc)


class StreamDecoder:
    """Incremental decoder for probes framed back to back on a byte stream (TCP).

    Feed it bytes with `receive_data` (``b""`` means the peer closed), then call `next_message`
    until it returns `NEED_DATA` or `EOF`. A `CrcMismatchError` consumes the bad message, so the
    caller may count it as corruption and keep decoding; any other `RemoteWireError` means the
    stream is desynchronised and the decoder stays failed (every later call raises it again).
    """

    def __init__(
        self, *, max_payload: int = DEFAULT_MAX_PAYLOAD, max_buffer: int | None = None
    ) -> None:
        if max_payload < 0:
            raise LocalWireError(f"max_payload must be >= 0, got {max_payload}")
        self.max_payload = max_payload
        # One whole message plus one read's worth of the next is all a well-behaved peer needs.
        self.max_buffer = max_buffer if max_buffer is not None else 2 * (HEADER_SIZE + max_payload)
        self._buf = bytearray()
        self._pos = 0
        self._eof = False
        self._failed: RemoteWireError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded."""
        return len(self._buf) - self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes from the stream; an empty `data` marks end of stream."""
        if self._eof:
            raise LocalWireError("receive_data called after end of stream")
        if not data:
            self._eof = True
            return
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        if len(self._buf) + len(data) > self.max_buffer:
            self._fail(
                LengthError(
                    f"stream buffer would hold {len(self._buf) + len(data)} bytes, "
                    f"over its bound of {self.max_buffer}"
                )
            )
        self._buf += data

    def _fail(self, exc: RemoteWireError) -> None:
        self._failed = exc
        raise exc

    def next_message(self) -> Probe | _Sentinel:
        """Return the next whole probe, `NEED_DATA`, or `EOF` (peer closed between messages)."""
        if self._failed is not None:
            raise self._failed
        available = len(self._buf) - self._pos
        if available < HEADER_SIZE:
            return self._need_more(available)
        view = memoryview(self._buf)[self._pos :]
        try:
            flags, stream, seq, send_ns, length, crc = _parse_header(view, self.max_payload)
        except RemoteWireError as exc:
            view.release()
            self._fail(exc)
        if available < HEADER_SIZE + length:
            view.release()
            return self._need_more(available)
        payload = bytes(view[HEADER_SIZE : HEADER_SIZE + length])
        view.release()
        self._pos += HEADER_SIZE + length
        probe = Probe(seq=seq, send_ns=send_ns, payload=payload, stream=stream, flags=flags)
        return _check_crc(probe, crc)

    def _need_more(self, available: int) -> _Sentinel:
        if not self._eof:
            return NEED_DATA
        if available == 0:
            return EOF
        self._fail(TruncatedError(f"stream ended inside a message ({available} bytes pending)"))
        raise AssertionError("unreachable")

    def messages(self) -> list[Probe]:
        """Drain every whole message currently buffered (stops at a CRC mismatch by raising it)."""
        out: list[Probe] = []
        while True:
            item = self.next_message()
            if isinstance(item, Probe):
                out.append(item)
            else:
                return out
