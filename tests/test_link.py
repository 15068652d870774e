"""Through the real link: real namespaces, TUN devices, forwarder process and kernel TCP/UDP.

Links are module-scoped (one per impairment) to keep the area fast; each test states its
configuration and prints its figures on failure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.metrics import wilson_interval

pytestmark = pytest.mark.privileged

CONFIDENCE = 0.99  # the "within the 99% interval"
DELAY_P50_WINDOW_US = (40_000, 42_000)  # 2 x 20 ms one-way, plus <= 2 ms of forwarding and scheduling
HTTP_PORT = 8000  # fixed is fine: nothing else lives in the link's own namespace
HTTP_BODY_BYTES = 100_000


def _open(**impairment: object) -> Iterator[object]:
    from lab.link.session import open_link

    link = open_link(**impairment)
    try:
        yield link
    finally:
        link.close()


@pytest.fixture(scope="module")
def plain_link() -> Iterator[object]:
    yield from _open()


@pytest.fixture(scope="module")
def lossy_link() -> Iterator[object]:
    yield from _open(loss="10%", seed=7)


def _figures(result: object) -> str:
    r = result
    return (f"sent={r.sent} received={r.received} lost={r.lost} loss={r.loss_ratio:.4f} "
            f"expected={r.expected_loss_ratio} dup={r.duplicates} corrupted={r.corrupted} "
            f"rtt_us={r.rtt_us} link={r.link} kernel={r.kernel}")


def test_no_impairment_udp_every_probe_arrives(plain_link) -> None:
    """Null link, 1000 UDP probes open loop at 5000/s: all come back, none damaged or doubled."""
    r = plain_link.run("udp", count=1000, rate=5000, size=200, timeout=1.0)
    assert (r.received, r.duplicates, r.corrupted) == (1000, 0, 0), _figures(r)
    assert r.link["forward"]["forwarded"] >= 1000, _figures(r)
    assert r.expected_loss_ratio == 0.0


def test_no_impairment_tcp_every_byte_arrives(plain_link) -> None:
    """Null link, 1000 x 1400-byte TCP probes: every byte echoed intact (per-probe CRC)."""
    r = plain_link.run("tcp", count=1000, rate=10_000, size=1400, timeout=2.0)
    assert (r.received, r.lost, r.corrupted, r.duplicates) == (1000, 0, 0, 0), _figures(r)
    assert r.observations["tcp"]["tcp_info"] and r.kernel["client"].get("TcpActiveOpens") == 1, _figures(r)


def test_loss_udp_within_interval(lossy_link) -> None:
    """loss=10% both ways, 2000 UDP probes at 2000/s: round-trip loss consistent with 1-0.9^2."""
    r = lossy_link.run("udp", count=2000, rate=2000, size=64, timeout=0.5)
    expected = 1 - 0.9**2
    lo, hi = wilson_interval(r.lost, r.sent, CONFIDENCE)
    assert r.expected_loss_ratio == pytest.approx(expected)
    assert lo <= expected <= hi, f"99% interval [{lo:.4f}, {hi:.4f}] misses {expected}; " + _figures(r)
    dropped = r.link["forward"]["dropped_loss"] + r.link["reverse"]["dropped_loss"]
    assert dropped == r.lost, _figures(r)  # every lost probe is one the forwarder dropped


def test_loss_tcp_delivers_everything_with_retransmissions(lossy_link) -> None:
    """loss=10%: TCP still delivers all bytes intact, and TCP_INFO/kernel show retransmissions."""
    r = lossy_link.run("tcp", count=500, rate=2000, size=512, timeout=5.0)
    assert (r.received, r.lost, r.corrupted, r.duplicates) == (500, 0, 0, 0), _figures(r)
    info = r.observations["tcp"]["tcp_info"]
    retrans = info.get("total_retrans", 0) or info.get("retransmits", 0)
    assert retrans > 0, f"tcp_info={info} " + _figures(r)
    assert r.kernel["client"].get("TcpRetransSegs", 0) > 0, _figures(r)


def test_reseed_replays_the_same_link_decisions(impaired_link) -> None:
    """After reseed() the link drops exactly the same probes again (same seed, same packets)."""
    link = impaired_link(loss="10%", seed=3)
    runs = []
    for _ in range(2):
        link.reseed()
        record, result = link.measure("udp", count=400, rate=2000, size=64, timeout=0.3)
        runs.append((result.lost, sorted({a.seq for a in record.arrivals})))
    assert runs[0][0] > 0, runs[0]
    assert runs[0] == runs[1], f"lost {runs[0][0]} then {runs[1][0]}"


def test_delay_rtt_p50(impaired_link) -> None:
    """delay=20ms each way: ping-pong RTT p50 within [40 ms, 42 ms]."""
    link = impaired_link(delay="20ms")
    r = link.run("udp", count=40, timeout=1.0)
    assert r.received == 40, _figures(r)
    lo, hi = DELAY_P50_WINDOW_US
    assert lo <= r.rtt_us["p50"] <= hi, _figures(r)


def test_duplicate_shows_in_udp_never_in_tcp(impaired_link) -> None:
    """duplicate=10%: UDP sees duplicates, TCP's byte stream never does."""
    link = impaired_link(duplicate="10%")
    u = link.run("udp", count=1000, rate=5000, timeout=0.5)
    assert u.duplicates > 0 and u.link["forward"]["duplicated"] > 0, _figures(u)
    t = link.run("tcp", count=500, rate=5000, timeout=2.0)
    assert (t.received, t.duplicates, t.corrupted) == (500, 0, 0), _figures(t)


def test_corrupt_shows_as_checksum_errors_not_bad_data(impaired_link) -> None:
    """corrupt=5%: the kernels drop damaged segments (checksum errors); the apps see no bad data."""
    link = impaired_link(corrupt="5%")
    u = link.run("udp", count=1000, rate=5000, size=200, timeout=0.5)
    udp_csum = sum(u.kernel[s].get("UdpInCsumErrors", 0) for s in ("client", "server"))
    assert udp_csum > 0 and u.corrupted == 0, _figures(u)
    t = link.run("tcp", count=300, rate=3000, size=512, timeout=5.0)
    tcp_csum = sum(t.kernel[s].get("TcpInCsumErrors", 0) for s in ("client", "server"))
    assert tcp_csum > 0, _figures(t)
    assert (t.received, t.corrupted) == (300, 0), _figures(t)


def test_set_changes_the_running_link(plain_link) -> None:
    """link.set(loss=...) takes effect at once and can be undone."""
    try:
        plain_link.set(loss="50%")
        r = plain_link.run("udp", count=400, rate=4000, timeout=0.3)
        assert r.loss_ratio > 0.5, _figures(r)  # expected 1-0.5^2 = 0.75
        assert r.expected_loss_ratio == pytest.approx(0.75)
    finally:
        plain_link.set(loss="0%")
    r = plain_link.run("udp", count=400, rate=4000, timeout=0.3)
    assert r.received == 400, _figures(r)


def test_set_rejects_bad_values_without_changing_the_link(plain_link) -> None:
    """A bad value raises ConfigError and leaves the link as it was."""
    from lab.errors import ConfigError

    before = plain_link.config
    with pytest.raises(ConfigError, match="loss"):
        plain_link.set(loss="150%")
    assert plain_link.config == before


def _fetch(url: str, attempts: int) -> bytes:
    import urllib.request

    for _ in range(attempts):  # the server may still be starting
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.read()
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"no answer from {url}")


def test_your_own_code_http_under_loss(lossy_link, tmp_path: Path) -> None:
    """Plain stdlib http.server in the server namespace, urllib in the client, 10% loss: it works."""
    body = os.urandom(HTTP_BODY_BYTES)
    (tmp_path / "blob.bin").write_bytes(body)
    server = lossy_link.server.popen(
        [sys.executable, "-m", "http.server", "--bind", lossy_link.server_address, str(HTTP_PORT),
         "--directory", str(tmp_path)],
        stdout=open(os.devnull, "wb"), stderr=open(os.devnull, "wb"),  # noqa: SIM115
    )
    try:
        got = lossy_link.client.call(_fetch, f"http://{lossy_link.server_address}:{HTTP_PORT}/blob.bin", 50)
        assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    finally:
        server.terminate()
        server.wait(timeout=5)


def test_end_call_runs_inside_the_namespace(plain_link) -> None:
    """End.call runs in a child inside the namespace; results and exceptions come back."""
    ours = os.readlink("/proc/self/ns/net")
    theirs = plain_link.client.call(os.readlink, "/proc/self/ns/net")
    assert theirs != ours
    addresses = plain_link.server.call(socket.gethostbyname, plain_link.server_address)
    assert addresses == plain_link.server_address
    with pytest.raises(ValueError, match="invalid literal"):
        plain_link.client.call(int, "not a number")


def test_end_run_and_popen(plain_link) -> None:
    """End.run/popen start commands inside the namespace (they see the lab address)."""
    code = "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); " \
           "s.bind(('198.18.0.1', 0)); print('bound')"
    done = plain_link.client.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0 and done.stdout.strip() == "bound", done.stderr
    outside = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert outside.returncode != 0  # the root namespace has no 198.18.0.1


def test_counters_readable_while_running(plain_link) -> None:
    """Forwarder counters grow while the link is up and have the documented keys."""
    before = plain_link.counters()
    plain_link.run("udp", count=50, rate=5000)
    after = plain_link.counters()
    keys = {"packets_in", "bytes_in", "forwarded", "bytes_out", "dropped_loss", "dropped_queue",
            "duplicated", "reordered", "corrupted", "delayed"}
    assert keys <= set(after["forward"]) and keys <= set(after["reverse"])
    assert after["forward"]["packets_in"] - before["forward"]["packets_in"] >= 50


def test_capture_pcapng_with_comments(impaired_link, tmp_path: Path) -> None:
    """capture= writes every packet entering the link; scapy reads it with per-packet comments."""
    from scapy.utils import rdpcap

    path = tmp_path / "link.pcapng"
    link = impaired_link(loss="20%", delay="1ms", capture=path)
    link.run("udp", count=100, rate=2000, timeout=0.3)
    link.close()
    counters = link.final_counters
    packets = rdpcap(str(path))
    entered = counters["forward"]["packets_in"] + counters["reverse"]["packets_in"]
    assert len(packets) == entered, f"{len(packets)} captured, counters {counters}"
    comments = [p.comment.decode() if isinstance(p.comment, bytes) else p.comment for p in packets]
    assert all(comments), comments[:5]
    assert any("dropped (loss)" in c for c in comments), comments[:20]
    assert any(c.startswith("delayed") for c in comments), comments[:20]
    tshark = shutil.which("tshark")
    if tshark is not None:  # optional: the same file as Wireshark's own reader sees it
        done = subprocess.run([tshark, "-r", str(path), "-T", "fields", "-e", "frame.interface_name",
                               "-e", "frame.comment"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        rows = [line.split("\t", 1) for line in done.stdout.splitlines()]
        assert len(rows) == entered, done.stdout[:500]
        assert {r[0] for r in rows} == {"client->server", "server->client"}, rows[:5]
        assert [r[1] for r in rows] == comments, rows[:5]
