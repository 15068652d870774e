"""The lab's pytest plugin, tested the way pytest-benchmark tests its own: with `pytester`."""

from __future__ import annotations

import pytest

from lab import privileges

pytest_plugins = ["pytester"]

ECHO_TESTS = """
import socket

def test_tcp(tcp_echo_server):
    with socket.create_connection(tcp_echo_server.address, timeout=5) as sock:
        sock.sendall(b"fixture")
        assert sock.recv(100) == b"fixture"

def test_udp(udp_echo_server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(b"fixture", udp_echo_server.address)
        assert sock.recv(100) == b"fixture"
    assert udp_echo_server.stats["datagrams_in"] == 1

def test_fresh_server_each_time(tcp_echo_server, udp_echo_server):
    assert tcp_echo_server.stats["accepted"] == 0
    assert udp_echo_server.stats["datagrams_in"] == 0
    assert tcp_echo_server.address[0] == "127.0.0.1" and tcp_echo_server.address[1] > 0
"""

PRIVILEGED_TEST = """
import pytest

@pytest.mark.privileged
def test_needs_root():
    pass
"""


def test_echo_fixtures_serve_real_sockets(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_echo=ECHO_TESTS)
    result = pytester.runpytest()
    result.assert_outcomes(passed=3)


def test_privileged_marker_skips_with_reason_when_capabilities_missing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulate an unprivileged user by answering the capability question, not the network."""
    monkeypatch.setattr(privileges, "explain", lambda *caps: "needs CAP_NET_ADMIN (to create ...)")
    pytester.makepyfile(test_priv=PRIVILEGED_TEST)
    result = pytester.runpytest("-rs", "--strict-markers")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*privileged test needs CAP_NET_ADMIN*"])


def test_privileged_marker_runs_when_capabilities_present(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(privileges, "explain", lambda *caps: "")
    pytester.makepyfile(test_priv=PRIVILEGED_TEST)
    pytester.runpytest("--strict-markers").assert_outcomes(passed=1)


def test_marker_registered_and_option_in_help(pytester: pytest.Pytester) -> None:
    """In a fresh process, as a user sees it: the plugin loads from its pytest11 entry point."""
    markers = pytester.runpytest_subprocess("--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.privileged:*CAP_NET_ADMIN*"])
    helped = pytester.runpytest_subprocess("--help")
    helped.stdout.fnmatch_lines(["wirelab:", "*--lab-seed=N*seed of the impairment models*", "*(default: 1)"])


@pytest.mark.parametrize("args,expected", [((), 1), (("--lab-seed", "7"), 7)])
def test_lab_seed_option(pytester: pytest.Pytester, args: tuple[str, ...], expected: int) -> None:
    pytester.makepyfile(test_seed=f"def test_seed(lab_seed):\n    assert lab_seed == {expected}\n")
    pytester.runpytest(*args).assert_outcomes(passed=1)


TEARDOWN_TESTS = """
import socket
import pytest

seen = {}

def test_first(tcp_echo_server, udp_echo_server):
    seen["tcp"], seen["udp"] = tcp_echo_server.address, udp_echo_server.address

def test_then_gone():
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(seen["tcp"], timeout=5).close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # the port is free again
        sock.bind(seen["udp"])
"""


def test_echo_fixtures_close_their_servers(pytester: pytest.Pytester) -> None:
    """After a test, its servers are gone: the TCP port refuses, the UDP port can be bound."""
    pytester.makepyfile(test_teardown=TEARDOWN_TESTS)
    pytester.runpytest("-p", "no:randomly").assert_outcomes(passed=2)
