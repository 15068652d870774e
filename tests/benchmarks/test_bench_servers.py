"""Echo server throughput, selectors loop vs socketserver: one ping-pong round trip per call.

Each server runs in its own process (the GIL of the measuring process must not slow the server,
docs/architecture.md#processes) via `python -m lab.endpoints.server`; the client is plain blocking
socket code.
Run with `make bench`; msgs/s = 1 / mean.
"""

from __future__ import annotations

import selectors
import socket
from collections.abc import Iterator

import pytest

from lab.endpoints.server import server_process

MESSAGE = b"m" * 64  # a small probe-sized message: measures per-message cost, not bandwidth
IO_TIMEOUT = 5.0


@pytest.fixture(scope="module", params=["selectors", "socketserver"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, list]]]:
    with server_process("both", variant=request.param) as ready:
        yield request.param, ready


def test_echo_tcp(benchmark, server) -> None:  # type: ignore[no-untyped-def]
    variant, ready = server
    benchmark.group = "echo-tcp"
    benchmark.name = f"tcp-{variant}"
    with socket.create_connection(tuple(ready["tcp"]), timeout=IO_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def round_trip() -> None:
            sock.sendall(MESSAGE)
            got = 0
            while got < len(MESSAGE):
                got += len(sock.recv(65536))

        benchmark(round_trip)


def test_echo_udp(benchmark, server) -> None:  # type: ignore[no-untyped-def]
    variant, ready = server
    benchmark.group = "echo-udp"
    benchmark.name = f"udp-{variant}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.connect(tuple(ready["udp"]))

        def round_trip() -> None:
            sock.send(MESSAGE)
            sock.recv(65536)

        benchmark(round_trip)


# --- many clients at once: where a loop and a thread per connection differ -------------------------
FAN_OUT = 16  # clients with one message in flight each; msgs/s = FAN_OUT / mean


def _fan_out_round(socks: list[socket.socket], sel: selectors.BaseSelector) -> None:
    """Every client sends one message; return once every echo is back."""
    for sock in socks:
        sock.send(MESSAGE)
    missing = {sock: len(MESSAGE) for sock in socks}
    while missing:
        events = sel.select(IO_TIMEOUT)
        assert events, f"{len(missing)} echoes missing after {IO_TIMEOUT}s"
        for key, _ in events:
            sock = key.fileobj
            if sock in missing:
                missing[sock] -= len(sock.recv(65536))  # type: ignore[union-attr]
                if missing[sock] <= 0:
                    del missing[sock]


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_echo_fan_out(benchmark, server, proto: str) -> None:  # type: ignore[no-untyped-def]
    variant, ready = server
    benchmark.group = f"echo-{proto}-{FAN_OUT}-clients"
    benchmark.name = f"{proto}-{variant}-x{FAN_OUT}"
    benchmark.extra_info["messages_per_round"] = FAN_OUT
    socks: list[socket.socket] = []
    with selectors.DefaultSelector() as sel:
        try:
            for _ in range(FAN_OUT):
                if proto == "tcp":
                    sock = socket.create_connection(tuple(ready["tcp"]), timeout=IO_TIMEOUT)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                else:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sock.connect(tuple(ready["udp"]))
                socks.append(sock)
                sel.register(sock, selectors.EVENT_READ)
            benchmark(_fan_out_round, socks, sel)
        finally:
            for sock in socks:
                sock.close()
