"""Protocols the lab measures: one interface, one module each, found by name (docs/architecture.md#protocols).

A protocol is an object with the `Protocol` interface: its name and kernel transport, how to run
its measuring client, which echo server it talks to (started by the runner in a place: on
loopback, inside the link's server namespace, or behind the loopback relay), what it needs, and
which per-protocol figures it adds. The CLI's choices, scenario validation, pytest ids, the
runner, the summary table and every plot take the list from `registry()` and never branch on a
name, so a new protocol is one module.

Built-in protocols live in this package (`tcp.py`, `udp.py`) and are listed in `BUILTIN`; a
package outside this repository adds one through the entry-point group `wirelab.protocols`::

    [project.entry-points."wirelab.protocols"]
    my-protocol = "my_package.protocol:PROTOCOL"

The entry point names a `Protocol` instance (or a zero-argument callable returning one).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from lab.errors import ConfigError

if TYPE_CHECKING:
    from lab.bulk.plan import BulkPlan, BulkResult
    from lab.records import RunRecord, TrafficPlan

ENTRY_POINT_GROUP = "wirelab.protocols"
BUILTIN = (
    "lab.protocols.tcp:TCP", "lab.protocols.udp:UDP",
    "lab.protocols.tcp_cc:TcpReno", "lab.protocols.tcp_cc:TcpCubic", "lab.protocols.tcp_cc:TcpBbr",
    "lab.protocols.udplite:UdpLite",
    "lab.protocols.quic:QUIC", "lab.protocols.quic:QUICDatagram",
    "lab.protocols.arq.protocol:StopAndWait", "lab.protocols.arq.protocol:GoBackN",
    "lab.protocols.arq.protocol:SelectiveRepeat",
)
TRANSPORTS = ("tcp", "udp")  # kernel transports the lab's link and echo servers carry


@dataclass(frozen=True, slots=True)
class Requirement:
    """Something a protocol needs on this machine: an importable module, or a check of the kernel.

    `check()` returns None when the need is met, else one sentence saying what is missing and how
    to get it.
    """

    what: str  # e.g. "the aioquic module", "the bbr congestion control"
    module: str | None = None  # importable when met
    check_fn: Callable[[], str | None] | None = None

    def check(self) -> str | None:
        """None when met; else why not, in one sentence."""
        if self.module is not None and importlib.util.find_spec(self.module) is None:
            return f"needs {self.what} (pip install {self.module.split('.')[0]})"
        if self.check_fn is not None:
            return self.check_fn()
        return None


@dataclass(frozen=True, slots=True)
class Place:
    """Where a protocol's echo server runs: its bind address, and how to start a process there.

    `LOOPBACK` is this machine's loopback; a link's server namespace is a Place whose `popen`
    starts processes inside that namespace (lab.link.session).
    """

    name: str  # for messages: "loopback", "namespace lab-1a2b-server"
    host: str  # the address the server binds
    popen: Callable[..., subprocess.Popen[Any]] = field(default=subprocess.Popen, compare=False)


LOOPBACK = Place("loopback", "127.0.0.1")


class Protocol:
    """The interface every measured protocol implements (subclass it; set the class attributes).

    - `name`: what users type (`lab send NAME`, `protocols = ["NAME"]`), lower case.
    - `transport`: the kernel transport carrying it, "tcp" or "udp" (counters, firewalls, and
      whether the unprivileged loopback relay, which carries UDP only, can impair it).
    - `label`: how tables and plots title it; `style`: its rich style in the terminal.
    - `reliable`: True if it retransmits until every probe is delivered (the report then
      explains its losses as retransmissions, not as losses).
    - `server_kind`: which of the lab's echo servers it talks to ("tcp", "udp"); `serving(place)`
      starts it wherever the run happens (a protocol with a server of its own overrides
      `server_argv`).
    - `requires`: what it needs beyond the lab (see `Requirement`); `unavailable()` says what is
      missing. Root for the impaired link is the runner's business, not the protocol's.
    - `metrics`: per-protocol figures (`lab.metric_registry.Metric`) for expectations and tables.
    - `bulk_driver`, `sink_argv`: its bulk flows (lab.bulk) and the sink they go to.
    """

    name: ClassVar[str]
    transport: ClassVar[str]
    label: ClassVar[str] = ""
    description: ClassVar[str] = ""
    reliable: ClassVar[bool] = False
    style: ClassVar[str] = "bold"
    server_kind: ClassVar[str] = ""
    requires: ClassVar[tuple[Requirement, ...]] = ()
    metrics: ClassVar[tuple[Any, ...]] = ()
    # "module:function" running this protocol's bulk flows (lab.bulk): named, not imported, so the
    # bulk module may use the protocol's module without a cycle (as BUILTIN names protocols)
    bulk_driver: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__ and "label" not in cls.__dict__:  # a subclass names its own
            cls.label = cls.name.upper()
        if not cls.server_kind and "transport" in cls.__dict__:
            cls.server_kind = cls.transport

    def run_client(self, address: tuple[str, int], plan: TrafficPlan, *,
                   progress: Callable[..., None] | None = None, deadline_s: float | None = None,
                   round_trip_s: float = 0.0) -> RunRecord:
        """Measure against the echo server at `address` (a lab target) following `plan`.

        Build the run on `lab.schedule.ProbeSchedule` (it keeps the record and the bounds); raise
        `lab.schedule.RunInterrupted` (from `schedule.interrupted(now)`) on KeyboardInterrupt and
        `lab.errors.EndpointError` when nothing answers. `round_trip_s` is the path's known
        round-trip delay (a handshake may need several).
        """
        raise NotImplementedError

    def run_bulk(self, address: tuple[str, int], plan: BulkPlan, *,
                 progress: Callable[..., None] | None = None, round_trip_s: float = 0.0) -> BulkResult:
        """One bulk flow (lab.bulk) to this protocol's sink at `address` (see `sink_argv`).

        Bounded by `plan` (duration, bytes); on KeyboardInterrupt it returns what was measured
        with `stopped="interrupted"` rather than raising. Raise `lab.errors.EndpointError` when
        nothing answers. `round_trip_s` is the path's known round-trip delay (how long the last
        bytes may take). The default calls `bulk_driver` with the protocol first; a protocol with
        none has no bulk traffic: a ConfigError.
        """
        if not self.bulk_driver:
            raise ConfigError(f"bulk traffic is not available for {self.name}: its protocol names no "
                              "bulk_driver (docs/architecture.md#bulk-traffic)")
        module, _, function = self.bulk_driver.partition(":")
        driver = getattr(importlib.import_module(module), function)
        return driver(self, address, plan, progress=progress, round_trip_s=round_trip_s)

    def sink_argv(self, host: str, port: int) -> list[str]:
        """The command of the sink this protocol's bulk flows go to, serving at (host, port): a
        helper process like `server_argv`'s. The default is the lab's discard sink
        (lab.endpoints.sink: TCP and UDP on one port)."""
        from lab.child import python_argv

        return python_argv("lab.endpoints.sink", "--host", host, "--port", str(port))

    @contextlib.contextmanager
    def sinking(self, place: Place = LOOPBACK, port: int = 0) -> Iterator[tuple[str, int]]:
        """Run this protocol's sink at `place` for the block (its own process, as `serving`); its address.

        In a session of its own: a Ctrl-C at the terminal stops the flows, which then still ask the
        sink for their counts; the sink itself stops when the block ends."""
        from lab.child import spawn

        name = f"the {self.label} discard sink ({place.name})"
        with spawn(name, self.sink_argv(place.host, port), popen=place.popen, stop_op=None,
                   new_session=True) as child:
            yield self.server_address(child.info)

    @property
    def relayable(self) -> bool:
        """True if the unprivileged loopback relay (UDP only) can carry and impair it."""
        return self.transport == "udp"

    def server_argv(self, host: str, port: int) -> list[str]:
        """The command of the echo server this protocol talks to, serving at (host, port).

        A helper process (lab.child): it answers Ready({transport: [host, port], ...}) on its
        channel, or Failed(error). The default is the lab's own echo server of `server_kind`.
        """
        from lab.child import python_argv

        return python_argv("lab.endpoints.server", self.server_kind, "--host", host, "--port", str(port))

    def server_address(self, ready: Mapping[str, Any]) -> tuple[str, int]:
        """Where the server that sent `ready` listens for this protocol (its transport's address)."""
        host, port = ready.get(self.transport) or ready["address"]
        return str(host), int(port)

    @contextlib.contextmanager
    def serving(self, place: Place = LOOPBACK, port: int = 0) -> Iterator[tuple[str, int]]:
        """Run this protocol's echo server at `place` (port 0: any free one) for the block; its address.

        Its own process, so the measured server never shares the client's GIL
        (docs/architecture.md#processes); stopped, and gone, when the block ends.
        """
        from lab.child import spawn

        name = f"the {self.label} echo server ({place.name})"
        with spawn(name, self.server_argv(place.host, port), popen=place.popen, stop_op=None) as child:
            yield self.server_address(child.info)

    def run(self, address: tuple[str, int], plan: TrafficPlan, **kw: Any) -> RunRecord:
        """`run_client`, after checking this machine has what the protocol needs."""
        self.require_available()
        return self.run_client(address, plan, **kw)

    def require_available(self) -> None:
        """ConfigError saying what is missing unless this machine has what the protocol needs."""
        if why := self.unavailable():
            raise ConfigError(f"protocol {self.name} cannot run here: {why}")

    def summary_lines(self, result: Any) -> list[str]:
        """Extra lines for `lab send`'s summary of one of its results (its own observations)."""
        return []

    def unavailable(self) -> str | None:
        """None if everything the protocol needs is here; else what is missing."""
        for requirement in self.requires:
            if why := requirement.check():
                return why
        return None

    def __repr__(self) -> str:
        return f"<protocol {self.name} over {self.transport}>"


_registry: dict[str, Protocol] | None = None
_load_errors: dict[str, str] = {}


def _load(target: Any, source: str) -> Protocol:
    obj = target
    if callable(obj) and not isinstance(obj, Protocol):  # a Protocol subclass, or a factory
        obj = obj()
    if not isinstance(obj, Protocol):
        raise TypeError(f"{source} is not a lab.protocols.Protocol (got {type(obj).__name__})")
    if getattr(obj, "transport", None) not in TRANSPORTS:
        raise TypeError(f"{source}: transport must be one of {', '.join(TRANSPORTS)}")
    if not isinstance(getattr(obj, "name", None), str) or not obj.name or obj.name != obj.name.lower():
        raise TypeError(f"{source}: name must be a non-empty lower-case string")
    return obj


def _import_builtin(spec: str) -> Protocol:
    module, _, attr = spec.partition(":")
    return _load(getattr(importlib.import_module(module), attr), spec)


def _discover() -> dict[str, Protocol]:
    found: dict[str, Protocol] = {}
    for spec in BUILTIN:
        protocol = _import_builtin(spec)
        found[protocol.name] = protocol
    from importlib.metadata import entry_points

    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        source = f"entry point {entry.name} = {entry.value} ({ENTRY_POINT_GROUP})"
        try:
            protocol = _load(entry.load(), source)
        except Exception as exc:  # a broken plugin must not take the lab down: say so where it matters
            _load_errors[entry.name] = f"{source} failed to load: {type(exc).__name__}: {exc}"
            continue
        if protocol.name in found:
            _load_errors[protocol.name] = f"{source} ignored: protocol {protocol.name!r} already exists"
            continue
        found[protocol.name] = protocol
    return found


def registry() -> dict[str, Protocol]:
    """Every protocol this install knows, built-ins first, in a stable order (name -> Protocol)."""
    global _registry
    if _registry is None:
        _registry = _discover()
    return _registry


def register(protocol: Protocol) -> Protocol:
    """Add a protocol at run time (tests, notebooks); returns it. Replacing a name is refused."""
    protocols = registry()
    protocol = _load(protocol, repr(protocol))
    if protocol.name in protocols and protocols[protocol.name] is not protocol:
        raise ConfigError(f"protocol {protocol.name!r} is already registered")
    protocols[protocol.name] = protocol
    return protocol


def unregister(name: str) -> None:
    """Remove a protocol added with `register` (built-ins included: for tests only)."""
    registry().pop(name, None)


def names() -> tuple[str, ...]:
    """The registered protocol names, in registry order."""
    return tuple(registry())


def get_protocol(name: str) -> Protocol:
    """The registered protocol called `name`; ConfigError listing the known ones otherwise."""
    protocols = registry()
    try:
        return protocols[name]
    except (KeyError, TypeError):
        known = ", ".join(protocols)
        extra = f" ({_load_errors[name]})" if isinstance(name, str) and name in _load_errors else ""
        raise ConfigError(f"unknown protocol {name!r}: known protocols are {known}{extra}",
                          ) from None


def load_errors() -> dict[str, str]:
    """Plugins that failed to load, by entry-point name (shown by `lab protocols`)."""
    registry()
    return dict(_load_errors)


def describe_protocols() -> str:
    """`lab protocols`: one line per protocol (name, transport, reliable or not, what it needs), then
    the plugins that failed to load."""
    from lab.i18n import _

    lines = []
    for protocol in registry().values():
        kind = _("reliable") if protocol.reliable else _("best effort")
        why = protocol.unavailable()
        state = _("unavailable: {why}").format(why=why) if why else _("available")
        module = type(protocol).__module__
        origin = "" if module.startswith("lab.protocols.") else f"  [{module}]"
        lines.append(f"{protocol.name:<14} {protocol.transport:<4} {kind:<12} {protocol.description}"
                     f"  ({state}){origin}")
    lines += [_("not loaded: {why}").format(why=why) for why in load_errors().values()]
    return "\n".join(lines)
