"""The impaired link as a Python API: `open_link(loss="10%") as link`, `link.run("udp")`, `lab link`.

A `Link` owns a `Topology` (namespaces + TUN devices) and a `Forwarder` process. Its two `End`s run
anything inside a namespace: a command (`popen`/`run`: the child is forked from a thread that
entered the namespace, so it inherits it) or a Python callable (`call`: a forked child enters the
namespace, runs it, and pickles the result or exception back). `run()` measures the lab's own
echo protocol end to end and returns a `Result` with the link's and the kernel's counters.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from lab.child import Channel, Child, Progress, Reply, end_process, fork_call
from lab.errors import ConfigError, EndpointError, HelperProcessError, LabError
from lab.interrupts import stop_signals_recorded
from lab.link.models import DIRECTION_ARROWS, LinkConfig
from lab.link.netns import CLIENT_ADDRESS, SERVER_ADDRESS, Topology, enter_netns, in_netns_thread
from lab.protocols import Place
from lab.records import Result, RunRecord, TrafficPlan

if TYPE_CHECKING:
    from lab.bulk.plan import BulkPlan, BulkResult
    from lab.bulk.running import BulkFlow

T = TypeVar("T")

ECHO_PORT = 7007  # the lab's echo port (see lab.cli.DEFAULT_PORT)


# --- running code inside a namespace ---------------------------------------------------------------
POLL_S = 0.05  # how soon a stop signal is noticed while a child runs
INTERRUPT_GRACE_S = 0.3  # a Ctrl-C at the terminal reaches the child too; let it answer first
INTERRUPT_WAIT_S = 3.0  # then interrupt the child ourselves (SIGTERM reached only us) and wait


def call_in_netns(ns: str, fn: Callable[..., T], args: Sequence[Any] = (),
                  kwargs: Mapping[str, Any] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> T:
    """Run fn(*args, **kwargs) in a forked child inside namespace `ns`; return or raise its outcome.

    `progress(*report)` receives the reports the child's fn makes through its own `progress=`
    keyword (given to fn only when `progress` is). A child that dies without an outcome raises
    HelperProcessError.
    """
    kwargs = kwargs or {}
    wants_arrivals = bool(getattr(progress, "wants_arrivals", False))

    def inside(channel: Channel) -> Any:  # runs in the forked child
        enter_netns(ns)
        if progress is None:
            return fn(*args, **kwargs)

        def relay_progress(*report: Any) -> None:
            channel.send(Progress(report))

        relay_progress.wants_arrivals = wants_arrivals  # type: ignore[attr-defined]  # live views
        return fn(*args, **dict(kwargs, progress=relay_progress))

    with fork_call(f"the child running {getattr(fn, '__name__', fn)!r} in {ns}", inside) as child:
        outcome = _outcome(child, progress)
    if outcome.error is not None:
        raise outcome.error
    return outcome.value


def _next_outcome(child: Child, progress: Callable[..., None] | None, timeout: float | None) -> Reply | None:
    """Pass progress reports on until the child's outcome; None once `timeout` has passed (in all:
    a child reporting progress all the time must not keep the caller from its stop signals)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        message = child.next_message(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if isinstance(message, Reply):
            return message
        if isinstance(message, Progress) and progress is not None:
            progress(*message.report)
        if message is None or (deadline is not None and time.monotonic() >= deadline):
            return None


def _outcome(child: Child, progress: Callable[..., None] | None) -> Reply:
    """The forked child's outcome. On a stop signal, the child's own RunInterrupted (with what it
    measured) is collected instead of killing it; HelperProcessError if the child died."""
    outcome: Reply | None = None
    died: HelperProcessError | None = None
    with stop_signals_recorded() as pending:
        # With the signals recorded, poll: a stop is noticed within POLL_S and never lands
        # between a read and its bookkeeping (which would lose the child's answer).
        poll_s = POLL_S if pending is not None else None
        try:
            while outcome is None and not pending:
                outcome = _next_outcome(child, progress, poll_s)
        except HelperProcessError as exc:
            died = exc
    if pending:
        try:
            signal.raise_signal(pending[0])  # now the caller's own handler says what it means
        except (KeyboardInterrupt, SystemExit) as interrupt:
            # Ctrl-C, or SIGTERM/SIGHUP turned into an interrupt: the child's run keeps what it
            # measured and hands it back as a RunInterrupted; wait briefly for it.
            stopped = outcome or (None if died else _outcome_after_interrupt(child))
            if stopped is not None and isinstance(stopped.error, KeyboardInterrupt):
                raise stopped.error from interrupt  # the cause says which signal stopped us
            raise
    if died is not None:
        raise died
    while outcome is None:  # a handler that did not raise: carry on as if nothing happened
        outcome = _next_outcome(child, progress, None)
    return outcome


def _outcome_after_interrupt(child: Child) -> Reply | None:
    """The child's outcome after we were interrupted; None if it gave none in time."""
    for wait_s, nudge in ((INTERRUPT_GRACE_S, False), (INTERRUPT_WAIT_S, True)):
        if nudge:
            child.process.send_signal(signal.SIGINT)
        with contextlib.suppress(HelperProcessError):
            if (outcome := _next_outcome(child, None, wait_s)) is not None:
                return outcome
    return None


class End:
    """One end of the link: run a user's own command or callable inside its namespace."""

    def __init__(self, ns: str, address: str) -> None:
        self.ns = ns
        self.address = address
        self._processes: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"End(ns={self.ns!r}, address={self.address!r})"

    def popen(self, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside the namespace; it is killed when the link closes."""
        process = in_netns_thread(self.ns, lambda: subprocess.Popen(list(argv), **popen_kwargs))
        self._processes.append(process)
        return process

    def run(self, argv: Sequence[str], **run_kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run `argv` inside the namespace to completion (subprocess.run's keywords)."""
        return in_netns_thread(self.ns, lambda: subprocess.run(list(argv), **run_kwargs))

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args, **kwargs) in a child process inside the namespace; its result or exception."""
        return call_in_netns(self.ns, fn, args, kwargs)

    def close(self) -> None:
        """Stop every process started with `popen` (SIGTERM, then SIGKILL)."""
        for process in self._processes:
            if process.poll() is None:
                process.terminate()  # all at once: each then gets the grace period in parallel
        for process in self._processes:
            end_process(process)
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        self._processes.clear()


# --- the link --------------------------------------------------------------------------------------
class Link:
    """A live impaired link between `client_ns` (198.18.0.1) and `server_ns` (198.18.0.2)."""

    client_address = CLIENT_ADDRESS
    server_address = SERVER_ADDRESS

    def __init__(self, config: LinkConfig, *, name: str | None, mtu: int, capture: Path | None,
                 capture_limit: int | None = None) -> None:
        from lab.link.pcapng import DEFAULT_CAPTURE_LIMIT

        self.config = config
        self.capture = capture
        self.capture_limit = capture_limit if capture_limit is not None else DEFAULT_CAPTURE_LIMIT
        self._topology = Topology(name, mtu=mtu)
        self.name = self._topology.name
        self.client_ns = self._topology.client_ns
        self.server_ns = self._topology.server_ns
        self.client = End(self.client_ns, CLIENT_ADDRESS)
        self.server = End(self.server_ns, SERVER_ADDRESS)
        self._forwarder: Any = None
        self._echo: Child | None = None
        self._echo_port: int | None = None
        self._servers = contextlib.ExitStack()  # echo servers of protocols with a server of their own
        self._server_addresses: dict[str, tuple[str, int]] = {}
        self._bulk_flows: list[BulkFlow] = []  # started by start_bulk: stopped, if still running, on close
        self._sink_addresses: dict[tuple[str, ...], tuple[str, int]] = {}  # by the sink's argv
        self._closed = False
        self.final_counters: dict[str, dict[str, int]] | None = None

    def __repr__(self) -> str:
        return f"Link(name={self.name!r}, config={self.config.to_dict()!r})"

    def _open(self) -> None:
        from lab.link.forwarder import Forwarder

        try:
            self._topology.open()
            fds = self._topology.release_fds()
            try:
                self._forwarder = Forwarder.start(
                    fds, name=self.name, config=self.config,
                    capture=self.capture, capture_limit=self.capture_limit,
                )
            finally:
                for fd in fds:  # the forwarder holds them now; the devices live as long as it does
                    os.close(fd)
            self._topology.track(self._forwarder.pid)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop everything this link started and remove its namespaces; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            for flow in self._bulk_flows:
                with contextlib.suppress(Exception):
                    flow.close()
            for end in (self.client, self.server):
                with contextlib.suppress(Exception):
                    end.close()
            if self._echo is not None:
                self._echo.close()
            with contextlib.suppress(Exception):
                self._servers.close()
            if self._forwarder is not None:
                self.final_counters = self._forwarder.stop()
        finally:
            self._topology.close()

    # --- impairment and counters ---
    def set(self, config: LinkConfig | None = None, /, *, forward: Mapping[str, object] | None = None,
            reverse: Mapping[str, object] | None = None, **impairment: object) -> None:
        """Change the running link's impairment from the next packet on: some keys (OPTION_KEYS,
        e.g. `link.set(loss="20%")`, in this link's direction; `forward={...}`/`reverse={...}` in
        one direction) or a whole new LinkConfig.

        Parsed here, once; the forwarder receives the parsed config. Random decisions carry on
        (`reseed` restarts them)."""
        self._check_open()
        # validated before anything changes
        if config is None:
            new = self.config.with_options(impairment, forward=forward, reverse=reverse)
        else:
            given = {**impairment, "forward": forward, "reverse": reverse}
            new = _only_config(config, {k: v for k, v in given.items() if v is not None})
        self._forwarder.set(new)
        self.config = new

    def reseed(self) -> None:
        """Restart the link's random decisions from its seed (same drops for the next run)."""
        self._check_open()
        self._forwarder.reseed()

    def counters(self) -> dict[str, dict[str, int]]:
        """The forwarder's per-direction counters: {"forward": {...}, "reverse": {...}}."""
        if self._closed:
            if self.final_counters is None:
                raise LabError("the link is closed and its forwarder left no final counters")
            return self.final_counters
        return self._forwarder.counters()

    def _check_open(self) -> None:
        if self._closed:
            raise LabError(f"link {self.name} is closed")

    @property
    def forwarder_alive(self) -> bool:
        """True while the link's forwarder process runs (False once closed, or if it died)."""
        return not self._closed and self._forwarder is not None and self._forwarder.alive

    def wait_forwarder(self) -> str:
        """Block until the forwarder process ends (signals still interrupt); how it ended."""
        self._check_open()
        # WNOWAIT: wait without reaping, so the Popen still owns the exit status; and unlike
        # Popen.wait, a Ctrl-C is not held back 0.25 s waiting for the child.
        os.waitid(os.P_PID, self._forwarder.pid, os.WEXITED | os.WNOWAIT)
        return self._forwarder.exit_description()

    # --- measuring ---
    def echo_port(self) -> int:
        """Start the lab's echo server (TCP and UDP) in the server namespace once; its port."""
        self._check_open()
        if self._echo is not None and self._echo.alive and self._echo_port is not None:
            return self._echo_port
        from lab.endpoints.server import spawn_server_process

        if self._echo is not None:
            self._echo.close()  # it died: reap it before starting another

        try:
            self._echo, ready = spawn_server_process(
                "both", host=SERVER_ADDRESS, port=ECHO_PORT, popen=self.server_place.popen)
        except EndpointError as exc:
            raise EndpointError(f"in {self.server_ns}: {exc}") from exc
        self._echo_port = int(ready["udp"][1])
        return self._echo_port

    @property
    def server_place(self) -> Place:
        """The server namespace as a place to run echo servers (lab.protocols.Place)."""
        return _place(self.server_ns, SERVER_ADDRESS)

    @property
    def client_place(self) -> Place:
        """The client namespace as a place to run a sink (a download's: data flows server -> client)."""
        return _place(self.client_ns, CLIENT_ADDRESS)

    def server_for(self, protocol: str) -> tuple[str, int]:
        """Where `protocol`'s echo server listens in the server namespace; started once.

        The lab's echo server (`echo_port`, TCP and UDP on one port) answers every protocol that
        keeps the default `server_argv`; a protocol with a server of its own gets its process.
        """
        from lab.protocols import Protocol, get_protocol

        self._check_open()
        chosen = get_protocol(protocol)
        if type(chosen).server_argv is Protocol.server_argv:
            return SERVER_ADDRESS, self.echo_port()
        if chosen.name not in self._server_addresses:
            serving = chosen.serving(self.server_place)
            self._server_addresses[chosen.name] = self._servers.enter_context(serving)
        return self._server_addresses[chosen.name]

    def run(self, protocol: str, plan: TrafficPlan | None = None, *,
            progress: Callable[[int, int], None] | None = None, **plan_kwargs: Any) -> Result:
        """Measure `protocol` through the link against the lab's echo server; a full Result."""
        return self.measure(protocol, plan, progress=progress, **plan_kwargs)[1]

    def measure(self, protocol: str, plan: TrafficPlan | None = None, *,
                progress: Callable[[int, int], None] | None = None,
                **plan_kwargs: Any) -> tuple[RunRecord, Result]:
        """Like `run`, but also hand back the client's raw RunRecord (per-probe timeline)."""
        from lab.endpoints.client import run_client
        from lab.metrics import compute_result
        from lab.schedule import RunInterrupted

        if plan is not None and plan_kwargs:
            raise ConfigError("give either a TrafficPlan or its keywords (count=, rate=...), not both")
        plan = plan if plan is not None else TrafficPlan(**plan_kwargs)
        address = self.server_for(protocol)
        # Ctrl-C/SIGTERM: the partial record is finished into a result, then re-raised
        record, stopped, link, kernel = self._counted(
            self.client_ns, run_client, (protocol, address, plan), {"round_trip_s": self.round_trip_s()},
            RunInterrupted, lambda exc: exc.record, progress)
        result = compute_result(record, expected_loss_ratio=self.config.expected_loss_ratio())
        result.link, result.kernel = link, kernel
        if stopped is not None:
            stopped.result = result
            raise stopped
        return record, result

    def _counted(self, ns: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 interrupted: type[Exception], partial: Callable[[Any], Any],
                 progress: Callable[..., None] | None) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
        """Run `fn` in namespace `ns` (call_in_netns) with the link's and both kernels' counters taken
        around it: (its value, or `partial(exc)` when it raised `interrupted`; that exception or
        None; the link's per-direction counter deltas; each kernel's counter deltas)."""
        from lab.kernel import counter_deltas, read_counters

        def kernels() -> dict[str, dict[str, int]]:
            return {"client": self.client.call(read_counters), "server": self.server.call(read_counters)}

        kernel_before, link_before = kernels(), self.counters()
        stopped = None
        try:
            value = call_in_netns(ns, fn, args, kwargs, progress=progress)
        except interrupted as exc:
            stopped, value = exc, partial(exc)
        link_after, kernel_after = self.counters(), kernels()
        link = {d: {k: v - link_before[d].get(k, 0) for k, v in link_after[d].items()} for d in link_after}
        kernel = {side: counter_deltas(kernel_before[side], kernel_after[side]) for side in kernel_after}
        return value, stopped, link, kernel


    # --- bulk flows (docs/architecture.md#bulk-traffic) ---
    def sink_for(self, protocol: str, direction: str = "upload") -> tuple[str, int]:
        """Where `protocol`'s discard sink listens: in the server namespace for an upload, in the
        client namespace for a download (BulkPlan.direction); started once per place (protocols with
        the same `sink_argv` share one: the lab's sink serves TCP and UDP on one port)."""
        from lab.protocols import get_protocol

        self._check_open()
        chosen = get_protocol(protocol)
        place = self.client_place if direction == "download" else self.server_place
        key = tuple(chosen.sink_argv(place.host, 0))
        if key not in self._sink_addresses:
            self._sink_addresses[key] = self._servers.enter_context(chosen.sinking(place))
        return self._sink_addresses[key]

    def _sender_ns(self, plan: BulkPlan) -> str:
        """The namespace a flow's sender runs in: the client's for an upload, the server's for a download."""
        return self.server_ns if plan.direction == "download" else self.client_ns

    def round_trip_s(self) -> float:
        """The path's configured round trip (both directions' delay and jitter), for timeouts."""
        forward, reverse = self.config.forward, self.config.reverse
        return forward.delay_s + forward.jitter_s + reverse.delay_s + reverse.jitter_s

    def start_bulk(self, protocol: str, plan: BulkPlan, *,
                   progress: Callable[..., None] | None = None) -> BulkFlow:
        """Start one bulk flow of `protocol` to its sink, without waiting: its handle (`.result()`).
        An upload is sent from the client namespace, a download from the server's (`plan.direction`).
        Several started together run at once (give them one `plan.start_at_ns` to line them up);
        the link's counters are the caller's to take around them."""
        from lab.bulk.running import start_flow_in_netns

        address = self.sink_for(protocol, plan.direction)
        flow = start_flow_in_netns(self._sender_ns(plan), protocol, address, plan, progress=progress,
                                   round_trip_s=self.round_trip_s())
        self._bulk_flows = [f for f in self._bulk_flows if not f.done] + [flow]
        return flow

    def bulk(self, protocol: str, plan: BulkPlan, *,
             progress: Callable[..., None] | None = None) -> BulkResult:
        """One bulk flow through the link (either way: `plan.direction`), waited for: its BulkResult
        with the link's per-direction counters (`link`) and both kernels' counter deltas (`kernel`)
        during it. A Ctrl-C/SIGTERM raises BulkInterrupted carrying the partial result (as
        `measure` raises RunInterrupted)."""
        from lab.bulk.plan import BulkInterrupted
        from lab.bulk.running import flow_in_namespace

        address = self.sink_for(protocol, plan.direction)
        result, stopped, link, kernel = self._counted(
            self._sender_ns(plan), flow_in_namespace, (protocol, address, plan),
            {"round_trip_s": self.round_trip_s()}, BulkInterrupted, lambda exc: exc.result, progress)
        result.link, result.kernel = link, kernel
        if stopped is not None:
            raise stopped
        return result


def _place(ns: str, host: str) -> Place:
    """Namespace `ns` as a place to run a server at `host` (its processes start inside it)."""

    def popen_inside(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return in_netns_thread(ns, lambda: subprocess.Popen(argv, **kwargs))

    return Place(f"namespace {ns}", host, popen_inside)


def open_link(config: LinkConfig | None = None, *, name: str | None = None, mtu: int = 1500,
              capture: Path | None = None, capture_limit: int | str | None = None,
              seed: int | None = None, direction: str | None = None,
              forward: Mapping[str, object] | None = None, reverse: Mapping[str, object] | None = None,
              **impairment: object) -> Link:
    """Validate the configuration (and capture file), then bring up a link (needs CAP_NET_ADMIN).

    `config` is a parsed LinkConfig; or give the impairment as keywords (OPTION_KEYS, e.g.
    `loss="10%"`, with `seed=` and `direction=`), parsed here into one; `forward={...}` and
    `reverse={...}` (the same keys) set one direction over them, e.g.
    `open_link(forward={"delay": "10ms"}, reverse={"delay": "2ms"})`. `capture_limit` (bytes, or
    a size such as '64mb'; default 256mb) stops the capture there. Close the link when done.
    """
    from lab.privileges import CAP_NET_ADMIN, require

    if config is None:
        config = LinkConfig.from_options(impairment, direction=direction or "both",
                                         seed=1 if seed is None else seed, forward=forward, reverse=reverse)
    else:
        given = {**impairment, "seed": seed, "direction": direction, "forward": forward, "reverse": reverse}
        config = _only_config(config, {k: v for k, v in given.items() if v is not None})
    limit = parse_capture_limit(capture_limit)
    capture_path = check_capture_path(Path(capture)) if capture else None  # before any namespace exists
    require(CAP_NET_ADMIN)
    link = Link(config, name=name, mtu=mtu, capture=capture_path, capture_limit=limit)
    link._open()
    return link


def _only_config(config: LinkConfig, options: Mapping[str, object]) -> LinkConfig:
    """`config`, checked to be a LinkConfig given without impairment keywords beside it."""
    if not isinstance(config, LinkConfig):
        raise ConfigError(f"expected a LinkConfig (lab.link.models), got {type(config).__name__}; "
                          "impairment options go as keywords, e.g. loss='5%'")
    if options:
        raise ConfigError(f"give either a LinkConfig or impairment keywords, not both "
                          f"(got {', '.join(sorted(options))} beside a LinkConfig)")
    return config


def parse_capture_limit(value: int | str | None) -> int:
    """A capture size limit in bytes ('256mb', 65536...); None -> the default (256 MiB)."""
    from lab.link.params import parse_size
    from lab.link.pcapng import DEFAULT_CAPTURE_LIMIT, MAX_CAPTURE_LIMIT, MIN_CAPTURE_LIMIT

    if value is None:
        return DEFAULT_CAPTURE_LIMIT
    return parse_size(value, key="capture_limit", minimum=MIN_CAPTURE_LIMIT, maximum=MAX_CAPTURE_LIMIT)


def check_capture_path(path: Path) -> Path:
    """ConfigError (one line) unless `path` can be a capture file: a new or regular file in a
    writable directory. Checked before the link exists, so a typo costs nothing."""
    parent = path.parent
    if path.is_dir():
        raise ConfigError(f"capture {path}: is a directory; give a file name such as {path / 'link.pcapng'}")
    if not parent.is_dir():
        what = "does not exist" if not parent.exists() else "is not a directory"
        raise ConfigError(f"capture {path}: the folder {parent} {what}; create it first")
    if path.exists() and not path.is_file():
        raise ConfigError(f"capture {path}: exists and is not a regular file (the capture is a pcapng file)")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"capture {path}: not writable by this user")
    return path


class LinkFactory:
    """What the `impaired_link` fixture yields: call it to open links; `close_all` at teardown."""

    def __init__(self, seed: int = 1, name_hint: str = "") -> None:
        self.seed = seed
        self.name_hint = name_hint  # only for messages: names stay short and unique (ifname limits)
        self.links: list[Link] = []

    def __call__(self, config: LinkConfig | None = None, /, **impairment: Any) -> Link:
        """Open a link with these impairment options (plus forward=, reverse=, seed=, direction=,
        mtu=, capture=), or with a LinkConfig (plus name=, mtu=, capture=)."""
        if config is None:
            impairment.setdefault("seed", self.seed)
        link = open_link(config, **impairment)
        self.links.append(link)
        return link

    def close_all(self) -> None:
        """Close every link this factory opened (newest first)."""
        errors: list[BaseException] = []
        while self.links:
            try:
                self.links.pop().close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


# --- `lab link` ------------------------------------------------------------------------------------
def link_command(name: str, config: LinkConfig, mtu: int, capture: Path | None,
                 capture_limit: str | None = None) -> int:
    """`lab link`: bring the link up, explain how to use it, wait for Ctrl-C/SIGTERM/SIGHUP, tear down.

    Exit 0 after a signal; 1 if the forwarder died on its own (said on stderr: the link is down).
    """
    link = open_link(config, name=name, mtu=mtu, capture=capture, capture_limit=capture_limit)
    died: str | None = None
    try:
        described = link.config.to_dict()
        print(f"link {link.name} is up (seed {config.seed}, mtu {mtu})", flush=True)
        print(f"  client namespace  {link.client_ns:<24} {CLIENT_ADDRESS}")
        print(f"  server namespace  {link.server_ns:<24} {SERVER_ADDRESS}")
        if link.config.symmetric:
            print(f"  each way          {_describe(described['forward'])}")
        else:
            print(f"  client->server    {_describe(described['forward'])}")
            print(f"  server->client    {_describe(described['reverse'])}")
        if capture:
            from lab.link.params import format_size

            print(f"  capture           {capture} (stops at {format_size(link.capture_limit)})")
        lab = "lab" if shutil.which("lab") else f"{sys.executable} -m lab"  # `ip netns exec` keeps PATH
        print("run anything through it, e.g.:")
        print(f"  ip netns exec {link.server_ns} {lab} serve both --host {SERVER_ADDRESS}")
        print(f"  ip netns exec {link.client_ns} {lab} send udp {SERVER_ADDRESS} 7007 --count 1000")
        print("press Ctrl-C to stop", flush=True)
        # Waiting on the forwarder itself: a signal interrupts the wait, and a forwarder that dies
        # is noticed at once instead of leaving a link that silently carries nothing.
        died = link.wait_forwarder()
        print(f"lab: error: link {link.name}: the forwarder (the process that carries the packets) {died}; "
              "the link is down and is being removed", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:  # SIGTERM/SIGHUP, raised by the topology's signal guard
        if exc.code not in (128 + signal.SIGTERM, 128 + signal.SIGHUP, 0, None):
            raise
    finally:
        link.close()
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone; the link is already removed
        _print_final(link)
    return 0 if died is None else 1


def _print_final(link: Link) -> None:
    print("final counters:")
    not_captured = 0
    for direction_name, values in (link.final_counters or {}).items():
        shown = ", ".join(f"{k}={v}" for k, v in values.items() if v)
        arrow = DIRECTION_ARROWS.get(direction_name, "")
        dropped = values.get("dropped_loss", 0) + values.get("dropped_queue", 0)
        packets_in = values.get("packets_in", 0)
        share = f"; dropped {dropped / packets_in:.2%} of packets in" if packets_in else ""
        queued = values.get("queued_at_close", 0)
        if queued:
            share += f"; {queued} still queued when the link closed (never delivered)"
        not_captured += values.get("not_captured", 0)
        print(f"  {direction_name} ({arrow}): {shown or 'nothing passed'}{share}")
    if link.final_counters is None:
        print("  (the forwarder did not answer; its counters are lost)")
    if link.capture is not None and not_captured:
        from lab.link.params import format_size

        print(f"capture {link.capture} stopped at its limit of {format_size(link.capture_limit)}: "
              f"{not_captured} later packets not captured (raise it with --capture-limit)")
    print(f"link {link.name} removed", flush=True)




def _describe(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items()) or "no impairment"

