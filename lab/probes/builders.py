"""How each catalogue case is built, with scapy. Imported only inside the sandbox, when packets are built.

Every builder takes a `Ctx` and returns raw packets (IPv4, as they would arrive from the wire) or,
for application cases, the byte strings a real client sends. Defects are applied to the bytes
scapy produced, so everything else about the packet stays correct (checksums included).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.packet import Raw
from scapy.utils import checksum

from lab.wire import HEADER, MAGIC, VERSION, Probe, encode, make_payload

CLOSED_PORT = 9  # discard (RFC 863): nothing listens on it in the sandbox
FRAG_DATA = 2992  # + 8-byte UDP header = 3000 bytes: three 1000-byte fragments
FRAG_SIZE = 1000  # a multiple of 8, as fragment offsets count 8-byte units (RFC 791)
WIRE_FRAG_SIZE = 1480  # what fits a 1500-byte MTU after the 20-byte IP header
MAX_UDP_DATA = 65507  # 65535 - 20 (IP) - 8 (UDP), RFC 768/791
FAR = 10_000_000  # bytes beyond any receive window (the sandbox never scales windows)
IN_WINDOW = 1000  # inside the 64 KiB window, but not at rcv_nxt
FLOOD_SYNS = 256  # bounded: twice the echo server's listen backlog (128), so SYN cookies engage
FLOOD_FIRST_SPORT = 20000
HEADER_STREAM_COUNT = 32768  # 32768 x 32-byte headers = 1 MiB
MF = 1  # IPv4 "more fragments" flag in scapy's flags field


@dataclass(slots=True)
class Conn:
    """A crafted TCP connection: the virtual peer's next sequence number and the server's."""

    sport: int
    snd_nxt: int
    rcv_nxt: int


@dataclass(slots=True, kw_only=True)
class Ctx:
    """What builders need to know about the sandbox."""

    peer: str
    address: str
    udp_port: int
    tcp_port: int
    sport: int
    rng: random.Random
    conn: Conn | None = None


# --- helpers ----------------------------------------------------------------------------------------
def _ip(ctx: Ctx, **kw: object) -> IP:
    kw.setdefault("src", ctx.peer)
    return IP(dst=ctx.address, id=ctx.rng.randrange(1 << 16), **kw)


def _udp(ctx: Ctx, payload: bytes = b"wirelab atlas", dport: int | None = None, ip: dict | None = None,
         **kw: object) -> IP:
    port = ctx.udp_port if dport is None else dport
    return _ip(ctx, **(ip or {})) / UDP(sport=ctx.sport, dport=port, **kw) / Raw(payload)


def _tcp(ctx: Ctx, flags: str, *, dport: int | None = None, seq: int | None = None, ack: int = 0,
         payload: bytes = b"", **kw: object) -> IP:
    port = ctx.tcp_port if dport is None else dport
    seq = ctx.rng.randrange(1 << 32) if seq is None else seq % (1 << 32)
    pkt = _ip(ctx) / TCP(sport=ctx.sport, dport=port, flags=flags, seq=seq, ack=ack % (1 << 32),
                         window=65535, **kw)
    return pkt / Raw(payload) if payload else pkt


def _ip_checksum(raw: bytearray) -> bytearray:
    """Recompute the IPv4 header checksum over the header its IHL declares (at least 20 bytes)."""
    hlen = max(20, (raw[0] & 0x0F) * 4)
    raw[10:12] = b"\0\0"
    raw[10:12] = checksum(bytes(raw[:hlen])).to_bytes(2, "big")
    return raw


def _edit(pkt: IP, offset: int, value: bytes, fix_ip: bool = True) -> bytes:
    raw = bytearray(bytes(pkt))
    raw[offset : offset + len(value)] = value
    return bytes(_ip_checksum(raw) if fix_ip else raw)


def _bump16(raw: bytes, offset: int) -> bytes:
    """Corrupt a 16-bit checksum without ever making it 0 (which means 'none' for UDP)."""
    out = bytearray(raw)
    value = int.from_bytes(out[offset : offset + 2], "big") ^ 0x0101
    out[offset : offset + 2] = (value or 0x0101).to_bytes(2, "big")
    return bytes(out)


def _frag(ctx: Ctx, ident: int, data: bytes, offset: int, more: bool, proto: int = 17) -> bytes:
    """One IPv4 fragment carrying `data` at byte `offset` of the original payload."""
    return bytes(IP(src=ctx.peer, dst=ctx.address, id=ident, flags=MF if more else 0, frag=offset // 8,
                    proto=proto) / Raw(data))


def _udp_bytes(ctx: Ctx, size: int) -> bytes:
    """A UDP datagram (header + data) with a correct checksum, as the payload to fragment."""
    return bytes(IP(bytes(_udp(ctx, make_payload(size, ctx.sport))))[UDP])


def _with_options(ctx: Ctx, options: bytes) -> bytes:
    raw = bytearray(bytes(_udp(ctx)))
    packet = raw[:20] + options + raw[20:]
    packet[0] = 0x40 | ((20 + len(options)) // 4)
    packet[2:4] = len(packet).to_bytes(2, "big")
    return bytes(_ip_checksum(packet))


# --- IPv4 ---------------------------------------------------------------------------------------------
def ip_well_formed(ctx: Ctx) -> list[bytes]:
    return [bytes(_udp(ctx))]


def ip_bad_header_checksum(ctx: Ctx) -> list[bytes]:
    return [_bump16(bytes(_udp(ctx)), 10)]


def ip_ihl_below_5(ctx: Ctx) -> list[bytes]:
    return [_edit(_udp(ctx), 0, b"\x44")]


def ip_ihl_beyond_packet(ctx: Ctx) -> list[bytes]:
    return [_edit(_udp(ctx, b"8 bytes!"), 0, b"\x4f")]


def ip_bad_version(ctx: Ctx) -> list[bytes]:
    return [_edit(_udp(ctx), 0, b"\x55")]


def ip_total_length_larger(ctx: Ctx) -> list[bytes]:
    pkt = _udp(ctx)
    return [_edit(pkt, 2, (len(pkt) + 100).to_bytes(2, "big"))]


def ip_total_length_smaller(ctx: Ctx) -> list[bytes]:
    pkt = _udp(ctx, make_payload(40))
    return [_edit(pkt, 2, (len(pkt) - 10).to_bytes(2, "big"))]


def ip_total_length_below_header(ctx: Ctx) -> list[bytes]:
    return [_edit(_udp(ctx), 2, (12).to_bytes(2, "big"))]


def ip_trailing_padding(ctx: Ctx) -> list[bytes]:
    return [bytes(_udp(ctx)) + b"\0" * 20]


def ip_ttl_zero(ctx: Ctx) -> list[bytes]:
    return [bytes(_udp(ctx, ip={"ttl": 0}))]


def ip_unknown_protocol(ctx: Ctx) -> list[bytes]:
    return [bytes(_ip(ctx, proto=253) / Raw(b"experimental 253"))]


def ip_options_bad_length(ctx: Ctx) -> list[bytes]:
    return [_with_options(ctx, b"\x1e\xff\x00\x00")]


def ip_options_unknown(ctx: Ctx) -> list[bytes]:
    return [_with_options(ctx, b"\x1e\x04\x00\x00")]


def ip_options_all_nop(ctx: Ctx) -> list[bytes]:
    return [_with_options(ctx, b"\x01" * 40)]


def ip_source_is_own_address(ctx: Ctx) -> list[bytes]:
    return [bytes(_udp(ctx, ip={"src": ctx.address}))]


def ip_source_loopback(ctx: Ctx) -> list[bytes]:
    return [bytes(_udp(ctx, ip={"src": "127.0.0.1"}))]


def _three_fragments(ctx: Ctx) -> list[bytes]:
    ident = ctx.rng.randrange(1 << 16)
    data = _udp_bytes(ctx, FRAG_DATA)
    return [
        _frag(ctx, ident, data[off : off + FRAG_SIZE], off, off + FRAG_SIZE < len(data))
        for off in range(0, len(data), FRAG_SIZE)
    ]


def ip_frag_in_order(ctx: Ctx) -> list[bytes]:
    return _three_fragments(ctx)


def ip_frag_out_of_order(ctx: Ctx) -> list[bytes]:
    return _three_fragments(ctx)[::-1]


def ip_frag_duplicate(ctx: Ctx) -> list[bytes]:
    first, middle, last = _three_fragments(ctx)
    return [first, middle, middle, last]


def ip_frag_overlapping(ctx: Ctx) -> list[bytes]:
    ident = ctx.rng.randrange(1 << 16)
    data = _udp_bytes(ctx, FRAG_DATA)
    # The overlapping fragment goes last: it kills the queue, and no stray fragment after it
    # starts a new queue that would time out during a later case.
    return [
        _frag(ctx, ident, data[:FRAG_SIZE], 0, True),
        _frag(ctx, ident, data[2 * FRAG_SIZE :], 2 * FRAG_SIZE, False),
        _frag(ctx, ident, data[FRAG_SIZE - 8 : 2 * FRAG_SIZE], FRAG_SIZE - 8, True),
    ]


def ip_frag_missing_last(ctx: Ctx) -> list[bytes]:
    return _three_fragments(ctx)[:2]


def ip_frag_tiny_first(ctx: Ctx) -> list[bytes]:
    ident = ctx.rng.randrange(1 << 16)
    data = _udp_bytes(ctx, FRAG_DATA)
    return [_frag(ctx, ident, data[:8], 0, True), _frag(ctx, ident, data[8:], 8, False)]


def ip_frag_beyond_64k(ctx: Ctx) -> list[bytes]:
    ident = ctx.rng.randrange(1 << 16)
    # 65600 bytes after a 20-byte header: 85 bytes more than an IPv4 datagram can hold.
    data = _udp_bytes(ctx, 200)[:8] + make_payload(65600 - 8)
    return [
        _frag(ctx, ident, data[off : off + WIRE_FRAG_SIZE], off, off + WIRE_FRAG_SIZE < len(data))
        for off in range(0, len(data), WIRE_FRAG_SIZE)
    ]


# --- UDP ----------------------------------------------------------------------------------------------
UDP_CSUM_OFFSET = 20 + 6


def udp_well_formed(ctx: Ctx) -> list[bytes]:
    return [bytes(_udp(ctx))]


def udp_bad_checksum(ctx: Ctx) -> list[bytes]:
    return [_bump16(bytes(_udp(ctx)), UDP_CSUM_OFFSET)]


def udp_zero_checksum(ctx: Ctx) -> list[bytes]:
    return [bytes(_udp(ctx, chksum=0))]


def udp_length_larger(ctx: Ctx) -> list[bytes]:
    data = make_payload(32)
    return [bytes(_udp(ctx, data, len=8 + len(data) + 40))]


def udp_length_smaller(ctx: Ctx) -> list[bytes]:
    data = make_payload(32)
    # The checksum covers what the UDP length declares (RFC 768), so compute it on 8 data bytes.
    short = IP(bytes(_udp(ctx, data[:8])))
    return [bytes(_udp(ctx, data, len=16, chksum=short[UDP].chksum))]


def udp_length_below_8(ctx: Ctx) -> list[bytes]:
    return [bytes(_udp(ctx, len=4))]


def udp_zero_payload(ctx: Ctx) -> list[bytes]:
    return [bytes(_ip(ctx) / UDP(sport=ctx.sport, dport=ctx.udp_port))]


def udp_max_size(ctx: Ctx) -> list[bytes]:
    full = IP(bytes(_udp(ctx, make_payload(MAX_UDP_DATA, ctx.sport))))
    return [bytes(f) for f in fragment(full, fragsize=WIRE_FRAG_SIZE)]


def udp_closed_port(ctx: Ctx) -> list[bytes]:
    return [bytes(_udp(ctx, dport=CLOSED_PORT))]


def udp_closed_port_bad_checksum(ctx: Ctx) -> list[bytes]:
    return [_bump16(bytes(_udp(ctx, dport=CLOSED_PORT)), UDP_CSUM_OFFSET)]


def udp_port_zero(ctx: Ctx) -> list[bytes]:
    return [bytes(_udp(ctx, dport=0))]


# --- TCP ----------------------------------------------------------------------------------------------
TCP_CSUM_OFFSET = 20 + 16


def tcp_syn_open_port(ctx: Ctx) -> list[bytes]:
    return [bytes(_tcp(ctx, "S"))]


def tcp_syn_closed_port(ctx: Ctx) -> list[bytes]:
    return [bytes(_tcp(ctx, "S", dport=CLOSED_PORT))]


def tcp_bad_checksum(ctx: Ctx) -> list[bytes]:
    return [_bump16(bytes(_tcp(ctx, "S")), TCP_CSUM_OFFSET)]


def tcp_doff_below_5(ctx: Ctx) -> list[bytes]:
    return [bytes(_tcp(ctx, "S", dataofs=4))]


def tcp_syn_fin(ctx: Ctx) -> list[bytes]:
    return [bytes(_tcp(ctx, "SF"))]


def tcp_null_open_port(ctx: Ctx) -> list[bytes]:
    return [bytes(_tcp(ctx, ""))]


def tcp_null_closed_port(ctx: Ctx) -> list[bytes]:
    return [bytes(_tcp(ctx, "", dport=CLOSED_PORT))]


def tcp_xmas_open_port(ctx: Ctx) -> list[bytes]:
    return [bytes(_tcp(ctx, "FPU"))]


def tcp_xmas_closed_port(ctx: Ctx) -> list[bytes]:
    return [bytes(_tcp(ctx, "FPU", dport=CLOSED_PORT))]


def tcp_data_without_handshake(ctx: Ctx) -> list[bytes]:
    return [bytes(_tcp(ctx, "PA", ack=ctx.rng.randrange(1 << 32), payload=b"no handshake"))]


def tcp_syn_flood(ctx: Ctx) -> list[bytes]:
    return [
        bytes(IP(src=ctx.peer, dst=ctx.address) / TCP(sport=FLOOD_FIRST_SPORT + i, dport=ctx.tcp_port,
                                                     flags="S", seq=ctx.rng.randrange(1 << 32)))
        for i in range(FLOOD_SYNS)
    ]


def flood_sports(syns: list[bytes]) -> list[int]:
    """The source ports of the flood's SYNs (to tell their SYN-ACKs from anything else)."""
    return [FLOOD_FIRST_SPORT + i for i in range(len(syns))]


def _conn(ctx: Ctx) -> Conn:
    if ctx.conn is None:
        raise ValueError("this builder needs an established crafted connection")
    return ctx.conn


def tcp_out_of_window_data(ctx: Ctx) -> list[bytes]:
    c = _conn(ctx)
    return [bytes(_tcp(ctx, "PA", seq=c.snd_nxt + FAR, ack=c.rcv_nxt, payload=b"far away"))]


def tcp_blind_rst_in_window(ctx: Ctx) -> list[bytes]:
    return [bytes(_tcp(ctx, "R", seq=_conn(ctx).snd_nxt + IN_WINDOW))]


def tcp_rst_out_of_window(ctx: Ctx) -> list[bytes]:
    return [bytes(_tcp(ctx, "R", seq=_conn(ctx).snd_nxt + FAR))]


def tcp_exact_rst(ctx: Ctx) -> list[bytes]:
    return [bytes(_tcp(ctx, "R", seq=_conn(ctx).snd_nxt))]


def tcp_syn_on_established(ctx: Ctx) -> list[bytes]:
    return [bytes(_tcp(ctx, "S", seq=_conn(ctx).snd_nxt + IN_WINDOW))]


def tcp_data_bad_checksum(ctx: Ctx) -> list[bytes]:
    c = _conn(ctx)
    return [_bump16(bytes(_tcp(ctx, "PA", seq=c.snd_nxt, ack=c.rcv_nxt, payload=b"corrupt")),
                    TCP_CSUM_OFFSET)]


# --- application (what a real client sends) -----------------------------------------------------------
def _header(length: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, 0, 0, 1, 0, length, 0)


def app_udp_garbage(ctx: Ctx) -> list[bytes]:
    return [ctx.rng.randbytes(512)]


def app_udp_truncated_header(ctx: Ctx) -> list[bytes]:
    return [encode(Probe(seq=1, send_ns=0, payload=b"cut"))[:10]]


def app_udp_length_4gib(ctx: Ctx) -> list[bytes]:
    return [_header(0xFFFFFFFF)]


def app_tcp_garbage(ctx: Ctx) -> list[bytes]:
    return [ctx.rng.randbytes(4096)]


def app_tcp_truncated_header(ctx: Ctx) -> list[bytes]:
    return [encode(Probe(seq=1, send_ns=0, payload=b"cut"))[:10]]


def app_tcp_length_4gib(ctx: Ctx) -> list[bytes]:
    return [_header(0xFFFFFFFF)]


def app_tcp_header_stream(ctx: Ctx) -> list[bytes]:
    return [_header(32) * HEADER_STREAM_COUNT]
