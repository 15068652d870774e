"""Execute a scenario plan: per sweep point one link configuration and seed for every protocol.

Modes, chosen per point (the report records which one ran):
- ``link``: with CAP_NET_ADMIN, `lab.link.session.open_link` brings up the namespaces and the
  forwarder once per point; every protocol runs over that same link.
- ``relay``: without privileges, UDP-carried protocols run through `lab.link.relay.UdpRelay` (the
  same impairment models on loopback); TCP cannot be impaired without the link and is skipped
  with the reason.
- ``loopback``: without privileges and without impairment, every protocol talks to a local echo
  server directly.

Ctrl-C stops the run cleanly: everything is torn down by context managers, the points measured so
far are kept and the run is marked ``interrupted``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lab import privileges
from lab.errors import LabError, PrivilegeError
from lab.i18n import N_, _
from lab.interrupts import exit_status, interrupt_on_signals, signal_name
from lab.records import TIMELINE_MAX_POINTS, Result, RunRecord, timeline_of, was_interrupted
from lab.report.appearance import appearance
from lab.scenario import Check, Scenario, SweepPoint, evaluate_all, load_scenario

NS_PER_MS = 1_000_000
DEMO_SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "demo.toml"
REPORTS_DIR = Path("reports")
EXIT_OK, EXIT_EXPECTATION_FAILED, EXIT_INTERRUPTED = 0, 1, 130

Progress = Callable[[int, int], None]


@dataclass(slots=True, kw_only=True)
class PointOutcome:
    """What one sweep point produced: a result per protocol that ran, a reason per one skipped."""

    point: SweepPoint
    mode: str
    results: dict[str, Result] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    link_config: dict[str, Any] | None = None
    checks: dict[str, list[Check]] = field(default_factory=dict)
    interrupted: bool = False  # a stop signal or an error cut this point short
    # bulk points and flow groups (lab.flow_runner): one entry per flow, and the group's figures
    flows: list[dict[str, Any]] = field(default_factory=list)
    group: dict[str, Any] | None = None

    def evaluate(self) -> None:
        """Evaluate the point's expectations against every complete result.

        A protocol run cut short (`lab.records.was_interrupted`) is kept and shown, but
        judging it against expectations meant for the whole run would only mislead.
        """
        self.checks = {
            p: evaluate_all(self.point, p, r)
            for p, r in self.results.items()
            if not was_interrupted(r)
        }
        if self.flows and not self.interrupted:  # a flow group cut short is shown, not judged
            for flow in self.flows:
                self.checks[str(flow["name"])] = evaluate_all(self.point, str(flow["name"]), flow)
            if self.group is not None:
                self.checks[self.group["name"]] = evaluate_all(self.point, self.group["name"], self.group)
            self.checks = {name: checks for name, checks in self.checks.items() if checks}

    def to_dict(self) -> dict[str, Any]:
        """One entry of result.json's `points`."""
        from dataclasses import asdict

        return {
            "id": self.point.id,
            "link": dict(self.point.link),
            "link_config": self.link_config,
            "traffic": asdict(self.point.traffic),
            "seed": self.point.seed,
            "mode": self.mode,
            "interrupted": self.interrupted,
            "results": [r.to_dict() for r in self.results.values()],
            "skipped": dict(self.skipped),
            "checks": {p: [c.to_dict() for c in checks] for p, checks in self.checks.items()},
            **({"flows": self.flows} if self.flows else {}),
            **({"group": self.group} if self.group is not None else {}),
        }


@dataclass(slots=True, kw_only=True)
class RunOutcome:
    """A whole scenario run: its points in order, and whether Ctrl-C cut it short."""

    scenario: Scenario
    points: list[PointOutcome]
    started_at: str
    finished_at: str = ""
    interrupted: bool = False
    interrupted_by: str = ""  # "Ctrl-C", "SIGTERM", "SIGHUP"
    exit_status: int = 0  # what a command should exit with after the interrupt (130, 143, 129)
    error: dict[str, str] | None = None  # {"point": id, "message": ...} when a point failed
    atlas: list[dict[str, Any]] | None = None
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def failed_checks(self) -> list[tuple[str, str, Check]]:
        """(point id, protocol, check) for every expectation that did not hold."""
        return [
            (p.point.id, proto, c)
            for p in self.points
            for proto, cs in p.checks.items()
            for c in cs
            if not c.passed
        ]

    def payload(self) -> dict[str, Any]:
        """The result.json document."""
        from lab.report import FORMAT, environment

        data: dict[str, Any] = {
            "format": FORMAT,
            "scenario": self.scenario.to_dict(),
            "seed": self.scenario.seed,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "interrupted": self.interrupted,
            "environment": environment(),
            "points": [p.to_dict() for p in self.points],
        }
        if self.interrupted_by:
            data["interrupted_by"] = self.interrupted_by
        if self.error is not None:
            data["error"] = dict(self.error)
        if self.atlas is not None:
            data["atlas"] = self.atlas
        return data


# --- per-probe timeline ---------------------------------------------------------------------------
def timeline_from_record(record: RunRecord, max_points: int = TIMELINE_MAX_POINTS) -> list[list[Any]]:
    """[[seq, t_ms, rtt_ms | None, stream]] per probe: intended send since start, RTT if answered in time.

    The stream (4th column, added later: readers accept 3-column rows of older result.json files
    as stream 0) lets the report colour a multi-stream run by stream.
    """
    timeout_ns = int(record.plan.timeout * 1e9)
    first: dict[int, int] = {}
    for arrival in record.arrivals:
        if arrival.intact and arrival.seq not in first:
            first[arrival.seq] = arrival.recv_ns
    rows: list[list[Any]] = []
    for send in sorted(record.sends, key=lambda s: s.seq):
        recv = first.get(send.seq)
        rtt_ns = None if recv is None else recv - send.intended_ns
        rtt = round(rtt_ns / NS_PER_MS, 3) if rtt_ns is not None and 0 <= rtt_ns <= timeout_ns else None
        t_ms = round((send.intended_ns - record.started_ns) / NS_PER_MS, 3)
        rows.append([send.seq, t_ms, rtt, send.stream])
    if len(rows) > max_points:
        stride = -(-len(rows) // max_points)  # ceil: never more than max_points rows
        rows = rows[::stride]
    return rows


def _measure(
    protocol: str,
    address: tuple[str, int],
    point: SweepPoint,
    progress: Progress | None,
    expected_loss_ratio: float | None,
) -> Result:
    from lab.metrics import compute_result
    from lab.protocols import get_protocol

    record = get_protocol(protocol).run(address, point.traffic, progress=progress)
    result = compute_result(record, expected_loss_ratio=expected_loss_ratio)
    result.timeline = timeline_from_record(record)
    return result


@contextmanager
def _keeping_partial(
    outcome: PointOutcome,
    protocol: str,
    on_result: Callable[[PointOutcome], None],
    *,
    expected_loss_ratio: float | None = None,
    link_counters: Callable[[], dict[str, Any]] | None = None,
) -> Iterator[None]:
    """Store the result of a protocol run that a stop signal cut short, then let the stop go on.

    One place for every mode: the result is the link's (`Link.measure` already counted it) or is
    computed here from the client's record; the timeline and the relay's counters are added here.
    """
    from lab.metrics import compute_result
    from lab.schedule import RunInterrupted

    try:
        yield
    except RunInterrupted as stopped:
        result = stopped.result or compute_result(stopped.record, expected_loss_ratio=expected_loss_ratio)
        result.timeline = timeline_from_record(stopped.record)
        if link_counters is not None:
            result.link = link_counters()
        outcome.results[protocol] = result
        outcome.interrupted = True
        on_result(outcome)
        raise


# --- one point -------------------------------------------------------------------------------------
def has_link_privileges() -> bool:
    """True if this process may build the namespaces/TUN link."""
    return not privileges.explain(privileges.CAP_NET_ADMIN)


def run_point(
    scenario: Scenario,
    point: SweepPoint,
    *,
    protocols: tuple[str, ...] | None = None,
    capture: Path | None = None,
    progress: Callable[[str], Progress | None] | None = None,
    on_result: Callable[[PointOutcome], None] | None = None,
) -> PointOutcome:
    """Run every protocol of `scenario` (or `protocols`) at one sweep point; teardown guaranteed."""
    protocols = protocols or scenario.protocols
    progress = progress or (lambda _proto: None)
    on_result = on_result or (lambda _outcome: None)
    if point.bulk is not None or point.flows:  # docs/architecture.md#flows-and-oracles
        from lab.flow_runner import run_flows_point

        return run_flows_point(PointOutcome(point=point, mode="link"), point, protocols, capture, on_result,
                               linked=has_link_privileges(), timeline=timeline_from_record)
    if has_link_privileges():
        return _run_linked(point, protocols, capture, progress, on_result)
    if scenario.privileged:
        reason = privileges.explain(privileges.CAP_NET_ADMIN)
        outcome = PointOutcome(point=point, mode="skipped")
        outcome.skipped = {p: f"this scenario needs the real link: {reason}" for p in protocols}
        return outcome
    if not point.impaired:
        return _run_loopback(point, protocols, progress, on_result)
    return _run_relayed(point, protocols, progress, on_result)


def _run_linked(
    point: SweepPoint,
    protocols: tuple[str, ...],
    capture: Path | None,
    progress: Callable[[str], Progress | None],
    on_result: Callable[[PointOutcome], None],
) -> PointOutcome:
    from lab.link.session import open_link

    outcome = PointOutcome(point=point, mode="link")
    with open_link(point.link_config, mtu=point.mtu, capture=capture) as link:
        outcome.link_config = link.config.to_dict()
        for proto in protocols:
            link.reseed()  # every protocol meets the same sequence of seeded link decisions
            with _keeping_partial(outcome, proto, on_result):
                result = _run_on_link(link, proto, point, progress(proto))
            outcome.results[proto] = result
            on_result(outcome)
    return outcome


def _run_on_link(link: Any, protocol: str, point: SweepPoint, progress: Progress | None) -> Result:
    """`Link.measure`, plus the per-probe timeline the report plots."""
    record, result = link.measure(protocol, point.traffic, progress=progress)
    result.timeline = timeline_from_record(record)
    return result


def _run_loopback(
    point: SweepPoint,
    protocols: tuple[str, ...],
    progress: Callable[[str], Progress | None],
    on_result: Callable[[PointOutcome], None],
) -> PointOutcome:
    from lab.protocols import get_protocol

    outcome = PointOutcome(point=point, mode="loopback")
    for proto in protocols:
        with get_protocol(proto).serving() as address, _keeping_partial(outcome, proto, on_result):
            outcome.results[proto] = _measure(proto, address, point, progress(proto), None)
        on_result(outcome)
    return outcome


def _run_relayed(
    point: SweepPoint,
    protocols: tuple[str, ...],
    progress: Callable[[str], Progress | None],
    on_result: Callable[[PointOutcome], None],
) -> PointOutcome:
    from lab.link.relay import UdpRelay, tcp_needs_privileges_message
    from lab.protocols import get_protocol

    config = point.link_config  # parsed once, when the scenario was validated
    outcome = PointOutcome(point=point, mode="relay", link_config=config.to_dict())
    for proto in protocols:
        protocol = get_protocol(proto)
        if not protocol.relayable:
            outcome.skipped[proto] = tcp_needs_privileges_message(protocol.label, protocol.transport)
            on_result(outcome)
            continue
        # A fresh relay per protocol restarts the seeded models, so each protocol meets the same decisions.
        expected = config.expected_loss_ratio()
        with protocol.serving() as address, UdpRelay(config, address) as relay, \
                _keeping_partial(outcome, proto, on_result, expected_loss_ratio=expected,
                                 link_counters=relay.counters):
            result = _measure(proto, relay.address, point, progress(proto), expected)
            result.link = relay.counters()
        outcome.results[proto] = result
        on_result(outcome)
    return outcome


# --- a whole scenario --------------------------------------------------------------------------------
def run_scenario(
    scenario: Scenario | Path | str,
    *,
    out: Path | None = None,
    seed: int | None = None,
    capture: bool = False,
    console: Any = None,
    live: bool = False,
) -> RunOutcome:
    """Run every point of a scenario (live display on `console` if given); write the report to `out`.

    `live` adds each probe's fate to the display as it happens (a strip per protocol).
    """
    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    if seed is not None:
        scenario = scenario.with_seed(seed)
    capture = capture or scenario.capture
    if capture and out is None:
        raise LabError("capture needs an output directory (--out) to write link.pcapng into")
    if capture and not has_link_privileges():
        raise PrivilegeError(
            f"--capture records the real link, which {privileges.explain(privileges.CAP_NET_ADMIN)}"
        )
    if out is not None:
        prepare_out_dir(Path(out))
    outcome = RunOutcome(scenario=scenario, points=[], started_at=_now())
    display = _Display(console, scenario, live=live) if console is not None else None
    partial: list[PointOutcome] = []  # the point in progress, so a stop keeps its finished protocols
    current: list[SweepPoint] = []

    def on_result(point_outcome: PointOutcome) -> None:
        partial[:] = [point_outcome]
        if display:
            display.update(point_outcome)

    failure: BaseException | None = None
    try:
        with display.live() if display else _nothing():
            for index, point in enumerate(scenario.points):
                current[:] = [point]
                pcap = None
                if capture and out is not None:
                    name = "link.pcapng" if len(scenario.points) == 1 else f"link-{index + 1}.pcapng"
                    pcap = Path(out) / name
                partial.clear()
                result = run_point(
                    scenario,
                    point,
                    capture=pcap,
                    progress=display.progress_for(point) if display else None,
                    on_result=on_result,
                )
                result.evaluate()
                outcome.points.append(result)
                partial.clear()
                current.clear()
                if display:
                    display.update(result)
            if scenario.atlas:
                outcome.atlas = _atlas()
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM/SIGHUP inside interrupt_on_signals
        outcome.interrupted = True
        outcome.interrupted_by = signal_name(stop)
        outcome.exit_status = exit_status(stop)
        _keep_unfinished(outcome, partial, f"not measured: the run was interrupted ({signal_name(stop)})")
    except Exception as exc:  # a point failed: keep every point measured before it, then report
        failure = exc
        failed = current[0].id if current else "?"
        outcome.error = {"point": failed, "message": str(exc) or type(exc).__name__}
        _keep_unfinished(outcome, partial, f"not measured: point {failed} failed ({exc})")
    outcome.finished_at = _now()
    if out is not None:
        from lab.report import write_report

        outcome.paths = write_report(Path(out), outcome.payload())
    if failure is not None:
        kept = f"; the {len(outcome.points)} point(s) measured are in {out}" if out is not None else ""
        if isinstance(failure, LabError):
            raise LabError(f"point {outcome.error['point']} failed: {failure}{kept}") from failure
        raise failure
    return outcome


def _keep_unfinished(outcome: RunOutcome, partial: list[PointOutcome], reason: str) -> None:
    """Append the point in progress (if it measured anything), naming what it did not measure."""
    for unfinished in partial:
        if unfinished.results or unfinished.flows:
            unfinished.interrupted = True
            for proto in outcome.scenario.protocols:
                if proto not in unfinished.results and proto not in unfinished.skipped:
                    unfinished.skipped[proto] = reason
            unfinished.evaluate()
            outcome.points.append(unfinished)


def prepare_out_dir(out: Path) -> None:
    """Make sure the report can be written to `out` before anything is measured.

    Creates the folder, and refuses (one line, before any measuring) a path that is a file or a
    folder this user cannot write in, e.g. reports/demo left by an earlier `sudo make demo`. (The
    report files are replaced by rename, so only the folder's permission matters.)
    """
    import tempfile

    try:
        if out.exists() and not out.is_dir():
            raise LabError(f"output folder {out}: exists and is not a directory; choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise LabError(
            f"output folder {out}: cannot write there ({exc.strerror or exc}){_owner_hint(out)}; "
            "choose another --out"
        ) from None


def _owner_hint(path: Path) -> str:
    import os
    import pwd

    for candidate in (path, *path.parents):
        try:
            owner = candidate.stat().st_uid
        except OSError:
            continue
        if owner != os.getuid():
            try:
                name = pwd.getpwuid(owner).pw_name
            except KeyError:
                name = f"uid {owner}"
            return f": {candidate} belongs to {name} (made by an earlier `sudo` run?)"
        return ""
    return ""


def _atlas() -> list[dict[str, Any]]:
    from lab.probes.runner import run_atlas

    return run_atlas()


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Display:
    """rich progress bars plus a live side-by-side table (one column per protocol)."""

    def __init__(self, console: Any, scenario: Scenario, *, live: bool = False) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.scenario = scenario
        self.outcomes: dict[str, PointOutcome] = {}
        self.show_strips = live
        self.strips: dict[tuple[str, str], Any] = {}  # (point id, protocol) -> lab.live.ProbeStrip
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self._live: Any = None

    @contextmanager
    def live(self) -> Iterator[None]:
        from rich.live import Live

        with Live(self._render(), console=self.console, refresh_per_second=8, transient=False) as live:
            self._live = live
            try:
                yield
            finally:
                live.update(self._render())
                self._live = None

    def progress_for(self, point: SweepPoint) -> Callable[[str], Progress | None]:
        from rich.markup import escape

        def for_protocol(proto: str) -> Progress:
            label = self.scenario.name if point.id == "base" else point.id
            name = appearance(proto).label
            task = self.bars.add_task(f"{escape(label)} {escape(name)}", total=point.traffic.count)
            strip = self._strip(point, proto) if self.show_strips else None

            def report(sent: int, total: int, arrivals: list[tuple[int, float]] | None = None) -> None:
                self.bars.update(task, completed=sent, total=total)
                if strip is not None:
                    strip.progress(sent, total, arrivals)
                self._refresh()

            report.wants_arrivals = strip is not None  # type: ignore[attr-defined]  # lab.schedule.ProbeSchedule.report
            return report

        return for_protocol

    def _strip(self, point: SweepPoint, proto: str) -> Any:
        from lab.live import ProbeStrip

        look = appearance(proto)
        label = look.label if len(self.scenario.points) == 1 else f"{point.id} {look.label}"
        strip = ProbeStrip(label=label, count=point.traffic.count, timeout_s=point.traffic.timeout,
                           style=look.style)
        self.strips[(point.id, proto)] = strip
        return strip

    def update(self, outcome: PointOutcome) -> None:
        self.outcomes[outcome.point.id] = outcome
        for proto, result in outcome.results.items():
            strip = self.strips.get((outcome.point.id, proto))
            if strip is not None and strip.lost is None:
                strip.finish(timeline_of(result))
        self._refresh()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Any:
        from rich.console import Group

        parts: list[Any] = [self.bars]
        if self.strips:
            from lab.live import render_strips

            parts.append(render_strips(list(self.strips.values()), self.console.width))
        width = self.console.width
        parts += [side_by_side_table(self.scenario, o, width=width) for o in self.outcomes.values()]
        return Group(*parts)


MODE_NAMES = {  # how each point ran, as the terminal table's title says it
    "link": N_("the real link"),
    "relay": N_("the loopback relay"),
    "loopback": N_("loopback, unimpaired"),
    "skipped": N_("skipped"),
}


def side_by_side_table(scenario: Scenario, outcome: PointOutcome, *, width: int = 100) -> Any:
    """Rich Tables: metrics as rows, one column per protocol, for one point (the link's round-trip
    drop rate under it: the same for every protocol, only one that does not retransmit loses it).

    As many protocols as fit in `width` columns share a table; the rest follow in further tables
    with the same rows, so eleven protocols stay readable in an 80-column terminal.
    """
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from lab.report.summary import link_drop_line, point_label, side_by_side

    data = outcome.to_dict()
    mode = _(MODE_NAMES[outcome.mode]) if outcome.mode in MODE_NAMES else outcome.mode
    if outcome.point.flows or outcome.point.bulk is not None:  # docs/architecture.md#flows-and-oracles
        return _flows_table(scenario, data, mode)
    rows = side_by_side(data, list(scenario.protocols))
    header_width = max((len(header) for header, _cells in rows), default=0) + 3
    tables: list[Any] = []
    table: Any = None
    used = 0
    for index, proto in enumerate(scenario.protocols):
        look = appearance(proto)
        cell_width = max([len(look.label), *(len(cells[index]) for _header, cells in rows)]) + 3
        if table is None or used + cell_width > width:
            table, used = Table(), header_width + 1
            table.add_column("")
            tables.append((table, []))
        table.add_column(look.label, justify="right", header_style=look.style)
        tables[-1][1].append(index)
        used += cell_width
    rendered = []
    for table, indexes in tables:
        for header, cells in rows:
            table.add_row(header, *(cells[i] for i in indexes))
        rendered.append(table)
    # Title and the drop-rate line as lines of their own: a table's caption wraps at its narrow width.
    title = Text(f"{scenario.name}: {point_label(data)}  ({mode})", style="bold")
    drop_line = link_drop_line(data)
    return Group(title, *rendered, *([Text(drop_line)] if drop_line else []))


def _flows_table(scenario: Scenario, data: Mapping[str, Any], mode: str) -> Any:
    """A point of bulk flows in the terminal: one row per flow, goodput beside the prediction."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from lab.report.flows import flow_table, group_line
    from lab.report.summary import point_label

    table = Table()
    headers, rows = flow_table(data)
    for header in headers:
        table.add_column(header, justify="right")
    for cells in rows:
        table.add_row(*cells)
    title = Text(f"{scenario.name}: {point_label(data)}  ({mode})", style="bold")
    line = group_line(data)
    return Group(title, table, *([Text(line)] if line else []))


# --- commands ---------------------------------------------------------------------------------------
def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


def _print_outcome(console: Any, outcome: RunOutcome) -> None:
    from rich.markup import escape

    from lab.report.summary import what_happened

    data = outcome.payload()
    console.print()
    for point_id, text in what_happened(data):
        label = outcome.scenario.name if point_id == "base" else point_id
        console.print(f"[bold]{escape(label)}[/bold]: {escape(text)}")
    # Skipped protocols and their reasons are part of each point's story above.
    for point_id, proto, check in outcome.failed_checks:
        failed = escape(_("expectation failed"))
        console.print(f"[red]{failed}[/red] {escape(point_id)} {proto}: {escape(check.message)}")
    if "html" in outcome.paths:
        console.print(_("report: {path}").format(path=escape(str(outcome.paths["html"]))))


def run_command(scenario: Path, out: Path | None, seed: int | None, capture: bool) -> int:
    """`lab run`: run a scenario, write result.json/report.html/report.md; exit 1 if an expectation failed."""
    plan = load_scenario(scenario)
    out = out or REPORTS_DIR / plan.slug  # the name as written may be "..": never a path
    console = _console()
    with interrupt_on_signals():  # SIGTERM/SIGHUP keep what was measured, as Ctrl-C does
        outcome = run_scenario(plan, out=out, seed=seed, capture=capture, console=console)
        _print_outcome(console, outcome)
        if outcome.interrupted:
            console.print(_interrupted_line(outcome))
            return outcome.exit_status
    return EXIT_EXPECTATION_FAILED if outcome.failed_checks else EXIT_OK


def _interrupted_line(outcome: RunOutcome) -> str:
    return _("interrupted ({signal}): wrote what was measured so far").format(signal=outcome.interrupted_by)


# scenarios/demo.toml's description, marked for translation (a test keeps the two the same).
DEMO_DESCRIPTION = N_(
    "TCP vs UDP over the same link: 10% loss each way and 20 ms delay each way. UDP loses about "
    "1-(0.9*0.9) = 19% of round trips; TCP delivers everything, later."
)


def demo_scenario(link: Mapping[str, str] | None = None, seed: int | None = None) -> Scenario:
    """scenarios/demo.toml, with the teacher's "what if...?" impairments laid over its [link].

    `lab demo --loss 30%` changes the loss and keeps the demo's 20 ms delay; `--delay 0ms` removes
    the delay. The expectations stay: UDP should lose what the link predicts, TCP nothing.
    """
    from lab.scenario import read_scenario_data, scenario_from_data

    if not DEMO_SCENARIO.is_file():
        raise LabError(f"{DEMO_SCENARIO}: demo scenario missing; reinstall wirelab from its source tree")
    data = read_scenario_data(DEMO_SCENARIO)
    meta = data.setdefault("scenario", {})
    if meta.get("description") == DEMO_DESCRIPTION:
        meta["description"] = _(DEMO_DESCRIPTION)
    source = str(DEMO_SCENARIO)
    if link:
        data.setdefault("link", {}).update(link)
        given = ", ".join(f"--{key.replace('_', '-')} {_given(value)}" for key, value in link.items())
        meta["description"] = f"{meta.get('description', '')} Steered with {given}.".strip()
        source = f"lab demo {given}"
    scenario = scenario_from_data(data, source=source, default_name="demo", path=DEMO_SCENARIO)
    return scenario.with_seed(seed) if seed is not None else scenario


def _given(value: object) -> str:
    """A demo option as typed: --loss 30%, --forward 'delay 10ms loss 5%' (a direction's netem words)."""
    from lab.link.params import format_netem

    return f"'{format_netem(value)}'" if isinstance(value, Mapping) else str(value)


def demo_command(out: Path, link: Mapping[str, str] | None = None, *, seed: int | None = None,
                 live: bool = False, capture: bool = False, slides: bool = False) -> int:
    """`lab demo`: the classroom demo (scenarios/demo.toml), its table, report path and an explanation.

    `link` overrides the demo's impairment ("what if the loss were 30 %?"), `live` draws each
    probe's fate in the terminal as it happens, `capture` writes the link's pcapng beside the
    report, `slides` also writes projector-sized figures.
    """
    from rich.markup import escape

    from lab.report.summary import demo_explanation

    scenario = demo_scenario(link, seed)
    console = _console()
    started = time.monotonic()
    with interrupt_on_signals():  # SIGTERM/SIGHUP keep what was measured, as Ctrl-C does
        outcome = run_scenario(scenario, out=out, console=console, capture=capture, live=live)
        _print_outcome(console, outcome)
        console.print()
        ran = [p for p in scenario.protocols if any(p in point.results for point in outcome.points)]
        console.print(demo_explanation(ran, [p for p in scenario.protocols if p not in ran]))
        if outcome.interrupted:
            console.print(_interrupted_line(outcome))
        if slides:
            _write_slides(console, out, outcome)
        for name in sorted(p.name for p in Path(out).glob("link*.pcapng")) if capture else ():
            console.print(_("capture: {path} (open it in Wireshark: each packet's comment says what the "
                            "link did to it)").format(path=escape(str(Path(out) / name))))
        console.print(_("(took {seconds:.0f} s)").format(seconds=time.monotonic() - started))
    return outcome.exit_status if outcome.interrupted else EXIT_OK


def _write_slides(console: Any, out: Path, outcome: RunOutcome) -> None:
    from rich.markup import escape

    from lab.report import write_slides

    for path in write_slides(Path(out), outcome.payload()):
        console.print(_("slide: {path}").format(path=escape(str(path))))
