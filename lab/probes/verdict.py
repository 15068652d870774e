"""From what was observed to a verdict — pure: no sockets, no scapy, testable with plain dicts.

A verdict is a canonical phrase (compared with a case's expected ones) plus the evidence that led
to it, e.g. "dropped by the kernel: UDP checksum (UdpInCsumErrors +1)".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DELIVERED = "delivered to the application"
REASSEMBLED = "reassembled and delivered"
IP_CSUM = "dropped by the kernel: IP header checksum"
IP_HDR = "dropped by the kernel: IP header error"
IP_TRUNC = "dropped by the kernel: packet shorter than its IP total length"
FRAG_OVERLAP = "dropped by the kernel: overlapping fragments"
FRAG_FAIL = "dropped by the kernel: fragment reassembly failed"
FRAG_TIMEOUT = "dropped by the kernel: fragment reassembly timed out"
UDP_CSUM = "dropped by the kernel: UDP checksum"
UDP_ERR = "dropped by the kernel: UDP length"
TCP_CSUM = "dropped by the kernel: TCP checksum"
TCP_ERR = "dropped by the kernel: TCP header error"
ICMP_PORT = "answered: ICMP port unreachable"
ICMP_PROTO = "answered: ICMP protocol unreachable"
ICMP_PARAM = "answered: ICMP parameter problem"
ICMP_REASM = "answered: ICMP reassembly time exceeded"
ICMP_OTHER = "answered: ICMP"
RST = "answered: RST"
SYNACK = "answered: SYN-ACK"
CHALLENGE = "answered: challenge ACK; connection survives"
DUPACK = "answered: duplicate ACK; data discarded"
RESET = "connection reset"
FLOOD_OK = "answered: SYN-ACKs; a real client still connects"
FLOOD_BAD = "SYN flood: the real client could not connect"
TCP_OTHER = "answered: another TCP segment"
IGNORED = "silently ignored: no reply, nothing delivered"
NOT_SEEN = "never reached the stack"
CONN_LOST = "connection stalled: no answer on it afterwards"
FLOOD_SILENT = "SYN flood: no SYN-ACKs; a real client still connects"
ECHOED = "echoed by the application"
PARTIAL = "partly echoed by the application"
APP_CLOSED = "connection closed by the application"
APP_SILENT = "no answer from the application"
REFUSED_BY_TUN = "refused by the TUN driver"
ERROR = "error while probing"

# (counter, verdict) in priority order: the first non-zero counter names the drop.
DROP_COUNTERS: tuple[tuple[str, str], ...] = (
    ("IpExtInCsumErrors", IP_CSUM),
    ("IpExtInTruncatedPkts", IP_TRUNC),
    ("IpExtReasmOverlaps", FRAG_OVERLAP),
    ("IpReasmTimeout", FRAG_TIMEOUT),
    ("IpReasmFails", FRAG_FAIL),
    ("IpInHdrErrors", IP_HDR),
    ("UdpInCsumErrors", UDP_CSUM),
    ("UdpInErrors", UDP_ERR),
    ("TcpInCsumErrors", TCP_CSUM),
    ("TcpInErrs", TCP_ERR),
)
# ICMP (type, code) -> verdict, RFC 792.
ICMP_VERDICTS = {(3, 3): ICMP_PORT, (3, 2): ICMP_PROTO, (12, 0): ICMP_PARAM, (11, 1): ICMP_REASM}
# Counters worth quoting as evidence next to a verdict.
EVIDENCE_COUNTERS = tuple(name for name, _ in DROP_COUNTERS) + (
    "IpReasmOKs", "IpInUnknownProtos", "UdpNoPorts", "TcpExtTCPChallengeACK", "TcpExtTCPSYNChallenge",
    "TcpEstabResets", "TcpExtSyncookiesSent", "TcpExtTCPReqQFullDoCookies", "TcpExtListenDrops",
    "TcpExtTCPACKSkippedSeq", "TcpExtTCPACKSkippedChallenge", "IcmpOutParmProbs", "IcmpOutTimeExcds",
)


@dataclass(slots=True, kw_only=True)
class Observation:
    """What one case's run saw (plain data, crosses the process boundary as a dict)."""

    mode: str
    write_errors: list[str] = field(default_factory=list)
    replies: list[dict[str, Any]] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    app_saw_data: bool = False
    echo_seen: bool = False
    connection: str | None = None  # conn cases: "alive", "reset" or "no answer" afterwards
    synacks: int = 0
    real_client_ok: bool | None = None
    app: dict[str, Any] | None = None  # app cases: sent, echoed, closed, match
    error: str | None = None
    # What identifies this case's own packets, so a stray reply never decides a verdict: the IPv4
    # ids it sent (quoted back by ICMP errors) and its TCP/UDP source ports. Empty: not filtered.
    ip_ids: list[int] = field(default_factory=list)
    sports: list[int] = field(default_factory=list)
    # conn: the crafted peer's snd_nxt; a duplicate or challenge ACK acknowledges exactly this
    # (the segment under test was not accepted). None: not checked.
    conn_ack: int | None = None
    flood_client_after: int | None = None
    # Crafted packets the TUN handed to the stack during the case (its rx counter): the proof that
    # "nothing happened" happened to a packet that arrived. None: fall back on IpInReceives.
    wire_in: int | None = None  # flood: how many SYNs were out when the client connected


def _evidence(counters: dict[str, int], extra: str = "") -> str:
    parts = [f"{name} {counters[name]:+d}" for name in EVIDENCE_COUNTERS if counters.get(name)]
    if extra:
        parts.insert(0, extra)
    return ", ".join(parts)


def _tcp(reply: dict[str, Any], flag: str) -> bool:
    return reply.get("kind") == "tcp" and flag in reply.get("flags", "")


def related(obs: Observation, reply: dict[str, Any]) -> bool:
    """True if `reply` answers this case's packets: an ICMP error quoting one of its IP ids, or a
    TCP/UDP segment to one of its source ports (each unfiltered when the observation names none)."""
    if reply.get("kind") == "icmp":
        return not obs.ip_ids or reply.get("quoted_id") in obs.ip_ids
    if reply.get("kind") in ("tcp", "udp"):
        return not obs.sports or reply.get("dport") in obs.sports
    return False


def derive(obs: Observation) -> tuple[str, str]:
    """Return (verdict, evidence) from an observation; the rules are ordered most specific first.

    Every verdict names what backs it: a reply that answers this case's own packets, a counter
    that moved, the echo that came back, or the crafted connection's observed fate. Nothing seen
    at all is "silently ignored" only if the TUN's rx counter (or IpInReceives) shows the packets
    entered the stack.
    """
    c = obs.counters
    if obs.error:
        return ERROR, obs.error
    if obs.mode.startswith("app"):
        return _derive_app(obs)
    if obs.write_errors:
        return REFUSED_BY_TUN, "; ".join(obs.write_errors)
    replies = [r for r in obs.replies if related(obs, r)]
    if obs.mode == "flood":
        return _derive_flood(obs)
    if obs.connection == "reset":
        return RESET, _evidence(c, "the next segment on it got a RST")
    if obs.mode == "conn" and obs.connection != "alive":
        return CONN_LOST, _evidence(c, f"connection: {obs.connection}")
    for reply in replies:
        if reply.get("kind") == "icmp":
            key = (reply.get("type"), reply.get("code"))
            return ICMP_VERDICTS.get(key, ICMP_OTHER), _evidence(c, f"ICMP type {key[0]} code {key[1]}")
    if any(_tcp(r, "R") for r in replies):
        return RST, _evidence(c)
    if any(_tcp(r, "S") and _tcp(r, "A") for r in replies):
        return SYNACK, _evidence(c)
    # On a live connection an ACK answer says more than a drop counter (a SYN on an established
    # connection counts in TcpInErrs *and* is answered with a challenge ACK). "Discarded" and
    # "survives" are observed: the application saw nothing, the connection still echoes.
    acks = [r for r in replies if _tcp(r, "A") and obs.conn_ack in (None, r.get("ack"))]
    if obs.mode == "conn" and not obs.app_saw_data and acks:
        if c.get("TcpExtTCPChallengeACK", 0) > 0:
            return CHALLENGE, _evidence(c, "connection alive")
        return DUPACK, _evidence(c, "connection alive")
    for name, verdict in DROP_COUNTERS:
        if c.get(name, 0) > 0:
            return verdict, _evidence(c)
    echoes = [r for r in replies if r.get("kind") == "udp"]
    if obs.app_saw_data or obs.echo_seen or echoes:
        how = "echo came back" if obs.echo_seen else "server counted it"
        if echoes:
            sizes = sorted({r["len"] for r in echoes if "len" in r and "first fragment" not in r["summary"]})
            how = "echo came back" + (f", {'/'.join(map(str, sizes))} B" if sizes else "")
        if c.get("IpReasmOKs", 0) > 0:
            return REASSEMBLED, _evidence(c, how)
        return DELIVERED, _evidence(c, how)
    others = [r for r in replies if r.get("kind") == "tcp"]
    if others:  # a segment answered this case's packets, but none of the shapes above
        flags = "/".join(sorted({str(r.get("flags", "?")) for r in others}))
        return TCP_OTHER, _evidence(c, f"TCP {flags}")
    if obs.wire_in is not None:
        received, where = obs.wire_in, "received from the wire"
    else:
        received, where = c.get("IpInReceives", 0), "IpInReceives"
    if received <= 0:
        return NOT_SEEN, _evidence(c, f"{where} +0")
    extra = f"{where} {received:+d}" + ("; connection alive" if obs.mode == "conn" else "")
    return IGNORED, _evidence(c, extra)


def _derive_flood(obs: Observation) -> tuple[str, str]:
    c = obs.counters
    if not obs.real_client_ok:
        return FLOOD_BAD, _evidence(c, f"{obs.synacks} SYN-ACKs; the real client failed")
    after = (f" after {obs.flood_client_after} SYNs" if obs.flood_client_after is not None else "")
    extra = f"{obs.synacks} SYN-ACKs; a real client connected and echoed{after}"
    return (FLOOD_OK if obs.synacks > 0 else FLOOD_SILENT), _evidence(c, extra)


def _derive_app(obs: Observation) -> tuple[str, str]:
    app = obs.app or {}
    sent, echoed = app.get("sent", 0), app.get("echoed", 0)
    detail = f"sent {sent} B, {echoed} B came back" + (", then closed" if app.get("closed") else "")
    if sent and echoed == sent and app.get("match", False):
        return ECHOED, detail
    if echoed:
        return PARTIAL, detail
    if app.get("closed"):
        return APP_CLOSED, detail
    return APP_SILENT, detail


def summarize_replies(replies: list[dict[str, Any]]) -> str:
    """One short line for the table: distinct reply kinds with counts ("RST", "UDP echo x45" ...)."""
    counts: dict[str, int] = {}
    for reply in replies:
        counts[reply["summary"]] = counts.get(reply["summary"], 0) + 1
    if not counts:
        return "none"
    return ", ".join(text if n == 1 else f"{text} x{n}" for text, n in counts.items())
