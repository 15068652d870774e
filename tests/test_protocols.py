"""The protocol interface: registry, requirements, and servers started in a place (lab.protocols)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from lab.errors import ConfigError
from lab.metrics import compute_result
from lab.protocols import LOOPBACK, Protocol, Requirement, get_protocol, names, register, registry, unregister
from lab.protocols.udp import UDP
from lab.records import TrafficPlan


class ClassicUdp(UDP):
    """UDP against a server of its own: the lab's socketserver echo variant, in its own process."""

    name = "udp-classic"
    description = "UDP against the socketserver echo server"

    def server_argv(self, host: str, port: int) -> list[str]:
        return [*super().server_argv(host, port), "--variant", "socketserver"]


class NeedsMissingModule(UDP):
    name = "udp-missing"
    requires = (Requirement("a module that does not exist", module="no_such_module_for_wirelab"),)


@pytest.fixture
def classic() -> Iterator[Protocol]:
    protocol = register(ClassicUdp())
    try:
        yield protocol
    finally:
        unregister(protocol.name)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return not stat.read().split(") ")[1].startswith("Z")


def test_builtins_come_first_with_their_attributes() -> None:
    assert names()[:2] == ("tcp", "udp")
    tcp, udp = get_protocol("tcp"), get_protocol("udp")
    assert (tcp.transport, tcp.reliable, tcp.label, tcp.relayable) == ("tcp", True, "TCP", False)
    assert (udp.transport, udp.reliable, udp.label, udp.relayable) == ("udp", False, "UDP", True)


def test_register_adds_a_protocol_and_refuses_a_second_with_the_same_name(classic: Protocol) -> None:
    assert names()[-1] == "udp-classic" and get_protocol("udp-classic") is classic
    assert classic.label == "UDP-CLASSIC" and classic.server_kind == "udp"
    with pytest.raises(ConfigError, match="already registered"):
        register(ClassicUdp())
    with pytest.raises(TypeError, match="transport"):
        register(type("Bad", (UDP,), {"name": "bad", "transport": "sctp"})())


def test_unknown_protocol_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown protocol 'sctp': known protocols are tcp, udp"):
        get_protocol("sctp")


def test_a_missing_requirement_is_one_sentence_before_any_socket() -> None:
    protocol = NeedsMissingModule()
    missing = "needs a module that does not exist (pip install no_such_module_for_wirelab)"
    assert protocol.unavailable() == missing
    with pytest.raises(ConfigError, match="cannot run here: needs a module that does not exist"):
        protocol.run(("127.0.0.1", 9), TrafficPlan(count=1))
    kernel = Requirement("the kernel's frobnicator", check_fn=lambda: "needs the kernel's frobnicator")
    assert kernel.check() == "needs the kernel's frobnicator"
    assert Requirement("nothing", module="socket").check() is None


def test_serving_starts_the_protocols_own_server_and_stops_it(classic: Protocol) -> None:
    with classic.serving(LOOPBACK) as address:
        record = classic.run(address, TrafficPlan(count=20))
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_classic_server(int(p), address[1])]
        assert pids, "the server runs in a process of its own"
    assert compute_result(record).received == 20
    assert not any(alive(pid) for pid in pids)


def _is_classic_server(pid: int, port: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            cmdline = file.read().split(b"\0")
    except OSError:
        return False
    # The server was asked for port 0 (any free one): its command line does not name `port`.
    ours = b"socketserver" in cmdline and b"lab.endpoints.server" in cmdline
    return ours and str(port).encode() not in cmdline


@pytest.mark.privileged
def test_a_protocol_with_its_own_server_runs_through_the_link(classic: Protocol) -> None:
    from lab.link.session import open_link

    with open_link(loss="10%", seed=3) as link:
        own = link.server_for("udp-classic")
        shared = link.server_for("udp")
        assert own != shared and own[0] == shared[0] == link.server_address
        assert link.server_for("udp-classic") == own  # started once
        result = link.run("udp-classic", count=200, rate=500)
        udp = link.run("udp", count=200, rate=500)
    assert result.protocol == "udp-classic" and result.sent == 200
    # The same seeded link decisions meet both (the link was reseeded by neither run here, so
    # only the expected loss is common): both lose about 19 %.
    assert 0.05 < result.loss_ratio < 0.4 and 0.05 < udp.loss_ratio < 0.4


def test_the_registry_is_a_stable_mapping() -> None:
    assert list(registry()) == list(names())
