"""The course's three lessons against the lab's servers and clients, in-process and as programs.

(The lesson UDP server also runs every UDP echo test in tests/test_server.py.)
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.endpoints.server import running_server
from lab.lessons import tcp_client, udp_client, udp_server

IO_TIMEOUT = 5.0  # seconds for any one blocking step
PROGRAM_TIMEOUT = 10.0  # seconds for a lesson run as a program (interpreter start included)


@pytest.fixture(params=["selectors", "socketserver"])
def echo(request: pytest.FixtureRequest) -> Iterator[Any]:
    with running_server("both", variant=request.param) as handle:
        yield handle


@pytest.fixture
def lesson_udp_server() -> Iterator[tuple[str, int]]:
    """The lesson's UDP server in a thread; stopped by shutdown() (which wakes its recvfrom)."""
    sock = udp_server.make_server("127.0.0.1", 0)
    thread = threading.Thread(target=udp_server.serve, args=(sock,), daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[:2]
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        thread.join(IO_TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "lesson UDP server did not stop"


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=PROGRAM_TIMEOUT)


@pytest.mark.parametrize("data", [b"", b"hello", "olá, mundo".encode(), os.urandom(100_000)])
def test_tcp_client_exchange_against_our_servers(echo: Any, data: bytes) -> None:
    assert tcp_client.exchange(*echo.tcp_address, data) == data


@pytest.mark.parametrize("data", [b"", b"hello", os.urandom(65507)])
def test_udp_client_exchange_against_our_servers(echo: Any, data: bytes) -> None:
    assert udp_client.exchange(*echo.udp_address, data) == data


def test_udp_client_times_out_when_nobody_answers() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        with pytest.raises(TimeoutError):
            udp_client.exchange(*silent.getsockname(), b"anyone?", timeout=0.2)


def test_lesson_clients_against_lesson_server(lesson_udp_server: tuple[str, int]) -> None:
    assert udp_client.exchange(*lesson_udp_server, b"ping") == b"ping"
    assert udp_client.exchange(*lesson_udp_server, b"") == b""


def test_lab_measuring_client_against_lesson_server(lesson_udp_server: tuple[str, int]) -> None:
    """The lab's own UDP ping-pong client sees every probe echoed by the lesson's server."""
    client = pytest.importorskip("lab.endpoints.client")
    from lab.records import TrafficPlan

    record = client.run_client("udp", lesson_udp_server, TrafficPlan(count=50, size=200, timeout=1.0))
    seqs = {arrival.seq for arrival in record.arrivals}
    assert len(record.sends) == 50 and len(seqs) == 50, (len(record.sends), len(seqs))


def test_tcp_client_program(echo: Any) -> None:
    host, port = echo.tcp_address
    done = _run("lab.lessons.tcp_client", host, str(port), "olá TCP")
    assert done.returncode == 0 and done.stdout == "olá TCP\n", done


def test_udp_client_program(echo: Any) -> None:
    host, port = echo.udp_address
    done = _run("lab.lessons.udp_client", host, str(port), "olá UDP", "--timeout", "2")
    assert done.returncode == 0 and done.stdout == "olá UDP\n", done


def test_client_programs_report_failures() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = str(silent.getsockname()[1])
        done = _run("lab.lessons.udp_client", "127.0.0.1", port, "x", "--timeout", "0.2")
    assert done.returncode == 1 and "no reply" in done.stderr, done
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connecting is refused
        done = _run("lab.lessons.tcp_client", "127.0.0.1", str(closed.getsockname()[1]), "x")
    assert done.returncode == 1 and "cannot talk" in done.stderr, done
    assert _run("lab.lessons.tcp_client", "only-host").returncode == 2


def test_udp_server_program_serves_until_ctrl_c() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "lab.lessons.udp_server", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        match = re.search(r"listening on (\S+):(\d+)", line)
        assert match, line
        host, port = match.group(1), int(match.group(2))
        assert udp_client.exchange(host, port, b"via the program") == b"via the program"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(PROGRAM_TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_udp_server_program_port_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        done = _run("lab.lessons.udp_server", "--port", str(taken.getsockname()[1]))
    assert done.returncode == 2 and "cannot listen" in done.stderr, done


@pytest.mark.parametrize("args", [
    ("lab.lessons.tcp_client", "127.0.0.1", "99999", "x"),
    ("lab.lessons.tcp_client", "127.0.0.1", "abc", "x"),
    ("lab.lessons.udp_client", "127.0.0.1", "65536", "x"),
    ("lab.lessons.udp_server", "--port", "99999"),
    ("lab.lessons.udp_server", "--port", "-1"),
])
def test_lesson_programs_refuse_bad_ports(args: tuple[str, ...]) -> None:
    """A port outside 0..65535 is refused with a usage line, not wrapped around (99999 -> 34463)."""
    done = _run(*args)
    assert done.returncode == 2 and "usage:" in done.stderr and "Traceback" not in done.stderr, done
    assert done.stdout == "", done  # in particular no "listening on ..." of a wrapped port


def test_lessons_use_only_the_standard_library() -> None:
    """The lessons are for students: nothing but stdlib imports (checked on the source)."""
    allowed = set(sys.stdlib_module_names)
    for module in (tcp_client, udp_client, udp_server):
        source = Path(module.__file__).read_text(encoding="utf-8")
        imported = re.findall(r"^(?:import|from) (\w+)", source, flags=re.M)
        assert set(imported) <= allowed, (module.__name__, set(imported) - allowed)


@pytest.mark.parametrize("lesson", [tcp_client, udp_client], ids=["tcp_client", "udp_client"])
@pytest.mark.parametrize("host", ["192.0.2.7", "example.com", "::ffff:192.0.2.7", "::198.18.0.2"])
def test_lesson_clients_refuse_foreign_targets_before_any_socket(
    lesson: Any, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 8, defect 1 for the lessons: a target off this machine is refused before a socket (or
    a DNS lookup) exists."""

    def tripwire(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a socket or a lookup was attempted for a refused target")

    for name in ("socket", "create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, tripwire)
    with pytest.raises(ValueError):
        lesson.exchange(host, 7007, b"hi")


def _sockets_sent_nowhere(lesson: Any, host: str) -> OSError:
    """Run the lesson against a lab address from a namespace with a default route and no lab link:
    the kernel refuses the route (SO_DONTROUTE) before a packet exists."""
    script = (
        "import sys\n"
        f"from lab.lessons import {lesson.__name__.rsplit('.', 1)[1]} as lesson\n"
        "try:\n"
        f"    lesson.exchange({host!r}, 7007, b'hi', timeout=1)\n"
        "except OSError as exc:\n"
        "    print(exc.errno)\n"
    )
    netns = ("ip link add wlvl0 type veth peer name wlvl1 && ip addr add 10.255.0.1/30 dev wlvl0 && "
             "ip link set wlvl0 up && ip link set wlvl1 up && ip link set lo up && "
             "ip route add default via 10.255.0.2 && ")
    done = subprocess.run(["unshare", "--net", "sh", "-c", netns + f"{sys.executable} -c \"$0\"", script],
                          capture_output=True, text=True, timeout=PROGRAM_TIMEOUT)
    return done


@pytest.mark.parametrize("lesson", [tcp_client, udp_client], ids=["tcp_client", "udp_client"])
def test_lesson_clients_never_route_a_lab_address_off_the_machine(lesson: Any) -> None:
    """198.18.0.2 without a lab link would go out through the default route: SO_DONTROUTE makes the
    kernel refuse it (ENETUNREACH), tested in a private namespace whose only way out is a dead end."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private network namespace")
    done = _sockets_sent_nowhere(lesson, "198.18.0.2")
    assert done.stdout.strip() == str(errno.ENETUNREACH), (done.stdout, done.stderr)


def test_lesson_client_program_refusal_is_one_line() -> None:
    done = _run("lab.lessons.udp_client", "192.0.2.7", "7007", "olá")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "udp_client: refusing 192.0.2.7: 192.0.2.7 is neither this machine (127.0.0.0/8, ::1) nor a "
        "lab address (198.18/15)"
    ]


def test_lesson_udp_server_never_answers_a_low_port(lesson_udp_server: tuple[str, int]) -> None:
    """Issue 8, defect 2 for the lesson server: a datagram "from" port 7 (another echo server) is
    not answered, so the two cannot echo each other forever; a normal client still is."""
    if os.geteuid() != 0:
        pytest.skip("binding a source port below 1024 needs root (CAP_NET_BIND_SERVICE)")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as low:
        low.bind(("127.0.0.1", 1019))
        low.settimeout(0.3)
        low.sendto(b"from a well-known port", lesson_udp_server)
        with pytest.raises(TimeoutError):
            low.recvfrom(100)
    assert udp_client.exchange(*lesson_udp_server, b"still serving") == b"still serving"


@pytest.mark.privileged
def test_lesson_clients_reach_the_server_end_of_a_lab_link() -> None:
    """SO_DONTROUTE refuses only what needs a router: a lab link's ends are directly connected."""
    from lab.link.session import open_link

    with open_link(delay="1ms") as link:
        port = link.echo_port()
        assert link.client.call(udp_client.exchange, link.server_address, port, b"udp") == b"udp"
        assert link.client.call(tcp_client.exchange, link.server_address, port, b"tcp") == b"tcp"
