"""The malformed-packet atlas: named, declarative cases (what is wrong, how built, what to expect).

Each case names its builder in `lab.probes.builders` (scapy, imported only when packets are built),
so listing or filtering the catalogue costs nothing. `expected` holds the verdict(s) the kernel
may give; more than one only where the behaviour is documented to vary (see `note`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from lab.errors import ConfigError
from lab.probes import verdict as V

LAYERS = ("ip", "udp", "tcp", "app")
# wire: crafted packets into the TUN; conn: a crafted handshake first, then the packets;
# flood: bounded SYN flood with a real client connecting mid-way; app-*: real sockets.
MODES = ("wire", "conn", "flood", "app-udp", "app-tcp")
DEFAULT_WAIT_S = 0.4  # most answers come within a millisecond; this is the cap, not the wait


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """One catalogue entry."""

    name: str
    layer: str
    defect: str
    build: str
    expected: tuple[str, ...]
    mode: str = "wire"
    wait_s: float = DEFAULT_WAIT_S
    note: str = ""

    def __post_init__(self) -> None:
        if self.layer not in LAYERS or self.mode not in MODES or not self.expected:
            raise ValueError(f"bad catalogue entry {self.name!r}")


def _c(name: str, layer: str, defect: str, expected: str | tuple[str, ...], build: str | None = None,
       **kw: object) -> Case:
    exp = (expected,) if isinstance(expected, str) else expected
    return Case(name=name, layer=layer, defect=defect, expected=exp, build=build or name.replace("-", "_"),
                **kw)  # type: ignore[arg-type]


_TTL_NOTE = "TTL is checked only when forwarding (RFC 1812 §5.3.1); a host delivers TTL 0 locally."
_OVERLAP_NOTE = "Linux >= 4.19 drops the whole datagram on any overlap (FragmentSmack, CVE-2018-5391)."
_SYNFIN_NOTE = "Linux discards SYN+FIN in LISTEN; some other stacks answer SYN-ACK."

CASES: tuple[Case, ...] = (
    # --- IPv4 header (a UDP datagram to the echo port carries each defect) ---------------------
    _c("ip-well-formed", "ip", "nothing: a control datagram", V.DELIVERED),
    _c("ip-bad-header-checksum", "ip", "IPv4 header checksum off by one", V.IP_CSUM),
    _c("ip-ihl-below-5", "ip", "IHL 4 (16-byte header, below the 20-byte minimum)", V.IP_HDR),
    _c("ip-ihl-beyond-packet", "ip", "IHL 15 (60-byte header) in a 36-byte packet", V.IP_HDR),
    _c("ip-bad-version", "ip", "version 5 in an IPv4 frame (ethertype 0x0800)", V.IP_HDR),
    _c("ip-total-length-larger", "ip", "total length 100 bytes more than the packet", V.IP_TRUNC),
    _c("ip-total-length-smaller", "ip", "total length cuts 10 bytes off the UDP datagram", V.UDP_ERR,
       note="Not an IP error: IP trims to its total length (trailing bytes are link padding), then "
            "UDP's length field claims more than is left."),
    _c("ip-total-length-below-header", "ip", "total length 12, smaller than the header", V.IP_HDR),
    _c("ip-trailing-padding", "ip", "20 bytes after the total length (link padding)", V.DELIVERED),
    _c("ip-ttl-zero", "ip", "TTL 0 arriving at its destination", V.DELIVERED, note=_TTL_NOTE),
    _c("ip-unknown-protocol", "ip", "protocol 253 (RFC 3692 experimental), nobody listens",
       V.ICMP_PROTO),
    _c("ip-options-bad-length", "ip", "option with length 0xff running past the header", V.ICMP_PARAM),
    _c("ip-options-unknown", "ip", "unknown option type 0x1e with a valid length", V.DELIVERED,
       note="Unknown options are ignored on receive (RFC 1122 §3.2.1.8)."),
    _c("ip-options-all-nop", "ip", "40 bytes of NOP options", V.DELIVERED),
    _c("ip-source-is-own-address", "ip", "source address = the host's own address, from the wire",
       V.IGNORED, note="A martian source: dropped in routing without an SNMP counter."),
    _c("ip-source-loopback", "ip", "source 127.0.0.1 arriving from the wire", V.IGNORED,
       note="A martian source: dropped in routing without an SNMP counter."),
    _c("ip-frag-in-order", "ip", "3 fragments, in order", V.REASSEMBLED),
    _c("ip-frag-out-of-order", "ip", "3 fragments, last first", V.REASSEMBLED),
    _c("ip-frag-duplicate", "ip", "3 fragments, the middle one twice", V.REASSEMBLED,
       note="Exact duplicates are ignored; only true overlaps poison the queue."),
    _c("ip-frag-overlapping", "ip", "second fragment overlaps the first by 8 bytes",
       V.FRAG_OVERLAP, note=_OVERLAP_NOTE),
    _c("ip-frag-missing-last", "ip", "first fragments only; the last never comes",
       (V.ICMP_REASM, V.FRAG_TIMEOUT), wait_s=3.0,
       note="ipfrag_time is set to 1 s inside the sandbox; ICMP time exceeded (code 1) is sent "
            "only when fragment 0 arrived (RFC 792), else just IpReasmTimeout."),
    _c("ip-frag-tiny-first", "ip", "first fragment carries only 8 bytes (the UDP header)",
       V.REASSEMBLED, note="Tiny fragments matter for TCP filters (RFC 1858), not for reassembly."),
    _c("ip-frag-beyond-64k", "ip", "fragment offset + length past 65535 (ping of death)",
       V.FRAG_FAIL),
    # --- UDP ----------------------------------------------------------------------------------
    _c("udp-well-formed", "udp", "nothing: a control datagram", V.DELIVERED),
    _c("udp-bad-checksum", "udp", "UDP checksum off by one", V.UDP_CSUM,
       note="Verified lazily, when the server's recv() copies it: the counter moves then."),
    _c("udp-zero-checksum", "udp", "checksum 0 (no checksum; legal on IPv4, RFC 768)", V.DELIVERED),
    _c("udp-length-larger", "udp", "UDP length 40 bytes more than the data", V.UDP_ERR),
    _c("udp-length-smaller", "udp", "UDP length 16 of 40 bytes (the rest is trimmed)", V.DELIVERED),
    _c("udp-length-below-8", "udp", "UDP length 4, shorter than its own header", V.UDP_ERR),
    _c("udp-zero-payload", "udp", "an empty datagram (length 8)", V.DELIVERED),
    _c("udp-max-size", "udp", "65507-byte datagram, 45 fragments at MTU 1500", V.REASSEMBLED,
       wait_s=1.0),
    _c("udp-closed-port", "udp", "datagram to a port nobody listens on", V.ICMP_PORT),
    _c("udp-closed-port-bad-checksum", "udp", "bad checksum to a closed port", V.UDP_CSUM,
       note="The checksum is verified before deciding to send ICMP, so nothing comes back."),
    _c("udp-port-zero", "udp", "destination port 0", V.ICMP_PORT),
    # --- TCP (no connection) ------------------------------------------------------------------
    _c("tcp-syn-open-port", "tcp", "nothing: a control SYN to the echo port", V.SYNACK),
    _c("tcp-syn-closed-port", "tcp", "SYN to a port nobody listens on", V.RST),
    _c("tcp-bad-checksum", "tcp", "SYN with its checksum off by one", V.TCP_CSUM),
    _c("tcp-doff-below-5", "tcp", "data offset 4 (16-byte header)", V.TCP_ERR),
    _c("tcp-syn-fin", "tcp", "SYN+FIN to the echo port", (V.IGNORED, V.SYNACK), note=_SYNFIN_NOTE),
    _c("tcp-null-open-port", "tcp", "no flags at all, to the echo port", V.IGNORED,
       note="In LISTEN a segment without SYN, ACK or RST is discarded (RFC 9293 §3.10.7.2)."),
    _c("tcp-null-closed-port", "tcp", "no flags at all, to a closed port", V.RST),
    _c("tcp-xmas-open-port", "tcp", "FIN+PSH+URG (Xmas), to the echo port", V.IGNORED,
       note="In LISTEN a segment without SYN, ACK or RST is discarded (RFC 9293 §3.10.7.2)."),
    _c("tcp-xmas-closed-port", "tcp", "FIN+PSH+URG (Xmas), to a closed port", V.RST),
    _c("tcp-data-without-handshake", "tcp", "ACK+PSH with data, no connection", V.RST),
    _c("tcp-syn-flood", "tcp", "256 SYNs never completed; a real client connects mid-flood",
       V.FLOOD_OK, mode="flood", wait_s=1.0,
       note="Past the listen backlog SYN cookies take over (tcp_syncookies=1, pinned in the sandbox): "
            "every SYN gets a SYN-ACK and the real client connects at once."),
    # --- TCP on a live (crafted) connection ----------------------------------------------------
    _c("tcp-out-of-window-data", "tcp", "data 10 MB beyond the receive window", V.DUPACK,
       mode="conn"),
    _c("tcp-blind-rst-in-window", "tcp", "RST in the window but not at rcv_nxt (RFC 5961 §3)",
       V.CHALLENGE, mode="conn"),
    _c("tcp-rst-out-of-window", "tcp", "RST far outside the window", V.IGNORED, mode="conn",
       note="Dropped without a challenge ACK (RFC 5961 §3.2); the connection still echoes."),
    _c("tcp-exact-rst", "tcp", "RST exactly at rcv_nxt", V.RESET, mode="conn"),
    _c("tcp-syn-on-established", "tcp", "SYN on an established connection (RFC 5961 §4)",
       V.CHALLENGE, mode="conn",
       note="Counted in TcpInErrs and TcpExtTCPSYNChallenge too; the connection survives."),
    _c("tcp-data-bad-checksum", "tcp", "in-window data with a bad checksum", V.TCP_CSUM, mode="conn"),
    # --- application (real sockets against the lab's echo servers) -----------------------------
    _c("app-udp-garbage", "app", "512 random bytes in one UDP datagram", V.ECHOED, mode="app-udp"),
    _c("app-udp-truncated-header", "app", "the first 10 bytes of a probe header (UDP)", V.ECHOED,
       mode="app-udp"),
    _c("app-udp-length-4gib", "app", "a probe header declaring a 4 GiB payload (UDP)", V.ECHOED,
       mode="app-udp"),
    _c("app-tcp-garbage", "app", "4 KiB of random bytes on a TCP connection", V.ECHOED,
       mode="app-tcp"),
    _c("app-tcp-truncated-header", "app", "10 bytes of a probe header, then half-close", V.ECHOED,
       mode="app-tcp"),
    _c("app-tcp-length-4gib", "app", "a probe header declaring a 4 GiB payload (TCP)", V.ECHOED,
       mode="app-tcp", note="An RFC 862 echo server does not parse; a probe-aware one would close."),
    _c("app-tcp-header-stream", "app", "1 MiB of valid headers, none with its payload", V.ECHOED,
       mode="app-tcp", wait_s=5.0),
)

BY_NAME = {case.name: case for case in CASES}


def select(names: list[str] | None = None, layer: str | None = None) -> list[Case]:
    """Cases by name (ConfigError listing close matches for an unknown one) and/or layer."""
    if layer is not None and layer not in LAYERS:
        raise ConfigError(f"layer must be one of {', '.join(LAYERS)}, got {layer!r}")
    chosen = list(CASES)
    if names:
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            hints = [
                f"{n!r} (did you mean {', '.join(difflib.get_close_matches(n, BY_NAME, n=3))}?)"
                if difflib.get_close_matches(n, BY_NAME, n=3) else repr(n)
                for n in unknown
            ]
            raise ConfigError(f"unknown probe case {', '.join(hints)}; `lab probe --list` shows all")
        chosen = [BY_NAME[n] for n in names]
    if layer is not None:
        chosen = [case for case in chosen if case.layer == layer]
        if names and not chosen:
            raise ConfigError(f"none of the cases {', '.join(names)} is of layer {layer!r}; "
                              "drop --layer or pick cases of that layer")
    return chosen
