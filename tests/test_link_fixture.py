"""The `impaired_link` fixture as a user meets it: a test file of theirs, run by pytester in a subprocess.

The user's file opens links with the fixture, measures through them, runs its own server and its own
callable on either end, changes the impairment while the link is up, and records the links' names;
afterwards (from here) nothing of them may be left: no namespace, no forwarder, no state file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from lab.link import netns

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.privileged

RUN_TIMEOUT_S = 120

USER_TESTS = r'''
import json
import os
import socket
import subprocess
import sys

import pytest

SEEN = os.environ["WIRELAB_SEEN"]  # where we note each link, for the outer test to check teardown
ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
print(s.getsockname()[1], flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data.upper(), peer)
"""


def note(link):
    with open(SEEN, "a") as f:
        f.write(json.dumps({"name": link.name, "forwarder": link._forwarder.pid}) + "\n")


def ask(host, port, tries):
    """The user's own client code: runs inside the client namespace; how many answers came back."""
    answers = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        for i in range(tries):
            s.sendto(b"ping %d" % i, (host, port))
            try:
                answers += s.recv(100) == b"PING %d" % i
            except TimeoutError:
                pass
    return answers


def test_measure_under_loss(impaired_link, lab_seed):
    link = impaired_link(loss="10%")
    note(link)
    assert link.config.seed == lab_seed == 11
    assert os.path.exists(f"/run/netns/{link.client_ns}") and os.path.exists(f"/run/netns/{link.server_ns}")
    assert link.server_address == "198.18.0.2"
    r = link.run("udp", count=300, rate=3000, timeout=0.3)
    assert r.expected_loss_ratio == pytest.approx(1 - 0.9 ** 2)
    assert 0 < r.lost < r.sent == 300
    assert r.link["forward"]["dropped_loss"] + r.link["reverse"]["dropped_loss"] == r.lost


def test_own_server_own_callable_and_set(impaired_link):
    link = impaired_link()
    note(link)
    server = link.server.popen([sys.executable, "-c", ECHO, link.server_address],
                               stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    assert link.client.call(ask, link.server_address, port, 20) == 20
    link.set(loss="100%")
    assert link.client.call(ask, link.server_address, port, 5) == 0
    link.set(loss="0%")
    assert link.client.call(ask, link.server_address, port, 5) == 5
    done = link.client.run(["ip", "-o", "-4", "addr", "show", "wlink"], capture_output=True, text=True)
    assert "198.18.0.1/30" in done.stdout


def test_two_links_at_once_and_a_failing_test(impaired_link):
    a, b = impaired_link(delay="1ms"), impaired_link(direction="forward", loss="100%")
    note(a)
    note(b)
    assert a.client_ns != b.client_ns
    assert b.run("udp", count=5, timeout=0.2).received == 0
    assert a.run("udp", count=5).received == 5
    raise AssertionError("a failing test still tears its links down")
'''


def _links(seen_file: object) -> list[dict[str, object]]:
    text = seen_file.read_text() if seen_file.exists() else ""  # type: ignore[attr-defined]
    return [json.loads(line) for line in text.splitlines()]


def _leftovers(links: list[dict[str, object]]) -> list[str]:
    left = []
    for link in links:
        name, pid = str(link["name"]), int(link["forwarder"])  # type: ignore[call-overload]
        left += [ns for ns in (f"{name}-client", f"{name}-server") if netns.netns_path(ns).exists()]
        left += [f"forwarder {pid}"] if not netns._gone(pid) else []
        left += [str(netns._state_path(name))] if netns._state_path(name).exists() else []
    return left


def test_impaired_link_fixture_in_a_users_test_file(pytester: pytest.Pytester, monkeypatch) -> None:
    """A user's file with three link tests (one failing on purpose): results as expected, no leftovers."""
    seen = pytester.path / "seen.jsonl"
    monkeypatch.setenv("WIRELAB_SEEN", str(seen))
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:xdist", "-p", "no:randomly", "--lab-seed", "11",
                                           timeout=RUN_TIMEOUT_S)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*a failing test still tears its links down*"])
    links = _links(seen)
    assert len(links) == 4, links
    assert _leftovers(links) == [], result.stdout.str()


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux) to drop capabilities")
def test_impaired_link_fixture_skips_with_reason_without_capabilities(pytester: pytest.Pytester) -> None:
    """The same file run without CAP_NET_ADMIN: every link test is skipped, naming the capability."""
    pytester.makepyfile(test_user=USER_TESTS)
    env = dict(os.environ, WIRELAB_SEEN=str(pytester.path / "seen.jsonl"))
    done = subprocess.run(
        ["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin,-net_raw,-sys_admin",
         sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:randomly", "-rs", "test_user.py"],
        cwd=pytester.path, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 skipped" in done.stdout, done.stdout
    assert "impaired_link needs CAP_NET_ADMIN" in done.stdout, done.stdout
    assert not (pytester.path / "seen.jsonl").exists()
