"""The echo server's report in wire v2 replies: times, receipts, the loss query, TCP framing; plain
echoes unchanged (docs/architecture.md#timestamps-and-one-way-delay). Real loopback sockets."""

from __future__ import annotations

import time
import zlib

from hypothesis import example, given
from hypothesis import strategies as st

from lab.endpoints.common import RECEIPT_WINDOW, ProbeReceipts
from lab.endpoints.server import StreamReports, running_server
from lab.wire import (
    FLAG_LOSS_QUERY,
    FLAG_SERVER_KERNEL_RX,
    HEADER_V2_SIZE,
    VERSION_2,
    StreamDecoder,
    decode_untrusted_datagram,
    frame,
    make_payload,
)
from tests.test_server import tcp_roundtrip, udp_echo, udp_socket


def probe(seq: int, size: int = 100, flags: int = 0) -> bytes:
    payload = make_payload(size - HEADER_V2_SIZE, seq)
    return frame(seq, 0, seq, payload, zlib.crc32(payload), VERSION_2, flags)


def test_udp_reply_carries_kernel_times_and_receipts() -> None:
    with running_server("udp") as server, udp_socket() as sock:
        replies = {}
        for seq in (0, 1, 3, 4, 7):  # 2, 5 and 6 never reach the server
            before = time.time_ns()
            data = probe(seq)
            reply = udp_echo(sock, server.address, data)
            after = time.time_ns()
            assert len(reply) == len(data) and reply[HEADER_V2_SIZE:] == data[HEADER_V2_SIZE:]
            replies[seq] = decode_untrusted_datagram(reply)
            report = replies[seq].server
            assert report is not None and before <= report.rx_ns <= report.tx_ns <= after
            assert replies[seq].flags & FLAG_SERVER_KERNEL_RX
        assert replies[7].server.received == 5
        # bit i: seq 6 - i arrived -> 6 no, 5 no, 4 yes, 3 yes, 2 no, 1 yes, 0 yes
        assert replies[7].server.seen == 0b1101100
        # The closing query asks about the seqs below its own without counting itself.
        answer = decode_untrusted_datagram(udp_echo(sock, server.address, frame(8, 0, 0, b"", 0, VERSION_2,
                                                                                 FLAG_LOSS_QUERY)))
        assert answer.flags & FLAG_LOSS_QUERY and answer.server.seen == 0b11011001
        assert answer.server.received == 5


def test_version_1_and_plain_datagrams_come_back_unchanged() -> None:
    with running_server("udp") as server, udp_socket() as sock:
        v1 = frame(1, 0, 5, b"abc", zlib.crc32(b"abc"))
        assert udp_echo(sock, server.address, v1) == v1
        assert udp_echo(sock, server.address, b"WLAB\x02 short") == b"WLAB\x02 short"


def test_tcp_v2_stream_is_framed_and_filled() -> None:
    stream = b"".join(probe(seq, 64 + seq) for seq in range(50))
    with running_server("tcp") as server:
        echoed = tcp_roundtrip(server.address, stream, chunk=37)  # messages split across reads
    assert len(echoed) == len(stream)
    decoder = StreamDecoder()
    decoder.receive_data(echoed)
    got = decoder.messages()
    assert [p.seq for p in got] == list(range(50))
    assert all(p.server is not None and p.server.received == p.seq + 1 for p in got)


def test_tcp_plain_streams_are_echoed_byte_for_byte() -> None:
    v1 = b"".join(frame(seq, 0, seq, b"xy", zlib.crc32(b"xy")) for seq in range(20))
    with running_server("tcp") as server:
        assert tcp_roundtrip(server.address, v1) == v1
        assert tcp_roundtrip(server.address, b"hello\n") == b"hello\n"
        cut = probe(1) + probe(2)[:70]  # a stream that ends inside a message: held bytes come back as sent
        assert tcp_roundtrip(server.address, cut)[len(probe(1)):] == cut[len(probe(1)):]


@given(st.lists(st.binary(max_size=200), max_size=8), st.booleans())
@example([b"WLAB\x02", b"\x00" * 59 + b"\xff" * 5], False)
def test_stream_reports_echo_every_byte_once(chunks: list[bytes], start_with_probe: bool) -> None:
    """Property: whatever a TCP peer sends, in any chunking, the framer echoes exactly as many bytes
    (filled in place or unchanged), and a stream not starting like a v2 probe comes back unchanged."""
    if start_with_probe:
        chunks = [probe(0), *chunks]
    reports = StreamReports()
    out = b"".join(bytes(reports.feed(chunk, None)) for chunk in chunks) + reports.flush()
    sent = b"".join(chunks)
    assert len(out) == len(sent)
    if not sent.startswith(b"WLAB\x02"[:len(sent)]) or not sent:
        assert out == sent


@given(st.lists(st.integers(0, 3 * RECEIPT_WINDOW), max_size=60))
def test_receipts_match_a_set_model(seqs: list[int]) -> None:
    """Property: the `seen` bitmap of each answer agrees with the set of seqs received so far, within
    the window below the highest (a seq far behind starts the peer afresh)."""
    receipts = ProbeReceipts()
    model: set[int] = set()
    highest = None
    for seq in seqs:
        if highest is not None and highest - seq >= RECEIPT_WINDOW:
            model, highest = set(), None
        model.add(seq)
        highest = seq if highest is None else max(highest, seq)
        seen, received = receipts.report("peer", seq)
        for i in range(64):
            k = seq - 1 - i
            in_window = k >= 0 and highest - k < RECEIPT_WINDOW
            assert bool(seen >> i & 1) == (in_window and k in model), (seq, k)
        assert received >= 1


@given(st.sets(st.integers(0, RECEIPT_WINDOW - 1), max_size=80), st.booleans())
def test_receipts_count_distinct_probes(seqs: set[int], twice: bool) -> None:
    """Property: within the window, `received` counts each probe once, duplicates not again."""
    receipts = ProbeReceipts()
    received = 0
    for seq in sorted(seqs) * (2 if twice else 1):
        _, received = receipts.report(("10.0.0.1", 5000), seq)
    assert received == len(seqs)
    assert receipts.report(("10.0.0.1", 5000), 0, query=True)[1] == len(seqs)
