"""The ARQ segment: one UDP datagram, a 36-byte header and the application's bytes.

Sans-IO like `lab.wire`: bytes in, `Segment` or `SegmentError` out. ::

    offset size field
    0      2    magic    b"AQ"
    2      1    version  1
    3      1    kind     1 DATA, 2 ACK
    4      1    scheme   1 stop-and-wait, 2 go-back-N, 3 selective repeat
    5      1    window   the sender's window (1..64): the peer's echo uses the same one
    6      2    length   payload bytes (ACKs carry none)
    8      4    conn     connection id, chosen at random by the client (one per run)
    12     4    seq      DATA: this segment's number (0, 1, 2, ...); ACK: the DATA segment it answers
    16     4    ack      ACK: the next number expected: every segment below it has arrived
    20     8    sack     ACK, selective repeat: bit i set = segment ack+1+i has arrived too
    28     4    copy     DATA: 1 for the first transmission, 2 for the first retransmission, ...;
                         ACK: the copy of the DATA segment it answers (0: not said)
    32     4    crc32    CRC-32 (zlib) of the header with this field zero, then the payload

Numbers are absolute and never wrap (a run has at most 10 million probes, far below 2**32): a
real protocol counts modulo a sequence space that must be at least twice the window for selective
repeat, and the lesson is simpler without it. Integers are big-endian (network order).

Why an ACK names the copy it answers: without it, the ACK of a segment sent twice may answer
either copy, so it gives no RTT sample (Karn's rule) and the backed-off RTO stays until a segment
gets through at the first try; at 20 % loss each way that chain of backoffs reached the 60 s
maximum within 60 probes. Naming the copy makes every ACK a valid sample, as TCP's timestamps
do (RFC 7323 section 4), so one sample after a backoff brings the RTO back (RFC 6298 (5.7)).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from lab.errors import RemoteWireError

MAGIC: Final = b"AQ"
VERSION: Final = 2  # 2: the copy field (version 1 had a 32-byte header without it)
HEADER = struct.Struct("!2sBBBBHIIIQII")
HEADER_SIZE: Final = HEADER.size  # 36
MAX_WINDOW: Final = 64  # the SACK bitmap's width: a receiver reports at most 64 segments past `ack`
# The largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP) minus our header.
MAX_PAYLOAD: Final = 65507 - HEADER_SIZE
_CRC_OFFSET: Final = HEADER_SIZE - 4


class Kind(IntEnum):
    DATA = 1
    ACK = 2


class Scheme(IntEnum):
    STOP_AND_WAIT = 1
    GO_BACK_N = 2
    SELECTIVE_REPEAT = 3


class SegmentError(RemoteWireError):
    """Bytes from the network that are not a valid ARQ segment (the server counts and drops them)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Segment:
    """One segment. DATA carries `seq`, `copy` and `payload`; ACK carries `ack` (and `sack` for SR),
    and the `seq` and `copy` of the DATA segment it answers."""

    kind: Kind
    scheme: Scheme
    conn: int
    window: int = 1
    seq: int = 0
    ack: int = 0
    sack: int = 0
    copy: int = 0
    payload: bytes = b""

    def encode(self) -> bytes:
        """The segment's wire form (header with its CRC, then the payload)."""
        header = HEADER.pack(MAGIC, VERSION, self.kind, self.scheme, self.window, len(self.payload),
                             self.conn, self.seq, self.ack, self.sack, self.copy, 0)
        crc = zlib.crc32(self.payload, zlib.crc32(header))
        return header[:_CRC_OFFSET] + crc.to_bytes(4, "big") + self.payload

    def acked(self) -> list[int]:
        """The segment numbers past `ack` that the SACK bitmap reports as arrived, lowest first."""
        return [self.ack + 1 + bit for bit in range(MAX_WINDOW) if self.sack >> bit & 1]


def data(scheme: Scheme, conn: int, window: int, seq: int, payload: bytes, copy: int = 1) -> Segment:
    """A DATA segment (`copy` 1: its first transmission)."""
    return Segment(kind=Kind.DATA, scheme=scheme, conn=conn, window=window, seq=seq, copy=copy,
                   payload=payload)


def ack(scheme: Scheme, conn: int, window: int, next_expected: int, sack: int = 0, *,
        answering: Segment | None = None) -> Segment:
    """An ACK segment: everything below `next_expected` arrived (and what `sack` says); it names
    the DATA segment `answering` (its seq and copy) that prompted it, if given."""
    seq, copy = (answering.seq, answering.copy) if answering is not None else (0, 0)
    return Segment(kind=Kind.ACK, scheme=scheme, conn=conn, window=window, seq=seq, ack=next_expected,
                   sack=sack, copy=copy)


def decode(datagram: bytes | bytearray | memoryview) -> Segment:
    """The segment in one datagram from the network; SegmentError saying why it is not one.

    Checked in the order a reader would: length, magic, version, CRC (before trusting any field),
    then the fields' values.
    """
    raw = bytes(datagram)
    if len(raw) < HEADER_SIZE:
        raise SegmentError(f"datagram of {len(raw)} bytes is shorter than the {HEADER_SIZE}-byte ARQ header")
    magic, version, kind, scheme, window, length, conn, seq, ack_, sack, copy, crc = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise SegmentError(f"bad magic {magic!r} (expected {MAGIC!r}): not an ARQ segment")
    if version != VERSION:
        raise SegmentError(f"unsupported ARQ version {version} (this lab speaks {VERSION})")
    if len(raw) != HEADER_SIZE + length:
        raise SegmentError(f"header declares {length} payload bytes, the datagram carries "
                           f"{len(raw) - HEADER_SIZE}")
    actual = zlib.crc32(raw[HEADER_SIZE:], zlib.crc32(raw[:_CRC_OFFSET] + b"\0\0\0\0"))
    if actual != crc:
        raise SegmentError(f"CRC-32 {actual:#010x} does not match the header's {crc:#010x}")
    if kind not in Kind.__members__.values():
        raise SegmentError(f"unknown segment kind {kind}")
    if scheme not in Scheme.__members__.values():
        raise SegmentError(f"unknown ARQ scheme {scheme}")
    if not 1 <= window <= MAX_WINDOW:
        raise SegmentError(f"window {window} is outside 1..{MAX_WINDOW}")
    if kind == Kind.ACK and length:
        raise SegmentError("an ACK carries no payload")
    return Segment(kind=Kind(kind), scheme=Scheme(scheme), conn=conn, window=window, seq=seq, ack=ack_,
                   sack=sack, copy=copy, payload=raw[HEADER_SIZE:])

