"""lab.link.gso's arithmetic against scapy's own packets, and the forwarder's per-batch queue
decision against the model's per-packet one (docs/architecture.md#the-forwarder)."""

from __future__ import annotations

import random
import struct

import pytest
from scapy.layers.inet import IP, TCP, UDP

from lab.link import gso
from lab.link.forwarder import BATCH_DELAY, FAST, PER_PACKET, HeldBatches, admit_delayed, direction_mode
from lab.link.models import DirectionModel, Impairment, LinkConfig

MSS = 1448


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _pseudo_sum(src: str, dst: str, proto: int, length: int) -> int:
    """The pseudo-header's ones'-complement sum, big-endian (what a partial checksum field holds)."""
    addresses = IP(src=src, dst=dst).build()[12:20]
    words = struct.unpack("!6H", addresses + struct.pack("!BBH", 0, proto, length))
    return _fold(sum(words))


def _batch(payload: bytes, flags: str = "PA", **ip: object) -> tuple[bytes, IP]:
    """A TCPV4 GSO frame as the kernel hands it over (virtio_net_hdr, partial checksum), and the
    same packet as scapy builds it whole."""
    whole = IP(src="198.18.0.1", dst="198.18.0.2", id=1000, flags="DF", **ip) / TCP(
        sport=40000, dport=5201, seq=4_000_000_000, ack=7, flags=flags,
        options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]) / payload
    packet = bytearray(IP(whole.build()).build())
    tcp_len = len(packet) - 20
    packet[36:38] = struct.pack("!H", _pseudo_sum(whole.src, whole.dst, 6, tcp_len))
    header = struct.pack("<BBHHHH", gso.F_NEEDS_CSUM, gso.GSO_TCPV4, 52, MSS, 20, 16)
    return header + bytes(packet), whole


def _valid(packet: bytes) -> IP:
    """Parsed `packet`, after checking its IP and TCP checksums are what scapy computes."""
    parsed = IP(packet)
    rebuilt = IP(packet)
    del rebuilt.chksum
    del rebuilt[TCP].chksum
    rebuilt = IP(rebuilt.build())
    assert (parsed.chksum, parsed[TCP].chksum) == (rebuilt.chksum, rebuilt[TCP].chksum)
    return parsed


def test_a_batch_is_cut_as_the_kernel_cuts_it() -> None:
    payload = random.Random(1).randbytes(10 * MSS + 100)
    frame, whole = _batch(payload, flags="FPAC")
    segments = [_valid(p) for p in gso.segment(frame)]
    assert len(segments) == 11
    assert b"".join(bytes(s[TCP].payload) for s in segments) == payload
    for index, seg in enumerate(segments):
        assert seg.len == 52 + len(seg[TCP].payload) and len(seg[TCP].payload) == (MSS if index < 10 else 100)
        assert seg.id == 1000 + index and seg.flags == "DF"
        assert seg[TCP].seq == (whole[TCP].seq + index * MSS) % 2**32  # wraps past 2^32
        assert ("C" in seg[TCP].flags) == (index == 0)  # CWR only on the first
        assert ("F" in seg[TCP].flags) == ("P" in seg[TCP].flags) == (index == 10)  # FIN, PSH on the last
        assert seg[TCP].options == whole[TCP].options and seg[TCP].ack == 7


def test_wire_size_counts_every_segment_with_its_headers() -> None:
    frame, _ = _batch(bytes(10 * MSS + 100))
    assert gso.wire_size(frame) == (11, 10 * (52 + MSS) + 52 + 100, 52 + MSS)
    assert sum(len(p) for p in gso.segment(frame)) == gso.wire_size(frame)[1]
    single, _ = _batch(bytes(500))
    assert gso.wire_size(single)[:2] == (1, 552) and len(gso.segment(single)) == 1


def test_segments_left_partial_complete_to_the_same_packets() -> None:
    frame, _ = _batch(random.Random(2).randbytes(5 * MSS))
    partial = gso.segment(frame, complete=False)
    header = gso.partial_header(frame)
    assert header[:2] == bytes([gso.F_NEEDS_CSUM, gso.GSO_NONE])
    csum_start, csum_offset = struct.unpack_from("<HH", header, 6)
    assert [gso.complete_checksum(p, csum_start, csum_offset) for p in partial] == gso.segment(frame)


def test_a_partial_udp_checksum_is_completed() -> None:
    whole = IP(src="198.18.0.1", dst="198.18.0.2") / UDP(sport=1, dport=2) / b"hello, partial world"
    packet = bytearray(IP(whole.build()).build())
    expected = bytes(packet)
    packet[26:28] = struct.pack("!H", _pseudo_sum(whole.src, whole.dst, 17, len(packet) - 20))
    frame = struct.pack("<BBHHHH", gso.F_NEEDS_CSUM, gso.GSO_NONE, 0, 0, 20, 6) + bytes(packet)
    assert gso.segment(frame) == [expected]


@pytest.mark.parametrize(("options", "mode"), [
    ({}, FAST), ({"delay": "10ms"}, BATCH_DELAY), ({"delay": "10ms", "limit": "10"}, BATCH_DELAY),
    ({"delay": "10ms", "jitter": "1ms"}, PER_PACKET), ({"rate": "10mbit"}, PER_PACKET),
    ({"loss": "1%"}, PER_PACKET), ({"corrupt": "1%"}, PER_PACKET), ({"duplicate": "1%"}, PER_PACKET),
    ({"delay": "10ms", "reorder": "5%"}, PER_PACKET), ({"loss": "gemodel 1% 30%"}, PER_PACKET),
])
def test_only_impairments_that_decide_nothing_per_packet_take_batches(options, mode) -> None:
    impairment = LinkConfig.from_options(options).forward
    assert direction_mode(impairment, capture_on=False) == mode
    assert direction_mode(impairment, capture_on=True) == PER_PACKET  # a capture comments on each packet


@pytest.mark.parametrize("limits", [(1000, 32 * 2**20), (30, 32 * 2**20), (1000, 64 * 2**10), (7, 70_000)])
def test_admitting_a_batch_is_deciding_each_of_its_segments(limits) -> None:
    """admit_delayed (+ the per-segment fallback the forwarder uses when it says no) leaves the model
    exactly as one decide() per segment does: counters, and the queue's contents."""
    limit, limit_bytes = limits
    impairment = Impairment(delay_s=0.004, limit=limit, limit_bytes=limit_bytes)
    by_batch, by_packet = DirectionModel(impairment, 1), DirectionModel(impairment, 1)
    batches = HeldBatches()
    rng = random.Random(3)
    now = 100.0
    for _ in range(400):
        now += rng.choice((0.0, 0.0001, 0.001))
        count = rng.randint(1, 44)
        each, last = 52 + MSS, rng.randint(53, 52 + MSS)
        sizes = [each] * (count - 1) + [last]
        if not admit_delayed(by_batch, batches, count, sum(sizes), each, now):
            batches.move_into(by_batch)  # as the forwarder does before it cuts the batch
            for size in sizes:
                by_batch.decide(bytes(size), now)
        for size in sizes:
            by_packet.decide(bytes(size), now)
        assert by_batch.counters == by_packet.counters
        batches.expire(now)
        held = [e for e in by_batch._held if e[0] > now] + batches.segments()  # noqa: SLF001
        assert sorted(held) == sorted(e for e in by_packet._held if e[0] > now)  # noqa: SLF001
        assert sum(size for _, size in held) == by_packet._held_bytes - sum(  # noqa: SLF001
            size for at, size in by_packet._held if at <= now)  # noqa: SLF001
    assert by_packet.counters["dropped_queue"] > 0 or limit == 1000
