"""Topology of an impaired link: two network namespaces, a TUN device in each, guaranteed teardown.

    NAME-client (198.18.0.1/30, dev wlink)  <-TUN fd->  forwarder  <-TUN fd->  NAME-server (198.18.0.2/30)

The TUN devices are created in the root namespace with the TUNSETIFF ioctl, moved into their
namespace with pyroute2 (the open fd stays valid) and configured there. They are not persistent:
they vanish when the last fd (the forwarder's) closes. Every run writes a state file under
/run/wirelab/ naming what it created, so `lab cleanup` removes only the lab's own leftovers.
pyroute2 is imported lazily: importing this module must stay cheap for the CLI.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import secrets
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from lab.errors import ConfigError, LabError, PrivilegeError

T = TypeVar("T")

NETNS_DIR = Path("/run/netns")  # where iproute2 and pyroute2 bind-mount named namespaces
STATE_DIR = Path("/run/wirelab")  # our marker: one JSON state file per live (or killed) link
PREFIX = "wl"
AUTO_NAME = re.compile(r"^wl[0-9a-f]{4}$")  # names we generate ourselves: safe to reap by pattern
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]{0,30}$")

CLIENT_ADDRESS = "198.18.0.1"  # RFC 2544 benchmarking range, never routed outside the lab
SERVER_ADDRESS = "198.18.0.2"
PREFIX_LEN = 30  # a point-to-point /30 holds exactly the two ends
DEVICE = "wlink"  # name of the TUN device inside each namespace

# linux/if_tun.h
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000  # every packet read/written is preceded by a struct virtio_net_hdr (lab.link.gso)
IFNAMSIZ = 16
CLONE_NEWNET = 0x40000000  # linux/sched.h

TERM_GRACE_S = 1.0  # how long a process gets between SIGTERM and SIGKILL

_libc = ctypes.CDLL(None, use_errno=True)


def _setns_fd(fd: int) -> None:
    """Move the calling thread into the network namespace open at `fd`."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns failed: {os.strerror(err)}")


def netns_path(name: str) -> Path:
    """Where the named namespace is bind-mounted."""
    return NETNS_DIR / name


def enter_netns(name: str) -> None:
    """Move the calling thread (the whole process if single-threaded) into namespace `name`."""
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns_fd(fd)
    finally:
        os.close(fd)


def in_netns_thread(name: str, fn: Callable[[], T]) -> T:
    """Run `fn` in a short-lived thread that entered namespace `name` (setns is per thread)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            enter_netns(name)
            box["value"] = fn()
        except BaseException as exc:  # handed back to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


# --- processes --------------------------------------------------------------------------------
def _start_time(pid: int) -> int | None:
    """Kernel start time of `pid` (guards against pid reuse), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses: fields start after the last ')'
    return int(stat.rsplit(")", 1)[1].split()[19])


def process_alive(pid: int, start: int | None) -> bool:
    """True if `pid` runs and (when `start` is known) is the same process we recorded."""
    now = _start_time(pid)
    return now is not None and (start is None or now == start)


def _pids_in_netns(name: str) -> list[int]:
    """Processes whose network namespace is `name` (by inode), never ourselves."""
    try:
        ns = os.stat(netns_path(name))
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (ns.st_ino, ns.st_dev):
            pids.append(int(entry))
    return pids


def terminate(pids: list[int], grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM `pids`, SIGKILL whatever is left after `grace_s`; reap our own children."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    remaining = list(pids)
    while remaining and time.monotonic() < deadline:
        remaining = [p for p in remaining if not _gone(p)]
        if remaining:
            time.sleep(0.01)
    for pid in remaining:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in remaining:
        for _ in range(100):  # bounded: SIGKILL takes effect within milliseconds
            if _gone(pid):
                break
            time.sleep(0.01)


def _gone(pid: int) -> bool:
    """True once `pid` has exited (reaping it if it is our child)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


# --- signals ------------------------------------------------------------------------------------
_signal_lock = threading.Lock()
_signal_depth = 0
_saved_handlers: dict[int, Any] = {}
_guard_pid = 0


def _raise_exit(signum: int, frame: object) -> None:
    if os.getpid() != _guard_pid:
        # a forked child (ours, or pyroute2's netns helpers) inherited the handler: unwinding it
        # would run the parent's code (pytest, the CLI) in the child, so die as SIGTERM would
        os._exit(128 + signum)
    raise SystemExit(128 + signum)


def _install_signal_guard() -> bool:
    """Make SIGTERM/SIGINT/SIGHUP unwind the main thread (so `finally` tears down); nestable.

    SIGHUP (the terminal closed) only where it would kill us anyway: under `nohup` it stays ignored.
    """
    global _signal_depth, _guard_pid
    if threading.current_thread() is not threading.main_thread():
        return False  # only the main thread may set handlers; its owner handles signals then
    with _signal_lock:
        if _signal_depth == 0:
            _guard_pid = os.getpid()
            # keep a caller's own handlers (`lab run` turns SIGTERM into an interrupt that keeps
            # what was measured); replace only "ignore"/"default kill"
            if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
                _saved_handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_exit)
            if signal.getsignal(signal.SIGINT) in (signal.SIG_DFL, signal.SIG_IGN, None):
                _saved_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
            if signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:
                _saved_handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, _raise_exit)
        _signal_depth += 1
    return True


def _remove_signal_guard() -> None:
    global _signal_depth
    with _signal_lock:
        _signal_depth -= 1
        if _signal_depth == 0:
            for signum, handler in _saved_handlers.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            _saved_handlers.clear()


# --- state files ------------------------------------------------------------------------------
def _state_path(name: str) -> Path:
    return STATE_DIR / f"{name}.json"


def _state_tmp_path(name: str) -> Path:
    return _state_path(name).with_suffix(f".{os.getpid()}.tmp")  # per process: two owners never share it


def _write_state(name: str, state: dict[str, Any]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = _state_tmp_path(name)
    tmp.write_text(json.dumps(state))
    tmp.replace(_state_path(name))  # atomic: cleanup never reads half a file


def _read_state(name: str) -> dict[str, Any] | None:
    """The state file of link `name`, None if absent or unreadable."""
    return _load_state(_state_path(name))


def _load_state(path: Path) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _state_owner_alive(state: dict[str, Any]) -> bool:
    try:
        return process_alive(int(state.get("owner_pid", 0)), state.get("owner_start"))
    except (TypeError, ValueError):
        return False


def _validate_name(name: str) -> None:
    if not USER_NAME.match(name):
        raise ConfigError(
            f"link name must be 1-31 letters, digits, '_' or '.', starting with a letter or digit, "
            f"got {name!r}"
        )


def _open_tun(ifname: str) -> int:
    """Create a TUN device (IFF_TUN | IFF_NO_PI: raw IP packets) in this namespace; return its fd.

    With IFF_VNET_HDR where the kernel allows it, so the forwarder can turn the kernel's offloads on
    (GSO batches of up to 64 KB, partial checksums: docs/architecture.md#the-forwarder); a kernel that
    refuses the flag gets a plain device, and the forwarder (which asks with TUNGETIFF) copes.
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        try:
            flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), flags))
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EPERM, errno.EOPNOTSUPP):
                raise
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TUN | IFF_NO_PI))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _disable_ipv6() -> None:
    """No IPv6 on the link: router solicitations and MLD would only be noise in the counters."""
    for key in ("all", "default"):
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6").write_text("1")


class Topology:
    """Two namespaces joined by TUN devices whose fds this object holds until `release_fds`.

    Use as a context manager; teardown (processes inside, namespaces, state file) always runs,
    also on exceptions and (in the main thread) SIGINT/SIGTERM.
    """

    def __init__(self, name: str | None = None, *, mtu: int = 1500) -> None:
        if name is not None:
            _validate_name(name)
        if not 576 <= mtu <= 65535:  # 576: the IPv4 minimum datagram every host accepts (RFC 791)
            raise ConfigError(f"mtu must be between 576 and 65535, got {mtu}")
        self.run_id = secrets.token_hex(2)
        self.name = name or f"{PREFIX}{self.run_id}"
        self.client_ns = f"{self.name}-client"
        self.server_ns = f"{self.name}-server"
        self.mtu = mtu
        self.client_fd: int | None = None
        self.server_fd: int | None = None
        self.extra_pids: list[int] = []
        self._starts: dict[str, int | None] = {}
        self._guarded = False
        self._recorded = False
        self._created: list[str] = []  # only these are ours to remove (a same-named one may be live)
        self._opened = False
        self._closed = False

    @property
    def namespaces(self) -> tuple[str, str]:
        """(client namespace, server namespace)."""
        return (self.client_ns, self.server_ns)

    def __enter__(self) -> Topology:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Create namespaces and TUN devices; on any failure undo what was done, then raise."""
        from pyroute2 import netns

        if self._opened:
            return
        self._opened = True
        self._guarded = _install_signal_guard()
        try:
            # The name check, the marker and the creation happen under one lock: of two runs with
            # the same name, exactly one wins, and the loser has made nothing (so removes nothing).
            with _netns_create_lock():
                self._check_name_free(netns.listnetns())
                # flag before the write: a signal right after it must still remove the file (and
                # _remove_state deletes only a file carrying our run id)
                self._recorded = True
                self._record()  # marker first: a crash after this point is always cleanable
                for ns in self.namespaces:
                    try:
                        with _signals_deferred():  # a Ctrl-C mid-create would leave an unrecorded namespace
                            netns.create(ns)
                            self._created.append(ns)
                    except PermissionError as exc:
                        # CAP_NET_ADMIN alone is not enough: the namespace is bind-mounted under /run/netns
                        raise PrivilegeError(
                            f"cannot create network namespace {ns} ({exc}): this needs CAP_SYS_ADMIN as "
                            "well as CAP_NET_ADMIN (unshare and a mount under /run/netns): run as root "
                            "(sudo); without it only UDP runs impaired, through the loopback relay"
                        ) from exc
            self.client_fd = self._make_end(self.client_ns, CLIENT_ADDRESS, "c")
            self.server_fd = self._make_end(self.server_ns, SERVER_ADDRESS, "s")
        except BaseException:
            self.close()
            raise

    def _check_name_free(self, existing: list[str]) -> None:
        taken = set(existing) & set(self.namespaces)
        state = _read_state(self.name)
        if taken or (state is not None and _state_owner_alive(state)):
            where = f"namespace {sorted(taken)[0]} exists" if taken else \
                f"its owner, pid {state['owner_pid']}, is running"  # type: ignore[index]
            raise ConfigError(
                f"link {self.name} already exists ({where}): another `lab link --name {self.name}` is "
                "running, or a killed run left it (`lab cleanup` removes a killed run's leftovers)"
            )

    def _record(self, **extra: Any) -> None:
        _write_state(self.name, {
            "name": self.name,
            "run_id": self.run_id,
            "namespaces": list(self.namespaces),
            "owner_pid": os.getpid(),
            "owner_start": _start_time(os.getpid()),
            "pids": self.extra_pids,
            "starts": self._starts,
            **extra,
        })

    def track(self, pid: int, start: int | None = None) -> None:
        """Record a helper process (e.g. the forwarder) so `lab cleanup` can find it after a crash."""
        self.extra_pids.append(pid)
        self._starts[str(pid)] = start if start is not None else _start_time(pid)
        self._record()

    def _make_end(self, ns: str, address: str, tag: str) -> int:
        from pyroute2 import IPRoute, NetNS

        temp = f"{PREFIX}{self.run_id}{tag}{secrets.token_hex(2)}"  # unique in the root namespace
        fd = _open_tun(temp)
        try:
            with IPRoute() as ipr:
                index = ipr.link_lookup(ifname=temp)[0]
                ipr.link("set", index=index, net_ns_fd=ns)
            in_netns_thread(ns, _disable_ipv6)
            with NetNS(ns) as inside:
                index = inside.link_lookup(ifname=temp)[0]
                inside.link("set", index=index, ifname=DEVICE, mtu=self.mtu)
                inside.addr("add", index=index, address=address, prefixlen=PREFIX_LEN)
                inside.link("set", index=index, state="up")
                lo = inside.link_lookup(ifname="lo")[0]
                inside.link("set", index=lo, state="up")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def release_fds(self) -> tuple[int, int]:
        """Hand the TUN fds over (to the forwarder); this object stops owning them."""
        if self.client_fd is None or self.server_fd is None:
            raise LabError("the link's devices are not open")
        fds = (self.client_fd, self.server_fd)
        self.client_fd = self.server_fd = None
        return fds

    def close(self) -> None:
        """Idempotent teardown: processes inside the namespaces, fds, namespaces, state file."""
        if self._closed:
            return
        self._closed = True
        try:
            terminate([p for p in self.extra_pids if process_alive(p, None)])
            for fd in (self.client_fd, self.server_fd):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self.client_fd = self.server_fd = None
            for ns in self._created:
                remove_namespace(ns)
            if self._recorded:
                self._remove_state()
        finally:
            if self._guarded:
                self._guarded = False
                _remove_signal_guard()

    def _remove_state(self) -> None:
        """Delete our state file, and only ours: a run of the same name may have written its own."""
        with _netns_create_lock():
            state = _read_state(self.name)
            mine = (self.run_id, os.getpid())
            if state is not None and (state.get("run_id"), state.get("owner_pid")) == mine:
                with contextlib.suppress(FileNotFoundError):
                    _state_path(self.name).unlink()
            with contextlib.suppress(FileNotFoundError):  # a write interrupted before its rename
                _state_tmp_path(self.name).unlink()


@contextlib.contextmanager
def _netns_create_lock() -> Iterator[None]:
    """Serialise namespace creation across processes.

    pyroute2's `netns.create` (like iproute2's) bind-mounts /run/netns onto itself the first time;
    two runs doing that at once (pytest-xdist workers on a fresh machine) stack two mounts, and
    the namespace files made under the first one vanish from view.
    """
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "netns-create.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP back until the block is done (they are delivered right after it).

    pyroute2's `netns.create` runs in a helper child; interrupted halfway, the namespace may exist
    without our knowing, and teardown would leave it behind.
    """
    deferred = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, deferred)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def remove_namespace(ns: str) -> bool:
    """Kill every process inside `ns`, then unmount and delete it. False if it did not exist."""
    from pyroute2 import netns

    if not netns_path(ns).exists():
        return False
    terminate(_pids_in_netns(ns))
    try:
        netns.remove(ns)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
        return False
    return True


@contextlib.contextmanager
def topology(name: str | None = None, *, mtu: int = 1500) -> Iterator[Topology]:
    """`with topology() as topo:` — a Topology that is always torn down."""
    with Topology(name, mtu=mtu) as topo:
        yield topo


def cleanup_leftovers() -> list[str]:
    """Remove namespaces, TUN devices and forwarders of killed lab runs; return what was removed.

    A run is a leftover when the process that owned it is gone (pid + start time recorded in its
    state file). Namespaces with the lab's generated names (wlXXXX-client/-server) but no state
    file are leftovers too. Nothing else is touched.
    """
    from lab.privileges import CAP_NET_ADMIN, require

    require(CAP_NET_ADMIN)
    removed: list[str] = []
    live_names: set[str] = set()
    for path in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.is_dir() else []:
        state = _load_state(path)
        if state is None or "name" not in state:
            continue
        name = str(state["name"])
        if _state_owner_alive(state):
            live_names.add(name)
            continue
        starts = state.get("starts", {})
        pids = [int(p) for p in state.get("pids", []) if process_alive(int(p), starts.get(str(p)))]
        if pids:
            terminate(pids)
            removed.extend(f"process {p} (link {name})" for p in pids)
        for ns in state.get("namespaces", []):
            if remove_namespace(str(ns)):
                removed.append(f"namespace {ns}")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if NETNS_DIR.is_dir():
        for entry in sorted(os.listdir(NETNS_DIR)):
            base, _, side = entry.rpartition("-")
            if side in ("client", "server") and AUTO_NAME.match(base) and base not in live_names \
                    and not _state_path(base).exists() and remove_namespace(entry):
                removed.append(f"namespace {entry}")
    return removed
