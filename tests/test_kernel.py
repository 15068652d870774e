"""lab.kernel on real sockets: /proc/net counters and TCP_INFO."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time

import pytest

from lab.kernel import (
    TCP_INFO_LAYOUT,
    _parse_table,
    counter_deltas,
    parse_tcp_info,
    read_counters,
    tcp_info,
)

SNMP_SAMPLE = """\
Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 1234
Udp: InDatagrams NoPorts InErrors InCsumErrors
Udp: 10 2 0 7
"""


def test_parse_table_prefixes_fields() -> None:
    assert _parse_table(SNMP_SAMPLE) == {
        "IpForwarding": 1, "IpDefaultTTL": 64, "IpInReceives": 1234,
        "UdpInDatagrams": 10, "UdpNoPorts": 2, "UdpInErrors": 0, "UdpInCsumErrors": 7,
    }


def test_read_counters_has_snmp_and_netstat_keys() -> None:
    counters = read_counters()
    for key in ("UdpInCsumErrors", "UdpNoPorts", "TcpRetransSegs", "TcpInCsumErrors",
                "TcpExtTCPSackRecovery", "IpExtInOctets"):
        assert key in counters, sorted(counters)[:40]
    assert all(isinstance(v, int) for v in counters.values())


def test_counter_deltas_keeps_nonzero_differences() -> None:
    before = {"A": 1, "B": 5, "C": 3}
    after = {"A": 1, "B": 7, "C": 2, "D": 4}
    assert counter_deltas(before, after) == {"B": 2, "C": -1, "D": 4}


def test_udp_to_a_closed_port_counts_udp_no_ports() -> None:
    # Find a port with nothing on it: bind, note, close (nothing rebinds it this fast in practice).
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    closed = probe.getsockname()
    probe.close()
    before = read_counters()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(3):
            sender.sendto(b"anyone?", closed)
    deadline = time.monotonic() + 2.0
    while True:
        deltas = counter_deltas(before, read_counters())
        if deltas.get("UdpNoPorts", 0) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    # Other tests in this namespace may add more, never less.
    assert deltas.get("UdpNoPorts", 0) >= 3, deltas


def test_tcp_info_of_a_loopback_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
        with client, server:
            for _ in range(5):  # a few round trips give the kernel RTT samples
                client.sendall(b"x" * 100)
                server.recv(100)
                server.sendall(b"y")
                client.recv(1)
            info = tcp_info(client)
    assert info["state"] == 1  # TCP_ESTABLISHED (include/net/tcp_states.h)
    assert info["rtt_us"] > 0 and info["srtt_us"] == info["rtt_us"]
    assert info["snd_cwnd"] > 0 and info["cwnd"] == info["snd_cwnd"]
    assert info["pmtu"] > 0 and info["retransmits"] == 0 and info["total_retrans"] == 0
    for key in ("lost", "rttvar_us", "bytes_acked", "bytes_received", "delivered"):
        assert key in info, sorted(info)
    assert info["bytes_acked"] >= 500 and info["bytes_received"] >= 5
    assert 0 <= info["snd_wscale"] <= 14 and 0 <= info["rcv_wscale"] <= 14  # RFC 7323 §2.3 cap


def test_tcp_info_layout_matches_linux_offsets() -> None:
    offsets = {name: offset for name, offset, _ in TCP_INFO_LAYOUT}
    # Offsets of struct tcp_info in include/uapi/linux/tcp.h (x86-64 and every 64-bit Linux ABI).
    assert offsets["rto_us"] == 8 and offsets["pmtu"] == 60 and offsets["rtt_us"] == 68
    assert offsets["total_retrans"] == 100 and offsets["pacing_rate"] == 104
    assert offsets["bytes_acked"] == 120 and offsets["delivered"] == 192
    assert offsets["total_rto_time_ms"] == 244


@pytest.mark.skipif(sys.byteorder != "little", reason="bitfield layout written for little-endian")
def test_tcp_info_bitfields_are_split() -> None:
    raw = bytearray(104)
    raw[6] = 0x7A  # snd_wscale 10 (low nibble), rcv_wscale 7 (high nibble)
    raw[7] = 0b101  # delivery_rate_app_limited 1, fastopen_client_fail 2
    info = parse_tcp_info(bytes(raw))
    assert (info["snd_wscale"], info["rcv_wscale"]) == (10, 7) and "wscale" not in info
    assert (info["app_limited"], info["fastopen_client_fail"]) == (1, 2)


def test_parse_tcp_info_of_an_older_shorter_struct() -> None:
    info = parse_tcp_info(bytes(104))  # what a 2.6-era kernel copies: up to total_retrans
    assert "total_retrans" in info and "rtt_us" in info
    assert "bytes_acked" not in info and "delivered" not in info


@pytest.mark.privileged
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")
def test_counters_are_per_network_namespace() -> None:
    # A fresh, anonymous namespace (gone when the child exits): loopback is down, and
    # sending to a closed port there counts in that namespace only, never in ours.
    code = (
        "import json, socket; from lab.kernel import read_counters, counter_deltas\n"
        "before = read_counters()\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "try: s.sendto(b'x', ('127.0.0.1', 9))\n"
        "except OSError as e: print(json.dumps({'error': e.errno}))\n"
        "print(json.dumps({'before': before['UdpNoPorts'], 'opens': before['TcpActiveOpens']}))\n"
    )
    proc = subprocess.run(["unshare", "--net", sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    # A brand-new namespace starts from zero, whatever this one has counted.
    assert last == {"before": 0, "opens": 0}, proc.stdout
