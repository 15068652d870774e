"""Topology and teardown: nothing of a link survives it, whatever happens inside the `with`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from lab.errors import ConfigError
from lab.link import netns
from lab.link.netns import Topology, cleanup_leftovers, in_netns_thread, process_alive
from lab.link.session import open_link

pytestmark = pytest.mark.privileged


def _namespaces() -> set[str]:
    return set(os.listdir(netns.NETNS_DIR)) if netns.NETNS_DIR.is_dir() else set()


def _assert_gone(name: str, pids: list[int]) -> None:
    left = {ns for ns in _namespaces() if ns.startswith(f"{name}-")}
    alive = [p for p in pids if process_alive(p, None) and not netns._gone(p)]
    assert not left and not alive, f"left behind: namespaces {left}, processes {alive}"
    assert not netns._state_path(name).exists()


def test_topology_up_and_down() -> None:
    """Namespaces with unique names, a TUN device with the lab address and MTU, all removed after."""
    from pyroute2 import NetNS

    with Topology(mtu=1400) as a, Topology() as b:
        assert a.name != b.name and a.name.startswith("wl")
        assert {a.client_ns, a.server_ns} <= _namespaces()
        state = json.loads(netns._state_path(a.name).read_text())
        assert state["namespaces"] == [a.client_ns, a.server_ns] and state["owner_pid"] == os.getpid()
        with NetNS(a.client_ns) as inside:
            link = inside.get_links(ifname=netns.DEVICE)[0]
            assert link.get_attr("IFLA_MTU") == 1400
            addresses = [x.get_attr("IFA_ADDRESS") for x in inside.get_addr(index=link["index"])]
        assert addresses == [netns.CLIENT_ADDRESS]
    _assert_gone(a.name, [])
    _assert_gone(b.name, [])


def test_link_teardown_after_exception() -> None:
    """An exception inside `with open_link()` still removes namespaces, devices and the forwarder."""
    with pytest.raises(RuntimeError, match="boom"), open_link(loss="1%") as link:
        name, forwarder = link.name, link._forwarder.pid
        link.echo_port()
        server = link._echo.pid
        raise RuntimeError("boom")
    _assert_gone(name, [forwarder, server])
    assert link.final_counters is not None  # the forwarder was stopped politely, not killed


def test_popen_processes_die_with_the_link() -> None:
    """A user's long-running process inside a namespace is stopped when the link closes."""
    with open_link() as link:
        process = link.server.popen([sys.executable, "-c", "import time; time.sleep(60)"])
        assert process.poll() is None
    assert process.wait(timeout=5) is not None
    _assert_gone(link.name, [process.pid])


def test_close_is_idempotent_and_counters_survive() -> None:
    """close() twice is fine; counters() after close gives the final counters."""
    link = open_link()
    link.close()
    link.close()
    assert set(link.counters()) == {"forward", "reverse"}


def test_bad_options_touch_nothing() -> None:
    """Bad values raise ConfigError before any namespace exists."""
    before = _namespaces()
    with pytest.raises(ConfigError, match="loss"):
        open_link(loss="150%")
    with pytest.raises(ConfigError):
        open_link(colour="blue")
    with pytest.raises(ConfigError, match="name"):
        open_link(name="bad name!")
    with pytest.raises(ConfigError, match="mtu"):
        open_link(mtu=100)
    assert _namespaces() == before


def test_name_in_use_is_refused() -> None:
    """A second link with the same --name is refused with a hint; the first one stays intact."""
    name = f"t{os.getpid() % 100000}"
    with open_link(name=name) as first:
        with pytest.raises(ConfigError, match="already exists"):
            open_link(name=name)
        assert {first.client_ns, first.server_ns} <= _namespaces()
        assert first.run("udp", count=20).received == 20


def test_sigterm_in_main_thread_tears_down() -> None:
    """A process holding a link that gets SIGTERM removes everything before it exits."""
    code = (
        "import sys, time\n"
        "from lab.link.session import open_link\n"
        "with open_link(name=sys.argv[1]) as link:\n"
        "    print(link._forwarder.pid, flush=True)\n"
        "    time.sleep(30)\n"
    )
    name = f"s{os.getpid() % 100000}"
    process = subprocess.Popen([sys.executable, "-c", code, name], stdout=subprocess.PIPE, text=True)
    try:
        forwarder = int(process.stdout.readline())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
    _assert_gone(name, [forwarder])


def test_cleanup_leftovers_of_a_killed_run(cleanup_turn: None) -> None:
    """SIGKILL leaves namespaces behind; cleanup_leftovers removes them and nothing else."""
    code = (
        "import sys, time\n"
        "from lab.link.session import open_link\n"
        "link = open_link(name=sys.argv[1])\n"
        "print('up', flush=True)\n"
        "time.sleep(30)\n"
    )
    name = f"k{os.getpid() % 100000}"
    with Topology() as bystander:  # alive: must survive the cleanup
        process = subprocess.Popen([sys.executable, "-c", code, name], stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout.readline().strip() == "up"
            process.kill()
            process.wait(timeout=5)
        finally:
            process.stdout.close()
        assert f"{name}-client" in _namespaces()
        removed = cleanup_leftovers()
        assert f"namespace {name}-client" in removed and f"namespace {name}-server" in removed
        assert {bystander.client_ns, bystander.server_ns} <= _namespaces()
    _assert_gone(name, [])


def test_in_netns_thread_sees_the_namespace() -> None:
    """setns is per thread: a helper thread sees the namespace, we stay where we were."""
    with Topology() as topo:
        theirs = in_netns_thread(topo.client_ns, lambda: os.readlink("/proc/thread-self/ns/net"))
        assert theirs != os.readlink("/proc/thread-self/ns/net")
