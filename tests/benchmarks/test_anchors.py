"""The lab against its anchors (issue 13): each test measures the lab and a well-known tool doing the
same job, in the same test, and records ratios (tests/benchmarks/anchor_rows.py has the rows and
their targets). `make bench` prints the table (tools/bench_table.py) and writes
reports/benchmarks/anchors.json and anchors.md. Targets are verdicts in the table, never asserts.
The link against a plain veth pair (iperf3, added RTT) is tests/benchmarks/test_forwarder_bench.py's
measurement; the table reads its figures (tests/benchmarks/conftest.py).

Each benchmark's timed call is the whole row's measurement (one round): the figures that matter are
in `benchmark.extra_info`, taken by the tools themselves. Lab and anchor alternate REPEATS times
and each side's median is kept, so load from elsewhere on the machine hits both alike. Marked
`slow`: `make test` leaves them out (`make bench` runs them).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from tests.benchmarks import anchors
from tests.benchmarks.anchor_rows import (
    ECHO_CLIENTS,
    LOSS_PROBES,
    OWD_RATE,
    ROWS,
    SPECS,
    AnchorTable,
    Row,
    measured,
    not_measured,
)

pytestmark = pytest.mark.slow

REPEATS = 3  # lab and anchor alternate this many times per row
RTT_SECONDS = 2.0  # one sockperf ping-pong run (it drops its first 400 ms as warm-up)
LAB_PROBES = 10_000  # one `lab send` run: about as many round trips as sockperf's on a quiet loopback
ECHO_SECONDS = 2.0
BULK_SECONDS = 3.0


def _record(benchmark: Any, table: AnchorTable, rows: list[Row]) -> None:
    for row in rows:
        table.add(row)
    benchmark.extra_info["rows"] = {row.id: {k: v for k, v in vars(row).items() if k != "details"}
                                    for row in rows}
    missing = [f"{row.id}: {row.not_measured}" for row in rows if row.not_measured]
    if len(missing) == len(rows):
        pytest.skip("not measured: " + "; ".join(missing))


def _measure(benchmark: Any, table: AnchorTable, specs: list[Any], measure: Callable[[], Any],
             *needs: Callable[[], object]) -> Any:
    """Check `needs` (each raises anchors.NotMeasured saying why), then run the rows' whole
    measurement once as the benchmark's timed call: its return value, or None once every row of
    `specs` is recorded as not measured, with why (the test then returns)."""
    try:
        for need in needs:
            need()
        box: list[Any] = []
        benchmark.pedantic(lambda: box.append(measure()), rounds=1, iterations=1, warmup_rounds=0)
    except anchors.NotMeasured as why:
        _record(benchmark, table, [not_measured(spec, str(why)) for spec in specs])
        return None
    return box[0]


def _record_medians(benchmark: Any, table: AnchorTable, spec: Any, tool: list[float],
                    lab: list[float]) -> None:
    """One row from alternating runs: each side's median, every run kept in the details."""
    _record(benchmark, table, [measured(spec, _median(tool), _median(lab), anchor_runs=tool, lab_runs=lab)])


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _need_net_admin() -> None:
    from lab.privileges import CAP_NET_ADMIN, explain

    if reason := explain(CAP_NET_ADMIN):
        raise anchors.NotMeasured(f"the link {reason}")


# --- RTT on loopback: the lab's client vs sockperf's ----------------------------------------------------
@pytest.mark.benchmark(group="anchors-rtt")
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_rtt_vs_sockperf(benchmark, anchor_table: AnchorTable, transport: str) -> None:
    """Ping-pong RTT p50/p99, 64-byte messages, one in flight, blocking sockets, on 127.0.0.1: sockperf
    against its own server; `lab send` against socat's echo (a C server too: sockperf's answers only
    sockperf) and against the lab's own echo server."""
    ids = [spec.id for spec in ROWS if spec.id.startswith(f"rtt-{transport}-")]

    def measure() -> dict[str, list[Any]]:
        runs: dict[str, list[Any]] = {"sockperf": [], "socat": [], "lab": [], "python": []}
        for _ in range(REPEATS):
            runs["sockperf"].append(anchors.sockperf_rtt(anchors.LOOPBACK, anchors.LOOPBACK,
                                                         tcp=transport == "tcp", seconds=RTT_SECONDS))
            port = anchors.free_port(anchors.LOOPBACK)
            socat = anchors.socat_echo_argv(transport, "127.0.0.1", port)
            with anchors.serving(anchors.LOOPBACK, socat, port, [transport]):
                runs["socat"].append(anchors.lab_send(anchors.LOOPBACK, transport, "127.0.0.1", port,
                                                      count=LAB_PROBES))
                runs["python"].append(anchors.python_pingpong(anchors.LOOPBACK, transport, "127.0.0.1", port,
                                                              count=LAB_PROBES))
            with anchors.lab_echo_server(anchors.LOOPBACK) as port:
                runs["lab"].append(anchors.lab_send(anchors.LOOPBACK, transport, "127.0.0.1", port,
                                                    count=LAB_PROBES))
        return runs

    runs = _measure(benchmark, anchor_table, [SPECS[i] for i in ids], measure,
                    partial(anchors.require_tool, "sockperf"), partial(anchors.require_tool, "socat"))
    if runs is None:
        return
    tool = runs["sockperf"]
    rows = []
    for server, stamps, pcts, row_id in (
        ("socat", "kernel", ("p50", "p99"), "rtt-{t}-{pct}-kernel"),
        ("socat", "user", ("p50", "p99"), "rtt-{t}-{pct}-user"),
        ("lab", "kernel", ("p50",), "rtt-{t}-p50-lab-server"),
    ):
        lab = [anchors.lab_latencies(result)[stamps] for result in runs[server]]
        problem = next((r for r in lab if isinstance(r, str)), None)
        for pct in pcts:
            spec = SPECS[row_id.format(t=transport, pct=pct)]
            if problem is not None:
                rows.append(not_measured(spec, problem))
                continue
            key = f"{pct}_us"
            anchor_runs, lab_runs = [getattr(x, key) for x in tool], [getattr(x, key) for x in lab]
            rows.append(measured(spec, _median(anchor_runs), _median(lab_runs),
                                 anchor_runs=anchor_runs, lab_runs=lab_runs,
                                 anchor_samples=[x.samples for x in tool],
                                 lab_samples=[x.samples for x in lab]))
    user = [anchors.lab_latencies(result)["user"] for result in runs["socat"]]
    spec = SPECS[f"rtt-{transport}-p50-user-vs-python"]
    if any(isinstance(r, str) for r in user):
        rows.insert(-1, not_measured(spec, next(r for r in user if isinstance(r, str))))
    else:
        floor, lab_user = [x.p50_us for x in runs["python"]], [x.p50_us for x in user]  # type: ignore[union-attr]
        rows.insert(-1, measured(spec, _median(floor), _median(lab_user), anchor_runs=floor,
                                 lab_runs=lab_user))
    turnaround = [(r.get("server_turnaround_us") or {}).get("p50") for r in runs["lab"]]
    if rows[-1].not_measured is None and None not in turnaround:
        # the lab's server reports its own time per probe (wire v2): how much of the gap is the server
        rows[-1].lab_name += f" (its turnaround p50 {_median(turnaround):.0f} µs)"
        rows[-1].details["server_turnaround_p50_us"] = turnaround
    _record(benchmark, anchor_table, rows)


# --- echo capacity: the lab's echo server vs socat's, under one load generator -------------------------
@pytest.mark.benchmark(group="anchors-echo")
@pytest.mark.parametrize("kind", ["udp", "tcp"])
def test_echo_capacity_vs_socat(benchmark, anchor_table: AnchorTable, kind: str) -> None:
    """Round trips/s that ECHO_CLIENTS clients with one 64-byte message in flight each complete
    against the lab's echo server and against socat's, driven by the same load-generator process."""
    spec = SPECS[f"echo-{kind}-{ECHO_CLIENTS}"]

    def measure() -> tuple[list[float], list[float]]:
        tool: list[float] = []
        lab: list[float] = []
        for _ in range(REPEATS):
            port = anchors.free_port(anchors.LOOPBACK)
            socat = anchors.socat_echo_argv(kind, "127.0.0.1", port)
            with anchors.serving(anchors.LOOPBACK, socat, port, [kind]):
                tool.append(anchors.echo_capacity(anchors.LOOPBACK, "127.0.0.1", port, kind,
                                                  clients=ECHO_CLIENTS, seconds=ECHO_SECONDS))
            with anchors.lab_echo_server(anchors.LOOPBACK) as port:
                lab.append(anchors.echo_capacity(anchors.LOOPBACK, "127.0.0.1", port, kind,
                                                 clients=ECHO_CLIENTS, seconds=ECHO_SECONDS))
        return tool, lab

    runs = _measure(benchmark, anchor_table, [spec], measure, partial(anchors.require_tool, "socat"))
    if runs is not None:
        _record_medians(benchmark, anchor_table, spec, *runs)


# --- the lab's bulk flow vs iperf3 through the same link -------------------------------------------------
BULK_CASES = {"unimpaired": ({}, 1e9), "rate50mbit": ({"rate": "50mbit"}, 1e6)}


@pytest.mark.benchmark(group="anchors-link")
@pytest.mark.parametrize("case", list(BULK_CASES))
def test_lab_bulk_vs_iperf3(benchmark, anchor_table: AnchorTable, case: str) -> None:
    """The lab's bulk TCP flow vs iperf3, both through the same link in the same run (issue 12)."""
    spec = SPECS[f"link-bulk-{case}"]
    impairment, scale = BULK_CASES[case]

    def measure() -> tuple[list[float], list[float]]:
        from lab.link.session import open_link

        tool: list[float] = []
        lab: list[float] = []
        with open_link(**impairment) as link:
            anchors.lab_bulk_goodput(link, seconds=0.5)  # NotMeasured before iperf3 runs, if not landed
            for _ in range(REPEATS):
                iperf3 = anchors.iperf3_goodput(link.client, link.server, seconds=BULK_SECONDS)
                tool.append(iperf3.bps / scale)
                lab.append(anchors.lab_bulk_goodput(link, seconds=BULK_SECONDS).bps / scale)
        return tool, lab

    runs = _measure(benchmark, anchor_table, [spec], measure, partial(anchors.require_tool, "iperf3"),
                    _need_net_admin)
    if runs is not None:
        _record_medians(benchmark, anchor_table, spec, *runs)


# --- one-way delay and loss per direction, through an asymmetric link ------------------------------------
OWD_PROBES = 1000


@pytest.mark.benchmark(group="anchors-link")
def test_one_way_delay_and_loss_per_direction(benchmark, anchor_table: AnchorTable) -> None:
    """Wire v2 through real links: delay 10ms out and 2ms back (the one-way delays' p50, paced and
    ping-pong), then loss 20 % forward only (the loss split by direction, beside what the forwarder
    itself dropped each way). The anchor is the link's own configuration: both ends share one clock."""
    ids = [spec.id for spec in ROWS if spec.id.startswith(("owd-", "loss-"))]

    def measure() -> dict[str, Any]:
        from lab.link.session import open_link

        out: dict[str, Any] = {}
        with open_link(forward={"delay": "10ms"}, reverse={"delay": "2ms"}) as link:
            for mode, rate, count in (("paced", OWD_RATE, OWD_PROBES), ("pingpong", None, OWD_PROBES // 3)):
                out[mode] = [link.run("udp", count=count, rate=rate, timeout=1.0) for _ in range(REPEATS)]
        with open_link(forward={"loss": "20%"}) as link:
            result = link.run("udp", count=LOSS_PROBES, rate=1000, timeout=0.5)
            out["loss"] = (result, link.counters())
        return out

    out = _measure(benchmark, anchor_table, [SPECS[i] for i in ids], measure, _need_net_admin)
    if out is None:
        return
    rows = []
    for mode in ("paced", "pingpong"):
        for direction, configured in (("forward", 10_000.0), ("reverse", 2_000.0)):
            spec = SPECS[f"owd-{direction}-{mode}"]
            p50s = [(getattr(r, f"owd_{direction}_us") or {}).get("p50") for r in out[mode]]
            if None in p50s:
                rows.append(not_measured(spec, "the echo server sent no wire v2 report (owd missing)"))
                continue
            rows.append(measured(spec, configured, _median(p50s), lab_runs=p50s,
                                 timestamps=[r.timestamps for r in out[mode]]))
    result, counters = out["loss"]
    link_dropped = {name: counters[name]["dropped_loss"] for name in ("forward", "reverse")}
    for direction, configured in (("forward", 0.2), ("reverse", 0.0)):
        spec = SPECS[f"loss-{direction}"]
        ratio = getattr(result, f"loss_{direction}_ratio")
        if ratio is None:
            rows.append(not_measured(spec, "the echo server sent no wire v2 report (loss not split)"))
            continue
        rows.append(measured(spec, configured, ratio, lost=getattr(result, f"lost_{direction}"),
                             link_dropped=link_dropped[direction],
                             unknown=result.lost_direction_unknown,
                             interval=getattr(result, f"loss_{direction}_ci95")))
    _record(benchmark, anchor_table, rows)
