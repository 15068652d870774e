"""The anchors the lab is measured against (issue 13), as small runners shared by the benchmarks and tests.

An anchor is a well-known tool doing the same job as a piece of the lab, run in the same test on the
same path, so a figure becomes a ratio that a loaded or slow machine cannot fake:

- sockperf ping-pong (UDP and TCP RTT percentiles) against its own server;
- iperf3 (`-J`: TCP goodput) between its server and client;
- socat echo servers, which the same load generator drives as it drives the lab's echo server;
- a plain veth pair between two namespaces: the path without the lab's TUN devices and forwarder;
- the minimal offloaded TUN forwarder issue 13 measured (`minimal_forwarder`: the lab's own TUN
  devices and offloads, one process per direction doing nothing but a blocking read and a write),
  the floor any Python forwarder on this machine stands on.

`cpus_held_awake` keeps the CPUs out of idle states for a benchmark session (/dev/cpu_dma_latency 0,
what tuned's latency-performance profile and cyclictest do): on a virtual machine a sleeping CPU
takes ~50 µs to wake, which otherwise dominates every sub-100 µs round trip, anchors' and lab's alike.

Every runner takes "ends" to run on: a `lab.link.session.End` (a namespace of a link or of the veth
pair) or `LOOPBACK` (this host's own namespace); each has `popen`/`run` and an `address`. Whatever a
runner starts is stopped before it returns, also on error. A missing tool raises `NotMeasured` with
the install command: a benchmark row then says "not measured: <why>", never a made-up figure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

READY_TIMEOUT_S = 10.0
STOP_GRACE_S = 3.0


class NotMeasured(Exception):  # noqa: N818 - a row's verdict, not a failure
    """A figure that cannot be taken here; the message says why and what would fix it."""


# --- where things run ------------------------------------------------------------------------------
class Ends(Protocol):
    """What a runner needs of a place: `lab.link.session.End` has it."""

    address: str

    def popen(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]: ...
    def run(self, argv: Sequence[str], **run_kwargs: Any) -> subprocess.CompletedProcess[Any]: ...


class _Loopback:
    """This host's own namespace, 127.0.0.1."""

    address = "127.0.0.1"
    ns: str | None = None

    def popen(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(list(argv), **popen_kwargs)

    def run(self, argv: Sequence[str], **run_kwargs: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(list(argv), **run_kwargs)


LOOPBACK = _Loopback()


def require_tool(name: str, package: str | None = None) -> str:
    """The tool's path; NotMeasured naming the package to install when it is missing."""
    path = shutil.which(name)
    if path is None:
        raise NotMeasured(f"{name} is not installed (apt-get install {package or name}; `make bench` "
                          "installs it when run as root)")
    return path


def tool_version(name: str) -> str | None:
    """The first line a tool prints about its version (None when it is missing)."""
    if shutil.which(name) is None:
        return None
    flag = {"socat": "-V"}.get(name, "--version")
    out = subprocess.run([name, flag], capture_output=True, text=True, timeout=10)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if re.search(r"\d+\.\d+", ln)]
    return re.sub(r"\x1b\[[0-9;]*m", "", lines[0]).strip() if lines else None


def _netns_of(end: Ends) -> str | None:
    return getattr(end, "ns", None)


def free_port(end: Ends, kind: str = "tcp") -> int:
    """A port free for both TCP and UDP at `end` right now (a fresh namespace: any is)."""
    if _netns_of(end) is not None:
        return 40000 + secrets.randbelow(20000)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            return free_port(end, kind)
    return port


def _listening(end: Ends, port: int, kind: str) -> bool:
    """Whether something listens on `port` (TCP LISTEN or a bound UDP socket) in `end`'s namespace."""
    def read() -> str:
        # /proc/thread-self/net is the calling thread's namespace (in_netns_thread's one)
        return Path(f"/proc/thread-self/net/{kind}").read_text()

    ns = _netns_of(end)
    if ns is None:
        table = read()
    else:
        from lab.link.netns import in_netns_thread

        table = in_netns_thread(ns, read)
    want_state = "0A" if kind == "tcp" else "07"  # TCP_LISTEN; an unbound-peer UDP socket shows TCP_CLOSE
    for line in table.splitlines()[1:]:
        fields_ = line.split()
        if fields_[1].endswith(f":{port:04X}") and fields_[3] == want_state:
            return True
    return False


@contextlib.contextmanager
def serving(end: Ends, argv: Sequence[str], port: int,
            kinds: Sequence[str]) -> Iterator[subprocess.Popen[str]]:
    """Run a server command at `end` until it listens on `port` for each of `kinds`; stop it after."""
    process = end.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(_listening(end, port, kind) for kind in kinds):
            if process.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {process.returncode} before listening: "
                                   f"{process.stdout.read() if process.stdout else ''}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(argv)} did not listen on {port} within {READY_TIMEOUT_S:g} s")
            time.sleep(0.02)
        yield process
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[Any]) -> None:
    """SIGTERM the process and its session (socat's forked children), then SIGKILL what is left."""
    import signal

    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # children that outlived the leader
        os.killpg(process.pid, signal.SIGKILL)
    for stream in (process.stdout, process.stderr, process.stdin):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


# --- a plain veth pair ------------------------------------------------------------------------------
VETH_CLIENT, VETH_SERVER = "198.18.2.1", "198.18.2.2"  # a /30 of the lab's range of its own


@dataclass
class VethPair:
    """Two namespaces joined by a veth pair (the link's path without its TUN devices and forwarder),
    or by `minimal_forwarder`.

    Same attributes as a `lab.link.session.Link` where it matters (client/server ends and addresses)."""

    client_ns: str
    server_ns: str
    client_address: str = VETH_CLIENT
    server_address: str = VETH_SERVER
    client: Any = field(init=False)
    server: Any = field(init=False)

    def __post_init__(self) -> None:
        from lab.link.session import End

        self.client = End(self.client_ns, self.client_address)
        self.server = End(self.server_ns, self.server_address)


@contextlib.contextmanager
def veth_pair(mtu: int = 1500) -> Iterator[VethPair]:
    """A `VethPair` for the block; its namespaces (and every process in them) removed after.

    Recorded as the lab's links are (a state file naming this process as owner), so a concurrent
    `lab cleanup` leaves it alone while it lives and reaps it if this process is killed."""
    from pyroute2 import IPRoute, NetNS, netns

    from lab.link.netns import _netns_create_lock, _start_time, _state_path, _write_state, remove_namespace

    name = f"wl{secrets.token_hex(2)}"
    names = (f"{name}-client", f"{name}-server")  # the lab's pattern: `lab cleanup` reaps a crash
    devices = (f"{name}a", f"{name}b")
    pair = None
    try:
        with _netns_create_lock():
            _write_state(name, {"name": name, "namespaces": list(names), "owner_pid": os.getpid(),
                                "owner_start": _start_time(os.getpid()), "pids": [], "starts": {}})
            for ns in names:
                netns.create(ns)
        with IPRoute() as ipr:
            ipr.link("add", ifname=devices[0], kind="veth", peer=devices[1])
            for dev, ns in zip(devices, names, strict=True):
                ipr.link("set", index=ipr.link_lookup(ifname=dev)[0], net_ns_fd=ns)
        for ns, dev, address in zip(names, devices, (VETH_CLIENT, VETH_SERVER), strict=True):
            with NetNS(ns) as inside:
                index = inside.link_lookup(ifname=dev)[0]
                inside.addr("add", index=index, address=address, prefixlen=30)
                inside.link("set", index=index, state="up", mtu=mtu)
                inside.link("set", index=inside.link_lookup(ifname="lo")[0], state="up")
        pair = VethPair(*names)
        yield pair
    finally:
        if pair is not None:
            pair.client.close()
            pair.server.close()
        for ns in names:
            remove_namespace(ns)  # the veth pair dies with its namespaces
        with contextlib.suppress(FileNotFoundError):
            _state_path(name).unlink()


@contextlib.contextmanager
def minimal_forwarder(mtu: int = 1500) -> Iterator[VethPair]:
    """Two namespaces joined by the lab's TUN devices (lab.link.netns.Topology: virtio_net_hdr, same
    addresses as a link), moved by the smallest forwarder that uses the kernel's offloads: per
    direction a forked process, TUNSETOFFLOAD on, then `os.write(out, os.read(in, 65545))` forever.
    Yields its namespaces and the link's addresses (as a `VethPair`). Its processes die with the
    block (and with this process: PR_SET_PDEATHSIG); the namespaces are removed after."""
    import ctypes
    import signal

    from lab.link import gso
    from lab.link.netns import CLIENT_ADDRESS, SERVER_ADDRESS, topology

    with topology(mtu=mtu) as topo:
        client_fd, server_fd = topo.release_fds()
        pids: list[int] = []
        try:
            for in_fd, out_fd in ((client_fd, server_fd), (server_fd, client_fd)):
                pid = os.fork()
                if pid == 0:  # the direction: nothing but read and write
                    try:
                        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
                        gso.set_offloads(in_fd, True)
                        os.set_blocking(in_fd, True)
                        os.set_blocking(out_fd, True)
                        read, write = os.read, os.write
                        while True:
                            write(out_fd, read(in_fd, 65545))
                    finally:
                        os._exit(0)
                pids.append(pid)
                topo.track(pid)
            ends = VethPair(topo.client_ns, topo.server_ns, CLIENT_ADDRESS, SERVER_ADDRESS)
            try:
                yield ends
            finally:
                ends.client.close()
                ends.server.close()
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            for fd in (client_fd, server_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)


@contextlib.contextmanager
def cpus_held_awake() -> Iterator[str]:
    """Hold /dev/cpu_dma_latency at 0 for the block (the kernel then keeps every CPU in its polling
    idle state, so a woken process runs at once), yielding what was done, for the table's footer."""
    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    except OSError as exc:
        yield f"CPUs free to sleep (/dev/cpu_dma_latency: {exc.strerror}; needs root)"
        return
    try:
        os.write(fd, (0).to_bytes(4, sys.byteorder))
        yield "CPUs held out of idle states (/dev/cpu_dma_latency 0)"
    finally:
        os.close(fd)  # the request ends with the file


# --- sockperf ping-pong -------------------------------------------------------------------------------
@dataclass
class Latency:
    """RTT percentiles in µs of one ping-pong run, and how many round trips they summarise."""

    p50_us: float
    p99_us: float
    samples: int
    extra: dict[str, Any] = field(default_factory=dict)


_PERCENTILE = re.compile(r"percentile\s+([\d.]+)\s*=\s*([\d.]+)")
_VALID = re.compile(r"\[Valid Duration\].*?ReceivedMessages=(\d+)")


def parse_sockperf(text: str) -> Latency:
    """sockperf ping-pong's summary (run with --full-rtt: values are round trips in µs)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    percentiles = {float(p): float(v) for p, v in _PERCENTILE.findall(text)}
    valid = _VALID.search(text)
    if 50.0 not in percentiles or 99.0 not in percentiles or valid is None:
        raise RuntimeError(f"unexpected sockperf output:\n{text[-2000:]}")
    return Latency(percentiles[50.0], percentiles[99.0], int(valid.group(1)),
                   {"p90_us": percentiles.get(90.0), "p99.9_us": percentiles.get(99.9)})


def sockperf_rtt(client: Ends, server: Ends, *, tcp: bool, seconds: float = 2.0, size: int = 64) -> Latency:
    """sockperf ping-pong from `client` to its own server at `server`: one message in flight, blocking
    sockets (as the lab's clients), `size` bytes per message, the full round trip (--full-rtt)."""
    tool = require_tool("sockperf")
    port = free_port(server)
    transport = ["--tcp"] if tcp else []
    argv = [tool, "server", "-i", server.address, "-p", str(port), *transport]
    with serving(server, argv, port, ["tcp" if tcp else "udp"]):
        out = client.run([tool, "ping-pong", "-i", server.address, "-p", str(port), *transport,
                          "-t", f"{seconds:g}", "-m", str(size), "--full-rtt", "--mps=max"],
                         capture_output=True, text=True, timeout=seconds + 30)
    if out.returncode != 0:
        raise RuntimeError(f"sockperf ping-pong failed ({out.returncode}): {out.stderr or out.stdout}")
    return parse_sockperf(out.stdout + out.stderr)


# --- iperf3 ---------------------------------------------------------------------------------------------
@dataclass
class Goodput:
    """Bits/s delivered to the receiver, as iperf3 (or the lab's sink) counted them."""

    bps: float
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def parse_iperf3(text: str) -> Goodput:
    """iperf3 -J's result: the receiver's bits/s (goodput, what arrived), the sender's retransmits."""
    data = json.loads(text)
    if "error" in data:
        raise RuntimeError(f"iperf3: {data['error']}")
    end = data["end"]
    received, sent = end["sum_received"], end["sum_sent"]
    return Goodput(received["bits_per_second"], received["seconds"],
                   {"retransmits": sent.get("retransmits"), "bytes": received["bytes"],
                    "sender_bps": sent["bits_per_second"]})


# The congestion control every TCP comparison pins on both sides: Linux's default, so a comparison
# means the same on every machine (this development VM defaults to bbr, whose pacing timers run
# late here: iperf3 itself carried 6-7 Gbit/s through the link with bbr and 9-13 with cubic).
CONGESTION = "cubic"
# iperf3 at its fastest (sendfile, 1 MiB writes), as one measures a multi-Gbit/s path with it: on 2
# cores its endpoints share the CPUs with the link's forwarder, and with its defaults (128 KiB
# writes through send) it carried 10-20 % less than the lab's flow (which writes whole blocks).
IPERF3_FAST = ("-Z", "-l", "1M")


def iperf3_goodput(client: Ends, server: Ends, *, seconds: float = 2.0,
                   congestion: str | None = CONGESTION) -> Goodput:
    """One TCP iperf3 test of `seconds` (IPERF3_FAST) from `client` to a one-off iperf3 server at
    `server`, with `congestion` (None: the system's default)."""
    tool = require_tool("iperf3")
    port = free_port(server)
    options = [*IPERF3_FAST, *(["-C", congestion] if congestion else [])]
    with serving(server, [tool, "-s", "-1", "-B", server.address, "-p", str(port)], port, ["tcp"]):
        out = client.run([tool, "-c", server.address, "-p", str(port), "-t", f"{seconds:g}", "-J", *options],
                         capture_output=True, text=True, timeout=seconds + 30)
    if not out.stdout.strip():
        raise RuntimeError(f"iperf3 client failed ({out.returncode}): {out.stderr}")
    return parse_iperf3(out.stdout)


# --- the floor for a Python client ----------------------------------------------------------------------
PYTHON_PINGPONG = r"""
import socket, statistics, sys, time
kind, host, port, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((host, port))
else:
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.settimeout(1.0)
message, clock, rtts = b"x" * size, time.monotonic_ns, []
for _ in range(count):
    start = clock()
    s.send(message)
    got = len(s.recv(65536))
    while got < size:  # TCP: the echo may come back in pieces
        got += len(s.recv(65536))
    rtts.append(clock() - start)
rtts.sort()
print(rtts[len(rtts) // 2] / 1e3, rtts[int(len(rtts) * 0.99)] / 1e3, len(rtts))
"""


def python_pingpong(client: Ends, transport: str, host: str, port: int, *, count: int,
                    size: int = 64) -> Latency:
    """The smallest Python ping-pong client (a blocking send, then recv; user-space clock around
    them, no timestamping, no bookkeeping), in its own process at `client`: what any Python client
    costs on this machine, the floor under the lab's user-stamped RTT."""
    out = client.run([sys.executable, "-c", PYTHON_PINGPONG, transport, host, str(port), str(count),
                      str(size)], capture_output=True, text=True, timeout=count + 30)
    if out.returncode != 0:
        raise RuntimeError(f"the Python ping-pong failed ({out.returncode}): {out.stderr}")
    p50, p99, samples = out.stdout.split()
    return Latency(float(p50), float(p99), int(samples))


# --- the lab's own client -------------------------------------------------------------------------------
def lab_send(client: Ends, protocol: str, host: str, port: int, *, count: int, size: int = 64,
             timeout_s: float = 1.0) -> dict[str, Any]:
    """`lab send PROTOCOL HOST PORT --json` (ping-pong) in its own process at `client`: the result dict."""
    argv = [sys.executable, "-m", "lab", "send", protocol, host, str(port), "--count", str(count),
            "--size", str(size), "--timeout", f"{timeout_s:g}", "--json"]
    # a healthy run takes seconds; a dead server would cost every probe its timeout: fail instead
    out = client.run(argv, capture_output=True, text=True, timeout=min(count * timeout_s, 120) + 30)
    if out.returncode != 0:
        raise RuntimeError(f"lab send failed ({out.returncode}): {out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def lab_echo_server(end: Ends) -> Iterator[int]:
    """The lab's echo server (TCP and UDP on one port) in its own process at `end`; its port."""
    from lab.endpoints.server import spawn_server_process

    child, ready = spawn_server_process("both", host=end.address, port=0, popen=end.popen)
    with child:
        yield int(ready["udp"][1])


def lab_latencies(result: dict[str, Any]) -> dict[str, Latency | str]:
    """The lab's RTT percentiles by stamping ("kernel", "user") from a `lab send --json` result, or for
    each stamping it lacks, why ("not measured" text).

    Results carry `timestamps` ("kernel" | "user": what `rtt_us` was measured with) and, when kernel
    stamps were used, the user-space figures in `rtt_user_us`; results from before kernel timestamps
    have neither key and are user-stamped.
    """
    received = int(result.get("received") or 0)
    stamping = result.get("timestamps")
    rtt, user = result.get("rtt_us") or {}, result.get("rtt_user_us")

    def latency(figures: dict[str, Any] | None) -> Latency | None:
        if not figures or figures.get("p50") is None or figures.get("p99") is None:
            return None
        return Latency(float(figures["p50"]), float(figures["p99"]), received)

    out: dict[str, Latency | str] = {}
    if stamping is None:
        out["kernel"] = ("the lab's clients have no kernel timestamps yet "
                         "(`lab send --json` has no 'timestamps')")
        out["user"] = latency(rtt) or "no round trip completed"
    elif stamping == "kernel":
        out["kernel"] = latency(rtt) or "no round trip completed"
        out["user"] = latency(user) or "kernel-stamped result without 'rtt_user_us'"
    else:
        out["kernel"] = (f"the client fell back to {stamping}-space stamps "
                         "(no kernel timestamps on this socket)")
        out["user"] = latency(rtt) or "no round trip completed"
    return out


# --- echo capacity: one load generator for every echo server ------------------------------------------
LOAD_GENERATOR = r"""
import json, selectors, socket, sys, time
host, port, kind, n, seconds, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), \
    float(sys.argv[5]), int(sys.argv[6])
WARMUP_S, RESEND_S = 0.3, 0.2
message = b"e" * size
sel = selectors.DefaultSelector()
socks = []
for _ in range(n):
    if kind == "tcp":
        s = socket.create_connection((host, port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((host, port))
    s.setblocking(False)
    socks.append(s)
    sel.register(s, selectors.EVENT_READ, [0, 0.0])  # bytes still due, when sent
start = time.monotonic()
counting, end = start + WARMUP_S, start + WARMUP_S + seconds
done = resent = 0
def send(s, state, now):
    s.send(message)
    state[0], state[1] = size, now
now = time.monotonic()
for s in socks:
    send(s, sel.get_key(s).data, now)
while True:
    now = time.monotonic()
    if now >= end:
        break
    events = sel.select(RESEND_S)
    now = time.monotonic()
    for key, _ in events:
        s, state = key.fileobj, key.data
        try:
            got = len(s.recv(65536))
        except BlockingIOError:
            continue
        state[0] -= got if kind == "tcp" else size
        if state[0] <= 0:
            if now >= counting:
                done += 1
            send(s, state, now)
    if kind == "udp":  # a lost datagram would stall its client for good: send again
        for key in sel.get_map().values():
            if now - key.data[1] > RESEND_S:
                resent += 1
                send(key.fileobj, key.data, now)
for s in socks:
    s.close()
print(json.dumps({"messages": done, "seconds": seconds, "resent": resent}))
"""


def echo_capacity(client: Ends, host: str, port: int, kind: str, *, clients: int = 16,
                  seconds: float = 2.0, size: int = 64) -> float:
    """Round trips/s that `clients` clients (one message in flight each, one load-generator process
    at `client`) complete against the echo server at (host, port)."""
    out = client.run([sys.executable, "-c", LOAD_GENERATOR, host, str(port), kind, str(clients),
                      f"{seconds:g}", str(size)], capture_output=True, text=True, timeout=seconds + 30)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed ({out.returncode}): {out.stderr}")
    figures = json.loads(out.stdout)
    return figures["messages"] / figures["seconds"]


def socat_echo_argv(kind: str, host: str, port: int) -> list[str]:
    """socat as an echo server: a forked child per TCP connection, or per UDP peer (UDP-LISTEN,fork
    connects the child to its peer, and the child echoes that peer's datagrams until idle), each
    echoing with PIPE (no `cat` process in between)."""
    tool = require_tool("socat")
    if kind == "tcp":
        return [tool, f"TCP-LISTEN:{port},bind={host},fork,reuseaddr", "PIPE"]
    return [tool, "-T", "5", f"UDP-LISTEN:{port},bind={host},fork,reuseaddr", "PIPE"]


# --- the lab's bulk flow -------------------------------------------------------------------------------
BULK_NOT_LANDED = "Link.bulk has not landed yet (issue 12's bulk flows: lab/bulk, `lab send --bulk`)"


def lab_bulk_goodput(link: Any, *, seconds: float = 2.0, protocol: str = f"tcp-{CONGESTION}") -> Goodput:
    """One bulk flow of the lab's `protocol` through `link` (`Link.bulk`) for `seconds`: the goodput its
    sink counted; NotMeasured while Link.bulk does not exist."""
    bulk = getattr(link, "bulk", None)
    if bulk is None:
        raise NotMeasured(BULK_NOT_LANDED)
    from lab.bulk import BulkPlan

    result = bulk(protocol, BulkPlan(duration_s=seconds))
    return Goodput(result.goodput_bps, result.duration_s,
                   {"retransmits": result.retransmits, "bytes": result.bytes_delivered,
                    "stopped": result.stopped})
