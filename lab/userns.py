"""TCP without root: run a command in a user + network + mount + PID namespace of its own.

An ordinary user lacks CAP_NET_ADMIN, so the lab cannot build its namespaces and TUN link. Where the
kernel allows unprivileged user namespaces, the process unshares a user namespace (mapping the user
to root inside), a network namespace (only `lo`), a mount namespace (a tmpfs on /run holds the
link's /run/netns and /run/wirelab) and a PID namespace; inside, it holds every capability over
those namespaces and the lab runs unchanged, with real kernel TCP and UDP.

Three processes, so nothing outlives the run even after `kill -9`:
  outer (the PID the user started)  unshares, then waits and forwards SIGINT/SIGTERM/SIGHUP
  init  (PID 1 of the new PID namespace, its own process group)  waits and forwards the same
  the command (`lab demo`, pytest, ...)  runs as root inside; its own /proc
When the init ends, the kernel kills everything left in its PID namespace (forwarders, servers),
and with them the namespaces go; the init dies with the outer process (PR_SET_PDEATHSIG). Files
written inside belong to the real user (uid 0 inside is the user outside).

The command runs in its own process group, so a terminal's Ctrl-C reaches it once, forwarded by the
outer process, never twice; it does not read the terminal.

`python -m lab.userns -- CMD ...` runs any command this way (`make test` as non-root uses it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import select
import signal
import socket
import stat
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from lab.errors import LabError

MARKER = "WIRELAB_USERNS"  # set inside: never enter twice; "off" outside: never enter at all
TUN = "/dev/net/tun"
SYSCTL_DIR_ENV = "WIRELAB_SYSCTL_DIR"  # read the sysctls from here instead of /proc/sys (tests)

# linux/sched.h, linux/mount.h, linux/prctl.h, linux/sockios.h
CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_REC, MS_PRIVATE, MS_SHARED = 0x4000, 1 << 18, 1 << 20
PR_SET_PDEATHSIG = 1
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_WAITED = {*FORWARDED, signal.SIGCHLD}
_DUPLICATE_S = 0.2  # the same signal twice this close is one event (e.g. `timeout` signals PID and group)

# (sysctl file, value that disables, how to say it)
_SYSCTLS = (
    ("kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone = 0"),
    ("user/max_user_namespaces", "0", "user.max_user_namespaces = 0"),
    ("kernel/apparmor_restrict_unprivileged_userns", "1",
     "AppArmor restricts them (kernel.apparmor_restrict_unprivileged_userns = 1)"),
)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _sysctl_reason(sysctl_dir: Path) -> str | None:
    for name, disabling, said in _SYSCTLS:
        try:
            value = (sysctl_dir / name).read_text().strip()
        except OSError:
            continue  # absent on this kernel: not a restriction
        if value == disabling:
            return said
    return None


def can_use_userns(sysctl_dir: Path | None = None) -> str | None:
    """None if this process may run the lab in user namespaces of its own, else the exact reason.

    Reads the sysctls that disable unprivileged user namespaces and checks the TUN device the link
    needs (its permissions are the host's, even inside), then tries the real thing (in a
    forked child, so this process is left as it was): the kernel has more reasons than sysctls
    (seccomp in a container, a threaded process, nesting limits).
    """
    if os.environ.get(MARKER) == "off":
        return f"{MARKER}=off"
    sysctl_dir = sysctl_dir or Path(os.environ.get(SYSCTL_DIR_ENV) or "/proc/sys")
    reason = _sysctl_reason(sysctl_dir)
    if reason:
        return reason
    if not os.access(TUN, os.R_OK | os.W_OK):  # the link's devices; udev's default mode is 0666
        try:
            mode = f"mode {os.stat(TUN).st_mode & 0o777:o}"
        except OSError as exc:
            mode = exc.strerror or "missing"
        return f"{TUN} is not open to this user ({mode}; most systems have it 0666)"
    return _try_in_child()


def _try_in_child() -> str | None:
    read_end, write_end = os.pipe()
    _flush()
    pid = os.fork()
    if pid == 0:  # the child: try, report, vanish
        os.close(read_end)
        try:
            _unshare_and_map(pidns=False)
            os.write(write_end, b"")
            code = 0
        except OSError as exc:
            os.write(write_end, str(exc.strerror or exc).encode()[:500])
            code = 1
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return f"the kernel refused them ({message or 'child failed'})"


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


def _unshare_and_map(*, pidns: bool) -> None:
    """Become root of new user/net/mount (and PID, for the next child) namespaces; /run private."""
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS | (CLONE_NEWPID if pidns else 0)
    _check(libc.unshare(flags), "unshare")
    with contextlib.suppress(FileNotFoundError):
        _write("/proc/self/setgroups", "deny")  # required before an unprivileged gid_map
    _write("/proc/self/uid_map", f"0 {uid} 1")
    _write("/proc/self/gid_map", f"0 {gid} 1")
    # Nothing mounted here may reach the host; then /run of our own, shared so that the command's
    # own mount namespace (for its /proc) and this one see the same /run/netns.
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    _check(libc.mount(b"tmpfs", b"/run", b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755"), "mount /run")
    _check(libc.mount(b"none", b"/run", None, MS_SHARED, None), "share /run")


def _loopback_up() -> None:
    # A new network namespace's lo is down; servers bound to 127.0.0.1 need it.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh22x", b"lo", 0)  # struct ifreq: name, flags, union padding
        flags = struct.unpack("16sh22x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _status(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as shells say


def _supervise(child: int) -> int:
    """Wait for `child`, forwarding the stop signals (blocked in this process); its exit status."""
    last: dict[int, float] = {}
    while True:
        info = signal.sigtimedwait(_WAITED, 0.5)
        if info is not None and info.si_signo in FORWARDED:
            now = time.monotonic()
            if now - last.get(info.si_signo, -1.0) > _DUPLICATE_S:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, info.si_signo)
            last[info.si_signo] = now
        try:
            pid, wait_status = os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            return 1
        if pid == child:
            return _status(wait_status)


def _private_tmpdir() -> None:
    """Point TMPDIR at a folder of the real user's own (called before the namespaces exist).

    Inside, this process is root: tools that keep a per-user folder in /tmp would take root's
    (pytest's /tmp/pytest-of-root), which the real root, or another student's lab on the same
    machine, may already own; pytest then refuses to run ("not owned by the current user").
    """
    uid = os.getuid()
    path = os.path.join(tempfile.gettempdir(), f"wirelab-uid{uid}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
        path = tempfile.mkdtemp(prefix=f"wirelab-uid{uid}-")  # not ours as it should be: a fresh one
    os.environ["TMPDIR"] = path
    tempfile.tempdir = None  # tempfile caches the folder it chose


def enter(command: Sequence[str] | None = None) -> int | None:
    """Run the rest of this process (or `command`, exec'd) inside namespaces of its own.

    Returns None in the process that is to go on (inside: root, CAP_NET_ADMIN, the lab's link
    possible), or, in the outer process, the exit status of the run. Raises LabError if the
    namespaces cannot be made. Call it while the process has a single thread.
    """
    _private_tmpdir()
    try:
        _unshare_and_map(pidns=True)
        _loopback_up()
    except (OSError, struct.error) as exc:
        raise LabError(f"could not run in a user namespace of its own: {exc.strerror or exc}") from exc
    saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)
    alive_r, alive_w = os.pipe()  # EOF on it once the outer process is gone
    _flush()
    init = os.fork()
    if init:
        os.close(alive_r)
        try:
            return _supervise(init)
        finally:
            os.close(alive_w)
    # The init: PID 1 of the new PID namespace.
    try:
        libc = _libc()
        _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
        os.close(alive_w)
        if select.select([alive_r], [], [], 0)[0]:  # the outer process died before prctl took hold
            os._exit(128 + signal.SIGKILL)
        os.close(alive_r)
        os.setpgid(0, 0)  # a terminal's signals reach the outer process only; it forwards them once
        # A /proc of this PID namespace, so PIDs the lab sees and /proc/PID agree; in a mount
        # namespace of our own so the outer process (and nsenter) keep the host's /proc.
        _check(libc.unshare(CLONE_NEWNS), "unshare mount namespace")
        _check(libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount /proc")
        _flush()
        worker = os.fork()
    except OSError as exc:
        print(f"lab: error: could not run in a user namespace of its own: {exc}", file=sys.stderr)
        os._exit(2)
    if worker:
        code = _supervise(worker)
        _flush()
        os._exit(code)
    signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)
    os.environ[MARKER] = "1"
    if command is None:
        return None
    try:
        os.execvp(command[0], list(command))
    except OSError as exc:
        print(f"lab: error: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
        os._exit(127 if exc.errno == errno.ENOENT else 126)
    return None  # not reached


def inside() -> bool:
    """True in a process this module started (root of its own namespaces, not of the machine)."""
    return os.environ.get(MARKER) == "1"


def wanted() -> bool:
    """True if this process lacks CAP_NET_ADMIN and has not been in namespaces of ours already."""
    from lab.capabilities import CAP_NET_ADMIN, has_capability

    return os.environ.get(MARKER) not in ("1", "off") and not has_capability(CAP_NET_ADMIN)


NAMESPACED = ("demo", "run", "link", "probe")  # the commands that build the lab's link
_UNASKED = "?"
_unavailable: str | None = _UNASKED  # why not, once asked (for the privilege messages)


def unavailable_reason() -> str | None:
    """Why this process cannot run the lab in namespaces of its own (None: it can); asked once."""
    global _unavailable
    if _unavailable == _UNASKED:
        _unavailable = can_use_userns()
    return _unavailable


def maybe_enter(args: Sequence[str]) -> int | None:
    """The CLI's hook: for a command in NAMESPACED without CAP_NET_ADMIN, run it in namespaces.

    Returns the exit status in the outer process (it is done), None where the command is to run
    here: inside the namespaces, with privileges already, or where namespaces are unavailable (the
    reason is kept for `unavailable_reason()`, and the command falls back as before).
    """
    words = [a for a in args if not a.startswith("-")]
    if not words or words[0] not in NAMESPACED or {"-h", "--help"} & set(args) or not wanted():
        return None
    if unavailable_reason() is not None:
        return None
    if words[0] == "link":
        print(f"lab: without root, the link lives in namespaces of this process ({os.getpid()}); "
              f"run programs through it with `nsenter --target {os.getpid()} --user --mount "
              "--preserve-credentials ip netns exec ...`", file=sys.stderr)
    return enter()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lab.userns [--] CMD ...`: run CMD as root of namespaces of its own (no root needed).

    With CAP_NET_ADMIN already (root), CMD simply runs here.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m lab.userns [--] COMMAND [ARG...]", file=sys.stderr)
        return 2
    if wanted():
        reason = can_use_userns()
        if reason is None:
            try:
                code = enter(args)
            except LabError as exc:
                print(f"lab: error: {exc}", file=sys.stderr)
                return 2
            return 0 if code is None else code
        print(f"lab: user namespaces unavailable ({reason}): running {args[0]} without them",
              file=sys.stderr)
    _flush()
    try:
        os.execvp(args[0], args)
    except OSError as exc:
        print(f"lab: error: cannot run {args[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
