"""`lab link` and `lab cleanup` as a user runs them: real subprocesses, real signals."""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest

from lab.link import netns

pytestmark = pytest.mark.privileged

UP_TIMEOUT_S = 20.0


def _lab(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lab", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _wait_up(process: subprocess.Popen[str]) -> str:
    """Output printed until 'press Ctrl-C to stop' (bounded by UP_TIMEOUT_S)."""
    fd = process.stdout.fileno()  # raw reads: a buffered readline would hide data from select
    text = ""
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline and "press Ctrl-C" not in text:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            text += chunk.decode()
    if "press Ctrl-C" in text:
        return text
    process.terminate()  # not SIGKILL: a link stuck half-way up still tears itself down
    try:
        process.wait(timeout=UP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
    raise AssertionError(f"`lab link` did not come up: {text!r} {process.stderr.read()}")


def _leftovers(name: str, pids: list[int]) -> list[str]:
    spaces = [ns for ns in os.listdir(netns.NETNS_DIR) if ns.startswith(f"{name}-")]
    procs = [str(p) for p in pids if not netns._gone(p)]
    state = [str(netns._state_path(name))] if netns._state_path(name).exists() else []
    return spaces + procs + state


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_lab_link_signal_leaves_nothing(signum: int) -> None:
    """`lab link` stopped with SIGINT/SIGTERM prints final counters and removes everything."""
    name = f"c{secrets.token_hex(3)}"
    process = _lab("link", "--name", name, "--loss", "5%", "--delay", "1ms")
    try:
        text = _wait_up(process)
        assert f"{name}-client" in text and "198.18.0.2" in text and "loss 5%" in text, text
        state = json.loads(netns._state_path(name).read_text())
        pids = list(state["pids"])
        ping = subprocess.run(  # the link really carries traffic while it is up: 200 datagrams
            [sys.executable, "-c", "from lab.link.session import call_in_netns; import socket\n"
             "def send():\n"
             "    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:\n"
             "        for _ in range(200): s.sendto(b'x', ('198.18.0.2', 9))\n"
             f"call_in_netns('{name}-client', send)"],
            capture_output=True, text=True, timeout=20)
        assert ping.returncode == 0, ping.stderr
        time.sleep(0.1)  # 1 ms delay: let the last datagrams through before the counters are final
        process.send_signal(signum)
        out, err = process.communicate(timeout=15)
        out = text + out
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "final counters" in out and f"link {name} removed" in out, out
    forward = next(line for line in out.splitlines() if "forward (client->server):" in line)
    packets_in = int(forward.split("packets_in=")[1].split(",")[0])
    dropped = int(forward.split("dropped_loss=")[1].split(",")[0]) if "dropped_loss=" in forward else 0
    assert packets_in >= 200 and f"dropped {dropped / packets_in:.2%} of packets in" in forward, out
    assert _leftovers(name, pids) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_lab_link_signal_during_bring_up_leaves_nothing(signum: int) -> None:
    """A signal that lands while namespaces and devices are being made still leaves nothing behind.

    The signal is sent the moment the run's state file appears (it is written just before the
    namespaces are created), so it hits the bring-up, not the idle wait.
    """
    name = f"c{secrets.token_hex(3)}"
    state = netns._state_path(name)
    process = _lab("link", "--name", name, "--loss", "5%",
                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a shell
    try:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while not state.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert state.exists(), "the state file never appeared"
        process.send_signal(signum)
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode in (0, 128 + signum, -signum), (process.returncode, out, err)
    assert "Traceback" not in err, err
    assert _leftovers(name, []) == [], (out, err)


def test_lab_link_help_teaches() -> None:
    """`lab link --help` shows examples, how to run a program through the link, and cleanup."""
    done = subprocess.run([sys.executable, "-m", "lab", "link", "--help"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for needle in ("Examples:", "lab link --loss 5%", "gemodel", "ip netns exec lab-server",
                   "ip netns exec lab-client", "198.18.0.2", "lab cleanup", "Ctrl-C"):
        assert needle in text, f"{needle!r} missing from:\n{text}"
    for option in ("--loss", "--delay", "--jitter", "--distribution", "--delay-correlation", "--reorder",
                   "--duplicate", "--corrupt", "--rate", "--limit", "--direction", "--seed", "--mtu",
                   "--capture"):
        assert option in text, f"{option} missing from:\n{text}"


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux) to drop capabilities")
@pytest.mark.parametrize(("dropped", "named"), [
    ("-net_admin,-net_raw,-sys_admin", "CAP_NET_ADMIN"),  # an ordinary user
    ("-sys_admin", "CAP_SYS_ADMIN"),  # what `setcap cap_net_admin` alone would give
])
def test_lab_link_without_privileges_is_one_line_naming_what_is_missing(dropped: str, named: str) -> None:
    """Without the capabilities a link needs (and without user namespaces to get them in: those
    are tested in test_userns.py): one `lab: error:` line naming them, exit 2, nothing left."""
    name = f"c{secrets.token_hex(3)}"
    done = subprocess.run(["setpriv", f"--inh-caps={dropped}", f"--bounding-set={dropped}", sys.executable,
                           "-m", "lab", "link", "--name", name, "--loss", "5%"],
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "WIRELAB_USERNS": "off"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("lab: error:") and named in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert _leftovers(name, []) == []


def test_lab_cleanup_after_sigkill(cleanup_turn: None) -> None:
    """A SIGKILLed `lab link` leaves namespaces; `lab cleanup` removes them (and only them)."""
    name = f"c{secrets.token_hex(3)}"
    process = _lab("link", "--name", name)
    try:
        _wait_up(process)
        pids = list(json.loads(netns._state_path(name).read_text())["pids"])
        process.kill()
        process.communicate(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
    assert f"{name}-client" in os.listdir(netns.NETNS_DIR)
    done = subprocess.run([sys.executable, "-m", "lab", "cleanup"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert f"removed namespace {name}-client" in done.stdout, done.stdout
    assert _leftovers(name, pids) == []


def test_lab_link_bad_value_is_one_line() -> None:
    """A bad impairment value is one `lab: error:` line, exit 2, nothing created."""
    name = f"c{secrets.token_hex(3)}"
    done = subprocess.run([sys.executable, "-m", "lab", "link", "--name", name, "--loss", "150%"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.startswith("lab: error:") and "loss" in done.stderr and "Traceback" not in done.stderr
    assert _leftovers(name, []) == []
