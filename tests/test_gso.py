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


@pytest.mark.parametrize("limits", [(1000, 32 * 2**20), (8, 32 * 2**20), (1000, 256 * 2**10), (5, 150_000)])
def test_a_batch_is_one_packet_against_the_queue_as_netem_counts_an_skb(limits) -> None:
    """admit_delayed holds or drops a GSO batch exactly as the model decides one packet of the batch's
    size (one packet against `limit`, its bytes against `limit_bytes`: netem's and bfifo's skb), and
    counts its segments: what was held, dropped and forwarded, in packets on the wire."""
    limit, limit_bytes = limits
    impairment = Impairment(delay_s=0.004, limit=limit, limit_bytes=limit_bytes)
    by_batch, as_skbs = DirectionModel(impairment, 1), DirectionModel(impairment, 1)
    batches = HeldBatches()
    rng = random.Random(3)
    now = 100.0
    segments = dropped = 0
    for _ in range(400):
        now += rng.choice((0.0, 0.0001, 0.001))
        count = rng.randint(1, 44)
        each, last = 52 + MSS, rng.randint(53, 52 + MSS)
        size = each * (count - 1) + last
        held = admit_delayed(by_batch, batches, count, size, each, now)
        assert held == bool(as_skbs.decide(bytes(size), now).releases)
        segments += count
        dropped += 0 if held else count
        batches.expire(now)
        assert len(batches.heap) == sum(1 for at, _ in as_skbs._held if at > now)  # noqa: SLF001
        assert batches.bytes == sum(size for at, size in as_skbs._held if at > now)  # noqa: SLF001
    counters, reference = by_batch.counters, as_skbs.counters
    assert counters["packets_in"] == segments and counters["dropped_queue"] == dropped
    assert counters["forwarded"] == counters["delayed"] == segments - dropped
    assert counters["bytes_in"] == reference["bytes_in"] and counters["bytes_out"] == reference["bytes_out"]
    assert (dropped > 0) == (limits != (1000, 32 * 2**20)), (limits, dropped)


def test_an_empty_queue_takes_any_batch_and_held_packets_count_one_each() -> None:
    """A batch larger than `limit_bytes` still passes an empty link (as a packet always does); packets
    the model holds from a per-packet spell count one each against `limit`, beside the batches."""
    impairment = Impairment(delay_s=0.004, limit=3, limit_bytes=65536)
    model, batches = DirectionModel(impairment, 1), HeldBatches()
    assert admit_delayed(model, batches, 46, 46 * 1500, 1500, 0.0)
    assert not admit_delayed(model, batches, 1, 100, 100, 0.001)  # 69 000 + 100 bytes > 65 536
    model, batches = DirectionModel(Impairment(delay_s=0.004, limit=3), 1), HeldBatches()
    model.decide(bytes(100), 0.0)
    model.decide(bytes(100), 0.0)
    assert admit_delayed(model, batches, 10, 10 * 1500, 1500, 0.0)
    assert not admit_delayed(model, batches, 10, 10 * 1500, 1500, 0.0)
    assert admit_delayed(model, batches, 10, 10 * 1500, 1500, 0.005)  # all three released by then
    assert model.counters["dropped_queue"] == 10 and model.counters["packets_in"] == 32
