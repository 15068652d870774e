"""`lab serve` and `python -m lab.endpoints.server` as real processes: listen, echo, signal, stats."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PROGRAM_TIMEOUT = 15.0  # seconds for a process to start, answer and exit (interpreter start included)
IO_TIMEOUT = 5.0


@contextmanager
def process(*args: str) -> Iterator[subprocess.Popen[str]]:
    """Start a process with piped output; kill it if the test leaves it running."""
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=PROGRAM_TIMEOUT)


def echo_both(tcp: tuple[str, int], udp: tuple[str, int]) -> None:
    with socket.create_connection(tcp, timeout=IO_TIMEOUT) as sock:
        sock.sendall(b"over tcp")
        assert sock.recv(100) == b"over tcp"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.sendto(b"over udp", udp)
        assert sock.recv(100) == b"over udp"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_lab_serve_both_until_signal(sig: signal.Signals) -> None:
    with process("-m", "lab", "serve", "both", "--port", "0") as proc:
        lines = [proc.stdout.readline(), proc.stdout.readline()]  # type: ignore[union-attr]
        found = {m.group(1): (m.group(2), int(m.group(3)))
                 for m in (re.match(r"echo (tcp|udp) listening on (\S+):(\d+)$", ln.strip()) for ln in lines)
                 if m}
        assert set(found) == {"tcp", "udp"}, lines
        assert found["tcp"][1] == found["udp"][1], "both: one port number for TCP and UDP"
        echo_both(found["tcp"], found["udp"])
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=PROGRAM_TIMEOUT)
    assert proc.returncode == 0, (out, err)
    stats_line = out.strip().splitlines()[-1]
    assert stats_line.startswith("echo stats:"), out
    stats = dict(pair.split("=") for pair in stats_line.split(":", 1)[1].split())
    assert stats["accepted"] == "1" and stats["datagrams_out"] == "1" and stats["bytes_in"] == "16", stats
    assert "Traceback" not in err, err


@pytest.mark.parametrize("socktype,which", [(socket.SOCK_STREAM, "tcp"), (socket.SOCK_DGRAM, "udp"),
                                            (socket.SOCK_DGRAM, "both")])
def test_lab_serve_port_in_use_exits_2_with_one_line(socktype: int, which: str) -> None:
    with socket.socket(socket.AF_INET, socktype) as taken:
        taken.bind(("127.0.0.1", 0))
        if socktype == socket.SOCK_STREAM:
            taken.listen()
        port = str(taken.getsockname()[1])
        done = subprocess.run([sys.executable, "-m", "lab", "serve", which, "--port", port],
                              capture_output=True, text=True, timeout=PROGRAM_TIMEOUT)
    assert done.returncode == 2, done
    assert done.stderr.count("\n") == 1 and "already in use" in done.stderr, done.stderr
    assert done.stderr.startswith("lab: error:"), done.stderr


@pytest.mark.parametrize("args,message", [
    (["serve", "tcp", "--host", "192.0.2.1"], "not an address of this machine"),
    (["serve", "tcp", "--host", "no such host!"], "not a usable address"),
    (["serve", "sctp"], "sctp"),
    (["serve", "udp", "--port", "70000"], "65535"),
    (["serve", "tcp", "--idle-timeout", "inf"], "--idle-timeout"),
    (["serve", "tcp", "--idle-timeout", "1e8"], "--idle-timeout"),
])
def test_lab_serve_bad_values_exit_2(args: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "lab", *args], capture_output=True, text=True,
                          timeout=PROGRAM_TIMEOUT)
    assert done.returncode == 2 and message in done.stderr, done
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("variant", ["selectors", "socketserver"])
def test_machine_entry_point_json(variant: str) -> None:
    with process("-m", "lab.endpoints.server", "both", "--port", "0", "--variant", variant) as proc:
        ready = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        assert ready["ready"] is True and ready["tcp"][0] == "127.0.0.1", ready
        echo_both(tuple(ready["tcp"]), tuple(ready["udp"]))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=PROGRAM_TIMEOUT)
    assert proc.returncode == 0, (out, err)
    stats = json.loads(out.strip().splitlines()[-1])["stats"]
    assert stats["accepted"] == 1 and stats["datagrams_in"] == 1, stats


def test_machine_entry_point_single_kind_and_failure() -> None:
    with process("-m", "lab.endpoints.server", "udp") as proc:
        ready = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        assert ready["tcp"] is None and ready["udp"][1] > 0, ready
        proc.send_signal(signal.SIGINT)
        proc.wait(PROGRAM_TIMEOUT)
    assert proc.returncode == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        done = subprocess.run([sys.executable, "-m", "lab.endpoints.server", "udp", "--port",
                               str(taken.getsockname()[1])], capture_output=True, text=True,
                              timeout=PROGRAM_TIMEOUT)
    assert done.returncode == 2 and json.loads(done.stdout)["ready"] is False, done


def test_lab_serve_ipv6_prints_bracketed_address() -> None:
    from lab.endpoints.server import format_address

    assert format_address(("::1", 7007)) == "[::1]:7007"
    assert format_address(("127.0.0.1", 7007)) == "127.0.0.1:7007"
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        pytest.skip("no IPv6 on this machine")
    with process("-m", "lab", "serve", "udp", "--host", "::1", "--port", "0") as proc:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        match = re.match(r"echo udp listening on \[::1\]:(\d+)$", line.strip())
        assert match, line
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.settimeout(IO_TIMEOUT)
            sock.sendto(b"six", ("::1", int(match.group(1))))
            assert sock.recv(10) == b"six"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=PROGRAM_TIMEOUT)
    assert proc.returncode == 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _echo_answers(address: tuple[str, int]) -> bool:
    with socket.create_connection(address, timeout=1.0) as sock:
        sock.sendall(b"back")
        return sock.recv(10) == b"back"


def _sink_counts(address: tuple[str, int]) -> bool:
    from lab.bulk import BulkPlan
    from lab.protocols import get_protocol

    return get_protocol("tcp").run_bulk(address, BulkPlan(duration_s=0.2)).bytes_delivered > 0


@pytest.mark.parametrize(("module", "args", "serves"), [
    ("lab.endpoints.server", "['tcp', '--max-conns', '1000']", _echo_answers),
    ("lab.endpoints.sink", "['--max-conns', '1000']", _sink_counts),
])
def test_server_out_of_file_descriptors_backs_off_and_recovers(module: str, args: str, serves) -> None:
    """EMFILE on accept (fd limit 40, 80 clients): counted, the server lives without spinning on its
    still-readable listener (it stops accepting for a moment), and serving resumes after. The echo
    server and the discard sink share that back-off (SelectorLoop._accepted)."""
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40)); "
            f"from {module} import main; sys.exit(main({args}))")
    with process("-c", code) as proc:
        address = tuple(json.loads(proc.stdout.readline())["tcp"])  # type: ignore[union-attr]
        crowd = []
        try:
            for _ in range(80):  # the kernel completes handshakes in the backlog even if we can't accept
                crowd.append(socket.create_connection(address, timeout=IO_TIMEOUT))
            time.sleep(0.2)  # out of fds by now, the listener still readable
            before, start = _cpu_seconds(proc.pid), time.monotonic()
            time.sleep(1.0)
            busy = (_cpu_seconds(proc.pid) - before) / (time.monotonic() - start)
        finally:
            for sock in crowd:
                sock.close()
        assert busy < 0.5, f"{module} spent {busy:.0%} of a CPU while out of fds: it spins on accept"
        deadline = time.monotonic() + IO_TIMEOUT
        while True:  # serving again once the crowd's fds are released
            try:
                if serves(address):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{module} did not recover from EMFILE"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=PROGRAM_TIMEOUT)
    assert proc.returncode == 0
    stats = json.loads(out.strip().splitlines()[-1])["stats"]
    assert stats["errors"] >= 1 and stats["active"] == 0, stats


def _openbsd_nc() -> str | None:
    """Path of an OpenBSD-style nc (has -N: shut down the socket at end of input), or None."""
    nc = shutil.which("nc")
    if nc is None:
        return None
    helped = subprocess.run([nc, "-h"], capture_output=True, text=True, timeout=IO_TIMEOUT)
    return nc if "-N" in helped.stdout + helped.stderr else None


@pytest.mark.skipif(_openbsd_nc() is None and shutil.which("socat") is None,
                    reason="neither OpenBSD nc nor socat installed (apt-get install netcat-openbsd socat)")
def test_lab_serve_with_real_nc_and_socat() -> None:
    """The Done-means check: `lab serve both` answers the real nc and socat, TCP and UDP."""
    nc, socat = _openbsd_nc(), shutil.which("socat")
    with process("-m", "lab", "serve", "both", "--port", "0") as proc:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        match = re.match(r"echo tcp listening on 127\.0\.0\.1:(\d+)$", line.strip())
        assert match, line
        port = match.group(1)
        expected = {"tcp": 0, "udp": 0}  # bytes each tool sent
        if nc:
            text = "typed into nc\nline two\n"
            done = subprocess.run([nc, "-N", "127.0.0.1", port], input=text, capture_output=True,
                                  text=True, timeout=PROGRAM_TIMEOUT)
            assert done.stdout == text, done
            expected["tcp"] += len(text)
            # UDP nc never sees an end: read the echo of one line, then stop it.
            udp = subprocess.Popen([nc, "-u", "127.0.0.1", port], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
            try:
                udp.stdin.write("datagram via nc\n")  # type: ignore[union-attr]
                udp.stdin.flush()  # type: ignore[union-attr]
                assert udp.stdout.readline() == "datagram via nc\n"  # type: ignore[union-attr]
            finally:
                udp.kill()
                udp.communicate(timeout=PROGRAM_TIMEOUT)
            expected["udp"] += len("datagram via nc\n")
        if socat:
            for proto in ("TCP", "UDP"):
                text = f"via socat {proto}\n"
                done = subprocess.run([socat, "-t", "1", "-", f"{proto}:127.0.0.1:{port}"], input=text,
                                      capture_output=True, text=True, timeout=PROGRAM_TIMEOUT)
                assert done.stdout == text, done
                expected[proto.lower()] += len(text)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=PROGRAM_TIMEOUT)
    assert proc.returncode == 0 and "Traceback" not in err, (out, err)
    stats = dict(pair.split("=") for pair in out.strip().splitlines()[-1].split(":", 1)[1].split())
    # nc -u may send a probe datagram of its own ("X") first; TCP bytes are exact.
    assert int(stats["bytes_in"]) >= expected["tcp"] + expected["udp"] and stats["errors"] == "0", stats
    assert stats["active"] == "0", stats


def test_spawn_server_process_ready_and_failure() -> None:
    """The shared spawner returns a serving process; a port in use is an EndpointError, no process left."""
    import socket as _socket

    from lab.endpoints.server import server_process, spawn_server_process, stop_server_process
    from lab.errors import EndpointError

    with server_process("udp") as ready:
        host, port = ready["udp"]
        with _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(b"ping", (host, port))
            assert sock.recv(16) == b"ping"
        spawned: list[subprocess.Popen[str]] = []

        def recording_popen(argv: list[str], **kwargs: object) -> subprocess.Popen[str]:
            spawned.append(subprocess.Popen(argv, **kwargs))  # type: ignore[call-overload]
            return spawned[-1]

        with pytest.raises(EndpointError, match="did not start"):
            spawn_server_process("udp", host=host, port=port, popen=recording_popen)
        assert spawned and spawned[0].poll() is not None  # stopped and reaped, not left running
        stop_server_process(spawned[0])  # idempotent on a finished process
