"""The rows of `make bench`'s anchor table: each a lab figure, its anchor's figure from the same run, the
ratio, and the target it is held to (issue 13). Targets are verdicts shown in the table, never asserts.

`AnchorTable` collects the rows of one pytest session; `write` puts them, with what the machine was
doing (load averages, cores, kernel, tool versions), in a JSON file that `tools/bench_table.py`
prints and turns into Markdown. A row never measured says why instead of holding a figure.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

SCHEMA = "wirelab-anchors/1"
# What the session did to the machine for its figures (set by tests/benchmarks/conftest.py), written
# beside them: e.g. whether the CPUs were held out of idle states.
MACHINE_NOTES: dict[str, str] = {}


@dataclass(frozen=True)
class Target:
    """What a row must show: `of` ("ratio", "lab", or "difference" = lab - anchor) compared by `kind`
    ("max", "min" or "range") with `limit` (a number, or (low, high) for a range)."""

    of: str
    kind: str
    limit: float | tuple[float, float]
    unit: str = ""

    def describe(self) -> str:
        name = {"ratio": "lab/anchor", "lab": "lab", "difference": "lab - anchor"}[self.of]
        unit = f" {self.unit}" if self.unit else ("x" if self.of == "ratio" else "")
        if self.kind == "range":
            low, high = self.limit  # type: ignore[misc]
            return f"{low:g}{unit} <= {name} <= {high:g}{unit}"
        sign = "<=" if self.kind == "max" else ">="
        return f"{name} {sign} {self.limit:g}{unit}"

    def met(self, value: float) -> bool:
        if self.kind == "range":
            low, high = self.limit  # type: ignore[misc]
            return low <= value <= high
        return value <= self.limit if self.kind == "max" else value >= self.limit  # type: ignore[operator]


@dataclass(frozen=True)
class RowSpec:
    """One row of the table, before it is measured."""

    id: str
    what: str
    anchor: str  # what the anchor is, e.g. "sockperf ping-pong"
    lab: str  # what the lab's figure is
    unit: str
    target: Target | None = None
    source: str = "test_anchors.py"  # the benchmark (in tests/benchmarks/) that measures it


@dataclass
class Row:
    id: str
    what: str
    anchor_name: str
    lab_name: str
    unit: str
    anchor: float | None = None
    lab: float | None = None
    ratio: float | None = None
    difference: float | None = None
    target: str | None = None
    passed: bool | None = None
    not_measured: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def measured(spec: RowSpec, anchor: float, lab: float, **details: Any) -> Row:
    """A measured row: ratio lab/anchor, difference lab - anchor, and the target's verdict."""
    row = _row(spec)
    row.anchor, row.lab = anchor, lab
    row.ratio = lab / anchor if anchor else None
    row.difference = lab - anchor
    row.details = details
    if spec.target is not None:
        value = {"ratio": row.ratio, "lab": lab, "difference": row.difference}[spec.target.of]
        row.passed = None if value is None else spec.target.met(value)
    return row


def not_measured(spec: RowSpec, why: str) -> Row:
    row = _row(spec)
    row.not_measured = why
    return row


def _row(spec: RowSpec) -> Row:
    return Row(spec.id, spec.what, spec.anchor, spec.lab, spec.unit,
               target=spec.target.describe() if spec.target else None)


def machine_state() -> dict[str, Any]:
    """How busy the machine was: a figure taken on a loaded machine says so beside it."""
    load = os.getloadavg()
    return {"loadavg": [round(x, 2) for x in load], "cores": os.cpu_count(),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


class AnchorTable:
    """The rows one session measured; `write` adds the rows it never reached as not measured."""

    def __init__(self, specs: list[RowSpec]) -> None:
        self.specs = {spec.id: spec for spec in specs}
        self.rows: dict[str, Row] = {}
        self.started = machine_state()

    def add(self, row: Row) -> Row:
        self.rows[row.id] = row
        return row

    def document(self) -> dict[str, Any]:
        from tests.benchmarks.anchors import tool_version

        rows = [self.rows.get(i) or not_measured(spec, f"{spec.source} did not run, or failed before "
                                                       "recording it (see the pytest output)")
                for i, spec in self.specs.items()]
        return {
            "schema": SCHEMA,
            "machine": {"kernel": platform.release(), "python": platform.python_version(),
                        "started": self.started, "ended": machine_state(),
                        "tools": {t: tool_version(t) for t in ("sockperf", "iperf3", "socat")},
                        **MACHINE_NOTES},
            "rows": [asdict(row) for row in rows],
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.document(), indent=2) + "\n")


# --- the rows ------------------------------------------------------------------------------------------
ECHO_CLIENTS = 16
SOCKPERF = "sockperf ping-pong"
# The link against a plain veth pair is the forwarder's own benchmark: its figures are read, not
# measured twice (`forwarder_rows`).
FORWARDER_BENCH = "test_forwarder_bench.py"
FORWARDER_TEST = "test_forwarder_offloads_against_veth"
MINIMAL = "minimal offloaded forwarder (read, write)"
# One-way delay and loss per direction (issue 13's targets): the delay's p50 within [d, d + 0.3 ms];
# the forward loss within the 99 % binomial interval of 0.2 over LOSS_PROBES probes.
OWD_RATE = 200
LOSS_PROBES = 2000
_Z99 = NormalDist().inv_cdf(0.995)
LOSS_FORWARD_BOUNDS = (round(0.2 - _Z99 * (0.2 * 0.8 / LOSS_PROBES) ** 0.5, 4),
                       round(0.2 + _Z99 * (0.2 * 0.8 / LOSS_PROBES) ** 0.5, 4))


def _rtt_rows(transport: str) -> list[RowSpec]:
    """The lab's client against socat's echo (C, as sockperf's server, which answers only sockperf's
    own messages), so the ratio compares the two clients' measurements; then the lab's client and
    its own Python echo server, which adds its own processing to every round trip."""
    targets = {("udp", "p50", "kernel"): Target("ratio", "max", 1.0),
               ("udp", "p50", "user"): Target("ratio", "max", 1.4)}
    rows = [RowSpec(f"rtt-{transport}-{pct}-{stamps}",
                    f"{transport.upper()} RTT {pct}, loopback, lab {stamps}-stamped",
                    SOCKPERF, f"lab send {transport} ({stamps} stamps), socat's echo", "µs",
                    targets.get((transport, pct, stamps)))
            for pct in ("p50", "p99") for stamps in ("kernel", "user")]
    rows.append(RowSpec(f"rtt-{transport}-p50-user-vs-python",
                        f"{transport.upper()} RTT p50, loopback, lab user-stamped, against the Python floor",
                        "a bare Python client (send, recv), socat's echo",
                        f"lab send {transport} (user stamps), socat's echo", "µs"))
    rows.append(RowSpec(f"rtt-{transport}-p50-lab-server",
                        f"{transport.upper()} RTT p50, loopback, the lab's client and echo server",
                        SOCKPERF, f"lab send {transport} (kernel stamps), lab serve", "µs"))
    return rows


ROWS: list[RowSpec] = [
    *_rtt_rows("udp"),
    *_rtt_rows("tcp"),
    *[RowSpec(f"echo-{kind}-{ECHO_CLIENTS}",
              f"{kind.upper()} echo capacity, {ECHO_CLIENTS} clients (one Python load generator), loopback",
              "socat echo (a child per peer, PIPE)", "lab echo server", "round trips/s")
      for kind in ("udp", "tcp")],
    RowSpec("link-iperf3-unimpaired", "iperf3 TCP (cubic) goodput, unimpaired link",
            "iperf3, plain veth pair", "iperf3 through the lab link", "Gbit/s",
            Target("lab", "min", 10, "Gbit/s"), FORWARDER_BENCH),
    RowSpec("link-iperf3-vs-minimal",
            "iperf3 TCP (cubic) goodput, unimpaired link, against the minimal forwarder",
            MINIMAL, "iperf3 through the lab link", "Gbit/s", None, FORWARDER_BENCH),
    RowSpec("link-iperf3-delay10ms",
            "iperf3 TCP (cubic) goodput, link with delay 10ms alone (default limit 1000)",
            "iperf3, plain veth pair (no delay)", "iperf3 through the lab link", "Gbit/s",
            Target("lab", "min", 5, "Gbit/s"), FORWARDER_BENCH),
    RowSpec("link-added-rtt", "UDP RTT p50 added by the unimpaired link",
            "ping-pong, plain veth pair", "ping-pong through the lab link", "µs",
            Target("difference", "max", 15, "µs"), FORWARDER_BENCH),
    RowSpec("link-rtt-vs-minimal", "UDP RTT p50 through the unimpaired link, against the minimal forwarder",
            MINIMAL, "ping-pong through the lab link", "µs", None, FORWARDER_BENCH),
    *[RowSpec(f"owd-{direction}-{mode}",
              f"UDP one-way delay p50, {direction}, link delay 10ms out / 2ms back, {how}",
              f"the link's configured delay ({direction})", "lab send udp (wire v2: the echo server's "
              "kernel receive stamp)", "µs", Target("lab", "range", bounds, "µs"))
      for mode, how in (("paced", f"paced {OWD_RATE}/s"), ("pingpong", "ping-pong"))
      for direction, bounds in (("forward", (10_000, 10_300)), ("reverse", (2_000, 2_300)))],
    RowSpec("loss-forward", f"UDP loss forward, link loss 20% forward only, {LOSS_PROBES} probes",
            "the link's configured loss", "lab send udp: loss_forward_ratio", "ratio",
            Target("lab", "range", LOSS_FORWARD_BOUNDS)),
    RowSpec("loss-reverse", f"UDP loss reverse, link loss 20% forward only, {LOSS_PROBES} probes",
            "the link's configured loss (none that way)", "lab send udp: loss_reverse_ratio", "ratio",
            Target("lab", "max", 0)),
    RowSpec("link-bulk-unimpaired", "TCP (cubic) bulk goodput, unimpaired link (the host's CPUs decide)",
            "iperf3 through the lab link", "lab bulk tcp-cubic through the lab link", "Gbit/s",
            Target("ratio", "min", 0.9)),
    RowSpec("link-bulk-rate50mbit", "TCP (cubic) bulk goodput, link with rate 50mbit",
            "iperf3 through the lab link", "lab bulk tcp-cubic through the lab link", "Mbit/s",
            Target("ratio", "range", (0.9, 1.1))),
]
SPECS = {spec.id: spec for spec in ROWS}


def forwarder_rows(extra: dict[str, Any]) -> list[Row]:
    """The link's rows from the `extra_info` of the forwarder's benchmark (FORWARDER_BENCH), which
    measures iperf3 and the ping-pong RTT through a veth pair, the minimal forwarder and the links in
    one run (medians)."""
    rows = []
    for row_id, anchor_key, lab_key in (
            ("link-iperf3-unimpaired", "veth_gbit_s", "link_gbit_s"),
            ("link-iperf3-vs-minimal", "minimal_gbit_s", "link_gbit_s"),
            ("link-iperf3-delay10ms", "veth_gbit_s", "link-delay-10ms_gbit_s"),
            ("link-added-rtt", "veth_rtt_p50_us", "link_rtt_p50_us"),
            ("link-rtt-vs-minimal", "minimal_rtt_p50_us", "link_rtt_p50_us")):
        anchor, lab = extra.get(anchor_key), extra.get(lab_key)
        if anchor is not None and lab is not None:
            details = {"probe": extra.get("rtt_probe")} if "rtt" in anchor_key else \
                {"dropped_queue": extra.get("dropped_queue")}
            rows.append(measured(SPECS[row_id], anchor, lab, source=FORWARDER_BENCH, **details))
    return rows
