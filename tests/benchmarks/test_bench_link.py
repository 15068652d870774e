"""The link's budgets (issue 3), measured, never asserted on time.

- group "rtt-link": UDP ping-pong RTT through the forwarder's link vs the same two namespaces joined
  by a plain veth pair, in one run; budget: the link adds <= 40 µs to the median.
- group "link-goodput": TCP goodput through the unimpaired link; budget >= 500 Mbit/s
  (`extra_info["goodput_mbit_s"]`).
- group "link-pps": packets/s the forwarder moves, with no impairment (its fast path) and with
  impairments active (every packet through the Python model); budget >= 50 000 packets/s unimpaired
  (`extra_info["forwarded_pps"]`).

Echo servers, sinks and senders run in their own processes (docs/architecture.md#processes: the GIL
would distort what is measured). Every flood is bounded in time; everything lives in the lab's own namespaces.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from lab.link.netns import in_netns_thread
from tests.benchmarks import anchors

pytestmark = pytest.mark.privileged

PROBE = b"x" * 64
VETH_CLIENT, VETH_SERVER = anchors.VETH_CLIENT, anchors.VETH_SERVER  # a /30 of the lab's range
RTT_ROUNDS = 3000
GOODPUT_BYTES = 128 * 2**20  # per round: ~2 s at the budget's 500 Mbit/s
GOODPUT_ROUNDS = 3
FLOOD_S = 1.5  # how long one packets/s flood lasts
FLOOD_PAYLOAD = 36  # + 28 bytes of IPv4/UDP header = 64-byte packets, the classic pps figure
SINK_PORT = 9  # discard (RFC 863): the sink never reads, its kernel drops the overflow
READY_TIMEOUT_S = 10.0

# A UDP echo (or, with "tcp", a TCP sink that reads each connection to EOF) in its own process.
SERVER = r"""
import socket, sys
host, kind = sys.argv[1], sys.argv[2]
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, 0))
    print(s.getsockname()[1], flush=True)
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(data, peer)
else:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen()
    print(s.getsockname()[1], flush=True)
    buf = bytearray(1 << 20)
    while True:
        conn, _ = s.accept()
        while conn.recv_into(buf):
            pass
        conn.close()
"""


def _server(ns: str, host: str, kind: str) -> tuple[subprocess.Popen[str], int]:
    """Start SERVER inside `ns`; (process, port)."""
    process = in_netns_thread(ns, lambda: subprocess.Popen(
        [sys.executable, "-c", SERVER, host, kind], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
        text=True))
    import select

    if not select.select([process.stdout], [], [], READY_TIMEOUT_S)[0]:
        process.kill()
        raise RuntimeError(f"{kind} server in {ns} did not start")
    return process, int(process.stdout.readline())


def _stop(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.wait(timeout=5)
    process.stdout.close()


def _ping_pong(benchmark, client_ns: str, client_host: str, server_ns: str, server_host: str) -> None:
    server, port = _server(server_ns, server_host, "udp")
    client = in_netns_thread(client_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    client.bind((client_host, 0))
    client.settimeout(1.0)
    address = (server_host, port)

    def once() -> None:
        client.sendto(PROBE, address)
        client.recv(2048)

    try:
        for _ in range(200):  # warm caches, ARP/neighbour entries
            once()
        benchmark.pedantic(once, rounds=RTT_ROUNDS, iterations=1, warmup_rounds=0)
        if benchmark.stats is not None:  # None when benchmarks are disabled (xdist, `make test`)
            benchmark.extra_info["p50_us"] = round(benchmark.stats.stats.median * 1e6, 1)
    finally:
        client.close()
        _stop(server)


@pytest.fixture
def veth_pair() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth pair (the baseline: no userspace hop), recorded so a
    concurrent `lab cleanup` spares it (tests/benchmarks/anchors.py)."""
    with anchors.veth_pair() as pair:
        yield pair.client_ns, pair.server_ns


@pytest.mark.benchmark(group="rtt-link")
def test_rtt_veth(benchmark, veth_pair) -> None:
    """Baseline: UDP ping-pong over a plain veth pair between two namespaces."""
    _ping_pong(benchmark, veth_pair[0], VETH_CLIENT, veth_pair[1], VETH_SERVER)


@pytest.mark.benchmark(group="rtt-link")
def test_rtt_link(benchmark) -> None:
    """UDP ping-pong through the lab's unimpaired link (TUN + forwarder process)."""
    from lab.link.session import open_link

    with open_link() as link:
        _ping_pong(benchmark, link.client_ns, link.client_address, link.server_ns, link.server_address)


@pytest.mark.benchmark(group="rtt-link")
def test_rtt_added_by_forwarder(benchmark, veth_pair) -> None:
    """Both paths in one test, pings interleaved one by one, so load from elsewhere hits both alike.

    The timed call is one veth ping plus one link ping; `extra_info` holds each path's p50 and the
    difference, which is the budget's figure (<= 40 µs).
    """
    from lab.link.session import open_link

    samples: dict[str, list[float]] = {"veth": [], "link": []}
    with open_link() as link:
        paths = []
        servers = []
        try:
            for label, cns, chost, sns, shost in (
                ("veth", veth_pair[0], VETH_CLIENT, veth_pair[1], VETH_SERVER),
                ("link", link.client_ns, link.client_address, link.server_ns, link.server_address),
            ):
                server, port = _server(sns, shost, "udp")
                servers.append(server)
                sock = in_netns_thread(cns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                sock.bind((chost, 0))
                sock.settimeout(1.0)
                sock.connect((shost, port))
                paths.append((samples[label], sock))

            def both() -> None:
                for out, sock in paths:
                    start = time.perf_counter()
                    sock.send(PROBE)
                    sock.recv(2048)
                    out.append(time.perf_counter() - start)

            for _ in range(200):
                both()
            for out in samples.values():
                out.clear()
            benchmark.pedantic(both, rounds=RTT_ROUNDS, iterations=1, warmup_rounds=0)
        finally:
            for _, sock in paths:
                sock.close()
            for server in servers:
                _stop(server)
    p50 = {k: sorted(v)[len(v) // 2] * 1e6 for k, v in samples.items()}
    added = p50["link"] - p50["veth"]
    benchmark.extra_info.update(veth_p50_us=round(p50["veth"], 1), link_p50_us=round(p50["link"], 1),
                                added_p50_us=round(added, 1))
    print(f"\nUDP ping-pong p50: veth {p50['veth']:.1f} µs, link {p50['link']:.1f} µs, "
          f"added by the forwarder {added:.1f} µs ({len(samples['link'])} pings each); budget <= 40 µs")


def _send_stream(host: str, port: int, nbytes: int) -> float:
    """(In the client namespace) send `nbytes` over one TCP connection; seconds until the sink closed."""
    chunk = b"\0" * (256 * 1024)
    with socket.create_connection((host, port), timeout=30) as sock:
        start = time.perf_counter()
        left = nbytes
        while left > 0:
            sent = sock.send(chunk[:left])
            left -= sent
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # b"" once the sink has read everything and closed: delivered, not just buffered
        return time.perf_counter() - start


@pytest.mark.benchmark(group="link-goodput")
def test_tcp_goodput_link(benchmark) -> None:
    """TCP goodput through the unimpaired link: sender and sink in their own processes."""
    from lab.link.session import open_link

    with open_link() as link:
        sink, port = _server(link.server_ns, link.server_address, "tcp")
        try:
            seconds: list[float] = []

            def transfer() -> None:
                seconds.append(link.client.call(_send_stream, link.server_address, port, GOODPUT_BYTES))

            benchmark.pedantic(transfer, rounds=GOODPUT_ROUNDS, iterations=1, warmup_rounds=0)
        finally:
            _stop(sink)
        best = GOODPUT_BYTES * 8 / min(seconds) / 1e6
        median = GOODPUT_BYTES * 8 / sorted(seconds)[len(seconds) // 2] / 1e6
        benchmark.extra_info.update(goodput_mbit_s=round(median, 1), best_goodput_mbit_s=round(best, 1),
                                    counters=link.counters())
        print(f"\nTCP goodput through the link: median {median:.0f} Mbit/s, best {best:.0f} Mbit/s "
              f"({GOODPUT_BYTES >> 20} MiB x {GOODPUT_ROUNDS}); budget >= 500 Mbit/s")


def _flood(host: str, port: int, seconds: float, payload: int) -> int:
    """(In the client namespace) send UDP datagrams as fast as possible for `seconds`; count sent."""
    data = b"\0" * payload
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        sock.setblocking(False)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _ in range(256):
                try:
                    sock.send(data)
                    sent += 1
                except BlockingIOError:
                    break
    return sent


PPS_CASES = {
    "null": {},
    "loss": {"loss": "1%"},
    "delay": {"delay": "1ms"},
    "everything": {"loss": "1%", "duplicate": "1%", "corrupt": "1%", "delay": "1ms", "jitter": "200us",
                   "reorder": "1%"},
}


@pytest.mark.benchmark(group="link-pps")
@pytest.mark.parametrize("case", list(PPS_CASES))
def test_forwarded_pps(benchmark, case: str) -> None:
    """64-byte UDP packets/s the forwarder takes in and moves, per impairment (fast path = "null")."""
    from lab.link.session import open_link

    with open_link(**PPS_CASES[case]) as link:
        sink = in_netns_thread(link.server_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        sink.bind((link.server_address, SINK_PORT))  # never read: no ICMP, the overflow is dropped
        try:
            figures: dict[str, float] = {}

            def flood() -> None:
                before = link.counters()["forward"]
                start = time.monotonic()
                sent = link.client.call(_flood, link.server_address, SINK_PORT, FLOOD_S, FLOOD_PAYLOAD)
                elapsed = time.monotonic() - start
                time.sleep(0.1)  # let delayed packets leave before the counters are read
                after = link.counters()["forward"]
                figures.update(
                    sent_pps=sent / FLOOD_S,
                    in_pps=(after["packets_in"] - before["packets_in"]) / elapsed,
                    forwarded_pps=(after["forwarded"] - before["forwarded"]) / elapsed,
                )

            benchmark.pedantic(flood, rounds=1, iterations=1, warmup_rounds=0)
        finally:
            sink.close()
        benchmark.extra_info.update({k: round(v) for k, v in figures.items()}, impairment=PPS_CASES[case])
        print(f"\nforwarder, {case} {PPS_CASES[case]}: offered {figures['sent_pps']:,.0f}/s, took in "
              f"{figures['in_pps']:,.0f}/s, forwarded {figures['forwarded_pps']:,.0f}/s; budget >= 50,000/s")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-p", "no:xdist", "--benchmark-only", "-s"]))
