"""TCP vs UDP ping-pong RTT on loopback: one probe round trip per benchmark call.

Group "rtt-loopback": `tcp` and `udp` against the lab's echo server, which runs in its own process
(`python -m lab.endpoints.server both`) so the measuring process's GIL does not slow it (DESIGN.md).
Each call encodes a probe with `lab.wire`, sends it, and decodes the echo, i.e. what a measuring
client does per probe. Figures, not asserts: compare the medians with `make bench`.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from lab.wire import NEED_DATA, Probe, StreamDecoder, decode_untrusted_datagram, encode, make_payload

PROBE_SIZE = 64  # bytes on the wire, the lab's default probe
IO_TIMEOUT_S = 5.0  # a lost loopback reply means something broke: fail, do not hang
STOP_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def echo_server() -> Iterator[dict]:
    """The lab's echo server (TCP and UDP, ephemeral port) in a child process; stopped after the module."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab.endpoints.server", "both"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        ready = json.loads(line) if line else {"ready": False}
        assert ready.get("ready"), f"echo server did not start: {line!r}"
        yield ready
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _probe(seq: int) -> bytes:
    return encode(Probe(seq=seq, send_ns=time.monotonic_ns(), payload=make_payload(PROBE_SIZE - 32, seq)))


def test_rtt_loopback_tcp(benchmark, echo_server) -> None:
    benchmark.group = "rtt-loopback"
    benchmark.name = "tcp"
    with socket.create_connection(tuple(echo_server["tcp"]), timeout=IO_TIMEOUT_S) as sock:
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

        benchmark(round_trip)


def test_rtt_loopback_udp(benchmark, echo_server) -> None:
    benchmark.group = "rtt-loopback"
    benchmark.name = "udp"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(IO_TIMEOUT_S)
        sock.connect(tuple(echo_server["udp"]))
        seq = iter(range(1 << 62))

        def round_trip() -> None:
            sock.send(_probe(next(seq)))
            reply = decode_untrusted_datagram(sock.recv(65536))
            assert isinstance(reply, Probe)

        benchmark(round_trip)
