"""The helper-process contract (`lab.child`, docs/architecture.md#processes) with real processes.

A child that dies before it is ready, is never ready, dies during a request or never answers ends
with one HelperProcessError naming it, with the tail of its stderr, and leaves no process behind;
a child that says why it cannot start raises its own LabError type; close is idempotent and never
raises. The real helpers (echo server, relay) are held to the same contract.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Iterator

import pytest

from lab import child
from lab.errors import ConfigError, CrcMismatchError, EndpointError, HelperProcessError

# A child speaking the protocol: ready, then answers requests with `handle` until stop or EOF.
SERVING = """
import os, signal, sys, time
from lab.child import Ready, answer, child_channel
from lab.errors import ConfigError

channel = child_channel()
channel.send(Ready({"pid": os.getpid()}))

def handle(op, argument):
    if op == "echo":
        return argument
    if op == "bad":
        raise ConfigError("loss must be between 0% and 100%, got 150%")
    if op == "die":
        print("dying: out of frobs", file=sys.stderr, flush=True)
        os._exit(5)
    if op == "hang":
        print("thinking hard", file=sys.stderr, flush=True)
        time.sleep(60)
    if op == "stop":
        return "final counters"

while answer(channel, handle):
    pass
"""


def _gone(pid: int) -> bool:
    """True once `pid` no longer exists (a reaped child: no zombie either)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _spawn(code: str, **options: object) -> child.Child:
    return child.spawn("the test helper", [sys.executable, "-c", code], **options)  # type: ignore[arg-type]


@pytest.fixture
def serving() -> Iterator[child.Child]:
    with _spawn(SERVING) as helper:
        yield helper
    assert _gone(helper.pid)


# --- failures: one error, the stderr tail, nothing left --------------------------------------------
def test_child_that_dies_before_ready() -> None:
    code = "import sys; print('cannot start: no frobnicator', file=sys.stderr); sys.exit(3)"
    with pytest.raises(HelperProcessError) as caught:
        _spawn(code, quiet=True)
    message = str(caught.value)
    assert message.startswith("the test helper (pid ")
    assert "exited with status 3 before it was ready" in message
    assert message.splitlines()[-1] == "  cannot start: no frobnicator", message
    assert caught.value.stderr_tail == "cannot start: no frobnicator"
    assert _gone(int(message.split("pid ")[1].split(")")[0]))


def test_child_that_is_never_ready_is_stopped_after_the_ready_timeout() -> None:
    code = "import sys, time; print('stuck in setup', file=sys.stderr, flush=True); time.sleep(60)"
    started = time.monotonic()
    with pytest.raises(HelperProcessError, match=r"was not ready within 0\.5 s and was stopped") as caught:
        _spawn(code, ready_timeout=0.5, quiet=True)
    assert time.monotonic() - started < 10  # the timeout, then SIGTERM: no 30 s default, no hang
    assert caught.value.stderr_tail == "stuck in setup"
    assert _gone(int(str(caught.value).split("pid ")[1].split(")")[0]))


def test_child_that_dies_during_a_request(serving: child.Child) -> None:
    with pytest.raises(HelperProcessError) as caught:
        serving.request("die")
    message = str(caught.value)
    assert f"the test helper (pid {serving.pid}) exited with status 5 during die" in message.splitlines()[0]
    assert caught.value.stderr_tail == "dying: out of frobs"
    assert _gone(serving.pid) and not serving.alive
    with pytest.raises(HelperProcessError, match="already stopped"):
        serving.request("echo", 1)
    serving.close()  # after the child died: fine
    serving.close()  # twice: fine


def test_child_that_never_answers_is_stopped_after_the_request_timeout(serving: child.Child) -> None:
    stopped = r"did not answer hang within 0\.5 s and was stopped"
    with pytest.raises(HelperProcessError, match=stopped) as caught:
        serving.request("hang", timeout=0.5)
    assert caught.value.stderr_tail == "thinking hard"
    assert _gone(serving.pid)


def test_child_that_says_why_it_cannot_start_raises_its_own_error_type() -> None:
    code = ("from lab.child import Failed, child_channel\nfrom lab.errors import EndpointError\n"
            "child_channel().send(Failed(EndpointError('udp port 7 on 127.0.0.1 is already in use')))\n")
    spawned: list[int] = []

    def recording_popen(argv: list[str], **kwargs: object):  # the caller's popen gets every keyword
        import subprocess

        process = subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]
        spawned.append(process.pid)
        return process

    with pytest.raises(EndpointError, match="^the test helper did not start: udp port 7 on 127.0.0.1 is"):
        _spawn(code, popen=recording_popen)
    assert spawned and _gone(spawned[0])


def test_a_spawn_that_cannot_exec_is_one_error() -> None:
    with pytest.raises(HelperProcessError, match="cannot start the test helper"):
        child.spawn("the test helper", ["/nonexistent/python"])


# --- the normal life: requests, replies, errors by type, a polite stop -------------------------------
def test_requests_replies_and_a_polite_stop(serving: child.Child) -> None:
    assert serving.info == {"pid": serving.pid}
    assert serving.request("echo", {"config": (1, 2.5, b"\x00")}) == {"config": (1, 2.5, b"\x00")}
    with pytest.raises(ConfigError, match="loss must be between 0% and 100%, got 150%"):
        serving.request("bad")  # the child's own error, of its own type
    assert serving.request("echo", "still up") == "still up"
    serving.close()
    assert serving.final == "final counters" and serving.process.returncode == 0 and _gone(serving.pid)
    serving.close()


def test_close_ends_a_child_that_ignores_sigterm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(child, "TERM_TIMEOUT_S", 0.3)
    code = ("import signal, time\nfrom lab.child import Ready, child_channel\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nchannel = child_channel()\n"
            "channel.send(Ready())\ntime.sleep(60)\n")
    helper = _spawn(code, stop_op=None)
    helper.close()
    assert helper.process.returncode == -signal.SIGKILL and _gone(helper.pid)


def test_stderr_tail_is_the_last_lines_only() -> None:
    code = "import sys\nfor i in range(500): print(f'line {i:03d} ' + 'x' * 40, file=sys.stderr)\nsys.exit(1)"
    with pytest.raises(HelperProcessError) as caught:
        _spawn(code, quiet=True)
    tail = caught.value.stderr_tail
    assert len(tail.splitlines()) == child.TAIL_LINES and len(tail) <= child.TAIL_BYTES
    assert tail.splitlines()[-1].startswith("line 499 ")


# --- forked calls ----------------------------------------------------------------------------------
def test_fork_call_returns_raises_and_reports_death() -> None:
    with child.fork_call("the doubling child", lambda channel: 21 * 2) as forked:
        assert forked.next_message(10).value == 42
    assert _gone(forked.pid) and forked.process.returncode == 0

    def fails(channel: child.Channel) -> None:
        raise CrcMismatchError("probe 7 arrived corrupted", probe=b"probe 7")

    with child.fork_call("the failing child", fails) as forked:
        error = forked.next_message(10).error
    assert isinstance(error, CrcMismatchError) and error.probe == b"probe 7"  # attributes and all

    dying = r"^the dying child \(pid \d+\) exited with status 7"
    with child.fork_call("the dying child", lambda channel: os._exit(7)) as forked, \
            pytest.raises(HelperProcessError, match=dying):
        forked.next_message(10)
    assert _gone(forked.pid)


def test_fork_call_closed_before_its_outcome_is_stopped() -> None:
    forked = child.fork_call("the sleeping child", lambda channel: time.sleep(60))
    forked.close()
    forked.close()
    assert _gone(forked.pid)


# --- the real helpers ----------------------------------------------------------------------------------
def test_echo_server_process_ready_timeout_and_port_in_use() -> None:
    from lab.endpoints.server import spawn_server_process, stop_server_process

    with pytest.raises(HelperProcessError, match="the echo server process .* was not ready within 0.01 s"):
        spawn_server_process("udp", ready_timeout=0.01)
    server, ready = spawn_server_process("tcp")
    try:
        host, port = ready["tcp"]
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"ping")
            assert sock.recv(16) == b"ping"
        with pytest.raises(EndpointError, match="echo server process did not start: .*already in use"):
            spawn_server_process("tcp", port=port)
    finally:
        stop_server_process(server)
        stop_server_process(server)
    assert _gone(server.pid)


def test_relay_that_dies_mid_run_is_one_error_and_leaves_nothing() -> None:
    from lab.endpoints.server import running_server
    from lab.link.models import LinkConfig
    from lab.link.relay import UdpRelay

    with running_server("udp") as server, UdpRelay(LinkConfig(), server.address) as relay:
        pid = relay.pid
        assert pid is not None
        relay.counters()
        os.kill(pid, signal.SIGKILL)
        killed = rf"the UDP relay \(pid {pid}\) was killed by SIGKILL during counters"
        with pytest.raises(HelperProcessError, match=killed):
            relay.counters()
    assert relay.pid is None and _gone(pid)


@pytest.mark.privileged
def test_forwarder_that_dies_mid_run_is_one_error_and_the_link_still_closes() -> None:
    from lab.link.session import open_link

    with open_link(loss="1%") as link:
        pid = link._forwarder.pid
        link.counters()
        os.kill(pid, signal.SIGKILL)
        killed = rf"the link forwarder \(pid {pid}\) was killed by SIGKILL during counters"
        with pytest.raises(HelperProcessError, match=killed):
            link.counters()
        assert not link.forwarder_alive
    assert link.final_counters is None and _gone(pid)
    link.close()


@pytest.mark.privileged
def test_namespace_call_whose_child_dies_is_one_error() -> None:
    from lab.link.session import open_link

    with open_link() as link:
        died = rf"^the child running '_exit' in {link.client_ns} \(pid \d+\) exited with status 9$"
        with pytest.raises(HelperProcessError, match=died):
            link.client.call(os._exit, 9)
        assert link.client.call(os.getpid) != os.getpid()  # the next call works as before
