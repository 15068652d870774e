"""Several flows on one link, and bulk points: their plan, their figures, their oracles.

docs/architecture.md#flows-and-oracles. A scenario runs bulk traffic two ways:

- `[traffic] kind = "bulk"`: every protocol of `protocols` runs as one bulk flow alone at each sweep
  point (throughput-vs-loss: the Mathis curve);
- `[[flows]]`: flows that run *together* on one link (`FlowSpec`: protocol, kind "bulk" or
  "probes", start, duration, rate...), grouped by `group` (one sweep point per group): fairness,
  competition, latency under load.

This module is pure: it parses those tables (`parse_bulk_traffic`, `parse_flows`), turns a finished
flow into the entry result.json keeps (`bulk_entry`, `probes_entry`), computes what the textbook
predicts for it (`predictions`: Mathis, the link's rate, ARQ utilisation) and the group's figures
(`group_figures`: Jain's index, RPM idle and loaded). The runner (lab.runner) does the running.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lab import theory
from lab.bulk import BulkPlan, BulkResult
from lab.bulk.plan import DIRECTIONS
from lab.errors import ConfigError, ScenarioError
from lab.records import TrafficPlan, run_limits

MAX_FLOWS = 16  # in one scenario file; one group runs at most this many at once
MAX_GROUP_SECONDS = 300.0  # a group's last flow ends by then (start + duration)
MAX_START_S = 120.0
FLOW_KINDS = ("bulk", "probes")
FLOW_KEYS = ("name", "protocol", "kind", "start", "duration", "rate", "bytes", "size", "count",
             "timeout", "interval", "window", "group", "direction")
BULK_TRAFFIC_KEYS = ("kind", "duration", "bytes", "rate", "size", "interval", "window")
GROUP = "all"  # [expect.all]: the group's own figures (jain_index, rpm_idle, rpm_loaded, rtt_*)
EACH = "each"  # [expect.each]: every flow of the point (a flow's own table wins, metric by metric)
RESERVED_NAMES = (GROUP, EACH)
DEFAULT_PROBE_RATE = 20.0  # probes/s of a probes flow given only a duration
IDLE_PROBES = 20  # probes measured before the load starts, for the idle RPM
IDLE_RATE = 50.0  # 20 probes in 0.4 s: the link is idle, they need not be spread out
DEFAULT_WITHIN = {"mathis": (0.5, 1.5), "link_rate": (0.0, 1.0), "textbook": (0.7, 1.3)}
ORACLE_METRICS = {"mathis": ("goodput_bps",), "link_rate": ("goodput_bps",),
                  "textbook": ("utilisation", "goodput_bps")}
TCP_OVERHEAD = 52  # IPv4 (20) + TCP (20) + timestamps option (12): the MSS at an MTU, without TCP_INFO
ARQ_SCHEME_OF = {"arq-sw": "sw", "arq-gbn": "gbn", "arq-sr": "sr"}
ARQ_DEFAULT_WINDOW = 8
ARQ_OVERHEAD = 28 + 36  # IPv4 + UDP + the ARQ header (lab/protocols/arq/segment.py)

Fail = Callable[[str, str], ScenarioError]  # (where, message) -> the error to raise


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowSpec:
    """One flow of a group: `bulk` for kind "bulk", `probes` for kind "probes"; it starts `start_s`
    after the group's common start."""

    name: str
    protocol: str
    kind: str
    start_s: float = 0.0
    group: str = ""
    bulk: BulkPlan | None = None
    probes: TrafficPlan | None = None

    @property
    def duration_s(self) -> float:
        if self.bulk is not None:
            return self.bulk.duration_s
        assert self.probes is not None
        rate = self.probes.rate or IDLE_RATE
        return self.probes.count / rate + self.probes.timeout

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"name": self.name, "protocol": self.protocol, "kind": self.kind, "start_s": self.start_s,
                "group": self.group, "bulk": self.bulk.to_dict() if self.bulk else None,
                "probes": asdict(self.probes) if self.probes else None}


# --- parsing --------------------------------------------------------------------------------------
def _rate_bps(value: Any, key: str) -> float:
    from lab.link.params import parse_rate

    return parse_rate(value, key=key)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_bulk_plan(table: Mapping[str, Any], where: str, fail: Fail) -> BulkPlan:
    """`duration`, `bytes`, `rate` ("20mbit", or bits/s), `size`, `interval`, `window`, `direction`
    ("upload" or "download") -> BulkPlan."""
    kwargs: dict[str, Any] = {}
    if "direction" in table:
        if table["direction"] not in DIRECTIONS:
            raise fail(f"{where} direction", f'must be "upload" (client -> server) or "download" '
                                             f'(server -> client), got {table["direction"]!r}')
        kwargs["direction"] = table["direction"]
    for key, field_name in (("duration", "duration_s"), ("interval", "interval_s")):
        if key in table:
            if not _number(table[key]):
                raise fail(f"{where} {key}", f"must be a number of seconds, got {table[key]!r}")
            kwargs[field_name] = float(table[key])
    for key, field_name in (("bytes", "max_bytes"), ("size", "size"), ("window", "window")):
        if key in table:
            if not _integer(table[key]):
                raise fail(f"{where} {key}", f"must be an integer, got {table[key]!r}")
            kwargs[field_name] = table[key]
    if "rate" in table:
        try:
            kwargs["rate_bps"] = _rate_bps(table["rate"], "rate")
        except ConfigError as exc:
            raise fail(f"{where} rate", _strip(str(exc), "rate")) from None
    if "interval_s" not in kwargs and kwargs.get("duration_s", 5.0) < 0.1:
        kwargs["interval_s"] = kwargs["duration_s"]
    try:
        return BulkPlan(**kwargs)
    except ConfigError as exc:
        raise fail(f"{where} {exc.key or ''}".rstrip(), _strip(str(exc), exc.key or "")) from None


def parse_bulk_traffic(table: Mapping[str, Any], where: str, fail: Fail) -> BulkPlan:
    """A `[traffic]` table with kind = "bulk" (the sweep point's values laid over it)."""
    for key in table:
        if key not in BULK_TRAFFIC_KEYS:
            raise fail(f"{where}[traffic] {key}",
                       f'not a key of bulk traffic (kind = "bulk"); allowed: {", ".join(BULK_TRAFFIC_KEYS)}')
    plan = parse_bulk_plan({k: v for k, v in table.items() if k != "kind"}, f"{where}[traffic]", fail)
    limit = run_limits().seconds
    if plan.duration_s > limit:
        raise fail(f"{where}[traffic] duration", f"must be within the run limit of {limit:g} s "
                                                 f"(WIRELAB_MAX_RUN_SECONDS), got {plan.duration_s:g}")
    return plan


def parse_flows(entries: Any, known_protocols: set[str], fail: Fail) -> tuple[FlowSpec, ...]:
    """The `[[flows]]` array of tables -> FlowSpecs, in file order; names are unique (default: the
    protocol, then `PROTOCOL-2`, `PROTOCOL-3`...)."""
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise fail("[[flows]]", "must be an array of tables, each one flow: [[flows]] protocol = \"tcp\"")
    if len(entries) > MAX_FLOWS:
        raise fail("[[flows]]", f"{len(entries)} flows is over the limit of {MAX_FLOWS}; split the scenario")
    flows: list[FlowSpec] = []
    names: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"[[flows]] #{index + 1}"
        for key in entry:
            if key not in FLOW_KEYS:
                raise fail(f"{where} {key}", f"unknown key; allowed: {', '.join(FLOW_KEYS)}")
        protocol = entry.get("protocol")
        if not isinstance(protocol, str) or protocol not in known_protocols:
            raise fail(f"{where} protocol",
                       f"must be one of {', '.join(sorted(known_protocols))}, got {protocol!r}")
        kind = entry.get("kind", "bulk")
        if kind not in FLOW_KINDS:
            raise fail(f"{where} kind", f'must be "bulk" or "probes", got {kind!r}')
        name = entry.get("name")
        if name is None:
            name = protocol
            counter = 2
            while name in names:
                name, counter = f"{protocol}-{counter}", counter + 1
        if not isinstance(name, str) or not name or len(name) > 64 or not all(
            c.isalnum() or c in "-_." for c in name
        ):
            raise fail(f"{where} name", f"must be 1 to 64 letters, digits, '-', '_' or '.', got {name!r}")
        if name in RESERVED_NAMES:
            raise fail(f"{where} name", f"{name!r} is reserved ([expect.{GROUP}] and [expect.{EACH}])")
        if name in names:
            raise fail(f"{where} name", f"{name!r} names two flows; give each flow a name of its own")
        names.add(name)
        start = entry.get("start", 0.0)
        if not _number(start) or not 0 <= start <= MAX_START_S:
            raise fail(f"{where} start", f"must be a number of seconds in 0..{MAX_START_S:g}, got {start!r}")
        group = entry.get("group", "")
        if not isinstance(group, str) or len(group) > 64 or not all(c.isalnum() or c in "-_." for c in group):
            raise fail(f"{where} group", f"must be a name of letters, digits, '-', '_' or '.', got {group!r}")
        rest = {k: v for k, v in entry.items() if k not in ("name", "protocol", "kind", "start", "group")}
        if kind == "bulk":
            for key in ("count", "timeout"):
                if key in rest:
                    raise fail(f"{where} {key}", "is for probes flows (kind = \"probes\")")
            spec = FlowSpec(name=name, protocol=protocol, kind=kind, start_s=float(start), group=group,
                            bulk=parse_bulk_plan(rest, where, fail))
        else:
            spec = FlowSpec(name=name, protocol=protocol, kind=kind, start_s=float(start), group=group,
                            probes=_probes_plan(rest, where, fail))
        limit = min(MAX_GROUP_SECONDS, run_limits().seconds)  # WIRELAB_MAX_RUN_SECONDS may lower it
        if spec.start_s + spec.duration_s > limit:
            raise fail(f"{where} duration", f"start + duration must end within {limit:g} s "
                                            f"(the run limit), got {spec.start_s + spec.duration_s:g}")
        if kind == "probes" and any(f.kind == "probes" and f.group == group for f in flows):
            raise fail(f"{where} kind", "a group has at most one probes flow (it is measured by the "
                                        "runner's own process); put the other in a group of its own")
        flows.append(spec)
    return tuple(flows)


def _probes_plan(table: Mapping[str, Any], where: str, fail: Fail) -> TrafficPlan:
    for key in ("bytes", "interval", "direction"):
        if key in table:
            raise fail(f"{where} {key}", "is for bulk flows (kind = \"bulk\")")
    kwargs = dict(table)
    for key in ("rate", "timeout", "duration"):
        if key in kwargs and not _number(kwargs[key]):
            raise fail(f"{where} {key}", f"must be a number, got {kwargs[key]!r}")
    for key in ("count", "size", "window"):
        if key in kwargs and not _integer(kwargs[key]):
            raise fail(f"{where} {key}", f"must be an integer, got {kwargs[key]!r}")
    try:
        return TrafficPlan.from_table(kwargs, max_duration_s=MAX_GROUP_SECONDS,
                                      default_rate=DEFAULT_PROBE_RATE)
    except ConfigError as exc:
        raise fail(f"{where} {exc.key or ''}".rstrip(), _strip(str(exc), exc.key or "")) from None


def groups_of(flows: Sequence[FlowSpec]) -> dict[str, tuple[FlowSpec, ...]]:
    """group name -> its flows, groups in the order they first appear."""
    out: dict[str, list[FlowSpec]] = {}
    for flow in flows:
        out.setdefault(flow.group, []).append(flow)
    return {name: tuple(members) for name, members in out.items()}


def oracle_expectation(metric: str, value: Any, where: str, fail: Fail) -> tuple[str, float, float] | None:
    """`"mathis"` or `{oracle = "mathis", within = [0.5, 1.5]}` -> (oracle, lo, hi); None when `value`
    is not an oracle expectation (a number or a min/max range is lab.scenario's own)."""
    if isinstance(value, str) and value in DEFAULT_WITHIN:
        oracle, within = value, DEFAULT_WITHIN[value]
    elif isinstance(value, dict) and "oracle" in value:
        extra = set(value) - {"oracle", "within"}
        if extra:
            raise fail(where, f"an oracle expectation is {{ oracle = NAME, within = [LO, HI] }}; "
                              f"unknown key {sorted(extra)[0]!r}")
        oracle = value["oracle"]
        if oracle not in DEFAULT_WITHIN:
            raise fail(where, f"unknown oracle {oracle!r}; one of {', '.join(DEFAULT_WITHIN)}")
        within = value.get("within", DEFAULT_WITHIN[oracle])
        if (not isinstance(within, list) or len(within) != 2 or not all(_number(v) for v in within)
                or not 0 <= within[0] <= within[1]):
            raise fail(where, f"within must be [LO, HI], factors of the prediction with 0 <= LO <= HI, "
                              f"got {within!r}")
    else:
        return None
    if metric not in ORACLE_METRICS[oracle]:
        predicted = " and ".join(ORACLE_METRICS[oracle])
        raise fail(where, f"the {oracle} oracle predicts {predicted}, not {metric}")
    return oracle, float(within[0]), float(within[1])


def _strip(message: str, key: str) -> str:
    for prefix in (f"{key}: ", f"{key} "):
        if key and message.startswith(prefix):
            return message[len(prefix):]
    return message


# --- what a finished flow becomes in result.json --------------------------------------------------
def bulk_entry(name: str, spec_start_s: float, result: BulkResult) -> dict[str, Any]:
    """A bulk flow's entry in a point's `flows`: the figures metrics read at the top (goodput_bps,
    retransmits...), the whole BulkResult under `bulk`."""
    data = result.to_dict()
    entry: dict[str, Any] = {
        "name": name,
        "protocol": result.protocol,
        "kind": "bulk",
        "direction": result.plan.get("direction", "upload"),
        "start_s": spec_start_s,
        "goodput_bps": result.goodput_bps,
        "bytes_delivered": result.bytes_delivered,
        "duration_s": result.duration_s,
        "bulk_retransmits": result.retransmits,
        "bulk": data,
    }
    srtt = mean_srtt_s(result)
    if srtt is not None:
        entry["srtt_mean_ms"] = srtt * 1e3
    if result.datagrams:
        entry["loss_ratio"] = result.datagrams.get("loss_ratio")
    return entry


def probes_entry(name: str, spec_start_s: float, result: Mapping[str, Any]) -> dict[str, Any]:
    """A probes flow's entry: the Result's dict (rtt_us, loss_ratio... as probe runs have them)."""
    return {**result, "name": name, "kind": "probes", "start_s": spec_start_s}


def mean_srtt_s(result: BulkResult) -> float | None:
    """The mean of a TCP flow's smoothed RTT over its TCP_INFO trace (seconds); None without one."""
    samples = [row[2] for row in result.tcp_trace if len(row) > 2 and row[2]]
    return sum(samples) / len(samples) / 1e6 if samples else None


# --- oracles ------------------------------------------------------------------------------------
def predictions(entry: Mapping[str, Any], link: Mapping[str, Any] | None, *,
                mtu: int = 1500) -> dict[str, Any]:
    """What the textbook predicts for one bulk flow over a link (`link`: LinkConfig.to_wire()-like
    numbers: forward/reverse {loss, delay_s, jitter_s, rate_bps}); every input is written beside
    the prediction, so a reader can redo the sum.

    - `link_rate`: the rate of the way the data goes, the ceiling of any flow's goodput (present if
      the link has one): forward for an upload, reverse for a download (the entry's `direction`);
    - `mathis` (TCP flows; not at p = 0): MSS x 8 / RTT x C / sqrt(p), with p the loss probability
      of the data's way (a lost ACK is covered by the next one), RTT the mean
      srtt of the flow's TCP_INFO trace (what the flow saw, queueing included; else its min_rtt,
      else the link's configured round trip) and MSS the connection's tcpi_snd_mss (else MTU - 52);
    - `textbook` (ARQ flows over a rated link): the utilisation of `lab.theory.arq_utilisation`.
    """
    out: dict[str, Any] = {}
    if not link:
        return out
    forward, reverse = link.get("forward") or {}, link.get("reverse") or {}
    if entry.get("direction") == "download":  # the data goes server -> client: the reverse way
        forward, reverse = reverse, forward
        p = float(link.get("expected_reverse_loss", forward.get("loss")) or 0.0)
    else:
        p = float(link.get("expected_forward_loss", forward.get("loss")) or 0.0)
    rate = forward.get("rate_bps")
    round_trip = sum(float(d.get("delay_s") or 0) for d in (forward, reverse))
    bulk = entry.get("bulk") or {}
    protocol = str(entry.get("protocol", ""))
    if rate:
        out["link_rate"] = {"goodput_bps": float(rate), "rate_bps": float(rate),
                            "label": f"link rate {rate / 1e6:g} Mbit/s"}
    if protocol.startswith("tcp") and p > 0:
        mss = bulk.get("mss") or mtu - TCP_OVERHEAD
        rtt, source = _flow_rtt(entry, round_trip)
        if rtt:
            predicted = theory.mathis(mss, rtt, p)
            out["mathis"] = {
                "goodput_bps": predicted, "c": theory.MATHIS_C, "p": p, "rtt_s": rtt, "rtt_source": source,
                "mss": mss,
                "label": f"Mathis: {mss} B x 8 / {rtt * 1e3:.1f} ms ({source}) x C {theory.MATHIS_C:.3f} "
                         f"/ sqrt(p {p:g})",
            }
    scheme = ARQ_SCHEME_OF.get(protocol)
    if scheme and rate:
        plan = bulk.get("plan") or {}
        window = int(plan.get("window") or ARQ_DEFAULT_WINDOW)
        frame = int(plan.get("size") or 1200) + ARQ_OVERHEAD
        a = theory.propagation_ratio(frame, float(rate), round_trip)
        busy = theory.arq_utilisation(scheme, window, a, p)  # the share of time the link sends frames
        payload = (frame - ARQ_OVERHEAD) / frame  # ...of which the payload, what goodput counts
        out["textbook"] = {
            "utilisation": busy * payload, "goodput_bps": busy * payload * float(rate), "scheme": scheme,
            "window": window, "a": a, "p": p, "frame_bytes": frame, "link_busy": busy,
            "label": f"{scheme}: min(1, N {1 if scheme == 'sw' else window}/(1+2a {a:.2f})) x (1-p {p:g})"
                     f" x payload {frame - ARQ_OVERHEAD}/{frame} B",
        }
    return out


def _flow_rtt(entry: Mapping[str, Any], round_trip: float) -> tuple[float | None, str]:
    if entry.get("srtt_mean_ms"):
        return float(entry["srtt_mean_ms"]) / 1e3, "mean srtt"
    min_rtt = (entry.get("bulk") or {}).get("min_rtt_us")
    if min_rtt:
        return float(min_rtt) / 1e6, "min_rtt"
    if round_trip > 0:
        return round_trip, "link delay"
    return None, ""


def add_oracles(entry: dict[str, Any], link: Mapping[str, Any] | None, *, mtu: int = 1500) -> dict[str, Any]:
    """`entry` with its `predictions` and, over a rated link, its `utilisation` (goodput / the rate
    of the data's way)."""
    entry["predictions"] = predictions(entry, link, mtu=mtu)
    way = "reverse" if entry.get("direction") == "download" else "forward"
    rate = ((link or {}).get(way) or {}).get("rate_bps")
    if rate and entry.get("goodput_bps") is not None:
        entry["utilisation"] = float(entry["goodput_bps"]) / float(rate)
    return entry


# --- the group's figures --------------------------------------------------------------------------
def group_figures(flows: Sequence[Mapping[str, Any]], idle: Mapping[str, Any] | None,
                  loaded_rtts_s: Sequence[float], idle_rtts_s: Sequence[float]) -> dict[str, Any]:
    """Jain's index over the bulk flows' goodput (two or more), RPM idle and loaded from the probes
    (lab.theory.rpm), and the loaded probes' RTT percentiles (`rtt_us`, so rtt_p50_ms reads them).

    `load_direction` is which way the bulk flows send: "upload", "download" or "both"; when it is
    one way, `rpm_loaded` is also `rpm_loaded_upload` or `rpm_loaded_download` (a sweep over both
    directions then compares them; a mixed load has neither)."""
    out: dict[str, Any] = {"name": GROUP}
    goodputs = [float(f.get("goodput_bps") or 0.0) for f in flows if f.get("kind") == "bulk"]
    if len(goodputs) >= 2 and any(goodputs):
        out["jain_index"] = theory.jain_index(goodputs)
    if idle_rtts_s:
        out["rpm_idle"] = theory.rpm(idle_rtts_s)
    directions = {f.get("direction") or "upload" for f in flows if f.get("kind") == "bulk"}
    direction = directions.pop() if len(directions) == 1 else "both" if directions else None
    if loaded_rtts_s:
        out["rpm_loaded"] = theory.rpm(loaded_rtts_s)
        if direction in DIRECTIONS:
            out[f"rpm_loaded_{direction}"] = out["rpm_loaded"]
        out["rtt_us"] = _percentiles_us(loaded_rtts_s)
    if idle is not None:
        out["idle_rtt_us"] = idle.get("rtt_us")
    out["rpm_trim_percentile"] = theory.RPM_TRIM_PERCENTILE
    if direction is not None:
        out["load_direction"] = direction
    return out


def _percentiles_us(samples_s: Sequence[float]) -> dict[str, float]:
    xs = sorted(s * 1e6 for s in samples_s)

    def at(q: float) -> float:
        return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]

    return {"min": xs[0], "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": xs[-1],
            "mean": sum(xs) / len(xs)}


def rtts_s(result: Mapping[str, Any]) -> list[float]:
    """The answered probes' RTTs (seconds) from a result's timeline."""
    return [row[2] / 1e3 for row in result.get("timeline") or [] if len(row) > 2 and row[2] is not None]
