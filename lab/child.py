"""Helper processes: one way to start a child, talk to it, know it is ready and stop it.

The forwarder, the UDP relay, the probe sandbox, the echo-server process and calls inside a
network namespace all run in a child process (docs/architecture.md#processes). They share:

- **spawn** (`spawn`): a fresh interpreter (`python_argv(module, ...)`), never a fork of a threaded
  parent, optionally through a caller's `popen` (e.g. one that starts it inside a namespace); or
  **fork** (`fork_call`) where a Python callable must run in the child (namespace calls).
- **messages**: length-framed pickles over a socketpair (`Channel`), each a small frozen dataclass
  with a declared `kind`: `Setup` (parent -> child, first), `Ready`/`Failed` (child -> parent,
  once), `Request`/`Reply` (one reply per request), `Progress` (child -> parent, any time).
  The payloads are opaque here: whatever the caller gives is pickled as it is.
- **ready**: a spawned child answers `Ready(info)` or `Failed(error)` within `READY_TIMEOUT_S`.
- **close** (`Child.close`): the stop request (if the child has one), then SIGTERM, then SIGKILL;
  idempotent, never raises, the process is reaped.
- **errors**: a child that dies before it is ready, never answers or dies mid-run raises
  `HelperProcessError` with one line saying so and the tail of the child's stderr below it; the
  child is gone by then. A child that reports why it cannot start (`Failed`) raises its own
  `LabError` (e.g. `EndpointError` for a port in use), prefixed with the helper's name. A spawned
  child's stderr still reaches ours as it comes (`quiet`: kept for errors only).

The parent's end of a child's channel is a `Child`, a context manager; requests on it are
serialised by a lock, so threads may share one.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from lab.errors import HelperProcessError, LabError

# One ready timeout for every helper: a fresh interpreter importing lab (and scapy and pyroute2,
# for the sandbox) on a loaded 2-core CI box can take many seconds.
READY_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 30.0  # one answer; the slowest (a probe case) is bounded at 5 s by the child
STOP_TIMEOUT_S = 5.0  # the answer to a stop request, then the child's own exit
TERM_TIMEOUT_S = 2.0  # between SIGTERM and SIGKILL
EXIT_WAIT_S = 1.0  # how long a child that closed its channel gets to exit (for the message)
TAIL_LINES = 20  # the child's stderr shown in an error: at most this many lines...
TAIL_BYTES = 2048  # ... and this many bytes
CHANNEL_FD_ENV = "WIRELAB_CHANNEL_FD"  # tells a spawned child which inherited fd is its channel
_LENGTH = struct.Struct("!I")
_READ_SIZE = 65536


# --- messages ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Setup:
    """Parent -> child, first message: what the child needs to start (opaque here)."""

    kind: ClassVar[str] = "setup"
    value: Any = None


@dataclass(frozen=True, slots=True)
class Ready:
    """Child -> parent, once: started; `info` is what the parent needs (an address, a pid...)."""

    kind: ClassVar[str] = "ready"
    info: Any = None


@dataclass(frozen=True, slots=True)
class Failed:
    """Child -> parent, instead of Ready: it cannot start, and `error` (a LabError) says why."""

    kind: ClassVar[str] = "failed"
    error: BaseException


@dataclass(frozen=True, slots=True)
class Request:
    """Parent -> child: do `op` with `argument`; the child answers with one Reply."""

    kind: ClassVar[str] = "request"
    op: str
    argument: Any = None


@dataclass(frozen=True, slots=True)
class Reply:
    """Child -> parent: the answer to a Request (or a forked call's outcome): a value or an error."""

    kind: ClassVar[str] = "reply"
    value: Any = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    """Child -> parent, at any time: a progress report (a namespace call's live view)."""

    kind: ClassVar[str] = "progress"
    report: tuple[Any, ...] = ()


# --- framing ----------------------------------------------------------------------------------------
class Channel:
    """Length-framed pickles over one stream socket (either end); a context manager.

    Reads are buffered here, so a signal between two reads loses no byte, and a message that
    arrived with another is still returned (`has_message`).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    @classmethod
    def from_fd(cls, fd: int) -> Channel:
        """The channel on an inherited socket fd."""
        return cls(socket.socket(fileno=fd))

    def fileno(self) -> int:
        """The socket's fd (for select), -1 once closed."""
        return self._sock.fileno()

    def send(self, message: Any) -> None:
        """Send one message; OSError if the other end is gone."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._sock.sendall(_LENGTH.pack(len(data)) + data)

    def has_message(self) -> bool:
        """True if a whole message is already buffered (receive returns it without waiting)."""
        if len(self._buffer) < _LENGTH.size:
            return False
        return len(self._buffer) >= _LENGTH.size + _LENGTH.unpack_from(self._buffer)[0]

    def readable(self, timeout: float | None) -> bool:
        """True if a message (or the end of the stream) can be read now or within `timeout`."""
        return self.has_message() or bool(select.select([self._sock], [], [], timeout)[0])

    def receive(self, timeout: float | None = None) -> Any:
        """The next message. TimeoutError if none came within `timeout`; EOFError at the end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.has_message():
            if deadline is not None and not select.select(
                    [self._sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError
            chunk = self._sock.recv(_READ_SIZE)
            if not chunk:
                raise EOFError
            self._buffer += chunk
        size = _LENGTH.unpack_from(self._buffer)[0]
        body = bytes(self._buffer[_LENGTH.size:_LENGTH.size + size])
        del self._buffer[:_LENGTH.size + size]
        return pickle.loads(body)

    def close(self) -> None:
        """Close the socket; idempotent."""
        self._sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the child's side ------------------------------------------------------------------------------
def child_channel() -> Channel | None:
    """In a spawned child: its channel to the parent (None if it was not started by `spawn`)."""
    fd = os.environ.pop(CHANNEL_FD_ENV, None)  # popped: the child's own children have no channel
    return Channel.from_fd(int(fd)) if fd is not None else None


def start_child(starter: str) -> tuple[Channel, Any]:
    """In a spawned child: its channel and the parent's Setup value. Exits (status 2, one line on
    stderr naming `starter`, what starts it) if run by hand; exits 1 if the parent went first."""
    channel = child_channel()
    if channel is None:
        print(f"this helper process is started by {starter}, not by hand", file=sys.stderr)
        raise SystemExit(2)
    try:
        message = channel.receive()
    except (EOFError, OSError):
        raise SystemExit(1) from None
    if not isinstance(message, Setup):
        raise LabError(f"expected the parent's setup, got {message!r}")
    return channel, message.value


def answer(channel: Channel, handle: Callable[[str, Any], Any], *, stop_op: str = "stop") -> bool:
    """Answer the next Request (and any others already buffered) with `handle(op, argument)`'s
    value, or the LabError it raised.

    False when the parent is gone or asked `stop_op` (after replying to it): the child should end.
    Anything but a LabError escaping `handle` is a bug and propagates.
    """
    while True:
        try:
            message = channel.receive()
        except (EOFError, OSError):
            return False
        if not isinstance(message, Request):
            reply = Reply(error=LabError(f"expected a request, got {message!r}"))
        else:
            try:
                reply = Reply(value=handle(message.op, message.argument))
            except LabError as exc:
                reply = Reply(error=exc)
        try:
            channel.send(reply)
        except OSError:
            return False
        if isinstance(message, Request) and message.op == stop_op:
            return False
        if not channel.has_message():
            return True


# --- processes --------------------------------------------------------------------------------------
class _Process(Protocol):
    """What Child needs of a process: subprocess.Popen, or _Forked for a forked child."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...


class _Forked:
    """A forked child, with the part of Popen's interface `end_process` uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.005)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def end_process(process: _Process, grace_s: float = 0.0) -> None:
    """Make sure `process` is gone and reaped: wait `grace_s` for it to exit by itself, then
    SIGTERM, then SIGKILL. Idempotent; never raises."""
    with contextlib.suppress(Exception):
        if process.poll() is not None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace_s)
            return
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(TERM_TIMEOUT_S)
            return
        process.send_signal(signal.SIGKILL)
        process.wait()


def describe_exit(code: int | None) -> str:
    """'exited with status 1' / 'was killed by SIGKILL' / 'is still running' (for messages)."""
    if code is None:
        return "stopped answering (it is still running)"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class _StderrTail:
    """A spawned child's stderr, read by a thread: passed on to our own stderr as it comes (unless
    `quiet`), its last TAIL_BYTES kept for errors. Ends at the pipe's end (the child exited)."""

    def __init__(self, fd: int, *, quiet: bool) -> None:
        self._fd = fd
        self._quiet = quiet
        self._kept = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, name="child-stderr", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            while chunk := os.read(self._fd, 4096):
                if not self._quiet:
                    with contextlib.suppress(OSError):
                        os.write(2, chunk)  # where an inherited stderr would have written it
                with self._lock:
                    self._kept += chunk
                    del self._kept[:-TAIL_BYTES]
        except OSError:
            pass
        finally:
            os.close(self._fd)

    def finish(self) -> None:
        """Wait briefly for the rest (the child has exited: its end of the pipe is closed)."""
        self._thread.join(EXIT_WAIT_S)

    def text(self) -> str:
        """The last TAIL_LINES lines kept."""
        with self._lock:
            text = self._kept.decode(errors="replace")
        return "\n".join(text.strip().splitlines()[-TAIL_LINES:])


def _prefixed(error: BaseException, prefix: str) -> BaseException:
    """`error` with `prefix` before its message, keeping its type (callers catch by type)."""
    if isinstance(error, LabError) and len(error.args) == 1 and isinstance(error.args[0], str):
        error.args = (prefix + error.args[0],)
        return error
    return HelperProcessError(f"{prefix}{type(error).__name__}: {error}")


class Child:
    """The parent's handle on a helper process and its channel; a context manager.

    Made by `spawn` or `fork_call`. `info` is what the child said when ready; `final` the answer
    to the stop request, once closed.
    """

    def __init__(self, name: str, process: _Process, channel: Channel, *,
                 stderr: _StderrTail | None = None, stop_op: str | None = "stop") -> None:
        self.name = name
        self.process = process
        self.info: Any = None
        self.final: Any = None
        self._channel = channel
        self._stderr = stderr
        self._stop_op = stop_op
        self._lock = threading.Lock()
        self._closed = False
        self._closing = False
        self._done = False  # the child said its last word (a forked call's outcome): it is exiting

    def __repr__(self) -> str:
        return f"Child({self.name!r}, pid={self.pid})"

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    @property
    def alive(self) -> bool:
        """True while the child process runs."""
        return self.process.poll() is None

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- errors ---
    def stderr_tail(self) -> str:
        """The last lines the child wrote to its stderr ("" if none, or if it shares ours)."""
        return self._stderr.text() if self._stderr is not None else ""

    def exit_description(self) -> str:
        """How the child ended, waiting briefly for its exit status (for messages)."""
        try:
            code = self.process.wait(EXIT_WAIT_S)  # EOF on the channel comes just before the exit
        except subprocess.TimeoutExpired:
            code = None
        return describe_exit(code)

    def _fail(self, what: str) -> HelperProcessError:
        """Stop the child (no polite request: it failed), then the one error saying `what`
        happened, with the tail of its stderr."""
        self._shutdown(ask=False)
        tail = self.stderr_tail()
        below = "; its stderr ends:\n" + "\n".join(f"  {line}" for line in tail.splitlines()) if tail else ""
        return HelperProcessError(f"{self.name} (pid {self.pid}) {what}{below}", stderr_tail=tail)

    # --- messages ---
    def send(self, message: Any, during: str = "") -> None:
        """Send one message; HelperProcessError if the child is gone (`during`: as next_message)."""
        if self._closed:
            raise HelperProcessError(f"{self.name} (pid {self.pid}) was already stopped")
        try:
            self._channel.send(message)
        except OSError:
            raise self._fail(f"{self.exit_description()}{during}") from None

    def next_message(self, timeout: float | None = None, during: str = "") -> Any:
        """The child's next message, or None if none came within `timeout` (it keeps running).
        If the child ended: HelperProcessError (`during` says when, e.g. " during counters")."""
        if self._closed:
            raise HelperProcessError(f"{self.name} (pid {self.pid}) was already stopped")
        try:
            message = self._channel.receive(timeout)
        except TimeoutError:
            return None
        except (EOFError, OSError):
            raise self._fail(f"{self.exit_description()}{during}") from None
        self._done = self._done or (self._stop_op is None and isinstance(message, Reply))
        return message

    def receive(self, timeout: float, during: str) -> Any:
        """The child's next message; HelperProcessError (the child stopped) if it ends or says
        nothing within `timeout`. `during` names what was waited for, for the message."""
        message = self.next_message(timeout, f" during {during}")
        if message is None:
            raise self._fail(f"did not answer {during} within {timeout:g} s and was stopped")
        return message

    def wait_ready(self, timeout: float | None = None) -> Any:
        """Wait for Ready and return its info. Failed raises the child's error; no answer in time,
        or death first, raises HelperProcessError. The child is closed on any error."""
        timeout = READY_TIMEOUT_S if timeout is None else timeout
        message = self.next_message(timeout, " before it was ready")
        if message is None:
            raise self._fail(f"was not ready within {timeout:g} s and was stopped")
        if isinstance(message, Failed):
            self.close()
            raise _prefixed(message.error, f"{self.name} did not start: ")
        if not isinstance(message, Ready):
            raise self._fail(f"sent {message.kind!r} instead of ready")
        self.info = message.info
        return message.info

    def request(self, op: str, argument: Any = None, timeout: float = REQUEST_TIMEOUT_S) -> Any:
        """Ask the child to do `op`; its reply's value, or the error it replied with (re-raised).
        HelperProcessError if it dies or does not answer within `timeout` (it is stopped then)."""
        with self._lock:
            self.send(Request(op, argument), f" during {op}")
            while True:
                reply = self.receive(timeout, op)
                if isinstance(reply, Reply):
                    break
        if reply.error is not None:
            raise reply.error
        return reply.value

    # --- the end ---
    def close(self) -> None:
        """Stop the child: its stop request (if it has one), SIGTERM, SIGKILL. Idempotent; never
        raises; keeps the stop request's answer in `final`."""
        self._shutdown(ask=True)

    def _shutdown(self, *, ask: bool) -> None:
        if self._closed or self._closing:
            return
        self._closing = True  # a stop request failing below closes too: that inner call returns here
        polite = self._done
        try:
            if ask and self._stop_op is not None and self.alive:
                with contextlib.suppress(Exception):
                    self.final = self.request(self._stop_op, timeout=STOP_TIMEOUT_S)
                    polite = True
        finally:
            self._closed = True
            with contextlib.suppress(Exception):
                self._channel.close()
            end_process(self.process, STOP_TIMEOUT_S if polite else 0.0)
            if self._stderr is not None:
                self._stderr.finish()


# --- making children --------------------------------------------------------------------------------
def python_argv(module: str, *args: str) -> list[str]:
    """The argv that runs `python -m module args...` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def _package_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment, with the directory holding `lab` first on PYTHONPATH (a child started
    from elsewhere, e.g. a test's temporary directory, imports the same lab)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def spawn(name: str, argv: Sequence[str], *, setup: Any = None, pass_fds: Sequence[int] = (),
          popen: Callable[..., subprocess.Popen[Any]] = subprocess.Popen, stop_op: str | None = "stop",
          new_session: bool = False, quiet: bool = False, ready_timeout: float | None = None) -> Child:
    """Start `argv` (see `python_argv`) with a channel, send `setup` if given, wait until it is ready.

    `name` ("the UDP relay") names it in errors. `popen` starts the process (the caller's may
    start it inside a namespace); it gets the same keywords as subprocess.Popen. `pass_fds` are
    inherited as well. `stop_op` is the request that stops the child politely (None: SIGTERM
    stops it). `new_session`: Ctrl-C at the terminal does not reach the child (the parent stops
    it and keeps its last answer). The child's stderr reaches ours as it comes (`quiet`: only kept
    for errors). Returns the ready Child (`.info`); raises as `wait_ready`.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    err_read, err_write = os.pipe()
    try:
        process = popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err_write,
            pass_fds=(*pass_fds, theirs.fileno()), start_new_session=new_session,
            env=_package_env({CHANNEL_FD_ENV: str(theirs.fileno())}),
        )
    except BaseException as exc:
        ours.close()
        os.close(err_read)
        if isinstance(exc, OSError):
            raise HelperProcessError(f"cannot start {name}: {exc}") from exc
        raise
    finally:
        theirs.close()
        os.close(err_write)
    stderr = _StderrTail(err_read, quiet=quiet)
    child = Child(name, process, Channel(ours), stderr=stderr, stop_op=stop_op)
    try:
        if setup is not None:
            child.send(Setup(setup))
        child.wait_ready(ready_timeout)
    except BaseException:
        child.close()
        raise
    return child


def fork_call(name: str, body: Callable[[Channel], Any]) -> Child:
    """Fork a child that runs `body(channel)` and sends its outcome as one Reply, then exits.

    For code that must run in a child as a Python callable (a namespace call: the child enters the
    namespace, the parent's threads stay where they are). The child shares our stdout/stderr and
    leaves through os._exit, never through the parent's code. The Child has no ready handshake
    (it runs at once) and no stop request: closing it before its Reply came terminates it.
    """
    for stream in (sys.stdout, sys.stderr):  # or the child would print our buffered output again
        with contextlib.suppress(Exception):
            stream.flush()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        pid = os.fork()
    except BaseException:
        ours.close()
        theirs.close()
        raise
    if pid == 0:  # pragma: no cover - the child leaves through os._exit
        ours.close()
        _forked_child(name, Channel(theirs), body)
    theirs.close()
    return Child(name, _Forked(pid), Channel(ours), stop_op=None)


def _forked_child(name: str, channel: Channel, body: Callable[[Channel], Any]) -> None:
    """Body of a forked child: run `body`, send its outcome. Never returns."""
    status = 0
    try:
        try:
            outcome = Reply(value=body(channel))
        except BaseException as exc:  # handed to the parent, which re-raises it
            outcome = Reply(error=exc)
        # The parent may forward a Ctrl-C it got too: it must not cut off the answer it waits for.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            channel.send(outcome)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            channel.send(Reply(error=LabError(f"the outcome of {name} cannot be pickled: {exc}")))
    except BaseException:
        status = 1
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)
