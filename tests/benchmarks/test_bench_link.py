"""UDP ping-pong RTT: the forwarder's link vs the same two namespaces joined by a plain veth pair.

Group "rtt-link": compare the medians of `test_rtt_veth` and `test_rtt_link` from one run; the
budget (issue 3) is <= 40 µs added by the forwarder. Figures, not asserts.
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator

import pytest

from lab.link.netns import in_netns_thread, remove_namespace

pytestmark = pytest.mark.privileged

PROBE = b"x" * 64
VETH_CLIENT, VETH_SERVER = "198.18.1.1", "198.18.1.2"  # a separate /30 of the lab's range


def _echo_in(ns: str, host: str) -> tuple[socket.socket, threading.Thread, tuple[str, int]]:
    """A minimal UDP echo thread whose socket lives in `ns` (a socket keeps its namespace)."""
    sock = in_netns_thread(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.bind((host, 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(2048)
            except (TimeoutError, OSError):
                continue
            sock.sendto(data, peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.stop = stop  # type: ignore[attr-defined]
    thread.start()
    return sock, thread, sock.getsockname()


def _ping_pong(benchmark, client_ns: str, client_host: str, server_ns: str, server_host: str) -> None:
    sock, thread, address = _echo_in(server_ns, server_host)
    client = in_netns_thread(client_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    client.bind((client_host, 0))
    client.settimeout(1.0)

    def once() -> None:
        client.sendto(PROBE, address)
        client.recv(2048)

    try:
        for _ in range(200):  # warm caches, ARP/neighbour entries
            once()
        benchmark.pedantic(once, rounds=3000, iterations=1, warmup_rounds=0)
    finally:
        thread.stop.set()  # type: ignore[attr-defined]
        thread.join(timeout=2)
        client.close()
        sock.close()


@pytest.fixture
def veth_pair() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth pair (the baseline: no userspace hop)."""
    import secrets

    from pyroute2 import IPRoute, NetNS, netns

    tag = secrets.token_hex(2)
    names = (f"wl{tag}-client", f"wl{tag}-server")  # lab pattern: `lab cleanup` reaps a crash
    try:
        for ns in names:
            netns.create(ns)
        with IPRoute() as ipr:
            ipr.link("add", ifname=f"wl{tag}a", kind="veth", peer=f"wl{tag}b")
            ipr.link("set", index=ipr.link_lookup(ifname=f"wl{tag}a")[0], net_ns_fd=names[0])
            ipr.link("set", index=ipr.link_lookup(ifname=f"wl{tag}b")[0], net_ns_fd=names[1])
        for ns, dev, address in ((names[0], f"wl{tag}a", VETH_CLIENT), (names[1], f"wl{tag}b", VETH_SERVER)):
            with NetNS(ns) as inside:
                index = inside.link_lookup(ifname=dev)[0]
                inside.addr("add", index=index, address=address, prefixlen=30)
                inside.link("set", index=index, state="up")
        yield names
    finally:
        for ns in names:
            remove_namespace(ns)  # the veth pair dies with its namespaces


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


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-p", "no:xdist", "--benchmark-only"]))
