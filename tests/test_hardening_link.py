"""Issue 8, the link's part: defects 4 (SIGHUP), 8, 9, 10, 12, 13 and the link's fault suite.

Each defect test is named after it and fails without its fix. The fault suite stops `lab link`
mid-run (traffic flowing) with SIGINT/SIGTERM/SIGHUP, or SIGKILLs it and runs `lab cleanup`, and
checks that this process's fds, threads and children and the machine's namespaces, TUN devices and
lab processes are back where they started. Link names are unique per test (pytest-xdist -n 2).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.errors import ConfigError
from lab.link import netns
from lab.link.models import DirectionModel, Impairment, LinkConfig
from lab.link.params import parse_rate
from tests.test_link_cli import _lab, _leftovers, _wait_up

STOP_TIMEOUT_S = 20.0
LAB_ADDRESS = "198.18.0.2"
DISCARD_PORT = 9  # nothing listens there: datagrams are counted by the link, then refused by the kernel


def _name() -> str:
    return f"h{secrets.token_hex(3)}"


def _stop(process: subprocess.Popen[str]) -> None:
    """End a `lab link` we started, the way that still tears down (SIGTERM; SIGKILL only if stuck)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def _run_lab(*args: str) -> tuple[int, str, str]:
    """`lab ARGS` to completion (exit status, stdout, stderr); stopped cleanly if it hangs."""
    process = _lab(*args)
    try:
        out, err = process.communicate(timeout=30)
    finally:
        _stop(process)
    return process.returncode, out, err


def _send_udp(ns: str, count: int, size: int, rate: float = 0.0) -> int:
    """`count` datagrams of `size` bytes from inside `ns` to the lab's server address (rate 0: at once)."""
    from lab.link.session import call_in_netns

    return call_in_netns(ns, _sender, (count, size, rate))


def _sender(count: int, size: int, rate: float) -> int:
    import socket

    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for i in range(count):
            if rate and i:
                time.sleep(1.0 / rate)
            with contextlib.suppress(BlockingIOError):
                s.sendto(b"x" * size, (LAB_ADDRESS, DISCARD_PORT))
                sent += 1
    return sent


# --- defect 8: link rates are bounded; a forwarder that dies is reported ---------------------------
@pytest.mark.parametrize("rate", ["1e-8bit", "1e-300bit", "999bit", 1e-8, "2tbit", "0bit"])
def test_defect_8_link_rate_out_of_bounds_refused_everywhere(rate: object) -> None:
    """Below 1 kbit/s or above 1 tbit/s: one ConfigError from the parser, LinkConfig, a hand-built
    Impairment, open_link/impaired_link (before anything is created) and a scenario file."""
    from lab.link.session import open_link
    from lab.scenario import ScenarioError, parse_scenario

    message = "rate must be between 1kbit and 1tbit"
    with pytest.raises(ConfigError, match=message):
        parse_rate(rate, key="rate")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=message):
        LinkConfig.from_options({"rate": rate})
    with pytest.raises(ConfigError, match=message):
        open_link(name=_name(), rate=rate)
    value = f'"{rate}"' if isinstance(rate, str) else repr(rate)
    with pytest.raises(ScenarioError, match=r"x\.toml: \[link\] rate: must be between 1kbit and 1tbit"):
        parse_scenario(f"[link]\nrate = {value}\n", source="x.toml")
    if not isinstance(rate, str):
        with pytest.raises(ConfigError, match=message):
            Impairment(rate_bps=rate)


def test_defect_8_lab_link_tiny_rate_is_one_line() -> None:
    """`lab link --rate 1e-8bit` stops with one line before creating anything (it used to come up,
    then the forwarder died with OverflowError at the first packet)."""
    name = _name()
    code, _, err = _run_lab("link", "--name", name, "--rate", "1e-8bit")
    assert (code, err) == (2, "lab: error: rate must be between 1kbit and 1tbit, got '1e-8bit'\n")
    assert _leftovers(name, []) == []


@pytest.mark.privileged
def test_defect_8_slowest_rate_holds_packets_and_forwarder_keeps_answering() -> None:
    """At the floor (1 kbit/s) a 1400-byte packet is held ~11 s: the forwarder keeps answering
    (its wait is clamped), counts the held packets as queued, never as forwarded."""
    from lab.link.session import open_link

    with open_link(name=_name(), rate="1kbit") as link:
        _send_udp(link.client_ns, 3, 1372)  # 1400-byte IP packets
        time.sleep(0.2)
        counters = link.counters()["forward"]
        held = (counters["packets_in"], counters["queued"], counters["forwarded"])
        assert held == (3, 3, 0), counters
        assert link.forwarder_alive
    final = link.final_counters["forward"]
    assert (final["queued_at_close"], final["forwarded"]) == (3, 0), final


def _link_with_a_process_killed(victim: str) -> tuple[str, subprocess.Popen[str], str, str, list[int]]:
    """Start `lab link`, SIGKILL its forwarder (`victim` "forwarder") or its reverse direction's
    process ("direction"), and let it end: (name, process, stdout, stderr, every pid it had)."""
    name = _name()
    process = _lab("link", "--name", name)
    try:
        _wait_up(process)
        pids = list(json.loads(netns._state_path(name).read_text())["pids"])
        directions = _direction_pids(pids[0])
        assert len(directions) == 2, directions  # one process per direction
        os.kill(pids[0] if victim == "forwarder" else directions[1], signal.SIGKILL)
        out, err = process.communicate(timeout=STOP_TIMEOUT_S)
    finally:
        _stop(process)
    _wait_gone(directions)  # with the forwarder (PR_SET_PDEATHSIG), or with the link
    return name, process, out, err, pids + directions


def _direction_pids(forwarder: int) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{forwarder}/task/{forwarder}/children").read_text().split()]


def _wait_gone(pids: list[int], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while any(not netns._gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.privileged
def test_defect_8_forwarder_death_is_reported_loudly_and_link_removed() -> None:
    """A forwarder that dies under a running `lab link` is noticed at once: one error line naming
    it, exit 1, and the link is removed (it used to sleep on, silently carrying nothing)."""
    name, process, out, err, pids = _link_with_a_process_killed("forwarder")
    assert process.returncode == 1, (out, err)
    assert err == (f"lab: error: link {name}: the forwarder (the process that carries the packets) was "
                   "killed by SIGKILL; the link is down and is being removed\n"), err
    assert "its counters are lost" in out and f"link {name} removed" in out, out
    assert _leftovers(name, pids) == []


@pytest.mark.privileged
def test_a_direction_process_that_dies_takes_the_forwarder_and_the_link_down() -> None:
    """Each direction moves in a process of its own: one killed must not leave a link that silently
    carries nothing one way. The forwarder says which process ended and ends too; `lab link` reports
    it and removes everything."""
    name, process, out, err, pids = _link_with_a_process_killed("direction")
    assert process.returncode == 1, (out, err)
    said = f"a direction's process (pid {pids[-1]}) was killed by signal 9; the forwarder ends"
    assert said in err, err
    assert "exited with status 70; the link is down and is being removed" in err, err
    assert f"link {name} removed" in out, out
    assert _leftovers(name, pids) == []


# --- defect 9: two `lab link --name X` at once ------------------------------------------------------
def _lock_waiters(path: Path) -> int:
    """Processes blocked on the flock of `path` (the '->' lines of /proc/locks)."""
    inode = os.stat(path).st_ino
    return sum(1 for line in Path("/proc/locks").read_text().splitlines()
               if "->" in line and line.split()[-3].endswith(f":{inode}"))


@pytest.mark.privileged
def test_defect_9_same_name_race_loser_is_one_line_and_touches_nothing() -> None:
    """Two `lab link --name X` released at the same instant: one comes up; the other says
    'link X already exists' in one line (exit 2), and the winner's namespaces and state file stay.

    The creation lock is held here until both wait for it, so the two really race (before the fix
    both passed the name check, then the loser hit a FileExistsError traceback)."""
    name = _name()
    lock_path = netns.STATE_DIR / "netns-create.lock"
    netns.STATE_DIR.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen[str]] = []
    try:
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                processes = [_lab("link", "--name", name) for _ in range(2)]
                deadline = time.monotonic() + 15
                while _lock_waiters(lock_path) < 2 and time.monotonic() < deadline:
                    assert all(p.poll() is None for p in processes), [p.communicate() for p in processes]
                    time.sleep(0.02)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        deadline = time.monotonic() + 20
        while all(p.poll() is None for p in processes) and time.monotonic() < deadline:
            time.sleep(0.05)
        loser = next(p for p in processes if p.poll() is not None)
        winner = next(p for p in processes if p is not loser)
        out, err = loser.communicate(timeout=5)
        assert loser.returncode == 2 and err.count("\n") == 1, (out, err)
        assert err.startswith(f"lab: error: link {name} already exists"), err
        _wait_up(winner)
        state = json.loads(netns._state_path(name).read_text())  # the winner's, still there
        assert state["owner_pid"] == winner.pid
        assert {f"{name}-client", f"{name}-server"} <= set(os.listdir(netns.NETNS_DIR))
        winner.send_signal(signal.SIGINT)
        out, err = winner.communicate(timeout=STOP_TIMEOUT_S)
        assert winner.returncode == 0 and f"link {name} removed" in out, (out, err)
        assert _leftovers(name, list(state["pids"])) == []
    finally:
        for p in processes:
            _stop(p)


# --- defect 10: the capture path is checked first ---------------------------------------------------
@pytest.mark.parametrize(("target", "message"), [
    ("missing/x.pcapng", "the folder {tmp}/missing does not exist; create it first"),
    (".", "is a directory; give a file name such as"),
    ("/dev/null", "exists and is not a regular file"),
    ("file/x.pcapng", "the folder {tmp}/file is not a directory"),
])
def test_defect_10_bad_capture_path_is_one_line_before_anything(tmp_path: Path, target: str,
                                                                message: str) -> None:
    """--capture to a missing folder, a directory, a device or under a file: one line, exit 2,
    no namespace made (it used to fail inside the forwarder, after the namespaces existed)."""
    (tmp_path / "file").write_text("")
    name = _name()
    path = target if target.startswith("/") else str(tmp_path / target)
    code, _, err = _run_lab("link", "--name", name, "--capture", path)
    assert code == 2, err
    assert err.startswith("lab: error: capture ") and err.count("\n") == 1, err
    assert message.format(tmp=tmp_path) in err and "Traceback" not in err, err
    assert _leftovers(name, []) == []


# --- defect 12: the link's queue is bounded in bytes; queued is not forwarded ---------------------
def test_defect_12_queue_bounded_in_bytes_and_limit_capped() -> None:
    """A slow link with a huge packet limit still holds at most limit_bytes (tail drop beyond),
    and `limit` itself is capped (10000000 used to be accepted: 1.08 GB in the forwarder)."""
    model = DirectionModel(LinkConfig.from_options({"rate": "1kbit", "limit": "100000",
                                                    "limit_bytes": "64kb"}).forward, 1)
    verdicts = [model.decide(bytes([0x45]) + bytes(1399), 0.0) for _ in range(1000)]
    held = sum(1 for v in verdicts if not v.dropped)
    assert held == 64 * 1024 // 1400 == 46, held
    assert verdicts[-1].notes == ("dropped (queue full: byte limit)",)
    assert model.counters["dropped_queue"] == 1000 - held
    default = DirectionModel(LinkConfig.from_options({"rate": "1kbit", "limit": "100000"}).forward, 1)
    held = sum(1 for _ in range(30_000) if not default.decide(bytes(1400), 0.0).dropped)
    assert held == 32 * 2**20 // 1400, held  # the default byte limit: 32 MiB
    with pytest.raises(ConfigError, match="limit must be between 1 and 100000"):
        LinkConfig.from_options({"limit": "10000000"})
    bytes_bound = "limit_bytes must be a whole number of bytes between 64kb and 512mb"
    with pytest.raises(ConfigError, match=bytes_bound):
        LinkConfig.from_options({"limit_bytes": "1gb"})
    assert LinkConfig.from_options({"limit_bytes": "8mb"}).to_dict()["forward"] == {"limit_bytes": "8mb"}


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _flood(ns: str, seconds: float, size: int) -> int:
    from lab.link.session import call_in_netns

    return call_in_netns(ns, _flooder, (seconds, size))


def _flooder(seconds: float, size: int) -> int:
    import socket

    sent = 0
    deadline = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        data = b"x" * size
        while time.monotonic() < deadline:
            try:
                s.sendto(data, (LAB_ADDRESS, DISCARD_PORT))
                sent += 1
            except OSError:  # the TUN queue is full: let the forwarder catch up
                time.sleep(0.0002)
    return sent


@pytest.mark.privileged
def test_defect_12_flood_into_slow_link_bounded_memory_and_honest_counters() -> None:
    """A 1 s UDP flood into 1 kbit/s with limit 100000: the forwarder's memory stays bounded by
    the default byte limit (32 MiB), and the final counters say the held packets were still
    queued at close, not forwarded (they used to say forwarded=666144, dropped 0.00%)."""
    from lab.link.session import open_link

    with open_link(name=_name(), rate="1kbit", limit="100000") as link:
        pid = link._forwarder.pid
        before = _rss_mb(pid)
        sent = _flood(link.client_ns, 1.0, 1372)
        time.sleep(0.1)
        grown = _rss_mb(pid) - before
        live = link.counters()["forward"]
    final = link.final_counters["forward"]
    figures = f"sent={sent} rss_grown_mb={grown:.1f} live={live} final={final}"
    assert sent * 1400 > 40 * 2**20, figures  # the flood offered more than the byte limit
    assert grown < 32 + 24, figures  # 32 MiB of packets plus bookkeeping
    assert final["queued_at_close"] * 1400 <= 32 * 2**20 and final["queued_at_close"] > 10_000, figures
    assert final["dropped_queue"] > 0 and final["forwarded"] <= 2, figures
    assert (final["packets_in"] == final["forwarded"] + final["dropped_queue"] + final["queued_at_close"]
            + final["write_errors"]), figures


@pytest.mark.privileged
def test_defect_12_forwarded_counts_packets_written_not_decided() -> None:
    """delay=300ms: right after 50 datagrams enter, forwarded is 0 and queued 50; after the delay
    forwarded is 50 and queued 0 (forwarded used to count packets still waiting in the queue)."""
    from lab.link.session import open_link

    with open_link(name=_name(), delay="300ms", direction="forward") as link:
        _send_udp(link.client_ns, 50, 100)
        time.sleep(0.05)
        early = link.counters()["forward"]
        time.sleep(0.5)
        late = link.counters()["forward"]
    assert [early[k] for k in ("packets_in", "forwarded", "queued", "delayed")] == [50, 0, 50, 50], early
    assert (late["forwarded"], late["queued"], late["bytes_out"]) == (50, 0, 50 * 128), late
    assert link.final_counters["forward"]["queued_at_close"] == 0


# --- defect 13: the capture has a size limit -------------------------------------------------------
@pytest.mark.privileged
def test_defect_13_capture_stops_at_its_limit_and_says_so(tmp_path: Path) -> None:
    """--capture-limit 64kb under 300 x 1000-byte datagrams: the file stays under 64 KiB, its last
    packet is a notice saying the capture stopped, stderr says so once, the counters count the
    packets not captured and the final output names the limit (it used to grow without end)."""
    from scapy.utils import rdpcap

    name = _name()
    path = tmp_path / "link.pcapng"
    process = _lab("link", "--name", name, "--capture", str(path), "--capture-limit", "64kb")
    try:
        text = _wait_up(process)
        assert f"capture           {path} (stops at 64kb)" in text, text
        _send_udp(f"{name}-client", 300, 972, rate=3000)
        time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=STOP_TIMEOUT_S)
    finally:
        _stop(process)
    assert process.returncode == 0, err
    size = path.stat().st_size
    assert 60 * 1024 < size <= 64 * 1024, size
    packets = rdpcap(str(path))
    comments = [p.comment.decode() for p in packets]
    assert comments[-1].startswith("capture limit 64kb reached: this packet and all later ones are not "
                                   "captured"), comments[-1]
    # the notice holds no bytes (`original`: scapy dissects an empty record of a raw-IP capture as a
    # default 20-byte IP header, so len() of the packet says 20)
    assert packets[-1].original == b"" and all(c == "forwarded" for c in comments[:-1]), comments[:3]
    assert err.count("stopped at its size limit") == 1, err
    not_captured = sum(int(n) for n in re.findall(r"not_captured=(\d+)", out))
    packets_in = sum(int(n) for n in re.findall(r"packets_in=(\d+)", out))
    assert not_captured == packets_in - (len(packets) - 1) and packets_in >= 300, out
    assert f"capture {path} stopped at its limit of 64kb: {not_captured} later packets not captured" in out


def test_defect_13_capture_write_error_stops_the_capture_not_the_forwarder(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A full disk (/dev/full) stops the capture with one notice; packets are then reported as not
    captured, and closing does not raise (an OSError used to end the forwarder's loop)."""
    from lab.link.pcapng import CaptureFile

    capture = CaptureFile("/dev/full", None, interfaces=("client->server", "server->client"))
    outcomes = [capture.packet(0, time.time_ns(), bytes(1000), "forwarded") for _ in range(20)]
    capture.close()
    assert capture.stopped and outcomes[0] and not outcomes[-1], outcomes
    assert outcomes.index(False) == outcomes.count(True)  # written (buffered) until the error, not after
    err = capsys.readouterr().err
    assert err == "lab: capture /dev/full stopped: [Errno 28] No space left on device\n", err


# --- defect 4 + the fault suite: signals to `lab link` mid-run --------------------------------------
TRAFFIC = """
import socket, sys, time
from lab.link.netns import enter_netns
enter_netns(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("sending", flush=True)
deadline = time.monotonic() + 30  # bounded: teardown kills it long before
while time.monotonic() < deadline:
    try:
        s.sendto(b"x" * 200, ("198.18.0.2", 9))
    except OSError:  # the device goes away a moment before the teardown kills us
        pass
    time.sleep(0.0005)
"""


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            found |= {int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()}
    return found


def _snapshot() -> dict[str, object]:
    """What a run may leak: our fds, threads and children; lab namespaces and root-namespace devices."""
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": sorted(t.name for t in threading.enumerate()),  # native library threads are not ours
        "children": _children(os.getpid()),
    }


def _root_devices() -> set[str]:
    return set(os.listdir("/sys/class/net"))


@contextlib.contextmanager
def _link_mid_run(name: str) -> Iterator[tuple[subprocess.Popen[str], subprocess.Popen[str], dict]]:
    """`lab link --name NAME` up with traffic flowing through it from a process in its client namespace."""
    link = _lab("link", "--name", name, "--delay", "5ms", "--loss", "1%")
    traffic: subprocess.Popen[str] | None = None
    try:
        _wait_up(link)
        state = json.loads(netns._state_path(name).read_text())
        traffic = subprocess.Popen([sys.executable, "-c", TRAFFIC, f"{name}-client"], stdout=subprocess.PIPE,
                                   text=True)
        assert traffic.stdout.readline() == "sending\n"
        time.sleep(0.3)  # mid-run: packets in the forwarder's delay queue
        yield link, traffic, state
    finally:
        for p in (link, traffic):
            if p is not None:
                _stop(p)


def _assert_back_to(before: dict[str, object], devices: set[str], name: str, state: dict,
                    pids: list[int]) -> None:
    after = _snapshot()
    assert after == before, f"before {before}, after {after}"
    assert _leftovers(name, pids) == []
    ours = f"{netns.PREFIX}{state['run_id']}"  # TUN devices are made in the root namespace under this prefix
    assert not {d for d in _root_devices() - devices if d.startswith(ours)}, _root_devices() - devices


@pytest.mark.privileged
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT],
                         ids=["SIGHUP", "SIGTERM", "SIGINT"])
def test_defect_4_signal_mid_run_tears_lab_link_down(signum: int) -> None:
    """SIGHUP (terminal closed), SIGTERM or SIGINT while traffic flows: `lab link` prints its final
    counters, exits 0 and leaves nothing: namespaces, forwarder, the traffic process inside the
    namespace, state file; this process's fds, threads and children are as before. (SIGHUP used to
    kill it on the spot, leaving everything behind.)"""
    name = _name()
    before, devices = _snapshot(), _root_devices()
    with _link_mid_run(name) as (link, traffic, state):
        link.send_signal(signum)
        out, err = link.communicate(timeout=STOP_TIMEOUT_S)
        assert traffic.wait(timeout=5) is not None  # killed by the teardown, not by us
    assert link.returncode == 0, (out, err)
    assert "Traceback" not in err and "final counters" in out and f"link {name} removed" in out, (out, err)
    forward = next(line for line in out.splitlines() if "forward (client->server):" in line)
    assert int(forward.split("packets_in=")[1].split(",")[0]) > 100, out
    _assert_back_to(before, devices, name, state, list(state["pids"]) + [traffic.pid])


@pytest.mark.privileged
def test_defect_4_sighup_ignored_under_nohup_keeps_the_link() -> None:
    """Under nohup (SIGHUP ignored) the link stays up after SIGHUP; SIGINT still tears it down."""
    name = _name()
    process = _lab("link", "--name", name, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        _wait_up(process)
        pids = list(json.loads(netns._state_path(name).read_text())["pids"])
        process.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert process.poll() is None and all(not netns._gone(p) for p in pids)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=STOP_TIMEOUT_S)
    finally:
        _stop(process)
    assert process.returncode == 0 and f"link {name} removed" in out, (out, err)
    assert _leftovers(name, pids) == []


@pytest.mark.privileged
def test_defect_4_sigkill_mid_run_then_cleanup_removes_everything(cleanup_turn: None) -> None:
    """SIGKILL while traffic flows leaves the link behind; `lab cleanup` removes its namespaces,
    forwarder, the traffic process inside and its state file, and everything is as before."""
    name = _name()
    before, devices = _snapshot(), _root_devices()
    with _link_mid_run(name) as (link, traffic, state):
        link.kill()
        link.communicate(timeout=5)
        assert f"{name}-client" in os.listdir(netns.NETNS_DIR)  # SIGKILL cannot tear down
        done = subprocess.run([sys.executable, "-m", "lab", "cleanup"], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stderr
        assert traffic.wait(timeout=5) is not None
    for needle in (f"removed namespace {name}-client", f"removed namespace {name}-server",
                   f"removed process {state['pids'][0]} (link {name})"):
        assert needle in done.stdout, done.stdout
    _assert_back_to(before, devices, name, state, list(state["pids"]) + [traffic.pid])
