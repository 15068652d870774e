"""TCP vs UDP ping-pong RTT: one probe round trip per benchmark round, on loopback and through the link.

Groups (compare the medians with `make bench`; figures, not asserts):
- "rtt-loopback": `tcp` and `udp` against the lab's echo server on 127.0.0.1.
- "rtt-link-tcp-vs-udp" (privileged): the same two clients from the link's client namespace to the
  lab's echo server in its server namespace, through the unimpaired link (TUN + forwarder process).

Fair by construction: both protocols talk to the *same* server process (`python -m lab.endpoints.server
both`, its own process so the measuring process's GIL does not slow it:
docs/architecture.md#processes), both clients
encode a probe with `lab.wire`, send it and decode the echo (what a measuring client does per probe),
both sockets are blocking with the same timeout, and both run the same fixed number of warm-up and
measured rounds (`benchmark.pedantic`), so neither gets a longer calibration or a colder start.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from lab.endpoints.server import server_process
from lab.wire import NEED_DATA, Probe, StreamDecoder, decode_untrusted_datagram, encode, make_payload

PROBE_SIZE = 64  # bytes on the wire, the lab's default probe
IO_TIMEOUT_S = 5.0  # a lost reply on an unimpaired path means something broke: fail, do not hang
WARMUP_ROUNDS = 300  # caches, neighbour entries, the server's first accept/recv paths
ROUNDS = 5000  # the same for both protocols: medians over equal samples

Connect = Callable[[Callable[[], socket.socket]], socket.socket]


@pytest.fixture(scope="module")
def echo_server() -> Iterator[dict]:
    """The lab's echo server (TCP and UDP, ephemeral port) in a child process; stopped after the module."""
    with server_process("both") as ready:
        yield {"tcp": tuple(ready["tcp"]), "udp": tuple(ready["udp"]), "make": lambda factory: factory()}


@pytest.fixture(scope="module")
def link_echo_server() -> Iterator[dict]:
    """An unimpaired link; the lab's echo server in its server namespace; sockets made in its client one."""
    from lab.privileges import CAP_NET_ADMIN, explain

    reason = explain(CAP_NET_ADMIN)
    if reason:
        pytest.skip(f"the link benchmark {reason}")
    from lab.link.netns import in_netns_thread
    from lab.link.session import open_link

    with open_link() as link:
        port = link.echo_port()  # `python -m lab.endpoints.server both`, as on loopback
        address = (link.server_address, port)
        yield {
            "tcp": address,
            "udp": address,
            # a socket keeps the namespace it was created in
            "make": lambda factory: in_netns_thread(link.client_ns, factory),
        }


def _probe(seq: int) -> bytes:
    return encode(Probe(seq=seq, send_ns=time.monotonic_ns(), payload=make_payload(PROBE_SIZE - 32, seq)))


def _run(benchmark, round_trip: Callable[[], None]) -> None:
    benchmark.pedantic(round_trip, rounds=ROUNDS, iterations=1, warmup_rounds=WARMUP_ROUNDS)


def _tcp_ping_pong(benchmark, server: dict) -> None:
    address = server["tcp"]
    sock = server["make"](lambda: socket.create_connection(address, timeout=IO_TIMEOUT_S))
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one probe = one segment, no Nagle wait
        decoder = StreamDecoder()
        seq = iter(range(1 << 62))

        def round_trip() -> None:
            sock.sendall(_probe(next(seq)))
            while True:
                message = decoder.next_message()
                if message is not NEED_DATA:
                    assert isinstance(message, Probe), message
                    return
                data = sock.recv(65536)
                assert data, "echo server closed the connection"
                decoder.receive_data(data)

        _run(benchmark, round_trip)


def _udp_ping_pong(benchmark, server: dict) -> None:
    sock = server["make"](lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with sock:
        sock.settimeout(IO_TIMEOUT_S)
        sock.connect(server["udp"])
        seq = iter(range(1 << 62))

        def round_trip() -> None:
            sock.send(_probe(next(seq)))
            reply = decode_untrusted_datagram(sock.recv(65536))
            assert isinstance(reply, Probe)

        _run(benchmark, round_trip)


@pytest.mark.benchmark(group="rtt-loopback")
def test_rtt_loopback_tcp(benchmark, echo_server) -> None:
    """TCP ping-pong on 127.0.0.1 against the lab's echo server."""
    benchmark.name = "tcp"
    _tcp_ping_pong(benchmark, echo_server)


@pytest.mark.benchmark(group="rtt-loopback")
def test_rtt_loopback_udp(benchmark, echo_server) -> None:
    """UDP ping-pong on 127.0.0.1 against the same echo server process."""
    benchmark.name = "udp"
    _udp_ping_pong(benchmark, echo_server)


@pytest.mark.privileged
@pytest.mark.benchmark(group="rtt-link-tcp-vs-udp")
def test_rtt_link_tcp(benchmark, link_echo_server) -> None:
    """TCP ping-pong through the unimpaired link (client namespace -> TUN -> forwarder -> server)."""
    benchmark.name = "link-tcp"
    _tcp_ping_pong(benchmark, link_echo_server)


@pytest.mark.privileged
@pytest.mark.benchmark(group="rtt-link-tcp-vs-udp")
def test_rtt_link_udp(benchmark, link_echo_server) -> None:
    """UDP ping-pong through the same unimpaired link and echo server process."""
    benchmark.name = "link-udp"
    _udp_ping_pong(benchmark, link_echo_server)
