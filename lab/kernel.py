"""Kernel observations: SNMP/netstat counters of a network namespace, and TCP_INFO of a socket.

Standard library only. `read_counters` reads the namespace of the *calling* process (so a caller
inside `ip netns exec` or a `setns`'d worker sees that namespace's counters).
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Any

SNMP_PATH = "/proc/net/snmp"
NETSTAT_PATH = "/proc/net/netstat"

# getsockopt(TCP_INFO) copies at most this many bytes; today's struct tcp_info is 248 bytes, and the
# kernel copies min(len, sizeof) so asking for more is harmless and future-proof.
TCP_INFO_BUFSIZE = 256
TCP_INFO = getattr(socket, "TCP_INFO", 11)  # linux/tcp.h: #define TCP_INFO 11

# struct tcp_info, field by field, from include/uapi/linux/tcp.h (Linux 6.x). Native byte order and
# alignment ("@"), as the kernel copies the struct raw. The two bitfield bytes (wscale, app_limited)
# are read as plain bytes. Offsets are computed from this list, so order matters.
_TCP_INFO_FIELDS: tuple[tuple[str, str], ...] = (
    ("state", "B"), ("ca_state", "B"), ("retransmits", "B"), ("probes", "B"),
    ("backoff", "B"), ("options", "B"), ("wscale", "B"), ("app_limited", "B"),
    ("rto_us", "I"), ("ato_us", "I"), ("snd_mss", "I"), ("rcv_mss", "I"),
    ("unacked", "I"), ("sacked", "I"), ("lost", "I"), ("retrans", "I"), ("fackets", "I"),
    ("last_data_sent_ms", "I"), ("last_ack_sent_ms", "I"), ("last_data_recv_ms", "I"),
    ("last_ack_recv_ms", "I"),
    ("pmtu", "I"), ("rcv_ssthresh", "I"), ("rtt_us", "I"), ("rttvar_us", "I"),
    ("snd_ssthresh", "I"), ("snd_cwnd", "I"), ("advmss", "I"), ("reordering", "I"),
    ("rcv_rtt_us", "I"), ("rcv_space", "I"),
    ("total_retrans", "I"),
    ("pacing_rate", "Q"), ("max_pacing_rate", "Q"), ("bytes_acked", "Q"), ("bytes_received", "Q"),
    ("segs_out", "I"), ("segs_in", "I"),
    ("notsent_bytes", "I"), ("min_rtt_us", "I"), ("data_segs_in", "I"), ("data_segs_out", "I"),
    ("delivery_rate", "Q"),
    ("busy_time_us", "Q"), ("rwnd_limited_us", "Q"), ("sndbuf_limited_us", "Q"),
    ("delivered", "I"), ("delivered_ce", "I"),
    ("bytes_sent", "Q"), ("bytes_retrans", "Q"), ("dsack_dups", "I"), ("reord_seen", "I"),
    ("rcv_ooopack", "I"), ("snd_wnd", "I"), ("rcv_wnd", "I"), ("rehash", "I"),
    ("total_rto", "H"), ("total_rto_recoveries", "H"), ("total_rto_time_ms", "I"),
)


def _layout() -> list[tuple[str, int, str]]:
    """(name, offset, format) of every field, using native alignment like the C struct."""
    out: list[tuple[str, int, str]] = []
    fmt = "@"
    for name, code in _TCP_INFO_FIELDS:
        # The offset of a field is the size of the prefix padded to the field's alignment.
        offset = struct.calcsize(fmt + code) - struct.calcsize("@" + code)
        out.append((name, offset, "@" + code))
        fmt += code
    return out


TCP_INFO_LAYOUT = _layout()


def _parse_table(text: str) -> dict[str, int]:
    """Parse the header-line/value-line pairs of /proc/net/snmp or /proc/net/netstat."""
    counters: dict[str, int] = {}
    lines = text.splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        prefix, _, names = header.partition(":")
        vprefix, _, numbers = values.partition(":")
        if prefix != vprefix:
            continue  # a malformed pair; skip rather than mislabel
        for name, number in zip(names.split(), numbers.split(), strict=False):
            try:
                counters[prefix + name] = int(number)
            except ValueError:
                continue
    return counters


def read_counters() -> dict[str, int]:
    """Counters of /proc/net/snmp and /proc/net/netstat in this process's namespace.

    Keys are the table prefix plus the field: "UdpInCsumErrors", "TcpRetransSegs",
    "TcpExtTCPSackRecovery", "IpExtInOctets"... (the kernel's own spelling)
    """
    counters: dict[str, int] = {}
    for path in (SNMP_PATH, NETSTAT_PATH):
        try:
            with open(path, encoding="ascii") as table:
                counters.update(_parse_table(table.read()))
        except OSError:
            continue  # e.g. a kernel without /proc/net/netstat: report what exists
    return counters


def counter_deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Non-zero differences after - before (gauges like TcpCurrEstab may go negative)."""
    deltas = {}
    for key, value in after.items():
        diff = value - before.get(key, 0)
        if diff:
            deltas[key] = diff
    return deltas


def parse_tcp_info(raw: bytes) -> dict[str, Any]:
    """Decode the bytes of getsockopt(TCP_INFO); fields the kernel did not fill are left out."""
    info: dict[str, Any] = {}
    for name, offset, fmt in TCP_INFO_LAYOUT:
        if offset + struct.calcsize(fmt) > len(raw):
            break
        (info[name],) = struct.unpack_from(fmt, raw, offset)
    # Two bytes are C bitfields: `snd_wscale:4, rcv_wscale:4` and
    # `delivery_rate_app_limited:1, fastopen_client_fail:2`. The raw byte (170 for scales 10 and
    # 10) means nothing to a reader, so split them. GCC fills bitfields from the least
    # significant bit on little-endian ABIs and from the most significant on big-endian ones.
    if "wscale" in info:
        raw_scales = info.pop("wscale")
        if sys.byteorder == "big":
            info["snd_wscale"], info["rcv_wscale"] = raw_scales >> 4, raw_scales & 0x0F
        else:
            info["snd_wscale"], info["rcv_wscale"] = raw_scales & 0x0F, raw_scales >> 4
    if "app_limited" in info:
        raw_flags = info["app_limited"]
        if sys.byteorder == "big":
            info["app_limited"], info["fastopen_client_fail"] = raw_flags >> 7, (raw_flags >> 5) & 0x03
        else:
            info["app_limited"], info["fastopen_client_fail"] = raw_flags & 0x01, (raw_flags >> 1) & 0x03
    # The result object (docs/architecture.md#result-object) names these srtt_us and cwnd; keep both.
    if "rtt_us" in info:
        info["srtt_us"] = info["rtt_us"]
    if "snd_cwnd" in info:
        info["cwnd"] = info["snd_cwnd"]
    return info


def tcp_info(sock: socket.socket) -> dict[str, Any]:
    """TCP_INFO of a connected TCP socket: retransmits, total_retrans, lost, rtt_us, cwnd..."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, TCP_INFO_BUFSIZE)
    return parse_tcp_info(raw)
