"""What a sink counts for one flow (docs/architecture.md#bulk-traffic). Sans-IO: the time is handed in.

`StreamCounter` reads a byte stream's blocks (lab.bulk.wire) and counts the bytes of blocks that
arrived whole, in order (the seq it expected) and intact (the payload is the pattern, compared byte
for byte, and the header's CRC-32 is the one that payload has); `DatagramCounter` counts a
datagram flow's arrivals by sequence number: received (first intact copy), duplicates, corrupted,
RFC 4737 reordering (a seq below the highest seen + 1) and RFC 3550 interarrival jitter from the
send time each datagram carries. Both book delivered bytes into intervals of the flow's
`interval_ns` since its `start_ns` (CLOCK_MONOTONIC: every process on the host shares it, so the
intervals of concurrent flows line up). Memory is bounded: intervals up to `MAX_INTERVALS`,
datagram seqs tracked up to `MAX_TRACKED_SEQ` (a bitmap of at most 1 MB; later ones count without
duplicate detection).
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

from lab.bulk import wire

MAX_INTERVALS = 100_000  # 600 s at 10 ms (the plan's bounds), with room for a draining tail
MAX_TRACKED_SEQ = 1 << 23  # 8 M datagrams per flow (400 s at 20 000/s): a 1 MB bitmap at most
JITTER_GAIN_DIVISOR = 16  # RFC 3550 §6.4.1, as lab.metrics
# bytes.startswith takes a buffer: slicing this view compares against the pattern without copying it
_PATTERN_VIEW = memoryview(wire.PATTERN)


class Intervals:
    """Bytes booked per interval since a flow's start (index = elapsed // interval)."""

    def __init__(self, start_ns: int, interval_ns: int) -> None:
        self.start_ns = start_ns
        self.interval_ns = interval_ns
        self.bytes: dict[int, int] = {}

    def index(self, now_ns: int) -> int:
        return min(max(0, (now_ns - self.start_ns) // self.interval_ns), MAX_INTERVALS - 1)

    def book(self, now_ns: int, size: int) -> int:
        index = self.index(now_ns)
        self.bytes[index] = self.bytes.get(index, 0) + size
        return index

    def unbook(self, index: int, size: int) -> None:
        self.bytes[index] = self.bytes.get(index, 0) - size

    def to_list(self) -> list[list[int]]:
        return [[index, size] for index, size in sorted(self.bytes.items()) if size]


class StreamCounter:
    """One byte stream's blocks, after its hello: `feed(data, now_ns)` as bytes arrive.

    Bytes are booked into intervals as they arrive and taken back if their block turns out
    damaged, so a slow flow's intervals are not lumpy at block boundaries. A block header that is
    not one (bad magic, oversize length, an unexpected seq) means the stream is no longer ours to
    read: `broken` says why and the rest is counted as received, never as delivered.
    """

    def __init__(self, start_ns: int, interval_ns: int) -> None:
        self.intervals = Intervals(start_ns, interval_ns)
        self.received_bytes = 0  # everything after the hello
        self.delivered_bytes = 0  # whole blocks, in order, intact
        self.blocks = 0
        self.corrupted_blocks = 0
        self.first_ns: int | None = None
        self.last_ns: int | None = None  # the last delivered byte's arrival
        self.broken: str | None = None
        self._head = bytearray()
        self._remaining = 0  # payload bytes of the current block still to come
        self._intact = True  # the current block's payload so far is the pattern
        self._expected_crc = 0
        self._length = 0
        self._seq = 0
        self._next_seq = 0
        self._booked: list[tuple[int, int]] = []  # (interval, bytes) of the current block

    def feed(self, data: bytes | bytearray | memoryview, now_ns: int, size: int | None = None) -> None:
        """Count `data[:size]` (all of it by default), arrived at `now_ns`. A bytearray is read in
        place (the sink's receive buffer), never copied."""
        # bytes or bytearray, not a memoryview: their startswith compares with memcmp (tens of GB/s),
        # where a memoryview == compares element by element and zlib.crc32 runs at about 1 GB/s.
        if isinstance(data, memoryview):
            data = data.tobytes()
        size = len(data) if size is None else size
        self.received_bytes += size
        if self.first_ns is None and size:
            self.first_ns = now_ns
        if self.broken:
            return
        pos = 0
        while pos < size:
            if self._remaining == 0 and len(self._head) < wire.BLOCK.size:
                take = min(wire.BLOCK.size - len(self._head), size - pos)
                self._head += data[pos:pos + take]
                self._book(now_ns, take)
                pos += take
                if len(self._head) == wire.BLOCK.size and not self._start_block(now_ns):
                    return
                continue
            take = min(self._remaining, size - pos)
            if self._intact:  # the payload is the pattern (lab.bulk.wire), byte for byte
                offset = (self._length - self._remaining) % wire.PATTERN_PERIOD
                self._intact = data.startswith(_PATTERN_VIEW[offset:offset + take], pos, pos + take)
            self._book(now_ns, take)
            pos += take
            self._remaining -= take
            if self._remaining == 0:
                self._end_block(now_ns)

    def _book(self, now_ns: int, size: int) -> None:
        index = self.intervals.book(now_ns, size)
        if self._booked and self._booked[-1][0] == index:
            self._booked[-1] = (index, self._booked[-1][1] + size)
        else:
            self._booked.append((index, size))

    def _start_block(self, now_ns: int) -> bool:
        magic, _reserved, length, seq, crc = wire.BLOCK.unpack(self._head)
        if magic != wire.BLOCK_MAGIC or length > wire.MAX_BLOCK or seq != self._next_seq:
            why = ("not a block header" if magic != wire.BLOCK_MAGIC else
                   f"block length {length} beyond {wire.MAX_BLOCK}" if length > wire.MAX_BLOCK else
                   f"block seq {seq} where {self._next_seq} was due")
            self._unbook()
            self.broken = f"{why} after {self.blocks} blocks"
            return False
        self._length, self._seq, self._remaining, self._intact = length, seq, length, True
        self._expected_crc = crc
        if length == 0:
            self._end_block(now_ns)
        return True

    def _end_block(self, now_ns: int) -> None:
        crc = zlib.crc32(struct.pack("!IQ", self._length, self._seq), wire.pattern_crc(self._length))
        self._next_seq += 1
        self._head.clear()
        if self._intact and crc == self._expected_crc:
            self.blocks += 1
            self.delivered_bytes += wire.BLOCK.size + self._length
            self.last_ns = now_ns
            self._booked.clear()
        else:
            self.corrupted_blocks += 1
            self._unbook()

    def _unbook(self) -> None:
        for index, size in self._booked:
            self.intervals.unbook(index, size)
        self._booked.clear()

    def summary(self) -> dict[str, Any]:
        """What the sink answers at the end of the stream (an unfinished block is not delivered)."""
        self._unbook()
        return {
            "kind": "stream", "bytes": self.delivered_bytes, "received_bytes": self.received_bytes,
            "blocks": self.blocks, "corrupted_blocks": self.corrupted_blocks,
            "first_ns": self.first_ns, "last_ns": self.last_ns, "broken": self.broken,
            "interval_ns": self.intervals.interval_ns, "intervals": self.intervals.to_list(),
        }


class DatagramCounter:
    """One datagram flow's arrivals: `arrived(header, size, now_ns)` for each of its datagrams."""

    def __init__(self, start_ns: int, interval_ns: int) -> None:
        self.intervals = Intervals(start_ns, interval_ns)
        self.received = 0
        self.bytes = 0
        self.duplicates = 0
        self.corrupted = 0
        self.reordered = 0
        self.untracked = 0  # seqs beyond MAX_TRACKED_SEQ: counted without duplicate detection
        self.jitter_ns = 0.0
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self._next_expected = 0  # RFC 4737 NextExp
        self._seen = bytearray()
        self._previous: tuple[int, int] | None = None  # (arrival, send) of the last received

    def arrived(self, header: wire.DatagramHeader, size: int, now_ns: int) -> None:
        if not header.intact:
            self.corrupted += 1
            return
        seq = header.seq
        if seq < MAX_TRACKED_SEQ:
            byte, bit = divmod(seq, 8)
            if byte >= len(self._seen):  # grow by doubling, never past the bound
                grown = min(MAX_TRACKED_SEQ // 8, max(byte + 1, 2 * len(self._seen)))
                self._seen.extend(bytes(grown - len(self._seen)))
            if self._seen[byte] >> bit & 1:
                self.duplicates += 1
                return
            self._seen[byte] |= 1 << bit
        else:
            self.untracked += 1
        self.received += 1
        self.bytes += size
        self.intervals.book(now_ns, size)
        if self.first_ns is None:
            self.first_ns = now_ns
        self.last_ns = now_ns
        if seq < self._next_expected:
            self.reordered += 1
        else:
            self._next_expected = seq + 1
        if self._previous is not None:
            d = (now_ns - self._previous[0]) - (header.send_ns - self._previous[1])
            self.jitter_ns += (abs(d) - self.jitter_ns) / JITTER_GAIN_DIVISOR
        self._previous = (now_ns, header.send_ns)

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "datagrams", "bytes": self.bytes, "received": self.received,
            "duplicates": self.duplicates, "corrupted": self.corrupted, "reordered": self.reordered,
            "untracked": self.untracked, "jitter_us": self.jitter_ns / 1000,
            "first_ns": self.first_ns, "last_ns": self.last_ns,
            "interval_ns": self.intervals.interval_ns, "intervals": self.intervals.to_list(),
        }
