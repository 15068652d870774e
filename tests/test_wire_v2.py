"""Wire format version 2: the server's part of a probe, filled in place
(docs/architecture.md#timestamps-and-one-way-delay)."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab.errors import CrcMismatchError, LocalWireError, RemoteWireError, TruncatedError
from lab.wire import (
    EMPTY_EXTENSION,
    FLAG_LOSS_QUERY,
    FLAG_SERVER_KERNEL_RX,
    HEADER_SIZE,
    HEADER_V2_SIZE,
    VERSION_2,
    Probe,
    ServerReport,
    StreamDecoder,
    decode_untrusted_datagram,
    encode,
    fill_reply,
    frame,
    make_payload,
    read_reply,
    v2_request,
)

PAYLOAD = make_payload(36, 5)
REPORT = ServerReport(rx_ns=10**18, tx_ns=10**18 + 5000, seen=0b1011, received=4)


def test_v2_layout_reserves_the_server_part_as_zeros() -> None:
    wire = frame(5, 1, 99, PAYLOAD, zlib.crc32(PAYLOAD), VERSION_2)
    assert len(wire) == HEADER_V2_SIZE + len(PAYLOAD) == 100
    assert wire[4] == 2 and wire[HEADER_SIZE:HEADER_V2_SIZE] == EMPTY_EXTENSION
    assert wire == encode(Probe(seq=5, send_ns=99, payload=PAYLOAD, stream=1, version=2))
    probe = decode_untrusted_datagram(wire)
    assert probe.version == 2 and probe.server is None and probe.payload == PAYLOAD


def test_server_fills_in_place_and_the_client_reads_it_back() -> None:
    wire = frame(5, 1, 99, PAYLOAD, zlib.crc32(PAYLOAD), VERSION_2)
    assert v2_request(wire) == (5, 0)
    reply = fill_reply(wire, REPORT, kernel_rx=True)
    assert len(reply) == len(wire)  # a reply is as long as its probe
    assert reply[HEADER_V2_SIZE:] == wire[HEADER_V2_SIZE:]
    probe = decode_untrusted_datagram(reply)
    assert probe.server == REPORT and probe.flags & FLAG_SERVER_KERNEL_RX
    assert struct.unpack("!QQQI", reply[32:60]) == (REPORT.rx_ns, REPORT.tx_ns, REPORT.seen, REPORT.received)


def test_version_1_and_other_bytes_are_not_filled() -> None:
    v1 = frame(5, 0, 99, PAYLOAD, zlib.crc32(PAYLOAD))
    assert v2_request(v1) is None
    assert v2_request(b"hello, echo") is None
    assert v2_request(frame(5, 0, 99, b"", 0, VERSION_2)[:HEADER_V2_SIZE - 1]) is None


def test_a_damaged_server_report_is_corruption_with_the_probe_attached() -> None:
    reply = fill_reply(frame(7, 0, 1, PAYLOAD, zlib.crc32(PAYLOAD), VERSION_2), REPORT, kernel_rx=False)
    reply[40] ^= 1
    with pytest.raises(CrcMismatchError) as caught:
        decode_untrusted_datagram(reply)
    assert caught.value.probe.seq == 7 and caught.value.probe.server is None


def test_a_query_is_flagged() -> None:
    query = frame(9, 0, 0, b"", 0, VERSION_2, FLAG_LOSS_QUERY)
    assert v2_request(query) == (9, FLAG_LOSS_QUERY)
    assert decode_untrusted_datagram(query).flags == FLAG_LOSS_QUERY


def test_truncated_inside_the_v2_header() -> None:
    wire = frame(1, 0, 0, b"", 0, VERSION_2)
    with pytest.raises(TruncatedError, match="inside its version 2 header"):
        decode_untrusted_datagram(wire[:40])


def test_misuse_is_local() -> None:
    with pytest.raises(LocalWireError):
        Probe(seq=0, send_ns=0, server=REPORT)  # a version 1 probe has no server part
    with pytest.raises(LocalWireError):
        Probe(seq=0, send_ns=0, version=3)
    with pytest.raises(LocalWireError):
        ServerReport(0, 0, 2**64, 0)


@given(st.binary(min_size=HEADER_V2_SIZE, max_size=400), st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1),
       st.booleans())
def test_filling_any_bytes_then_decoding_raises_only_remote_errors(data: bytes, seen: int, received: int,
                                                                   kernel: bool) -> None:
    """Property: whatever a peer sends, a server fills only v2 headers, and the client's strict decoder
    either returns the probe with the report the server wrote or raises a RemoteWireError."""
    data = b"WLAB\x02" + data[5:]
    if v2_request(data) is None:
        return
    reply = fill_reply(data, ServerReport(1, 2, seen, received), kernel_rx=kernel)
    try:
        probe = decode_untrusted_datagram(reply)
    except RemoteWireError:
        return
    assert probe.server == ServerReport(1, 2, seen, received)


@given(st.lists(st.tuples(st.integers(0, 2**32), st.binary(max_size=100)), max_size=6), st.integers(1, 70))
def test_filled_replies_decode_from_a_stream(items: list[tuple[int, bytes]], chunk: int) -> None:
    """Property: filled v2 replies framed back to back decode in any chunking, reports included."""
    wire = b"".join(fill_reply(frame(seq, 0, seq, payload, zlib.crc32(payload), VERSION_2),
                               ServerReport(seq, seq + 1, seq, seq & 0xFFFF), kernel_rx=False)
                    for seq, payload in items)
    decoder = StreamDecoder(max_payload=1000)
    got = []
    for i in range(0, len(wire), chunk):
        decoder.receive_data(wire[i:i + chunk])
        got += decoder.messages()
    assert [(p.seq, p.payload, p.server.rx_ns) for p in got] == [(s, p, s) for s, p in items]


@st.composite
def replies(draw: st.DrawFn) -> bytes:
    """A filled v2 reply, v1 probe or bare bytes, with one bit maybe flipped anywhere."""
    seq, payload = draw(st.integers(0, 2**64 - 1)), draw(st.binary(max_size=50))
    crc = zlib.crc32(payload)
    wire = draw(st.sampled_from([
        bytes(fill_reply(frame(seq, 0, seq, payload, crc, VERSION_2), REPORT, kernel_rx=True)),
        frame(seq, 0, seq, payload, crc),
        frame(seq, 0, seq, payload, crc, VERSION_2),
        draw(st.binary(max_size=120)),
    ]))
    flip = draw(st.integers(0, 2 * len(wire) + 1))
    return wire[:flip] + bytes([wire[flip] ^ 1]) + wire[flip + 1:] if flip < len(wire) else wire


@given(replies())
def test_the_clients_fast_reader_agrees_with_the_strict_decoder(data: bytes) -> None:
    """Property: `read_reply` accepts exactly what `decode_untrusted_datagram` does, with the same
    fields, and reports as damaged exactly what it raises CrcMismatchError for."""
    try:
        probe, intact = decode_untrusted_datagram(data, max_payload=1000), True
    except CrcMismatchError as exc:
        probe, intact = exc.probe, False
    except RemoteWireError as exc:
        with pytest.raises(type(exc)):
            read_reply(data, max_payload=1000)
        return
    seq, stream, flags, report, ok = read_reply(data, max_payload=1000)
    assert (seq, stream, flags, ok) == (probe.seq, probe.stream, probe.flags, intact)
    expected = probe.server
    assert report == (None if expected is None else (expected.rx_ns, expected.tx_ns, expected.seen,
                                                      expected.received))
