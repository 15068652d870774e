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
from lab.lessons import common, select_server, tcp_client, tcp_server, udp_client, udp_server

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


def _imported_modules(module: Any) -> set[str]:
    """Every module a source file imports, anywhere in it (read with ast, not run)."""
    import ast

    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, (module.__name__, "relative import")  # python -m needs absolute ones
            names.add(node.module or "")
    return names


def test_lessons_use_only_the_standard_library() -> None:
    """The lessons are for students: nothing but stdlib imports and their shared helper
    lab.lessons.common (checked on the source)."""
    allowed = set(sys.stdlib_module_names)
    for module in (tcp_client, udp_client, udp_server, tcp_server, select_server):
        outside = {name for name in _imported_modules(module) if name.split(".")[0] not in allowed}
        assert outside == {"lab.lessons.common"}, (module.__name__, outside)


def test_lessons_common_imports_only_the_standard_library() -> None:
    """What the lessons share is stdlib only too: a student can copy the lessons and common.py
    anywhere with Python and nothing else."""
    imported = _imported_modules(common)
    assert imported, "no imports found: the check would prove nothing"
    assert {name.split(".")[0] for name in imported} <= set(sys.stdlib_module_names), imported


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


# --- Issue 11, item 3: lesson 4 (socketserver TCP echo server) and lesson 5 (select) --------------

TCP_SERVERS = ["tcp_server", "select_server"]
LISTENING = re.compile(r"(?:listening on|ouvindo em) (\S+):(\d+)")


@contextlib.contextmanager
def lesson_tcp_server(kind: str, **options: Any) -> Iterator[tuple[str, int]]:
    """Lesson 4 or 5 in a thread of this process; stopped, its clients closed and joined at the end."""
    if kind == "tcp_server":
        server = tcp_server.make_server("127.0.0.1", 0, **options)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        stop = server.shutdown
    else:
        listener = select_server.make_server("127.0.0.1", 0)
        stopping = threading.Event()
        thread = threading.Thread(target=select_server.serve, args=(listener,), daemon=True,
                                  kwargs={"should_stop": stopping.is_set, **options})
        stop = stopping.set
    thread.start()
    try:
        yield (server.server_address if kind == "tcp_server" else listener.getsockname())[:2]
    finally:
        stop()
        thread.join(IO_TIMEOUT)
        if kind == "tcp_server":
            server.server_close()  # closes the clients and joins their threads
        else:
            listener.close()
        assert not thread.is_alive(), f"lesson {kind} did not stop"


def _connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"closed after {len(data)} of {size} bytes"
        data += chunk
    return data


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """Drain what the server sent; True once it has closed (EOF or reset) within `within` s."""
    sock.settimeout(within)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


@pytest.mark.parametrize("kind", TCP_SERVERS)
@pytest.mark.parametrize("data", [b"", b"hello", "olá, mundo".encode(), os.urandom(300_000)],
                         ids=["empty", "hello", "ola", "300k"])
def test_tcp_client_lesson_against_tcp_server_lessons(kind: str, data: bytes) -> None:
    """300 kB is more than the servers hold per client (4 KiB / 64 KiB): the echo flows as the
    client reads, and the half-close still ends with the whole echo and the server's close."""
    with lesson_tcp_server(kind) as address:
        assert tcp_client.exchange(*address, data) == data


@pytest.mark.parametrize("kind", TCP_SERVERS)
@pytest.mark.parametrize("rate", [None, 5000.0], ids=["ping-pong", "paced"])
def test_lab_send_tcp_against_tcp_server_lessons(kind: str, rate: float | None) -> None:
    """`lab send tcp` (the lab's measuring client) gets every probe back, in order, from both lessons."""
    from lab.protocols import get_protocol
    from lab.records import TrafficPlan

    with lesson_tcp_server(kind) as address:
        plan = TrafficPlan(count=300, size=300, rate=rate, timeout=1.0, streams=2)
        record = get_protocol("tcp").run(address, plan)
    seqs = [arrival.seq for arrival in record.arrivals]
    assert len(record.sends) == 300 and sorted(set(seqs)) == list(range(300)), (len(record.sends), len(seqs))


@pytest.mark.parametrize("kind", TCP_SERVERS)
def test_tcp_server_lessons_serve_many_clients_at_once(kind: str) -> None:
    """60 clients connected at the same time, each talking in turn with its own bytes: every one gets
    its own echo back while all the others stay connected (select does it with one thread)."""
    before = threading.active_count()
    with lesson_tcp_server(kind) as address, contextlib.ExitStack() as stack:
        clients = [stack.enter_context(_connect(address)) for _ in range(60)]
        if kind == "select_server":
            assert threading.active_count() == before + 1  # the server's one thread, whatever the clients
        for round_ in range(3):
            for i, sock in enumerate(clients):
                sock.sendall(f"client {i} round {round_};".encode())
            for i, sock in enumerate(clients):
                message = f"client {i} round {round_};".encode()
                assert _recv_exactly(sock, len(message)) == message
    assert _wait_for(lambda: threading.active_count() == before), threading.enumerate()


def _wait_for(condition: Any, timeout: float = IO_TIMEOUT) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("kind", TCP_SERVERS)
def test_tcp_server_lessons_survive_a_client_that_resets(kind: str) -> None:
    """A client that sends, then resets the connection (RST: SO_LINGER 0) while its echo is owed,
    is dropped; the server goes on serving."""
    with lesson_tcp_server(kind) as address:
        for _ in range(5):
            with _connect(address) as rude:
                rude.sendall(os.urandom(200_000))
                rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        assert tcp_client.exchange(*address, b"still here") == b"still here"


@pytest.mark.parametrize("kind", TCP_SERVERS)
def test_tcp_server_lessons_bound_a_client_that_never_reads(kind: str) -> None:
    """A client that writes and never reads stalls (the server stops reading it: bounded buffers,
    TCP flow control), others are served meanwhile, and it is closed after the idle timeout."""
    with lesson_tcp_server(kind, idle_timeout=1.0) as address, _connect(address) as hog:
        assert _fill(hog) < 256 << 20, "the server kept reading a client that never reads"
        assert tcp_client.exchange(*address, b"served meanwhile") == b"served meanwhile"
        hog.setblocking(True)
        assert _closed_by_server(hog, 1.0 + 4.0), "a client stuck for longer than the idle timeout stays open"


def _fill(hog: socket.socket, most: int = 256 << 20) -> int:
    """Send without reading until the connection stalls for 0.3 s (or `most` bytes): bytes sent."""
    import time

    hog.setblocking(False)
    sent, chunk, stalled_since = 0, os.urandom(1 << 16), None
    while sent < most:  # without backpressure the server would take all of it
        try:
            sent += hog.send(chunk)
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 0.3:
                break
            time.sleep(0.01)
    hog.setblocking(True)
    return sent


@pytest.mark.parametrize("kind", TCP_SERVERS)
def test_tcp_server_lessons_close_an_idle_client(kind: str) -> None:
    with lesson_tcp_server(kind, idle_timeout=0.3) as address, _connect(address) as quiet:
        assert _closed_by_server(quiet, 3.0)


@pytest.mark.parametrize("kind", TCP_SERVERS)
def test_tcp_server_lessons_refuse_clients_beyond_the_limit(kind: str) -> None:
    """With max_clients=3 a fourth connection is closed at once; the three are still served, and a
    place freed is taken again."""
    with lesson_tcp_server(kind, max_clients=3) as address, contextlib.ExitStack() as stack:
        three = [stack.enter_context(_connect(address)) for _ in range(3)]
        for sock in three:  # make sure all three are accepted before the fourth comes
            sock.sendall(b"x")
            assert _recv_exactly(sock, 1) == b"x"
        with _connect(address) as fourth:
            assert _closed_by_server(fourth, 2.0)
        three.pop().close()
        assert _wait_for(lambda: _echoes(address))


def _echoes(address: tuple[str, int]) -> bool:
    try:
        return tcp_client.exchange(*address, b"room?", timeout=1.0) == b"room?"
    except OSError:
        return False


@contextlib.contextmanager
def lesson_program(module: str, *args: str, env: dict[str, str] | None = None,
                   netns: bool = False) -> Iterator[tuple[subprocess.Popen[str], str, int, str]]:
    """A lesson server run as a program with --port 0; yields it, the address and its first line."""
    argv = [sys.executable, "-m", f"lab.lessons.{module}", "--port", "0", *args]
    if netns:  # a private namespace (only lo): a wildcard address is reachable from nowhere else
        argv = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        match = LISTENING.search(line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
        yield proc, match.group(1), int(match.group(2)), line.rstrip("\n")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=PROGRAM_TIMEOUT)


@pytest.mark.parametrize("module", TCP_SERVERS)
def test_tcp_server_lesson_programs_stop_cleanly_on_ctrl_c(module: str) -> None:
    """Ctrl-C with a client still connected and one that never reads (its echo stuck in a full
    send buffer): exit 0 at once, no traceback, and both clients see the end."""
    with lesson_program(module, env={"LANG": "C"}) as (proc, host, port, first):
        assert tcp_client.exchange(host, port, b"via the program") == b"via the program"
        with _connect((host, port)) as waiting, _connect((host, port)) as hog:
            waiting.sendall(b"hi")
            assert _recv_exactly(waiting, 2) == b"hi"
            _fill(hog)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=PROGRAM_TIMEOUT)
            assert _closed_by_server(waiting, 1.0) and _closed_by_server(hog, 1.0)
    assert proc.returncode == 0 and err == "", (out, err)
    lines = out.splitlines()
    assert lines[-1] == "server stopped" and any(re.fullmatch(r"client 127\.0\.0\.1:\d+ connected.*", line)
                                                 for line in lines), out


@pytest.mark.parametrize("module", [*TCP_SERVERS, "udp_server"])
@pytest.mark.parametrize("lang", ["en", "pt"])
def test_lesson_server_programs_port_in_use_is_one_line(module: str, lang: str) -> None:
    kind = socket.SOCK_DGRAM if module == "udp_server" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            taken.listen()
        port = taken.getsockname()[1]
        done = _run(f"lab.lessons.{module}", "--port", str(port), "--lang", lang)
    expected = {"en": f"{module}: cannot listen on 127.0.0.1:{port}: the port is already in use",
                "pt": f"{module}: não foi possível ouvir em 127.0.0.1:{port}: a porta já está em uso"}[lang]
    assert done.returncode == 2 and done.stdout == "", done
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(expected), done.stderr


@pytest.mark.privileged
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
@pytest.mark.parametrize("module", [*TCP_SERVERS, "udp_server"])
def test_lesson_servers_warn_off_loopback(module: str) -> None:
    """Listening on 0.0.0.0 (in a private namespace, so nothing outside can reach it) warns once."""
    with lesson_program(module, "--host", "0.0.0.0", netns=True) as (proc, host, _port, _first):
        assert host == "0.0.0.0"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=PROGRAM_TIMEOUT)
    assert proc.returncode == 0, (out, err)
    assert err.splitlines() == [f"{module}: warning: listening on 0.0.0.0, not loopback: other machines can "
                                "reach this server"], err


# --- Issue 11, item 2: the lessons in Portuguese ---------------------------------------------------

LESSONS = [tcp_client, udp_client, udp_server, tcp_server, select_server]
LESSON_IDS = [module.__name__.rsplit(".", 1)[1] for module in LESSONS]


@pytest.mark.parametrize("env", [{"LANG": "pt_BR.UTF-8"}, {"LC_ALL": "pt_PT.UTF-8", "LANG": "en_US.UTF-8"},
                                 {"LC_MESSAGES": "pt_BR"}, {"LANGUAGE": "pt_BR:en", "LANG": "C"}, {}],
                         ids=["LANG", "LC_ALL-over-LANG", "LC_MESSAGES", "LANGUAGE", "--lang"])
def test_lesson_messages_in_portuguese(env: dict[str, str]) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in ("LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES")}
    args = [] if env else ["--lang", "pt"]
    done = subprocess.run([sys.executable, "-m", "lab.lessons.udp_client", "192.0.2.7", "7007", "olá", *args],
                          capture_output=True, text=True, timeout=PROGRAM_TIMEOUT, env={**clean, **env})
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "udp_client: recusando 192.0.2.7: 192.0.2.7 não é esta máquina (127.0.0.0/8, ::1) nem um endereço "
        "do lab (198.18/15)"], done


@pytest.mark.parametrize(("env", "args"), [({"LANG": "C", "LC_ALL": ""}, []),
                                           ({"LANG": "en_GB.UTF-8"}, []),
                                           ({"LANG": "pt_BR.UTF-8"}, ["--lang", "en"]),
                                           ({"LC_ALL": "pt_BR.UTF-8"}, ["--lang=en"])])
def test_lesson_messages_in_english_by_default_and_with_lang_en(env: dict[str, str], args: list[str]) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in ("LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES")}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        argv = ["127.0.0.1", str(silent.getsockname()[1]), "x", "--timeout", "0.2", *args]
        done = subprocess.run([sys.executable, "-m", "lab.lessons.udp_client", *argv], capture_output=True,
                              text=True, timeout=PROGRAM_TIMEOUT, env={**clean, **env})
    assert done.returncode == 1, done
    assert done.stderr == "udp_client: no reply within 0.2 s (lost, or no server)\n", done


@pytest.mark.parametrize("module", TCP_SERVERS)
def test_tcp_server_lesson_programs_in_portuguese(module: str) -> None:
    with lesson_program(module, "--lang", "pt") as (proc, host, port, first):
        assert tcp_client.exchange(host, port, "olá".encode()) == "olá".encode()
        logged = [proc.stdout.readline().rstrip("\n") for _ in range(2)]  # type: ignore[union-attr]
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=PROGRAM_TIMEOUT)
    assert proc.returncode == 0 and err == "", (out, err)
    lines = [first, *logged, *out.splitlines()]
    title = {"tcp_server": "Servidor TCP de eco", "select_server": "Servidor de eco com select"}[module]
    assert lines[0] == f"{title} ouvindo em {host}:{port} (Ctrl-C para parar)", out
    assert re.fullmatch(r"cliente 127\.0\.0\.1:\d+ conectado.*", lines[1]), out
    assert re.fullmatch(r"cliente 127\.0\.0\.1:\d+ saiu \(.*", lines[2]), out
    assert lines[-1] == "servidor parado", out


def test_udp_server_program_in_portuguese() -> None:
    with lesson_program("udp_server", env={"LANG": "pt_BR.UTF-8", "LC_ALL": ""}) as (proc, host, port, first):
        assert udp_client.exchange(host, port, b"oi") == b"oi"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=PROGRAM_TIMEOUT)
    assert proc.returncode == 0 and err == "", (out, err)
    assert [first, *out.splitlines()] == [f"Servidor UDP de eco ouvindo em {host}:{port} (Ctrl-C para parar)",
                                "servidor parado"], out


@pytest.mark.parametrize("module", LESSON_IDS)
def test_lesson_help_in_both_languages(module: str) -> None:
    english, portuguese = (_run(f"lab.lessons.{module}", "--help", "--lang", lang) for lang in ("en", "pt"))
    assert english.returncode == portuguese.returncode == 0, (english, portuguese)
    lesson = LESSONS[LESSON_IDS.index(module)]
    for lang, done in (("en", english), ("pt", portuguese)):
        text = common.messages(lesson.MESSAGES, ["--lang", lang])  # the lesson's own and the shared ones
        flat = " ".join(done.stdout.split())  # argparse wraps help lines
        assert text["description"] in flat and text["lang"] in flat, (lang, done.stdout)
        host = text["host" if "client" in module else "listen_host"]
        assert text["port"] in flat and host in flat, (lang, done.stdout)


@pytest.mark.parametrize("lesson", [*LESSONS, common], ids=[*LESSON_IDS, "common"])
def test_lesson_messages_match_in_both_languages(lesson: Any) -> None:
    """Every message exists in both languages with the same {placeholders}, and they differ."""
    import string

    def fields(message: str) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(message) if name}

    english, portuguese = lesson.MESSAGES["en"], lesson.MESSAGES["pt"]
    assert set(english) == set(portuguese)
    for key in english:
        assert fields(english[key]) == fields(portuguese[key]), key
        assert english[key] != portuguese[key], key


@pytest.mark.parametrize("lesson", [*LESSONS, common], ids=[*LESSON_IDS, "common"])
def test_lessons_are_commented_in_both_languages(lesson: Any) -> None:
    """Each comment (a block of consecutive comment lines) and each docstring has an English (EN:)
    and a Portuguese (PT:) part, so a student can read the lesson in either language."""
    import ast
    import io
    import tokenize

    source = Path(lesson.__file__).read_text(encoding="utf-8")
    blocks: list[list[tuple[int, str]]] = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            line = token.start[0]
            if blocks and blocks[-1][-1][0] == line - 1:
                blocks[-1].append((line, token.string))
            else:
                blocks.append([(line, token.string)])
    assert len(blocks) >= 8, len(blocks)
    for block in blocks:
        text = " ".join(comment for _, comment in block)
        if "type: ignore" in text and len(block) == 1 and "EN" not in text:
            continue
        assert ("EN:" in text and "PT:" in text) or "EN/PT:" in text, (block[0][0], text)
    tree = ast.parse(source)
    for node in [tree, *ast.walk(tree)]:
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef):
            doc = ast.get_docstring(node)
            if doc is not None:
                assert "EN:" in doc and "PT:" in doc, (getattr(node, "name", "module"), doc)
