"""The probe wire format (lab.wire): encode, datagram decode, stream decode, error contract."""

from __future__ import annotations

import contextlib
import struct
import zlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from lab.errors import (
    BadMagicError,
    BadVersionError,
    CrcMismatchError,
    LengthError,
    LocalWireError,
    RemoteWireError,
    TruncatedError,
)
from lab.wire import (
    DEFAULT_MAX_PAYLOAD,
    EOF,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    NEED_DATA,
    VERSION,
    Probe,
    ServerReport,
    StreamDecoder,
    decode_untrusted_datagram,
    encode,
    make_payload,
)

PROBES = [
    Probe(seq=0, send_ns=1, payload=b""),
    Probe(seq=1, send_ns=2**64 - 1, payload=b"hello", stream=3, flags=0x80),
    Probe(seq=2**64 - 1, send_ns=0, payload=make_payload(1000, 7), stream=65535),
]
WIRE = b"".join(encode(p) for p in PROBES)


def _header(*, magic: bytes = MAGIC, version: int = VERSION, length: int = 0, crc: int = 0) -> bytes:
    return HEADER.pack(magic, version, 0, 0, 9, 9, length, crc)


def _corrupt_payload(probe: Probe) -> bytes:
    data = bytearray(encode(probe))
    data[-1] ^= 0x01
    return bytes(data)


# Hand-made instances of every error path, pinned below as hypothesis @examples too.
BAD_MAGIC = _header(magic=b"HTTP")
BAD_VERSION = _header(version=VERSION + 2)  # 1 and 2 are spoken
OVER_MAX = _header(length=DEFAULT_MAX_PAYLOAD + 1)
SHORT_HEADER = encode(PROBES[1])[: HEADER_SIZE - 1]
SHORT_PAYLOAD = encode(PROBES[1])[:-1]
CRC_MISMATCH = _corrupt_payload(PROBES[1])


def test_header_is_32_bytes_big_endian() -> None:
    wire = encode(Probe(seq=0x0102, send_ns=0x0304, payload=b"ab", stream=5, flags=6))
    assert len(wire) == HEADER_SIZE + 2 == Probe(seq=0, send_ns=0, payload=b"ab").wire_size
    assert wire[:4] == b"WLAB" and wire[4] == 1 and wire[5] == 6
    assert struct.unpack("!H", wire[6:8]) == (5,)
    assert struct.unpack("!QQI", wire[8:28]) == (0x0102, 0x0304, 2)
    assert struct.unpack("!I", wire[28:32]) == (zlib.crc32(b"ab"),)


@pytest.mark.parametrize("probe", PROBES)
def test_datagram_round_trip(probe: Probe) -> None:
    assert decode_untrusted_datagram(encode(probe)) == probe


def test_make_payload_is_deterministic_and_seq_dependent() -> None:
    assert make_payload(40, 1) == make_payload(40, 1)
    assert make_payload(40, 1) != make_payload(40, 2)
    assert len(make_payload(0)) == 0 and len(make_payload(1001)) == 1001
    with pytest.raises(LocalWireError):
        make_payload(-1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seq": -1, "send_ns": 0},
        {"seq": 2**64, "send_ns": 0},
        {"seq": 0, "send_ns": 0, "stream": 2**16},
        {"seq": 0, "send_ns": 0, "flags": 256},
        {"seq": 0, "send_ns": 0, "payload": "text"},
        {"seq": 1.5, "send_ns": 0},
    ],
)
def test_probe_rejects_bad_fields_as_local_errors(kwargs: dict) -> None:
    with pytest.raises(LocalWireError):
        Probe(**kwargs)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (BAD_MAGIC, BadMagicError),
        (BAD_VERSION, BadVersionError),
        (OVER_MAX, LengthError),
        (SHORT_HEADER, TruncatedError),
        (SHORT_PAYLOAD, TruncatedError),
        (encode(PROBES[1]) + b"x", LengthError),  # trailing bytes in a datagram
        (CRC_MISMATCH, CrcMismatchError),
        (b"", TruncatedError),
    ],
)
def test_datagram_error_paths_are_distinct_types(data: bytes, error: type[RemoteWireError]) -> None:
    with pytest.raises(error):
        decode_untrusted_datagram(data)


def test_crc_mismatch_carries_the_probe_as_received() -> None:
    with pytest.raises(CrcMismatchError) as info:
        decode_untrusted_datagram(CRC_MISMATCH)
    assert isinstance(info.value.probe, Probe)
    assert info.value.probe.seq == PROBES[1].seq and info.value.probe.stream == PROBES[1].stream


def test_datagram_length_bound_is_configurable() -> None:
    wire = encode(Probe(seq=1, send_ns=1, payload=b"12345"))
    assert decode_untrusted_datagram(wire, max_payload=5).payload == b"12345"
    with pytest.raises(LengthError):
        decode_untrusted_datagram(wire, max_payload=4)


# --- stream decoder, three ways (like h11's tests/test_io.py) -----------------------------------
def _drain(decoder: StreamDecoder) -> list[Probe]:
    out = []
    while isinstance(item := decoder.next_message(), Probe):
        out.append(item)
    return out


def test_stream_whole_input() -> None:
    decoder = StreamDecoder()
    decoder.receive_data(WIRE)
    assert decoder.messages() == PROBES
    assert decoder.next_message() is NEED_DATA
    decoder.receive_data(b"")
    assert decoder.next_message() is EOF


def test_stream_one_byte_at_a_time() -> None:
    decoder = StreamDecoder()
    got: list[Probe] = []
    for i in range(len(WIRE)):
        decoder.receive_data(WIRE[i : i + 1])
        got += _drain(decoder)
    assert got == PROBES
    decoder.receive_data(b"")
    assert decoder.next_message() is EOF


def test_stream_trailing_bytes_wait_then_truncate_at_eof() -> None:
    decoder = StreamDecoder()
    trailing = encode(PROBES[0])[:10]
    decoder.receive_data(WIRE + trailing)
    assert decoder.messages() == PROBES
    assert decoder.next_message() is NEED_DATA
    assert decoder.buffered == len(trailing)
    decoder.receive_data(b"")
    with pytest.raises(TruncatedError):
        decoder.next_message()


def test_stream_crc_mismatch_is_skippable() -> None:
    decoder = StreamDecoder()
    decoder.receive_data(encode(PROBES[0]) + CRC_MISMATCH + encode(PROBES[2]))
    assert decoder.next_message() == PROBES[0]
    with pytest.raises(CrcMismatchError):
        decoder.next_message()
    assert decoder.next_message() == PROBES[2]


@pytest.mark.parametrize("bad", [BAD_MAGIC, BAD_VERSION, OVER_MAX])
def test_stream_desync_errors_are_sticky(bad: bytes) -> None:
    decoder = StreamDecoder()
    decoder.receive_data(bad + encode(PROBES[0]))
    for _ in range(2):
        with pytest.raises(RemoteWireError):
            decoder.next_message()


def test_stream_buffer_is_bounded() -> None:
    decoder = StreamDecoder(max_payload=10, max_buffer=100)
    with pytest.raises(LengthError, match="bound"):
        decoder.receive_data(b"\0" * 101)
    with pytest.raises(LengthError):
        decoder.next_message()


def test_stream_misuse_is_local_error() -> None:
    decoder = StreamDecoder()
    decoder.receive_data(b"")
    with pytest.raises(LocalWireError):
        decoder.receive_data(b"more")
    with pytest.raises(LocalWireError):
        StreamDecoder(max_payload=-1)


# --- properties ------------------------------------------------------------------------------------
server_reports = st.builds(
    ServerReport, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
)
probes = st.one_of(
    st.builds(
        Probe,
        seq=st.integers(0, 2**64 - 1),
        send_ns=st.integers(0, 2**64 - 1),
        payload=st.binary(max_size=300),
        stream=st.integers(0, 2**16 - 1),
        flags=st.integers(0, 255),
    ),
    # version 2: the server's part empty or filled (docs/architecture.md#timestamps-and-one-way-delay)
    st.builds(
        Probe,
        seq=st.integers(0, 2**64 - 1),
        send_ns=st.integers(0, 2**64 - 1),
        payload=st.binary(max_size=300),
        stream=st.integers(0, 2**16 - 1),
        flags=st.integers(0, 255),
        version=st.just(2),
        server=st.none() | server_reports,
    ),
)


@given(st.lists(probes, max_size=8), st.data())
def test_stream_decodes_any_split(messages: list[Probe], data: st.DataObject) -> None:
    """Property: any list of probes, encoded and split at arbitrary points, decodes to the same list."""
    wire = b"".join(encode(p) for p in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    decoder = StreamDecoder()
    got: list[Probe] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        if end > start:
            decoder.receive_data(wire[start:end])
        got += _drain(decoder)
    decoder.receive_data(b"")
    assert decoder.next_message() is EOF
    assert got == messages


@given(probes)
def test_datagram_round_trips(probe: Probe) -> None:
    """Property: decode_untrusted_datagram(encode(p)) == p for every probe."""
    assert decode_untrusted_datagram(encode(probe)) == probe


@given(st.binary(max_size=2000))
@example(BAD_MAGIC)
@example(BAD_VERSION)
@example(OVER_MAX)
@example(SHORT_HEADER)
@example(SHORT_PAYLOAD)
@example(CRC_MISMATCH)
@example(b"")
def test_datagram_garbage_raises_only_remote_wire_error(garbage: bytes) -> None:
    """Property: decoding arbitrary bytes either yields a probe or raises RemoteWireError, nothing else."""
    with contextlib.suppress(RemoteWireError):
        decode_untrusted_datagram(garbage)


@given(st.binary(max_size=2000), st.integers(1, 64))
@example(BAD_MAGIC, 1)
@example(BAD_VERSION, 3)
@example(OVER_MAX, 32)
@example(SHORT_HEADER, 7)
@example(SHORT_PAYLOAD, 64)
@example(CRC_MISMATCH, 5)
@example(encode(PROBES[0]) + b"WLAB", 2)
def test_stream_garbage_raises_only_remote_wire_error(garbage: bytes, chunk: int) -> None:
    """Property: a stream of arbitrary bytes, in any chunking, then EOF, raises only RemoteWireError."""
    decoder = StreamDecoder(max_payload=1000, max_buffer=4096)
    try:
        for i in range(0, len(garbage), chunk):
            decoder.receive_data(garbage[i : i + chunk])
            while True:
                try:
                    if not isinstance(decoder.next_message(), Probe):
                        break
                except CrcMismatchError:
                    continue  # counted as corruption by clients; the stream goes on
        decoder.receive_data(b"")
        while isinstance(decoder.next_message(), Probe):
            pass
    except RemoteWireError:
        pass


@st.composite
def mangled_wire(draw: st.DrawFn) -> bytes:
    """Valid encodings with a few bytes flipped, cut or inserted: they get past the magic check.

    Random `binary()` almost never starts with b"WLAB", so on its own it only exercises the first
    error path; these reach the version, length, truncation and CRC paths too.
    """
    wire = bytearray(b"".join(encode(p) for p in draw(st.lists(probes, min_size=1, max_size=3))))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(wire)))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and at < len(wire):
            wire[at] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del wire[at:at + draw(st.integers(1, 40))]
        else:
            wire[at:at] = draw(st.binary(min_size=1, max_size=40))
    return bytes(wire)


@given(mangled_wire())
def test_mangled_datagram_raises_only_remote_wire_error(data: bytes) -> None:
    """Property: a damaged encoding decodes to a probe or raises RemoteWireError, nothing else."""
    try:
        probe = decode_untrusted_datagram(data, max_payload=1000)
    except RemoteWireError:
        return
    assert encode(probe) == data  # whatever decodes re-encodes to exactly the bytes received


@given(mangled_wire(), st.integers(1, 64))
def test_mangled_stream_raises_only_remote_wire_error(data: bytes, chunk: int) -> None:
    """Property: a damaged stream, in any chunking, yields probes that re-encode to a prefix of it,
    and otherwise raises only RemoteWireError."""
    decoder = StreamDecoder(max_payload=1000, max_buffer=8192)
    decoded = b""
    try:
        for i in range(0, len(data), chunk):
            decoder.receive_data(data[i : i + chunk])
            while isinstance(item := decoder.next_message(), Probe):
                decoded += encode(item)
        decoder.receive_data(b"")
        while isinstance(item := decoder.next_message(), Probe):
            decoded += encode(item)
    except RemoteWireError:
        pass
    assert data.startswith(decoded)
