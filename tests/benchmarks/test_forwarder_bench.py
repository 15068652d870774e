"""The forwarder's budgets with the kernel's offloads (issue 13, item 5): ratios in one run, never asserts.

One test, group "forwarder-offloads", measures every path in the same run, interleaved and repeated,
so load from elsewhere hits them alike:
- iperf3 TCP through a plain veth pair between two namespaces (the baseline), through the minimal
  offloaded forwarder the issue measured (`anchors.minimal_forwarder`: a read and a write per
  batch, the floor for a forwarder in Python here), through the unimpaired link, and through the
  link with `delay 10ms` (default `limit 1000`: a GSO batch is one packet of it, as netem counts
  an skb); budgets: >= 10 Gbit/s unimpaired and >= 5 Gbit/s with the delay (`extra_info`); every
  run with `anchors.CONGESTION` (cubic), whatever the system's default, and `anchors.IPERF3_FAST`;
- the round trip's p50 through the veth pair, the minimal forwarder and the link (sockperf
  ping-pong with --full-rtt; without sockperf, a UDP ping-pong between two small Python
  processes); budget: <= 15 µs added to the veth pair's.

`make bench` holds the CPUs out of idle states meanwhile (tests/benchmarks/conftest.py). Both ends
of each path sit in namespaces whose TCP buffers may grow to 64 MiB (a 20 ms round trip at 10 Gbit/s
needs 25 MB in flight). Skips cleanly without iperf3. Marked slow: `make bench` runs it.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.link.netns import in_netns_thread
from tests.benchmarks import anchors

pytestmark = [pytest.mark.privileged, pytest.mark.slow]

IPERF_SECONDS = 3
REPEATS = 2
RTT_SECONDS = 2
PORT = 5201
BUFFERS = "4096 131072 67108864"  # tcp_rmem/tcp_wmem: min default max
PATHS = {
    "link": {},
    "link-delay-10ms": {"delay": "10ms"},
}

# without sockperf: a UDP echo and a ping-pong client, each its own process (no GIL shared)
ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""
PING = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
s.connect((sys.argv[1], int(sys.argv[2])))
samples = []
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    start = time.perf_counter()
    s.send(b"x" * 64)
    s.recv(2048)
    samples.append(time.perf_counter() - start)
samples.sort()
print(samples[len(samples) // 2] * 1e6)
"""


def _tune(ns: str) -> None:
    def write() -> None:
        for key in ("tcp_rmem", "tcp_wmem"):
            Path(f"/proc/sys/net/ipv4/{key}").write_text(BUFFERS)

    in_netns_thread(ns, write)


def _popen(ns: str, argv: list[str]) -> subprocess.Popen[str]:
    return in_netns_thread(ns, lambda: subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True))


def _stop(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.wait(timeout=5)
    if process.stdout is not None:
        process.stdout.close()


def _iperf3_gbit(client_ns: str, server_ns: str, server: str) -> float:
    """One iperf3 TCP run from client_ns to `server` in server_ns; received Gbit/s."""
    daemon = _popen(server_ns, ["iperf3", "-s", "-1", "-B", server, "-p", str(PORT)])
    try:
        time.sleep(0.3)
        out = _popen(client_ns, ["iperf3", "-c", server, "-p", str(PORT), "-t", str(IPERF_SECONDS), "-J",
                                 "-C", anchors.CONGESTION, *anchors.IPERF3_FAST])
        text, _ = out.communicate(timeout=IPERF_SECONDS + 30)
        report = json.loads(text)
        return report["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        _stop(daemon)


def _rtt_p50_us(client_ns: str, server_ns: str, server: str) -> float:
    """Median round trip (µs) of a 64-byte UDP ping-pong from client_ns to `server`."""
    if shutil.which("sockperf"):
        daemon = _popen(server_ns, ["sockperf", "sr", "-i", server, "-p", str(PORT)])
        argv = ["sockperf", "pp", "-i", server, "-p", str(PORT), "-t", str(RTT_SECONDS), "--full-rtt",
                "-m", "64"]
    else:
        daemon = _popen(server_ns, [sys.executable, "-c", ECHO, server, str(PORT)])
        argv = [sys.executable, "-c", PING, server, str(PORT), str(RTT_SECONDS)]
    try:
        time.sleep(0.3)
        client = _popen(client_ns, argv)
        text, _ = client.communicate(timeout=RTT_SECONDS + 30)
        if argv[0] == "sockperf":
            match = re.search(r"percentile 50\.000 =\s*([\d.]+)", text)
            assert match, text
            return float(match.group(1))
        return float(text.strip().splitlines()[-1])
    finally:
        _stop(daemon)


@pytest.mark.benchmark(group="forwarder-offloads")
def test_forwarder_offloads_against_veth(benchmark) -> None:
    """iperf3 and ping-pong RTT: veth pair, minimal forwarder, the link (unimpaired, delay 10ms),
    interleaved, one run."""
    if not shutil.which("iperf3"):
        pytest.skip("iperf3 is not installed (apt-get install iperf3)")
    from lab.link.session import open_link

    gbit: dict[str, list[float]] = {"veth": [], "minimal": [], **{name: [] for name in PATHS}}
    rtt: dict[str, list[float]] = {"veth": [], "minimal": [], "link": []}
    counters: dict[str, dict] = {}
    with contextlib.ExitStack() as stack:
        plain = {"veth": stack.enter_context(anchors.veth_pair()),
                 "minimal": stack.enter_context(anchors.minimal_forwarder())}
        links = {name: stack.enter_context(open_link(**options)) for name, options in PATHS.items()}
        paths = {name: (ends.client_ns, ends.server_ns, ends.server_address)
                 for name, ends in (*plain.items(), *links.items())}
        for client_ns, server_ns, _ in paths.values():
            _tune(client_ns)
            _tune(server_ns)

        def measure() -> None:
            for _ in range(REPEATS):
                for name, path in paths.items():
                    gbit[name].append(_iperf3_gbit(*path))
                for name in rtt:
                    rtt[name].append(_rtt_p50_us(*paths[name]))

        benchmark.pedantic(measure, rounds=1, iterations=1, warmup_rounds=0)
        counters = {name: link.counters()["forward"] for name, link in links.items()}
    medians = {name: statistics.median(values) for name, values in gbit.items()}
    rtt_p50 = {name: statistics.median(values) for name, values in rtt.items()}
    added = {name: rtt_p50[name] - rtt_p50["veth"] for name in ("minimal", "link")}
    benchmark.extra_info.update(
        {f"{name}_gbit_s": round(value, 2) for name, value in medians.items()},
        **{f"{name}_rtt_p50_us": round(value, 1) for name, value in rtt_p50.items()},
        added_rtt_p50_us=round(added["link"], 1), minimal_added_rtt_p50_us=round(added["minimal"], 1),
        rtt_probe="sockperf" if shutil.which("sockperf") else "python", congestion=anchors.CONGESTION,
        dropped_queue={name: c["dropped_queue"] for name, c in counters.items()},
    )
    lines = [f"  {name:30s} {value:6.2f} Gbit/s ({', '.join(f'{v:.2f}' for v in gbit[name])})"
             for name, value in medians.items()]
    print("\niperf3 TCP, median of", REPEATS, "interleaved runs; budgets >= 10 unimpaired, >= 5 with delay\n"
          + "\n".join(lines)
          + f"\nRTT p50: veth {rtt_p50['veth']:.1f} µs, minimal forwarder {rtt_p50['minimal']:.1f} µs "
            f"(added {added['minimal']:.1f}), link {rtt_p50['link']:.1f} µs (added {added['link']:.1f}; "
            "budget <= 15 µs)")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-p", "no:xdist", "--benchmark-only", "-s"]))
