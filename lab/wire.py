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

Version 2 (docs/architecture.md#timestamps-and-one-way-delay) keeps that header, with version 2,
and reserves 32 bytes after it for the lab's echo server to fill in place, so the reply is as long
as the probe and a plain echo (nc, socat) still answers it, leaving zeros::

    32     8    server_rx_ns   when the server received the probe (CLOCK_REALTIME ns)
    40     8    server_tx_ns   the server's clock just before it sent the reply (CLOCK_REALTIME ns)
    48     8    seen           bit i set: the server had received seq - 1 - i from this peer
    56     4    received       probes the server has received from this peer, this one included
    60     4    crc32          CRC-32 of bytes 32..59 (all 32 bytes zero: not filled)

The payload follows at offset 64. A reply's flags carry FLAG_SERVER_KERNEL_RX when server_rx_ns is
the kernel's stamp; FLAG_LOSS_QUERY marks a client's closing question (not a probe: the server
answers it with `seen` for its seq without counting it).

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
VERSION_2: Final = 2
VERSIONS: Final = (VERSION, VERSION_2)
HEADER = struct.Struct("!4sBBHQQII")
HEADER_SIZE: Final = HEADER.size  # 32
EXTENSION_BODY = struct.Struct("!QQQI")  # server_rx_ns, server_tx_ns, seen, received
EXTENSION_SIZE: Final = EXTENSION_BODY.size + 4  # + its CRC-32: 32
HEADER_V2_SIZE: Final = HEADER_SIZE + EXTENSION_SIZE  # 64
EMPTY_EXTENSION: Final = bytes(EXTENSION_SIZE)
SEEN_BITS: Final = 64
FLAG_LOSS_QUERY: Final = 0x80
FLAG_SERVER_KERNEL_RX: Final = 0x40
_SEQ = struct.Struct("!Q")
_EXTENSION_BODY_PACK = EXTENSION_BODY.pack
_BODY_SIZE = EXTENSION_BODY.size
_crc32 = zlib.crc32
# The largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP) bounds what one datagram can carry.
MAX_UDP_PAYLOAD: Final = 65507
DEFAULT_MAX_PAYLOAD: Final = MAX_UDP_PAYLOAD - HEADER_SIZE
_U16, _U32, _U64 = (1 << 16) - 1, (1 << 32) - 1, (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class ServerReport:
    """What the lab's echo server wrote into a version 2 reply (see the module docstring)."""

    rx_ns: int
    tx_ns: int
    seen: int
    received: int

    def __post_init__(self) -> None:
        if (type(self.rx_ns) is int and type(self.tx_ns) is int and type(self.seen) is int
                and type(self.received) is int and 0 <= self.rx_ns <= _U64 and 0 <= self.tx_ns <= _U64
                and 0 <= self.seen <= _U64 and 0 <= self.received <= _U32):
            return  # the checks below, in one expression (every decoded reply makes one)
        for name, value, top in (("rx_ns", self.rx_ns, _U64), ("tx_ns", self.tx_ns, _U64),
                                 ("seen", self.seen, _U64), ("received", self.received, _U32)):
            if not isinstance(value, int) or not 0 <= value <= top:
                raise LocalWireError(f"server report {name} must be an integer in 0..{top}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    """One probe message: a sequence number, the intended send time and a payload; version 2 also
    the server's report (None while the server has not filled it)."""

    seq: int
    send_ns: int
    payload: bytes = b""
    stream: int = 0
    flags: int = 0
    version: int = VERSION
    server: ServerReport | None = None

    def __post_init__(self) -> None:
        if (type(self.seq) is int and type(self.send_ns) is int and type(self.stream) is int
                and type(self.flags) is int and 0 <= self.seq <= _U64 and 0 <= self.send_ns <= _U64
                and 0 <= self.stream <= _U16 and 0 <= self.flags <= 0xFF and type(self.payload) is bytes
                and len(self.payload) <= _U32 and (self.server is None and self.version == VERSION or (
                    self.version == VERSION_2
                    and (self.server is None or type(self.server) is ServerReport)))):
            return  # every decoded probe: the checks below, in one expression (a reply's hot path)
        if self.version not in VERSIONS:
            raise LocalWireError(f"probe version must be one of {VERSIONS}, got {self.version!r}")
        if self.server is not None and (self.version != VERSION_2
                                        or not isinstance(self.server, ServerReport)):
            raise LocalWireError("only a version 2 probe carries a ServerReport")
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
        return header_size(self.version) + len(self.payload)


def header_size(version: int) -> int:
    """Bytes before the payload in a probe of `version` (32, or 64 for version 2)."""
    return HEADER_V2_SIZE if version == VERSION_2 else HEADER_SIZE


def _extension(report: ServerReport | None) -> bytes:
    if report is None:
        return EMPTY_EXTENSION
    return _packed_extension(report.rx_ns, report.tx_ns, report.seen, report.received)


def _packed_extension(rx_ns: int, tx_ns: int, seen: int, received: int) -> bytes:
    """The 32 bytes of a filled version 2 extension: the report's fields, then their CRC-32."""
    body = _EXTENSION_BODY_PACK(rx_ns, tx_ns, seen, received)
    return body + _crc32(body).to_bytes(4, "big")


def _unpacked_extension(extension: bytes | memoryview) -> tuple[tuple[int, int, int, int] | None, bool]:
    """(the report's fields, or None for an empty extension; whether its CRC-32 holds)."""
    if extension == EMPTY_EXTENSION:
        return None, True
    body = extension[:_BODY_SIZE]
    crc = int.from_bytes(extension[_BODY_SIZE:EXTENSION_SIZE], "big")
    return EXTENSION_BODY.unpack(body), _crc32(body) == crc


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
        probe.version,
        probe.flags,
        probe.stream,
        probe.seq,
        probe.send_ns,
        len(payload),
        zlib.crc32(payload),
    )
    if probe.version == VERSION_2:
        return header + _extension(probe.server) + payload
    return header + payload


def frame(seq: int, stream: int, send_ns: int, payload: bytes, crc: int, version: int = VERSION,
          flags: int = 0) -> bytes:
    """The bytes of `encode(Probe(...))` (the server's part left empty), for a hot path: the
    payload's CRC is computed ahead.

    A client computes the CRC before it stamps the send time, so stamping and sending are back to
    back. The caller guarantees the field ranges `Probe` would check.
    """
    header = HEADER.pack(MAGIC, version, flags, stream, seq, send_ns, len(payload), crc)
    if version == VERSION_2:
        return header + EMPTY_EXTENSION + payload
    return header + payload


# --- the server's side of version 2 -----------------------------------------------------------------
def v2_request(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """(seq, flags) if `data` starts like a version 2 probe the server should fill in, else None
    (a version 1 probe or anything else: echoed unchanged). Only the header's start is checked:
    the server echoes; the client's strict decoder judges the rest."""
    if len(data) < HEADER_V2_SIZE or data[4] != VERSION_2 or data[:4] != MAGIC:
        return None
    return _SEQ.unpack_from(data, 8)[0], data[5]


def fill_reply(data: bytes | bytearray | memoryview, report: ServerReport, *, kernel_rx: bool) -> bytearray:
    """The reply to version 2 probe `data`: the same bytes with the server's part filled in (and
    FLAG_SERVER_KERNEL_RX set when `report.rx_ns` is a kernel stamp)."""
    return filled(data, report.rx_ns, report.tx_ns, report.seen, report.received, kernel_rx)


def filled(data: bytes | bytearray | memoryview, rx_ns: int, tx_ns: int, seen: int, received: int,
           kernel_rx: bool) -> bytearray:
    """`fill_reply` from the report's fields, for the server's hot path (no ServerReport made; the
    caller keeps them in range: 64-bit times and bitmap, 32-bit count)."""
    reply = bytearray(data)
    if kernel_rx:
        reply[5] |= FLAG_SERVER_KERNEL_RX
    reply[HEADER_SIZE:HEADER_V2_SIZE] = _packed_extension(rx_ns, tx_ns, seen, received)
    return reply


def make_payload(size: int, seq: int = 0) -> bytes:
    """A deterministic, seq-dependent payload of `size` bytes (so a misdelivered payload shows)."""
    if size < 0:
        raise LocalWireError(f"payload size must be >= 0, got {size}")
    pattern = seq.to_bytes(8, "big") + b"wirelab-"
    return (pattern * (size // len(pattern) + 1))[:size]


def _parse_header(
    view: bytes | memoryview, max_payload: int
) -> tuple[int, int, int, int, int, int, int]:
    """Validate a header; return (version, flags, stream, seq, send_ns, length, crc)."""
    try:
        magic, version, flags, stream, seq, send_ns, length, crc = HEADER.unpack_from(view, 0)
    except struct.error as exc:
        raise TruncatedError(
            f"message shorter than the {HEADER_SIZE}-byte header ({len(view)} bytes)"
        ) from exc
    if magic != MAGIC:
        raise BadMagicError(f"bad magic {bytes(magic)!r} (expected {MAGIC!r}): not a wirelab probe")
    if version not in VERSIONS:
        raise BadVersionError(f"unsupported probe version {version} (this lab speaks 1 and 2)")
    if length > max_payload:
        raise LengthError(f"declared payload length {length} is over the maximum {max_payload}")
    return version, flags, stream, seq, send_ns, length, crc


def _server_report(extension: bytes | memoryview, seq: int) -> tuple[ServerReport | None, bool]:
    """(the report in a version 2 extension or None if empty, whether its CRC-32 holds)."""
    fields, ok = _unpacked_extension(extension)
    return (None if fields is None else ServerReport(*fields)), ok


def _probe(view: bytes | memoryview, version: int, flags: int, stream: int, seq: int, send_ns: int,
           length: int, crc: int) -> Probe:
    """The probe whose header was parsed at the start of `view` (which holds all of it); raises
    CrcMismatchError (with the probe) when the payload's or the server report's CRC fails."""
    start = header_size(version)
    payload = bytes(view[start:start + length])
    report, report_ok = (_server_report(view[HEADER_SIZE:HEADER_V2_SIZE], seq) if version == VERSION_2
                         else (None, True))
    probe = Probe(seq=seq, send_ns=send_ns, payload=payload, stream=stream, flags=flags, version=version,
                  server=report if report_ok else None)
    actual = zlib.crc32(payload)
    if actual != crc:
        raise CrcMismatchError(
            f"payload CRC-32 {actual:#010x} does not match header {crc:#010x} (seq {probe.seq})",
            probe=probe,
        )
    if not report_ok:
        raise CrcMismatchError(f"the server's report fails its CRC-32 (seq {seq})", probe=probe)
    return probe


def decode_untrusted_datagram(
    data: bytes | bytearray | memoryview, *, max_payload: int = DEFAULT_MAX_PAYLOAD
) -> Probe:
    """Decode one probe from one datagram received from the network.

    Raises `TruncatedError` if the datagram is shorter than its header or declared payload,
    `LengthError` if it is longer (trailing bytes) or the length is over `max_payload`,
    `BadMagicError`, `BadVersionError`, or `CrcMismatchError` (whose `.probe` holds what arrived).
    """
    view = data if type(data) is bytes else memoryview(data)  # slices of bytes are cheaper
    version, flags, stream, seq, send_ns, length, crc = _parse_header(view, max_payload)
    start = header_size(version)
    end = start + length
    if len(view) < start:
        raise TruncatedError(
            f"datagram ends inside its version {version} header ({len(view)} of {start} bytes)")
    if len(view) < end:
        raise TruncatedError(f"datagram carries {len(view) - start} of {length} payload bytes")
    if len(view) > end:
        raise LengthError(f"datagram has {len(view) - end} bytes after the declared payload")
    return _probe(view, version, flags, stream, seq, send_ns, length, crc)


Report = tuple[int, int, int, int]  # ServerReport's fields: rx_ns, tx_ns, seen, received


def read_reply(data: bytes | bytearray | memoryview, *,
               max_payload: int = DEFAULT_MAX_PAYLOAD) -> tuple[int, int, int, Report | None, bool]:
    """`decode_untrusted_datagram` for a client's hot path, without making a Probe: (seq, stream,
    flags, the server's report as (rx_ns, tx_ns, seen, received) or None, intact). `intact` is
    False where `decode_untrusted_datagram` raises CrcMismatchError (payload or report damaged;
    a damaged report is then None); every other RemoteWireError is raised the same."""
    if type(data) is not bytes:
        data = bytes(data)
    if len(data) >= HEADER_SIZE:
        magic, version, flags, stream, seq, _, length, crc = HEADER.unpack_from(data)
        start = HEADER_V2_SIZE if version == VERSION_2 else HEADER_SIZE
        if (magic == MAGIC and version in VERSIONS and length <= max_payload
                and len(data) == start + length):
            intact = _crc32(data[start:]) == crc
            report = None
            if version == VERSION_2:
                fields, ok = _unpacked_extension(data[HEADER_SIZE:HEADER_V2_SIZE])
                if ok:
                    report = fields
                else:
                    intact = False
            return seq, stream, flags, report, intact
    decode_untrusted_datagram(data, max_payload=max_payload)  # raises the error that says what is wrong
    raise AssertionError("read_reply: a datagram decode accepts must be accepted here")


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
            version, flags, stream, seq, send_ns, length, crc = _parse_header(view, self.max_payload)
        except RemoteWireError as exc:
            view.release()
            self._fail(exc)
        size = header_size(version) + length
        if available < size:
            view.release()
            return self._need_more(available)
        self._pos += size
        try:
            return _probe(view, version, flags, stream, seq, send_ns, length, crc)
        finally:
            view.release()

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
