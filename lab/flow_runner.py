"""Running bulk points and flow groups (docs/architecture.md#flows-and-oracles); lab.runner calls
`run_flows_point` for a point with `bulk` or `flows`.

- A bulk point runs each protocol as one bulk flow alone (`Link.bulk`), the link reseeded before each
  so every protocol meets the same link decisions.
- A group: the idle latency first (IDLE_PROBES probes of the group's probes flow, for the idle
  RPM), then every bulk flow started at once without blocking (`Link.start_bulk`, each with
  `BulkPlan.start_at_ns` = the common start + its offset: CLOCK_MONOTONIC, shared by every process),
  while this process runs the group's probes flow (at most one) from its own offset; then the bulk
  flows' results are collected. A stop signal keeps whatever finished, as lab.runner does.

Each finished flow becomes an entry of the point's `flows` (lab.flows.bulk_entry/probes_entry) with
what the textbook predicts beside it (lab.flows.add_oracles); the group's figures (Jain's index, RPM)
go to the point's `group`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from lab import flows as flowlib
from lab.bulk import BulkInterrupted
from lab.bulk.common import wait_until
from lab.records import TrafficPlan
from lab.schedule import RunInterrupted

START_MARGIN_S = 1.0  # from asking the flows to start to their common start: forks and connects fit in it
# (0.5 s was not always enough on a 2-core host at load 8: flows left up to 0.34 s late)
COLLECT_GRACE_S = 30.0  # after its planned end, how long a bulk flow's result may take to come back
STOP_WAIT_S = 5.0  # after a stop signal: the flow asks its sink for the counts (2 s at most), then answers
WAIT_POLL_S = 0.05


Timeline = Callable[[Any], list[list[Any]]]  # lab.runner.timeline_from_record (passed in: no import cycle)


def run_flows_point(outcome: Any, point: Any, protocols: tuple[str, ...], capture: Any,
                    on_result: Callable[[Any], None], *, linked: bool, timeline: Timeline) -> Any:
    """Fill `outcome` (lab.runner.PointOutcome) for a point with `bulk` or `flows`; return it.
    `linked`: this process may build the link; `timeline` turns a probe run's record into the
    report's per-probe rows."""
    if not linked:
        return _without_link(outcome, point, protocols, on_result)
    from lab.link.session import open_link

    outcome.mode = "link"
    with open_link(point.link_config, mtu=point.mtu, capture=capture) as link:
        outcome.link_config = link.config.to_dict()
        numbers = _link_numbers(link.config)
        if point.flows:
            _run_group(outcome, link, point, numbers, on_result, timeline)
        else:
            for proto in protocols:
                link.reseed()  # every protocol meets the same sequence of seeded link decisions
                try:
                    result = link.bulk(proto, point.bulk)
                except BulkInterrupted as stopped:  # keep what the flow measured, then stop
                    outcome.interrupted = True
                    _keep(outcome, proto, 0.0, stopped.result, numbers, point.mtu)
                    on_result(outcome)
                    raise
                _keep(outcome, proto, 0.0, result, numbers, point.mtu)
                on_result(outcome)
    return outcome


def _without_link(outcome: Any, point: Any, protocols: tuple[str, ...],
                  on_result: Callable[[Any], None]) -> Any:
    """Without CAP_NET_ADMIN: an unimpaired point runs on loopback (no link rate: only unrated
    checks mean anything); an impaired one is skipped with the reason (bulk flows through the
    unprivileged relay are not supported)."""
    from lab import privileges

    names = [f.name for f in point.flows] or list(protocols)
    if point.impaired:
        reason = (f"bulk flows need the real link to be impaired: "
                  f"{privileges.explain(privileges.CAP_NET_ADMIN)}")
        outcome.mode = "skipped"
        outcome.skipped = dict.fromkeys(names, reason)
        return outcome
    from lab.bulk import run_bulk_loopback
    from lab.protocols import get_protocol

    outcome.mode = "loopback"
    if point.flows:
        outcome.mode = "skipped"
        outcome.skipped = dict.fromkeys(names, "flow groups run over the real link only (they share its "
                                               "queue); " + privileges.explain(privileges.CAP_NET_ADMIN))
        return outcome
    for proto in protocols:
        result = run_bulk_loopback(get_protocol(proto), point.bulk)
        _keep(outcome, proto, 0.0, result, None, point.mtu)
        outcome.interrupted = outcome.interrupted or result.stopped == "interrupted"
        on_result(outcome)
        if result.stopped == "interrupted":
            raise KeyboardInterrupt
    return outcome


def _keep(outcome: Any, name: str, start_s: float, result: Any, numbers: dict[str, Any] | None,
          mtu: int) -> None:
    """A finished (or stopped) flow's entry, with the textbook's predictions, into the outcome."""
    entry = flowlib.bulk_entry(name, start_s, result)
    outcome.flows.append(flowlib.add_oracles(entry, numbers, mtu=mtu))


def _link_numbers(config: Any) -> dict[str, Any]:
    """The link's configuration as the oracles read it (parsed numbers, and the forward loss
    probability, Gilbert-Elliott's stationary rate included)."""
    numbers = config.to_wire()
    numbers["expected_forward_loss"] = config.expected_forward_loss_ratio()
    numbers["expected_reverse_loss"] = config.expected_reverse_loss_ratio()  # a download's data way
    return numbers


def _run_group(outcome: Any, link: Any, point: Any, numbers: dict[str, Any],
               on_result: Callable[[Any], None], timeline: Timeline) -> None:
    bulk_specs = [f for f in point.flows if f.kind == "bulk"]
    probe_specs = [f for f in point.flows if f.kind == "probes"]
    idle: dict[str, Any] | None = None
    if probe_specs:  # the idle latency, before any load: the same protocol and size as the loaded probes
        spec = probe_specs[0]
        assert spec.probes is not None
        idle_plan = dataclasses.replace(spec.probes, count=flowlib.IDLE_PROBES, rate=flowlib.IDLE_RATE)
        link.reseed()
        idle = _probe_result(link, spec.protocol, idle_plan, timeline)
    for spec in bulk_specs:  # the sinks first: starting one is a fresh interpreter, seconds on a busy host
        link.sink_for(spec.protocol, spec.bulk.direction)
    link.reseed()
    start_ns = time.monotonic_ns() + int(START_MARGIN_S * 1e9)
    handles: list[tuple[Any, Any]] = []
    probes: dict[str, Any] | None = None
    try:
        for spec in bulk_specs:
            plan = dataclasses.replace(spec.bulk, start_at_ns=start_ns + int(spec.start_s * 1e9))
            handles.append((spec, link.start_bulk(spec.protocol, plan)))
        if probe_specs:
            spec = probe_specs[0]
            wait_until(start_ns + int(spec.start_s * 1e9))  # in short sleeps: Ctrl-C stays prompt
            measured = _probe_result(link, spec.protocol, spec.probes, timeline)
            probes = flowlib.probes_entry(spec.name, spec.start_s, measured)
            outcome.flows.append(probes)
        for spec, handle in handles:
            result = _wait(handle, spec.bulk.duration_s + spec.start_s + COLLECT_GRACE_S)
            _keep(outcome, spec.name, spec.start_s, result, numbers, point.mtu)
            if result.started_ns:  # how late its first byte left, against the plan (a loaded host)
                planned = start_ns + int(spec.start_s * 1e9)
                outcome.flows[-1]["late_s"] = max(0.0, (result.started_ns - planned) / 1e9)
            on_result(outcome)
    except BaseException as stop:
        outcome.interrupted = True
        if isinstance(stop, RunInterrupted) and stop.result is not None and probe_specs:
            spec = probe_specs[0]  # the probes flow cut short: what it measured
            stop.result.timeline = timeline(stop.record)
            probes = flowlib.probes_entry(spec.name, spec.start_s, stop.result.to_dict())
            outcome.flows.append(probes)
        for spec, handle in handles:  # keep every flow that still hands back what it measured
            handle.interrupt()
            if not any(f.get("name") == spec.name for f in outcome.flows):
                with contextlib.suppress(Exception):  # a flow that cannot answer is left out
                    _keep(outcome, spec.name, spec.start_s, _wait(handle, STOP_WAIT_S), numbers, point.mtu)
            handle.close()
        outcome.group = _group(outcome.flows, idle, probes)
        on_result(outcome)
        raise
    outcome.group = _group(outcome.flows, idle, probes)
    on_result(outcome)


def _group(flows: list[dict[str, Any]], idle: dict[str, Any] | None,
           probes: dict[str, Any] | None) -> dict[str, Any]:
    return flowlib.group_figures(flows, idle, flowlib.rtts_s(probes or {}), flowlib.rtts_s(idle or {}))


def _probe_result(link: Any, protocol: str, plan: TrafficPlan, timeline: Timeline) -> dict[str, Any]:
    record, result = link.measure(protocol, plan)
    result.timeline = timeline(record)
    return result.to_dict()


def _wait(handle: Any, timeout_s: float) -> Any:
    """A started flow's BulkResult. Polled rather than joined: a Ctrl-C that lands inside
    Thread.join can leave that thread's handle unusable, and the flow's result with it."""
    deadline = time.monotonic() + timeout_s
    while not handle.done and time.monotonic() < deadline:
        time.sleep(WAIT_POLL_S)
    return handle.result(timeout=WAIT_POLL_S)


