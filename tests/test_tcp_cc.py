"""TCP by congestion control (lab.protocols.tcp_cc): the algorithm really runs at both ends.

Both ends are checked from outside the lab's own code too: `ss -ti` prints the algorithm of every
established socket (the kernel's INET_DIAG_CONG), so the echo server's accepted connection is seen
as the kernel sees it, not as the server says.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lab.errors import ConfigError, LabError
from lab.metrics import compute_result
from lab.protocols import LOOPBACK, Protocol, get_protocol, register, unregister
from lab.protocols.tcp import congestion_control
from lab.protocols.tcp_cc import (
    AVAILABLE_PATH,
    CongestionControlled,
    available_congestion_controls,
    set_congestion_control,
)
from lab.records import TrafficPlan
from lab.report.summary import side_by_side

VARIANTS = {"tcp-reno": "reno", "tcp-cubic": "cubic", "tcp-bbr": "bbr"}
HERE = [name for name, algorithm in VARIANTS.items() if algorithm in available_congestion_controls()]
SS_POLL_S = 0.05
SS_WAIT_S = 10.0


class MadeUp(CongestionControlled):
    name = "tcp-madeup"
    algorithm = "madeupcc"


@pytest.fixture
def made_up() -> Iterator[Protocol]:
    protocol = register(MadeUp())
    try:
        yield protocol
    finally:
        unregister(protocol.name)


def ss_algorithms(run: Callable[..., subprocess.CompletedProcess[str]], port_filter: str) -> list[str]:
    """The congestion control of each established TCP socket matching `port_filter` (ss syntax)."""
    out = run(["ss", "-tinH", "state", "established", port_filter], capture_output=True, text=True,
              check=True).stdout
    # -H: per socket, one address line, then an indented line starting with the algorithm.
    return [line.split()[0] for line in out.splitlines() if line.startswith(("\t", " ")) and line.split()]


def local_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, **kwargs)


needs_ss = pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")


def test_a_listeners_algorithm_is_inherited_by_the_connections_it_accepts() -> None:
    """Why the server sets it once, on the listening socket: this kernel copies it to accepted ones."""
    assert HERE, f"no variant's algorithm is in {AVAILABLE_PATH}"
    for algorithm in (VARIANTS[name] for name in HERE):
        with socket.create_server(("127.0.0.1", 0)) as listener:
            set_congestion_control(listener, algorithm)
            with socket.create_connection(listener.getsockname()) as client:
                accepted, _ = listener.accept()
                with accepted:
                    assert congestion_control(accepted) == algorithm
                    assert congestion_control(client) == _system_default()


@pytest.mark.parametrize("name", HERE)
def test_the_variants_server_and_client_use_the_algorithm_on_loopback(name: str) -> None:
    protocol = get_protocol(name)
    algorithm = VARIANTS[name]
    assert protocol.unavailable() is None
    with protocol.serving(LOOPBACK) as address:
        with socket.create_connection(address) as probe:  # a connection of our own, for ss to see
            probe.sendall(b"x")
            probe.recv(1)
            if shutil.which("ss"):
                assert ss_algorithms(local_run, f"( sport = :{address[1]} )") == [algorithm]
        record = protocol.run(address, TrafficPlan(count=50, rate=1000))
    result = compute_result(record)
    assert result.received == 50
    assert result.observations["tcp"]["congestion_control"] == algorithm


def test_plain_tcp_records_the_system_default_and_the_table_shows_it() -> None:
    tcp = get_protocol("tcp")
    with tcp.serving(LOOPBACK) as address:
        result = compute_result(tcp.run(address, TrafficPlan(count=10)))
    assert result.observations["tcp"]["congestion_control"] == _system_default()
    point = {"results": [result.to_dict()]}
    rows = dict(side_by_side(point, ["tcp"]))
    assert rows["congestion control"] == [_system_default()]
    udp_only = {"results": [{"protocol": "udp", "sent": 1, "received": 1}]}
    assert "congestion control" not in dict(side_by_side(udp_only, ["udp"]))


def test_a_missing_algorithm_is_one_line_naming_the_available_ones(made_up: Protocol) -> None:
    why = made_up.unavailable()
    assert why is not None and "\n" not in why
    assert "madeupcc" in why and AVAILABLE_PATH in why
    assert all(name in why for name in available_congestion_controls())
    with pytest.raises(ConfigError, match=r"protocol tcp-madeup cannot run here: needs the madeupcc"):
        made_up.run(("127.0.0.1", 9), TrafficPlan(count=1))
    # Its server refuses the same way, before serving anything (and leaves no process).
    with pytest.raises(LabError, match="madeupcc") as refused, made_up.serving(LOOPBACK):
        pass
    assert "\n" not in str(refused.value)


def test_the_servers_option_is_refused_without_tcp() -> None:
    out = subprocess.run([sys.executable, "-m", "lab.endpoints.server", "udp", "--tcp-congestion", "reno"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "needs a TCP echo server" in json.loads(out.stdout)["error"]


@pytest.mark.privileged
@needs_ss
@pytest.mark.parametrize("name", HERE)
def test_every_variant_delivers_everything_at_20_percent_loss_with_its_algorithm_at_both_ends(
        impaired_link: Any, name: str) -> None:
    """Through the real link: `lab send` in the client namespace against the variant's own server in
    the server namespace; while it runs, ss in each namespace shows the algorithm on its socket."""
    algorithm = VARIANTS[name]
    link = impaired_link(loss="20%", delay="2ms")
    host, port = link.server_for(name)
    sender = link.client.popen(
        [sys.executable, "-m", "lab", "send", name, host, str(port), "--count", "100", "--rate", "100",
         "--timeout", "10", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[str, list[str]] = {}
    deadline = time.monotonic() + SS_WAIT_S
    while len(seen) < 2 and sender.poll() is None and time.monotonic() < deadline:
        for side, end, where in (("server", link.server, f"( sport = :{port} )"),
                                 ("client", link.client, f"( dport = :{port} )")):
            if side not in seen and (found := ss_algorithms(end.run, where)):
                seen[side] = found
        time.sleep(SS_POLL_S)
    out, err = sender.communicate(timeout=60)
    assert sender.returncode == 0, err
    result = json.loads(out)
    assert seen == {"server": [algorithm], "client": [algorithm]}
    assert (result["sent"], result["received"], result["corrupted"]) == (100, 100, 0)
    assert result["observations"]["tcp"]["congestion_control"] == algorithm
    assert result["observations"]["tcp"]["tcp_info"]["total_retrans"] > 0  # the loss was real


def _system_default() -> str:
    with open("/proc/sys/net/ipv4/tcp_congestion_control", encoding="ascii") as file:
        return file.read().strip()
