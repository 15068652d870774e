"""Scenario files (`scenarios/*.toml`) -> a validated, frozen experiment plan. Touches no system.

Format (every table but `[scenario]` is optional)::

    [scenario]
    name = "loss-sweep"            # default: the file name without .toml
    description = "..."
    protocols = ["tcp", "udp"]     # default; each must be a registered protocol
    seed = 1                       # impairment models' seed (same seed, same link decisions)
    capture = false                # also write link.pcapng
    mtu = 1500                     # MTU of the link's devices
    slow = false                   # true: pytest marks its items `slow` (kept out of `make test`)
    privileged = false             # true: only meaningful over the real link (no unprivileged relay run)
    atlas = false                  # true: add the malformed-packet atlas to the report

    [traffic]                      # lab.records.TrafficPlan
    count = 200                    # probes; or `duration = 2.0` (seconds) with a rate: count = rate*duration
    size = 64                      # bytes on the wire per probe (32-byte header + payload)
    rate = 100                     # probes/s, paced open loop; absent = ping-pong
    timeout = 1.0                  # seconds before a probe counts as lost
    streams = 1                    # logical streams (head-of-line experiment)

    [link]                         # lab link's impairment keys, netem vocabulary
    loss = "5%"                    # also delay, jitter, distribution, reorder, duplicate, corrupt,
                                   # rate, limit, direction
    [link.forward]                 # client->server only: the same keys, over [link]'s
    delay = "10ms"
    [link.reverse]                 # server->client only
    delay = "2ms"

    [sweep]                        # key -> list of values; the cartesian product runs, in file order
    loss = ["0%", "5%"]            # a bare key is a link or traffic key; `rate` exists in both, so
    traffic.rate = [10, 100]       # write `link.rate` or `traffic.rate`
    link.forward.loss = ["0%", "20%"]   # one direction's key

    [expect.udp]                   # assertions on each protocol's Result (see EXPECTATION_DOC)
    loss_ratio = "within_ci"
    [expect.tcp]
    loss_ratio = 0
    rtt_p50_ms = { min = 40, max = 45 }
    [expect."loss=0%,traffic.rate=10".udp]    # only at the sweep point with exactly this id
    loss_ratio = 0                 # replaces the general loss_ratio there; the other metrics stay

A key under [expect] is a protocol (its table applies at every sweep point) or a sweep point id,
as pytest ids and `lab run` show it (`key=value` per sweep key, in [sweep] order, joined by `,`;
quoted in TOML). A point's table holds one table per protocol; a metric it names replaces the
general expectation of that metric at that point only. Anything else is an error listing the
scenario's protocols and point ids.
"""

from __future__ import annotations

import itertools
import math
import re
import reprlib
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.errors import ConfigError, ScenarioError
from lab.files import read_limited
from lab.i18n import _
from lab.link.models import DIRECTION_NAMES, DIRECTIONS, OPTION_KEYS, LinkConfig
from lab.records import Result, TrafficPlan

# The impairment keys of `lab link` and `impaired_link(...)` (one list, lab.link.models.OPTION_KEYS).
LINK_KEYS = (*OPTION_KEYS, "direction")
# [link.forward] / [link.reverse]: one direction's own OPTION_KEYS, over [link]'s
# (docs/architecture.md#link-configuration).
LINK_DIRECTION_TABLES = DIRECTION_NAMES
TRAFFIC_KEYS = ("count", "size", "rate", "timeout", "streams", "duration", "window")
SCENARIO_KEYS = ("name", "description", "protocols", "seed", "capture", "mtu", "slow", "privileged", "atlas")
TOP_LEVEL_TABLES = ("scenario", "traffic", "link", "sweep", "expect", "flows")
# Bulk traffic (`[traffic] kind = "bulk"`, lab.flows) takes these besides kind; probes take TRAFFIC_KEYS.
BULK_ONLY_TRAFFIC_KEYS = ("kind", "bytes", "interval")
DEFAULT_PROTOCOLS = ("tcp", "udp")
DEFAULT_MTU = 1500  # Ethernet
MTU_RANGE = (576, 65535)  # RFC 791: every IPv4 host must accept 576-byte datagrams
MAX_SWEEP_POINTS = 200  # a sweep beyond this is almost certainly a typo, and would run for hours
MAX_SCENARIO_PROTOCOLS = 16  # lab.report.schema.MAX_PROTOCOLS: what one result file may hold
# Protocol runs in one scenario (points x protocols): bounds result.json (3000 timeline rows each, about
# 35 MB at 400) so that `lab report` reads back whatever `lab run` wrote.
MAX_PROTOCOL_RUNS = 400
MAX_DURATION_S = 3600.0
MAX_SEED = 2**32 - 1  # seeds are recorded in result.json and passed on as 32-bit values
SCENARIO_FILE_LIMIT = 1024 * 1024  # the shipped scenarios are under 4 KiB; a bigger file is a mistake
MAX_NESTING = 16  # a valid scenario nests at most 6 deep ([expect."ID".udp] rtt_p50_ms = {min = 1})
MAX_NAME = 100  # characters of [scenario] name
SLUG_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
MAX_SLUG = 64
# IPv4 header (20) + UDP header (8): what an MTU-sized packet spends before the datagram's payload.
IPV4_UDP_OVERHEAD = 28
IPV4_HEADER = 20
FRAGMENT_UNIT = 8  # RFC 791: fragment offsets count 8-byte units

STATISTICAL = ("within_ci", "within_ci_fragments")
# What an expectation may check: the metrics of lab.metric_registry that allow it (the lab's own and
# the registered protocols'). `METRICS` (name -> one-line doc) and `EXPECTATION_DOC` are computed
# from the registry when read (module __getattr__ below), so a protocol added later shows up.


def expectation_doc() -> str:
    """How an expectation is written, and the metrics it may name (for error messages)."""
    from lab.metric_registry import expectation_metrics

    return (
        "an expectation is `metric = NUMBER` (equal, within 1e-9), `metric = { min = A, max = B }` "
        '(either bound optional, inclusive), or for loss_ratio `"within_ci"` (the measured loss lies '
        "in the 99% binomial interval around the link's expected loss for that many probes) or "
        '`"within_ci_fragments"` (the same, around 1-(1-e)^k where k is the number of IPv4 fragments '
        "each datagram needs at the scenario's MTU); metrics: " + ", ".join(expectation_metrics())
    )


def __getattr__(name: str) -> Any:
    if name == "METRICS":
        from lab.metric_registry import expectation_metrics

        return {metric.name: metric.doc for metric in expectation_metrics().values()}
    if name == "EXPECTATION_DOC":
        return expectation_doc()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


CI_CONFIDENCE = 0.99
EXACT_TOLERANCE = 1e-9


@dataclass(frozen=True, slots=True, kw_only=True)
class Expectation:
    """One assertion on a Result: `metric` compared by `kind` (equal, range, within_ci...)."""

    metric: str
    kind: str  # "equal" | "range" | "within_ci" | "within_ci_fragments" | "oracle"
    value: float | None = None
    min: float | None = None  # "oracle": the factors of the prediction the measure must lie within
    max: float | None = None
    oracle: str = ""  # "oracle": "mathis", "link_rate" or "textbook" (lab.flows.predictions)

    def describe(self) -> str:
        """The expectation as a user wrote it, e.g. `rtt_p50_ms in [40, 45]`."""
        if self.kind == "equal":
            return f"{self.metric} == {self.value:g}"
        if self.kind == "range":
            lo = "-inf" if self.min is None else f"{self.min:g}"
            hi = "inf" if self.max is None else f"{self.max:g}"
            return f"{self.metric} in [{lo}, {hi}]"
        if self.kind == "oracle":
            return f"{self.metric} within [{self.min:g}, {self.max:g}] x {self.oracle}"
        return f"{self.metric} {self.kind} ({CI_CONFIDENCE:.0%})"


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """The outcome of evaluating one Expectation against one Result."""

    expectation: Expectation
    passed: bool
    measured: float | None
    message: str
    interval: tuple[float, float] | None = None
    expected: float | None = None  # statistical checks: the value the interval is centred on
    expected_label: str = ""  # ...and where it comes from (e.g. the fragment formula)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for result.json."""
        data: dict[str, Any] = {
            "expectation": self.expectation.describe(),
            "metric": self.expectation.metric,
            "passed": self.passed,
            "measured": self.measured,
            "interval": list(self.interval) if self.interval else None,
            "message": self.message,
        }
        if self.expected is not None:
            data["expected"] = self.expected
            data["expected_label"] = self.expected_label
        return data


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepPoint:
    """One configuration to run every protocol over: link options, traffic and expectations.

    `link` is the [link] table as written (result.json records it); `link_config` is the same,
    parsed once while the scenario was validated and seeded with `seed`: the runner hands that on
    (docs/architecture.md#link-configuration).
    """

    id: str
    link: Mapping[str, Any]
    link_config: LinkConfig
    traffic: TrafficPlan
    expectations: Mapping[str, tuple[Expectation, ...]]
    seed: int
    mtu: int = DEFAULT_MTU
    # docs/architecture.md#flows-and-oracles: `bulk` runs every protocol as one bulk flow alone;
    # `flows` run together on one link (the point's group, named `group`).
    bulk: Any = None  # lab.bulk.BulkPlan
    flows: tuple[Any, ...] = ()  # lab.flows.FlowSpec
    group: str = ""

    @property
    def impaired(self) -> bool:
        """True if any impairment is configured (direction alone, or an empty table, impairs nothing)."""
        return any(k != "direction" and (k not in LINK_DIRECTION_TABLES or v) for k, v in self.link.items())

    def link_options(self) -> dict[str, Any]:
        """[link]'s impairment keys (without `direction` and the per-direction tables)."""
        return {k: v for k, v in self.link.items() if k != "direction" and k not in LINK_DIRECTION_TABLES}

    def direction_options(self, name: str) -> dict[str, Any]:
        """[link.forward] or [link.reverse] (`name`) as written: that direction's own keys."""
        return dict(self.link.get(name) or {})

    @property
    def direction(self) -> str:
        """Which way the impairment applies."""
        return str(self.link.get("direction", "both"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A validated scenario file: what to run, over which links, and what to expect."""

    name: str
    description: str
    points: tuple[SweepPoint, ...]
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    seed: int = 1
    capture: bool = False
    mtu: int = DEFAULT_MTU
    slow: bool = False
    privileged: bool = False
    atlas: bool = False
    path: Path | None = None
    sweep_keys: tuple[str, ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """The name as a safe file name: the default output directory is reports/SLUG."""
        return safe_name(self.name)

    def to_dict(self) -> dict[str, Any]:
        """What result.json records about the scenario."""
        flows = [f.to_dict() for f in dict.fromkeys(f for p in self.points for f in p.flows)]
        return {
            **({"flows": flows} if flows else {}),
            "name": self.name,
            "description": self.description,
            "file": str(self.path) if self.path else None,
            "protocols": list(self.protocols),
            "seed": self.seed,
            "capture": self.capture,
            "mtu": self.mtu,
            "slow": self.slow,
            "privileged": self.privileged,
            "sweep_keys": list(self.sweep_keys),
            "source": _jsonable(self.raw),
        }

    def with_seed(self, seed: int) -> Scenario:
        """The same scenario with another seed (the `--seed` override); ScenarioError if out of range."""
        from dataclasses import replace

        if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
            raise ScenarioError(f"--seed: must be an integer in 0..{MAX_SEED}, got {_show(seed)}", key="seed")

        points = tuple(
            replace(p, seed=seed, link_config=replace(p.link_config, seed=seed)) for p in self.points
        )
        return replace(self, seed=seed, points=points)


# --- loading ------------------------------------------------------------------------------------
def load_scenario(path: Path | str) -> Scenario:
    """Read and validate a scenario file; ScenarioError names the file, the key and what is allowed."""
    path = Path(path)
    return scenario_from_data(read_scenario_data(path), source=str(path), default_name=path.stem, path=path)


def read_scenario_data(path: Path | str) -> dict[str, Any]:
    """The TOML document of scenario file `path`, not yet validated (see `scenario_from_data`).

    Only a regular file of at most SCENARIO_FILE_LIMIT bytes is read (`lab run /dev/zero` would
    otherwise grow without bound); every failure is a one-line ScenarioError naming the file.
    """
    path = Path(path)
    try:
        text = read_limited(path, SCENARIO_FILE_LIMIT, "a scenario file", ScenarioError).decode("utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file (see scenarios/ for examples)") from None
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: cannot read scenario file: not UTF-8 (byte {exc.start})") from None
    return _toml_document(text, str(path))


def parse_scenario(
    text: str, *, source: str = "<scenario>", default_name: str = "scenario", path: Path | None = None
) -> Scenario:
    """Parse scenario TOML text into a Scenario (errors are prefixed with `source`)."""
    return _Parser(source, default_name, path).parse(_toml_document(text, source))


def _toml_document(text: str, source: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise ScenarioError(f"{source}: not valid TOML: nested too deeply") from None
    except ValueError as exc:  # TOMLDecodeError, and int() of a number over 4300 digits
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    where = _too_deep(data, MAX_NESTING)
    if where is not None:
        raise ScenarioError(_one_line(f"{source}: {where}: nested deeper than {MAX_NESTING} levels"))
    return data


def scenario_from_data(
    data: dict[str, Any], *, source: str, default_name: str = "scenario", path: Path | None = None
) -> Scenario:
    """Validate an already-parsed scenario document (e.g. a file's TOML with options laid over it)."""
    return _Parser(source, default_name, path).parse(data)


class _Parser:
    def __init__(self, source: str, default_name: str, path: Path | None) -> None:
        self.source = source
        self.default_name = default_name
        self.path = path

    def fail(self, where: str, message: str, *, key: str | None = None) -> ScenarioError:
        """The error at `where` (`[traffic] count`, `[expect.udp] latency`...); its `.key` is `key`,
        or the dotted key `where` names (`traffic.count`, `expect.udp.latency`)."""
        return ScenarioError(_one_line(f"{self.source}: {where}: {message}"), key=key or _dotted_key(where))

    def parse(self, data: dict[str, Any]) -> Scenario:
        for key in data:
            if key not in TOP_LEVEL_TABLES:
                raise self.fail(
                    key, f"unknown table; allowed: {', '.join(map(_table_header, TOP_LEVEL_TABLES))}"
                )
        for key in TOP_LEVEL_TABLES:
            if key in data and key != "flows" and not isinstance(data[key], dict):
                raise self.fail(key, f"must be a table ([{key}]), got {_show(data[key])}")
        meta = self.scenario_table(data.get("scenario", {}))
        traffic = dict(data.get("traffic", {}))
        bulk_kind = self.traffic_kind(traffic)
        for key in traffic:
            if key not in TRAFFIC_KEYS and not (bulk_kind and key in BULK_ONLY_TRAFFIC_KEYS):
                raise self.fail(f"[traffic] {key}", f"unknown key; allowed: {', '.join(TRAFFIC_KEYS)}"
                                + ("" if bulk_kind else ', and kind = "bulk"'))
        flows = self.flows(data, meta)
        link = self.link_table(dict(data.get("link", {})))
        sweep = self.sweep_table(data.get("sweep", {}))
        names = [name for name, _, _ in sweep]
        combos = list(itertools.product(*[values for _, _, values in sweep])) if sweep else [()]
        ids = [
            ",".join(f"{name}={_label(value)}" for name, value in zip(names, combo, strict=True)) or "base"
            for combo in combos
        ]
        if len(set(ids)) != len(ids):
            raise self.fail("[sweep]", "two sweep values give the same point id; make values distinct")
        if len(ids) * len(meta["protocols"]) > MAX_PROTOCOL_RUNS:
            raise self.fail(
                "[sweep]" if sweep else "[scenario] protocols",
                f"{len(ids)} points x {len(meta['protocols'])} protocols is over the limit of "
                f"{MAX_PROTOCOL_RUNS} protocol runs in one scenario; split the scenario",
            )
        groups = flow_groups(flows)
        if len(groups) > 1:  # one point per group and sweep value: `limit=10,group=NAME`
            ids, combos = zip(*[(f"{i},group={g}" if i != "base" else f"group={g}", (c, g))
                                for i, c in zip(ids, combos, strict=True) for g in groups], strict=True)
        else:
            combos = [(c, next(iter(groups), "")) for c in combos]
        expect_keys = flow_expect_keys(flows) if flows else meta["protocols"]
        expectations = self.expect_table(data.get("expect", {}), expect_keys,
                                         list(ids) if sweep or len(groups) > 1 else [])
        if flows:
            expectations = each_flow_expectations(expectations, [f.name for f in flows if f.kind == "bulk"])

        points = []
        for point_id, (combo, group) in zip(ids, combos, strict=True):
            point_link = dict(link)
            point_traffic = dict(traffic)
            for (_name, (table, key), _values), value in zip(sweep, combo, strict=True):
                _set_swept(point_link, point_traffic, table, key, value)
            where = f"[sweep] point {point_id}: " if sweep else ""
            bulk = None
            if bulk_kind:
                from lab.flows import parse_bulk_traffic

                bulk = parse_bulk_traffic(point_traffic, where, self.fail)
                point_traffic = {}
            plan = self.traffic_plan(point_traffic, where)
            link_config = self.link_config(point_link, meta["seed"], where)
            points.append(
                SweepPoint(
                    id=point_id,
                    link=point_link,
                    link_config=link_config,
                    traffic=plan,
                    expectations=expectations(point_id),
                    seed=meta["seed"],
                    mtu=meta["mtu"],
                    bulk=bulk,
                    flows=groups.get(group, ()),
                    group=group,
                )
            )
        return Scenario(
            name=meta["name"],
            description=meta["description"],
            points=tuple(points),
            protocols=meta["protocols"],
            seed=meta["seed"],
            capture=meta["capture"],
            mtu=meta["mtu"],
            slow=meta["slow"],
            privileged=meta["privileged"],
            atlas=meta["atlas"],
            path=self.path,
            sweep_keys=tuple(names),
            raw=data,
        )

    def traffic_kind(self, traffic: dict[str, Any]) -> bool:
        """True for `[traffic] kind = "bulk"` (lab.flows); "probes" (the default) is the probe plan."""
        kind = traffic.pop("kind", "probes")
        if kind not in ("probes", "bulk"):
            raise self.fail("[traffic] kind", f'must be "probes" or "bulk", got {_show(kind)}')
        return kind == "bulk"

    def flows(self, data: dict[str, Any], meta: dict[str, Any]) -> tuple[Any, ...]:
        """`[[flows]]` (lab.flows.parse_flows); the scenario's protocols become the flows' own."""
        if "flows" not in data:
            return ()
        from lab.flows import parse_flows

        flows = parse_flows(data["flows"], _known_protocols(), self.fail)
        if "traffic" in data:
            raise self.fail("[traffic]", "a scenario with [[flows]] gives each flow its traffic; "
                                         "remove [traffic]")
        given = (data.get("scenario") or {}).get("protocols")
        used = tuple(dict.fromkeys(f.protocol for f in flows))
        if given is not None and not set(used) <= set(given):
            raise self.fail("[scenario] protocols",
                            f"must name every protocol of [[flows]] ({', '.join(used)})")
        meta["protocols"] = used
        return flows

    def scenario_table(self, table: dict[str, Any]) -> dict[str, Any]:
        for key in table:
            if key not in SCENARIO_KEYS:
                raise self.fail(f"[scenario] {key}", f"unknown key; allowed: {', '.join(SCENARIO_KEYS)}")
        name = table.get("name", self.default_name)
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= MAX_NAME
            or not all(c.isalnum() or c in "-_." for c in name)
        ):
            raise self.fail(
                "[scenario] name",
                f"must be 1 to {MAX_NAME} letters, digits, '-', '_' or '.', got {_show(name)}",
            )
        description = table.get("description", "")
        if not isinstance(description, str):
            raise self.fail("[scenario] description", f"must be a string, got {_show(description)}")
        protocols = table.get("protocols", list(DEFAULT_PROTOCOLS))
        known = _known_protocols()
        if (
            not isinstance(protocols, list)
            or not protocols
            or not all(isinstance(p, str) and p in known for p in protocols)
            or len(set(protocols)) != len(protocols)
            or len(protocols) > MAX_SCENARIO_PROTOCOLS
        ):
            raise self.fail(
                "[scenario] protocols",
                f"must be a non-empty list of at most {MAX_SCENARIO_PROTOCOLS} distinct names from "
                f"{', '.join(sorted(known))}, got {_show(protocols)}",
            )
        seed = table.get("seed", 1)
        if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
            raise self.fail("[scenario] seed", f"must be an integer in 0..{MAX_SEED}, got {_show(seed)}")
        mtu = table.get("mtu", DEFAULT_MTU)
        if not _is_int(mtu) or not MTU_RANGE[0] <= mtu <= MTU_RANGE[1]:
            raise self.fail(
                "[scenario] mtu", f"must be an integer in {MTU_RANGE[0]}..{MTU_RANGE[1]}, got {_show(mtu)}"
            )
        flags = {}
        for key in ("capture", "slow", "privileged", "atlas"):
            value = table.get(key, False)
            if not isinstance(value, bool):
                raise self.fail(f"[scenario] {key}", f"must be true or false, got {_show(value)}")
            flags[key] = value
        return {
            "name": name,
            "description": description.strip(),
            "protocols": tuple(protocols),
            "seed": seed,
            "mtu": mtu,
            **flags,
        }

    def sweep_table(self, table: dict[str, Any]) -> list[tuple[str, tuple[str, str], list[Any]]]:
        """[(label, (table, key), values)] in file order."""
        entries: list[tuple[str, tuple[str, str], list[Any]]] = []
        for key, value in table.items():
            if key in ("link", "traffic") and isinstance(value, dict):
                allowed = LINK_KEYS if key == "link" else TRAFFIC_KEYS
                for sub, values in value.items():
                    if key == "link" and sub in LINK_DIRECTION_TABLES and isinstance(values, dict):
                        entries += self.direction_sweep(sub, values)
                        continue
                    if sub not in allowed:
                        raise self.fail(
                            f"[sweep] {key}.{sub}", f"unknown {key} key; allowed: {', '.join(allowed)}"
                        )
                    entries.append((f"{key}.{sub}", (key, sub), self.sweep_values(f"{key}.{sub}", values)))
                continue
            if key == "rate":
                raise self.fail(
                    "[sweep] rate", "ambiguous: write link.rate (bandwidth) or traffic.rate (probes/s)"
                )
            if key in LINK_KEYS:
                entries.append((key, ("link", key), self.sweep_values(key, value)))
            elif key in TRAFFIC_KEYS:
                entries.append((key, ("traffic", key), self.sweep_values(key, value)))
            else:
                raise self.fail(
                    f"[sweep] {key}",
                    f"unknown key; allowed: a [link] key ({', '.join(LINK_KEYS)}) or a [traffic] key "
                    f"({', '.join(TRAFFIC_KEYS)}), `rate` written as link.rate or traffic.rate, one "
                    "direction's key as link.forward.KEY or link.reverse.KEY",
                )
        total = math.prod(len(v) for _, _, v in entries) if entries else 1
        if total > MAX_SWEEP_POINTS:
            raise self.fail(
                "[sweep]", f"{total} points is over the limit of {MAX_SWEEP_POINTS}; split the scenario"
            )
        return entries

    def sweep_values(self, key: str, values: Any) -> list[Any]:
        if not isinstance(values, list) or not values:
            raise self.fail(f"[sweep] {key}", f"must be a non-empty list of values, got {_show(values)}")
        if any(isinstance(v, dict | list) for v in values):
            raise self.fail(f"[sweep] {key}", "values must be strings, numbers or booleans")
        return list(values)

    def expect_table(
        self, table: dict[str, Any], protocols: tuple[str, ...], point_ids: list[str]
    ) -> Callable[[str], dict[str, tuple[Expectation, ...]]]:
        """point id -> {protocol: expectations}: `[expect.PROTO]` at every point, and at one point
        `[expect."ID".PROTO]` on top, replacing the general expectation of the same metric."""
        general: dict[str, dict[str, Expectation]] = {}
        specific: dict[str, dict[str, dict[str, Expectation]]] = {}
        for key, value in table.items():
            if key in protocols:
                general[key] = self.expectations(f"[expect.{key}]", value)
                continue
            where = f"[expect.{_toml_key(key)}]"
            if key not in point_ids:
                allowed = f"not one of this scenario's protocols ({', '.join(protocols)})"
                if point_ids:
                    allowed += f" nor one of its sweep point ids ({', '.join(point_ids)})"
                raise self.fail(where, allowed)
            if not isinstance(value, dict):
                raise self.fail(where, f"must hold a table per protocol, e.g. {where[:-1]}.udp]")
            for proto, metrics in value.items():
                if proto not in protocols:
                    hint = f"; a metric goes in {where[:-1]}.PROTOCOL]" if proto in _metric_names() else ""
                    raise self.fail(
                        f"{where[:-1]}.{_toml_key(proto)}]",
                        f"not one of this scenario's protocols ({', '.join(protocols)}){hint}",
                    )
                specific.setdefault(key, {})[proto] = self.expectations(f"{where[:-1]}.{proto}]", metrics)

        def at(point_id: str) -> dict[str, tuple[Expectation, ...]]:
            merged = {proto: dict(by_metric) for proto, by_metric in general.items()}
            for proto, by_metric in specific.get(point_id, {}).items():
                merged.setdefault(proto, {}).update(by_metric)  # same metric: the point's replaces
            return {proto: tuple(by_metric.values()) for proto, by_metric in merged.items()}

        return at

    def expectations(self, where: str, metrics: Any) -> dict[str, Expectation]:
        """One `[expect...PROTO]` table: metric -> Expectation."""
        if not isinstance(metrics, dict):
            raise self.fail(where, "must be a table of metric = expectation")
        return {m: self.expectation(where, m, v) for m, v in metrics.items()}

    def expectation(self, table: str, metric: str, value: Any) -> Expectation:
        where = f"{table} {metric}"
        if metric not in _metric_names():
            raise self.fail(where, f"unknown metric; allowed: {', '.join(_metric_names())}")
        from lab.flows import oracle_expectation

        oracle = oracle_expectation(metric, value, where, self.fail)
        if oracle is not None:
            return Expectation(metric=metric, kind="oracle", oracle=oracle[0], min=oracle[1], max=oracle[2])
        if isinstance(value, str):
            if value in STATISTICAL and metric == "loss_ratio":
                return Expectation(metric=metric, kind=value)
            raise self.fail(where, f"unknown expectation {value!r}; {expectation_doc()}")
        if _is_number(value):
            return Expectation(metric=metric, kind="equal", value=float(value))
        if isinstance(value, dict):
            extra = set(value) - {"min", "max"}
            if extra or not value:
                raise self.fail(
                    where, f"a range is {{ min = A, max = B }} (either optional), got {_show(value)}"
                )
            for bound in value.values():
                if not _is_number(bound):
                    raise self.fail(where, f"bounds must be numbers, got {_show(bound)}")
            lo, hi = value.get("min"), value.get("max")
            if lo is not None and hi is not None and lo > hi:
                raise self.fail(where, f"min ({lo}) is greater than max ({hi})")
            return Expectation(
                metric=metric,
                kind="range",
                min=None if lo is None else float(lo),
                max=None if hi is None else float(hi),
            )
        raise self.fail(where, f"unsupported value {_show(value)}; {expectation_doc()}")

    def traffic_plan(self, traffic: dict[str, Any], where: str) -> TrafficPlan:
        kwargs = dict(traffic)
        for key in ("count", "streams", "window"):
            if key in kwargs and not _is_int(kwargs[key]):
                raise self.fail(f"{where}[traffic] {key}", f"must be an integer, got {_show(kwargs[key])}")
        for key in ("rate", "timeout", "duration"):
            if key in kwargs and not _is_number(kwargs[key]):
                raise self.fail(f"{where}[traffic] {key}", f"must be a number, got {_show(kwargs[key])}")
        if "size" in kwargs and not _is_int(kwargs["size"]):
            raise self.fail(
                f"{where}[traffic] size", f"must be an integer (bytes), got {_show(kwargs['size'])}"
            )
        try:
            return TrafficPlan.from_table(kwargs, max_duration_s=MAX_DURATION_S)
        except ConfigError as exc:
            key = exc.key or str(exc).split(" ", 1)[0]
            raise self.fail(f"{where}[traffic] {key}", str(exc)) from None

    def link_table(self, link: dict[str, Any]) -> dict[str, Any]:
        """[link] with its keys checked: LINK_KEYS, and [link.forward]/[link.reverse] tables of
        OPTION_KEYS (values are judged per point, in `link_config`)."""
        for key, value in link.items():
            if key in LINK_DIRECTION_TABLES:
                if not isinstance(value, dict):
                    raise self.fail(f"[link] {key}", f"must be a table ([link.{key}]) of impairment keys "
                                    f"such as loss = \"5%\", got {_show(value)}")
                for sub in value:
                    if sub not in OPTION_KEYS:
                        why = ("a table is one direction already; `direction` belongs in [link]"
                               if sub == "direction" else f"unknown key; allowed: {', '.join(OPTION_KEYS)}")
                        raise self.fail(f"[link.{key}] {sub}", why)
            elif key not in LINK_KEYS:
                raise self.fail(f"[link] {key}", f"unknown key; allowed: {', '.join(LINK_KEYS)}, and the "
                                f"tables [link.forward], [link.reverse]")
        return link

    def direction_sweep(
        self, name: str, table: dict[str, Any]
    ) -> list[tuple[str, tuple[str, str], list[Any]]]:
        """`[sweep] link.forward.loss = [...]`: entries on one direction's key."""
        entries = []
        for sub, values in table.items():
            label = f"link.{name}.{sub}"
            if sub not in OPTION_KEYS:
                raise self.fail(f"[sweep] {label}", f"unknown key of [link.{name}]; allowed: "
                                f"{', '.join(OPTION_KEYS)}")
            entries.append((label, (f"link.{name}", sub), self.sweep_values(label, values)))
        return entries

    def link_config(self, link: dict[str, Any], seed: int, where: str) -> LinkConfig:
        """The point's [link] table (and its [link.forward]/[link.reverse]) parsed, once, into the
        LinkConfig the runner hands on."""
        direction = link.get("direction", "both")
        if direction not in DIRECTIONS:
            raise self.fail(
                f"{where}[link] direction", f"must be both, forward or reverse, got {_show(direction)}"
            )
        options = {k: v for k, v in link.items() if k != "direction" and k not in LINK_DIRECTION_TABLES}
        tables = {name: dict(link.get(name) or {}) for name in LINK_DIRECTION_TABLES}
        try:
            return LinkConfig.from_options(options, direction=direction, seed=seed, **tables)
        except ConfigError as exc:
            whole = exc
        # Only on failure: find the key that is wrong, so the message names it. Reorder alone is
        # refused (netem reorders by sending some packets without the delay): judge it with a delay.
        keyed = [("[link]", key, value) for key, value in options.items()]
        keyed += [(f"[link.{name}]", key, value)
                  for name, table in tables.items() for key, value in table.items()]
        for table, key, value in keyed:
            alone = {key: value, "delay": "1ms"} if key == "reorder" else {key: value}
            try:
                LinkConfig.from_options(alone, seed=seed)
            except ConfigError as exc:
                raise self.fail(f"{where}{table} {key}", _strip_key(str(exc), key)) from None
        if whole.key == "direction":  # a direction's own impairments where `direction` excludes it
            raise self.fail(f"{where}[link] direction", _strip_key(str(whole), "direction")) from None
        for name in LINK_DIRECTION_TABLES:  # e.g. reorder in [link.forward] with no delay that way
            if str(whole).startswith(f"{name}: "):
                raise self.fail(f"{where}[link.{name}]", str(whole)[len(name) + 2:],
                                key=f"link.{whole.key or name}") from None
        raise self.fail(f"{where}[link]", str(whole)) from None


# --- flows (lab.flows) ----------------------------------------------------------------------------
def flow_groups(flows: tuple[Any, ...]) -> dict[str, tuple[Any, ...]]:
    """group name -> its FlowSpecs ({} without [[flows]])."""
    from lab.flows import groups_of

    return groups_of(flows) if flows else {}


def flow_expect_keys(flows: tuple[Any, ...]) -> tuple[str, ...]:
    """What `[expect.KEY]` may name in a scenario with [[flows]]: a flow's name, `all` (the group's
    figures) or `each` (every flow)."""
    from lab.flows import EACH, GROUP

    return (*(f.name for f in flows), GROUP, EACH)


def each_flow_expectations(
    at: Callable[[str], dict[str, tuple[Expectation, ...]]], names: list[str],
) -> Callable[[str], dict[str, tuple[Expectation, ...]]]:
    """`at`, with `[expect.each]` laid under every flow's own table (the flow's metric wins)."""
    from lab.flows import EACH

    def merged(point_id: str) -> dict[str, tuple[Expectation, ...]]:
        tables = at(point_id)
        each = {e.metric: e for e in tables.pop(EACH, ())}
        for name in names:
            tables[name] = tuple({**each, **{e.metric: e for e in tables.get(name, ())}}.values())
        return {key: own for key, own in tables.items() if own}

    return merged


# --- expectations (pure) ------------------------------------------------------------------------
def measured_value(result: Result | Mapping[str, Any], metric: str) -> float | None:
    """The number `metric` (lab.metric_registry) reads from a Result (or its dict); None when it was not
    measured."""
    from lab.metric_registry import value_of

    value = value_of(result.to_dict() if isinstance(result, Result) else result, metric)
    return None if value is None else float(value)


def fragments_per_datagram(size: int, mtu: int) -> int:
    """IPv4 fragments one UDP datagram of `size` payload bytes needs at `mtu` (RFC 791)."""
    per_fragment = (mtu - IPV4_HEADER) // FRAGMENT_UNIT * FRAGMENT_UNIT
    return max(1, math.ceil((size + 8) / per_fragment))  # + 8: the UDP header rides in fragment 1


def loss_interval(expected: float, sent: int, confidence: float = CI_CONFIDENCE) -> tuple[float, float]:
    """Central binomial interval of the loss ratio `sent` probes show when each is lost w.p. `expected`."""
    from scipy.stats import binom

    if sent <= 0:
        return (0.0, 1.0)
    tail = (1.0 - confidence) / 2
    lo = float(binom.ppf(tail, sent, expected)) / sent
    hi = float(binom.isf(tail, sent, expected)) / sent
    return (max(0.0, lo), min(1.0, hi))


def evaluate(
    expectation: Expectation, result: Result | Mapping[str, Any], *, mtu: int = DEFAULT_MTU
) -> Check:
    """Check one expectation against one result. Pure: no I/O, no clocks."""
    data = result.to_dict() if isinstance(result, Result) else result
    measured = measured_value(data, expectation.metric)
    if measured is None:
        return Check(
            expectation=expectation,
            passed=False,
            measured=None,
            message=_("{metric} was not measured (expected {expected})").format(
                metric=expectation.metric, expected=expectation.describe()),
        )
    if expectation.kind == "equal":
        assert expectation.value is not None
        ok = abs(measured - expectation.value) <= EXACT_TOLERANCE
        return Check(
            expectation=expectation,
            passed=ok,
            measured=measured,
            message=_("{metric} = {measured}, expected {expected}").format(
                metric=expectation.metric, measured=f"{measured:g}", expected=f"{expectation.value:g}"),
        )
    if expectation.kind == "oracle":
        return _evaluate_oracle(expectation, data, measured)
    if expectation.kind == "range":
        ok = (expectation.min is None or measured >= expectation.min) and (
            expectation.max is None or measured <= expectation.max
        )
        return Check(
            expectation=expectation,
            passed=ok,
            measured=measured,
            message=_("{metric} = {measured}, expected {expected}").format(
                metric=expectation.metric, measured=f"{measured:g}", expected=expectation.describe()),
        )
    expected = data.get("expected_loss_ratio")
    if expected is None:
        return Check(
            expectation=expectation,
            passed=False,
            measured=measured,
            message=_("loss_ratio = {measured}, but the run has no expected_loss_ratio (it did not go "
                      "over an impaired link)").format(measured=f"{measured:g}"),
        )
    label = _("link's expected loss")
    if expectation.kind == "within_ci_fragments":
        k = fragments_per_datagram(int(data.get("size") or 0), mtu)
        expected = 1.0 - (1.0 - expected) ** k
        label = _("1-(1-{loss})^{k} for {k} fragments/datagram at MTU {mtu}").format(
            loss=f"{data['expected_loss_ratio']:.4f}", k=k, mtu=mtu)
    lo, hi = loss_interval(expected, int(data.get("sent") or 0))
    ok = lo <= measured <= hi
    return Check(
        expectation=expectation,
        passed=ok,
        measured=measured,
        interval=(lo, hi),
        expected=expected,
        expected_label=label,
        message=_("loss_ratio = {measured} ({lost}/{sent}), {label} = {expected}, {confidence} interval "
                  "[{lo}, {hi}]").format(
            measured=f"{measured:.4f}", lost=data.get("lost"), sent=data.get("sent"), label=label,
            expected=f"{expected:.4f}", confidence=f"{CI_CONFIDENCE:.0%}", lo=f"{lo:.4f}", hi=f"{hi:.4f}"),
    )


def _evaluate_oracle(expectation: Expectation, data: Mapping[str, Any], measured: float) -> Check:
    """Measured against what the textbook predicts (lab.flows.predictions, already in the flow's
    entry with every input it used): within [min, max] x the prediction."""
    prediction = (data.get("predictions") or {}).get(expectation.oracle) or {}
    predicted = prediction.get(expectation.metric)
    if predicted is None or not math.isfinite(predicted):
        return Check(expectation=expectation, passed=False, measured=measured,
                     message=_("{metric} = {measured}: the {oracle} oracle predicts nothing for this "
                               "flow (it needs a TCP flow and loss for Mathis, a link rate for the others)")
                     .format(metric=expectation.metric, measured=f"{measured:g}", oracle=expectation.oracle))
    assert expectation.min is not None and expectation.max is not None
    lo, hi = expectation.min * predicted, expectation.max * predicted
    label = str(prediction.get("label") or expectation.oracle)
    return Check(
        expectation=expectation, passed=lo <= measured <= hi, measured=measured, interval=(lo, hi),
        expected=predicted, expected_label=label,
        message=_("{metric} = {measured} is {ratio} x the prediction {predicted} ({label}); expected "
                  "{lo_f} to {hi_f} x").format(
            metric=expectation.metric, measured=f"{measured:.4g}", ratio=f"{measured / predicted:.2f}",
            predicted=f"{predicted:.4g}", label=label, lo_f=f"{expectation.min:g}",
            hi_f=f"{expectation.max:g}"),
    )


def evaluate_all(point: SweepPoint, protocol: str, result: Result | Mapping[str, Any]) -> list[Check]:
    """Evaluate every expectation a point holds for `protocol`."""
    return [evaluate(e, result, mtu=point.mtu) for e in point.expectations.get(protocol, ())]


# --- helpers ------------------------------------------------------------------------------------
def _metric_names() -> list[str]:
    from lab.metric_registry import expectation_metrics

    return list(expectation_metrics())


_SWEEP_POINT_PREFIX = re.compile(r"^\[sweep\] point .*?: (?=\[)")
_TABLE_AND_KEY = re.compile(r"^\[(?P<table>.+?)\](?: (?P<key>.+))?$")


def _dotted_key(where: str) -> str | None:
    """`[traffic] count` -> `traffic.count`, `[expect.udp] latency` -> `expect.udp.latency`, `[sweep]`
    -> `sweep`, `link` (an unknown table) -> `link`: the key an error's place names, as a dotted
    TOML key (a sweep point's prefix `[sweep] point ID: ` left out)."""
    where = _SWEEP_POINT_PREFIX.sub("", where)
    match = _TABLE_AND_KEY.match(where)
    if match is None:
        return where or None
    return match["table"] + (f".{match['key']}" if match["key"] else "")


def _set_swept(link: dict[str, Any], traffic: dict[str, Any], table: str, key: str, value: Any) -> None:
    """Put one sweep value where its key lives: `traffic`, `link`, or `link.forward`/`link.reverse`
    (a per-direction table is copied first: the points must not share it)."""
    if table == "traffic":
        traffic[key] = value
    elif table == "link":
        link[key] = value
    else:
        name = table.split(".", 1)[1]
        link[name] = {**(link.get(name) or {}), key: value}


def _known_protocols() -> set[str]:
    from lab.protocols import names

    return set(names())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def safe_name(name: str) -> str:
    """`name` as a file name that stays where it is put: only [A-Za-z0-9._-] (others become '-'),
    no leading '.' or '-' (so never `.`, `..` nor an option), at most MAX_SLUG characters, never empty.
    """
    slug = "".join(c if c in SLUG_CHARS else "-" for c in name).lstrip(".-")[:MAX_SLUG]
    return slug or "scenario"


def _too_deep(value: Any, limit: int) -> str | None:
    """The key path of the first value nested deeper than `limit` (None if none is). Iterative: the
    checks after this one recurse, and the file may nest thousands of levels. Only containers are
    visited (a path spelled out per scalar cost 0.35 s on a 250 000-number list)."""
    if not isinstance(value, dict | list):
        return None
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth >= limit:
            return where or "document"
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            if isinstance(v, dict | list):
                path = f"{where}[{k}]" if isinstance(node, list) else f"{where}.{k}" if where else str(k)
                stack.append((v, path, depth + 1))
    return None


_REPR = reprlib.Repr()  # Python 3.11's takes no keyword arguments
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 80, 80, 6, 6


def _show(value: Any) -> str:
    """A value as an error message shows it: short, one line, TOML words for booleans."""
    if isinstance(value, str):
        return _REPR.repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return _REPR.repr(value).replace("True", "true").replace("False", "false")
    return _one_line(str(value)[:80])


def _one_line(text: str) -> str:
    """`text` with every unprintable character (newline, escape...) written as its Python escape:
    an error is one line on the terminal, whatever the file's keys hold."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _table_header(table: str) -> str:
    """`[link]`, or `[[flows]]` for the one array of tables."""
    return f"[[{table}]]" if table == "flows" else f"[{table}]"


def _toml_key(key: str) -> str:
    """`udp` -> `udp`, `limit=10` -> `"limit=10"`: a key as it is written in a TOML table header."""
    if key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key):
        return key
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _label(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _strip_key(message: str, key: str) -> str:
    """`loss must be ...` -> `must be ...` (the caller prefixes the key itself)."""
    for prefix in (f"{key}: ", f"{key} "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
