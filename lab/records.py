"""What a measuring client records, and the result object computed from it.

Data flows one way: a client fills a `RunRecord` (raw observations, nothing derived), then
`lab.metrics.compute_result(record)` turns it into a `Result` (docs/architecture.md#result-object).
Both are plain data with `to_dict`/`from_dict`, so they cross process boundaries (a client run
inside a network namespace) and land in `result.json` unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lab.errors import ConfigError

# Every run must end and fit in memory. A probe costs about 510-560 bytes while it is recorded and
# measured (its Send and Arrival records plus the metrics' working copies: `lab send` of 200 000
# probes peaked 90 MB above one of 20 000); 600 leaves a margin.
# Kernel timestamps and the server's report (wire v2) add five integers a probe (records alone measured
# 548 bytes a probe with them, tracemalloc): 800.
PROBE_MEMORY_BYTES = 800
MAX_COUNT = 10_000_000
MAX_WINDOW = 65535  # TrafficPlan.window: a protocol may accept less (the ARQ ones: 64)
MAX_RATE = 1_000_000.0
DEFAULT_MAX_RUN_SECONDS = 3600.0
DEFAULT_MAX_RUN_MB = 1024
MAX_RUN_SECONDS_ENV = "WIRELAB_MAX_RUN_SECONDS"
MAX_RUN_MB_ENV = "WIRELAB_MAX_RUN_MB"


@dataclass(frozen=True, slots=True)
class RunLimits:
    """How long one protocol run may last and how much memory its records may take."""

    seconds: float = DEFAULT_MAX_RUN_SECONDS
    megabytes: int = DEFAULT_MAX_RUN_MB

    @property
    def max_probes(self) -> int:
        """The most probes whose records fit in `megabytes`."""
        return self.megabytes * 1024 * 1024 // PROBE_MEMORY_BYTES


def run_limits() -> RunLimits:
    """The limits in force: the defaults, or WIRELAB_MAX_RUN_SECONDS / WIRELAB_MAX_RUN_MB."""
    import math
    import os

    seconds, megabytes = DEFAULT_MAX_RUN_SECONDS, DEFAULT_MAX_RUN_MB
    if raw := os.environ.get(MAX_RUN_SECONDS_ENV, "").strip():
        try:
            seconds = float(raw)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds > 0):
            raise ConfigError(f"{MAX_RUN_SECONDS_ENV} must be a positive number of seconds, got {raw!r}",
                              key=MAX_RUN_SECONDS_ENV)
    if raw := os.environ.get(MAX_RUN_MB_ENV, "").strip():
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"{MAX_RUN_MB_ENV} must be a whole number of megabytes >= 1, got {raw!r}",
                              key=MAX_RUN_MB_ENV)
        megabytes = int(raw)
    return RunLimits(seconds, megabytes)


def _human_seconds(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.3g} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds:.3g} s"


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficPlan:
    """What a measuring client sends.

    `rate=None` is ping-pong (one probe in flight, the next sent when the reply arrives or the
    timeout expires); a positive `rate` (probes/s) is paced open loop, receiving concurrently.
    `size` is the whole message on the wire (32-byte probe header + payload). `streams` > 1
    spreads probes round-robin over that many logical streams (one TCP connection carries them
    all; UDP gives each its own socket) — the head-of-line experiment. `window` is for protocols
    with a sending window (the ARQ ones): segments in flight at once, None for their default;
    protocols without one ignore it.

    A plan must be able to end within `run_limits()`: a paced plan's count/rate may not exceed the
    time limit and its records may not exceed the memory limit (ping-pong has no schedule: its run
    is stopped at the time limit instead, see `deadline_s`).
    """

    count: int = 100
    size: int = 64
    rate: float | None = None
    timeout: float = 1.0
    streams: int = 1
    window: int | None = None

    def __post_init__(self) -> None:
        import math

        from lab.wire import DEFAULT_MAX_PAYLOAD, HEADER_SIZE

        count_ok = isinstance(self.count, int) and not isinstance(self.count, bool)
        if not count_ok or not 1 <= self.count <= MAX_COUNT:
            raise ConfigError(f"count must be between 1 and {MAX_COUNT}, got {self.count!r}", key="count")
        if not isinstance(self.size, int) or not HEADER_SIZE <= self.size <= (
            HEADER_SIZE + DEFAULT_MAX_PAYLOAD
        ):
            raise ConfigError(
                f"size must be between {HEADER_SIZE} (the probe header) and "
                f"{HEADER_SIZE + DEFAULT_MAX_PAYLOAD} bytes, got {self.size!r}", key="size"
            )
        if self.rate is not None and not (
            isinstance(self.rate, int | float) and math.isfinite(self.rate) and 0 < self.rate <= MAX_RATE
        ):
            raise ConfigError(f"rate must be > 0 and <= {MAX_RATE:.0f} messages/s, got {self.rate!r}",
                              key="rate")
        if not (isinstance(self.timeout, int | float) and 0 < self.timeout <= 3600):
            raise ConfigError(f"timeout must be > 0 and <= 3600 seconds, got {self.timeout!r}", key="timeout")
        if not isinstance(self.streams, int) or not 1 <= self.streams <= 64:
            raise ConfigError(f"streams must be between 1 and 64, got {self.streams!r}", key="streams")
        window_ok = isinstance(self.window, int) and not isinstance(self.window, bool)
        if self.window is not None and not (window_ok and 1 <= self.window <= MAX_WINDOW):
            raise ConfigError(f"window must be between 1 and {MAX_WINDOW} segments, got {self.window!r}",
                              key="window")
        limits = run_limits()
        if self.count > limits.max_probes:
            raise ConfigError(
                f"count {self.count} needs about {self.count * PROBE_MEMORY_BYTES / 1e9:.2g} GB to record "
                f"(~{PROBE_MEMORY_BYTES} bytes a probe), over the {limits.megabytes} MB limit of one run "
                f"(at most {limits.max_probes} probes); set {MAX_RUN_MB_ENV} to raise it", key="count"
            )
        if self.rate is not None and (nominal := self.count / self.rate) > limits.seconds:
            raise ConfigError(
                f"rate {self.rate:g}/s with count {self.count} takes {_human_seconds(nominal)}, over the "
                f"{limits.seconds:g} s limit of one run; send fewer probes, faster, or set "
                f"{MAX_RUN_SECONDS_ENV} to raise it", key="rate"
            )

    @classmethod
    def from_table(cls, table: Mapping[str, Any], *, max_duration_s: float,
                   default_rate: float | None = None) -> TrafficPlan:
        """A plan from a scenario's table of numbers (`[traffic]`, a probes flow of `[[flows]]`):
        `duration` (seconds) becomes count = rate x duration, at `default_rate` when no rate is
        given (None: a rate is required); `rate` and `timeout` become floats. A ConfigError names
        the key (`duration`, or the plan's own)."""
        kwargs = dict(table)
        duration = kwargs.pop("duration", None)
        if duration is not None:
            if "count" in kwargs:
                raise ConfigError("give either count or duration, not both", key="duration")
            if default_rate is not None:
                kwargs.setdefault("rate", default_rate)
            if kwargs.get("rate") is None:
                raise ConfigError("needs a rate (count = rate * duration)", key="duration")
            if not 0 < duration <= max_duration_s:
                raise ConfigError(f"must be > 0 and <= {max_duration_s:g} s, got {duration!r}",
                                  key="duration")
            kwargs["count"] = max(1, round(kwargs["rate"] * duration))
        for key in ("rate", "timeout"):
            if key in kwargs:
                kwargs[key] = float(kwargs[key])
        return cls(**kwargs)

    def deadline_s(self) -> float:
        """How long a client may run this plan before its overall deadline stops it.

        Open loop: its schedule with room to catch up, plus one timeout for the last replies.
        Ping-pong: every probe timing out in turn, but never past the run time limit.
        """
        limits = run_limits()
        if self.rate is None:
            nominal = min(self.count * self.timeout, limits.seconds)
        else:
            nominal = DEADLINE_SLACK * self.count / self.rate + self.timeout
        return nominal + DEADLINE_MARGIN_S


# Extra time allowed beyond a run's nominal length before the overall deadline stops it.
DEADLINE_MARGIN_S = 5.0
# An open-loop sender that fell behind may need this much longer than count/rate to catch up.
DEADLINE_SLACK = 1.5


@dataclass(slots=True, kw_only=True)
class Send:
    """One probe as sent: when it was meant to go and when it actually went (monotonic ns), and the
    kernel's transmit stamp when the client had one (CLOCK_REALTIME ns, lab.timestamps)."""

    seq: int
    intended_ns: int
    sent_ns: int
    size: int
    stream: int = 0
    kernel_sent_ns: int | None = None


@dataclass(slots=True, kw_only=True)
class Arrival:
    """One reply as received, in arrival order. `intact=False` means the payload CRC failed.

    `kernel_recv_ns`: the kernel's receive stamp (CLOCK_REALTIME ns) when the client had one. The
    `server_*` fields are what the lab's echo server wrote into a wire v2 reply (None from a plain
    echo): when it received the probe (`server_rx_ns`, CLOCK_REALTIME), its clock just before it
    sent the reply (`server_tx_ns`), and which of the 64 seqs before this one it had received
    (`server_seen`, bit i = seq - 1 - i; lab.wire.ServerReport)."""

    seq: int
    recv_ns: int
    intact: bool = True
    stream: int = 0
    kernel_recv_ns: int | None = None
    server_rx_ns: int | None = None
    server_tx_ns: int | None = None
    server_seen: int | None = None


@dataclass(slots=True, kw_only=True)
class RunNotes:
    """What went unusually in one run; the defaults say nothing did (docs/architecture.md#result-object).

    The client fills the first six, `lab.metrics.compute_result` the next two; `timestamps_fallback`
    either (the client when the kernel refused, the metrics when stamps are missing).
    """

    interrupted: bool = False  # a stop signal (Ctrl-C, SIGTERM...) cut the run short
    undecided: int = 0  # ...and this many probes, still inside their timeout, were left out of it
    deadline_hit: bool = False  # the run's overall deadline stopped it (TrafficPlan.deadline_s)
    connection_ended: str | None = None  # a connection's peer ended it early: why
    merged_replies: int = 0  # datagrams that held several replies (an echo server without boundaries)
    icmp_refused: int = 0  # sends that drew ICMP port unreachable (the echo server went away)
    unknown_seq: int = 0  # intact replies carrying a sequence number that was never sent
    rtt_clamped: int = 0  # RTT values outside HdrHistogram's range, clamped into it
    timestamps_fallback: str | None = None  # why the figures use user-space times, not the kernel's

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (every field)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RunNotes:
        """Inverse of `to_dict` (keys it does not know are ignored: a newer file's notes)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


# Observations: what a protocol's own machinery reported beyond the probes, keyed by the protocol that
# observed it, each a mapping of named figures. TCP adds `observations["tcp"] = {"tcp_info": {...TCP_INFO
# of the client's socket at the end...}, "tcp_nodelay": True}`; a protocol built on another may add
# both its own and the other's. The metrics that read them belong to that protocol (its `metrics`).
Observations = dict[str, dict[str, Any]]


@dataclass(slots=True, kw_only=True)
class RunRecord:
    """Everything one client run observed. Times are `time.monotonic_ns()` of the client host.

    `arrivals` is in the order the client received them (duplicates and late replies included).
    `unattributed_corrupt` counts replies so damaged that no sequence number could be read.
    `notes` says what went unusually; `observations` holds the protocol's own (see `Observations`).
    `timestamps` is "kernel" when the client asked the kernel to stamp its sends and receives
    (lab.timestamps), else "user"; `realtime_offset_ns` is CLOCK_REALTIME - CLOCK_MONOTONIC at the
    start (to set user-space times beside the server's). `loss_reports` are the server's answers to
    the closing loss query: [stream, seq, seen bitmap] (lab.wire.FLAG_LOSS_QUERY).
    """

    protocol: str
    plan: TrafficPlan
    started_ns: int
    ended_ns: int
    sends: list[Send] = field(default_factory=list)
    arrivals: list[Arrival] = field(default_factory=list)
    unattributed_corrupt: int = 0
    notes: RunNotes = field(default_factory=RunNotes)
    observations: Observations = field(default_factory=dict)
    timestamps: str = "user"
    realtime_offset_ns: int | None = None
    loss_reports: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """Inverse of `to_dict`."""
        return cls(
            protocol=data["protocol"],
            plan=TrafficPlan(**data["plan"]),
            started_ns=data["started_ns"],
            ended_ns=data["ended_ns"],
            sends=[Send(**s) for s in data["sends"]],
            arrivals=[Arrival(**a) for a in data["arrivals"]],
            unattributed_corrupt=data.get("unattributed_corrupt", 0),
            notes=RunNotes.from_dict(data.get("notes")),
            observations={k: dict(v) for k, v in (data.get("observations") or {}).items()},
            timestamps=data.get("timestamps", "user"),
            realtime_offset_ns=data.get("realtime_offset_ns"),
            loss_reports=[list(r) for r in data.get("loss_reports") or []],
        )


RTT_KEYS = ("min", "p50", "p90", "p99", "p999", "max", "mean")
TIMELINE_MAX_POINTS = 3000  # per-probe timeline rows a result keeps: every gap of a demo-sized run


@dataclass(slots=True, kw_only=True)
class Result:
    """The result object (docs/architecture.md#result-object): one per protocol run. All latencies in µs.

    `rtt_us` holds percentiles of replies that came back in time; `rtt_censored_us` the same
    percentiles with every lost probe counted at the timeout (so losses stay visible in the
    latency picture). Open-loop runs measure from the *intended* send time (`rtt_us`) and also
    report `rtt_uncorrected_us`, measured from the actual send time (coordinated omission).
    `expected_loss_ratio`, `link` and `kernel` are filled by a linked run. `notes` and
    `observations` come from the record; `hol` (head-of-line figures, lab.metrics.HeadOfLine) only
    for several streams; `timeline` ([[seq, t_ms, rtt_ms | None, stream]], at most
    TIMELINE_MAX_POINTS rows) is added by the runner for the report.

    Timestamps (docs/architecture.md#timestamps-and-one-way-delay): `rtt_us` is the best figure
    available, from the kernel's send and receive stamps when `timestamps` is "kernel";
    `rtt_user_us` is always the user-space one. With the lab's echo server (wire v2):
    `owd_forward_us`, `owd_reverse_us` (one-way delays: both ends share one clock) and
    `server_turnaround_us`, and the loss split by direction (`lost_forward`: the server never saw
    the probe; `lost_reverse`: it did, the reply never came; `lost_direction_unknown`: no report
    covered it), `loss_forward_ratio` = lost_forward / decided, `loss_reverse_ratio` =
    lost_reverse / (decided - lost_forward), each with its Wilson interval. None where unmeasured.
    """

    protocol: str
    sent: int
    received: int
    lost: int
    loss_ratio: float
    loss_ci95: list[float]
    duplicates: int
    reordered: int
    reordered_ratio: float
    reorder_extent_max: int
    corrupted: int
    late: int
    rtt_us: dict[str, float | None]
    rtt_censored_us: dict[str, float | None]
    rtt_uncorrected_us: dict[str, float | None] | None
    jitter_us: float
    goodput_bps: float
    duration_s: float
    size: int
    rate: float | None
    timeout_s: float
    expected_loss_ratio: float | None = None
    link: dict[str, Any] | None = None
    kernel: dict[str, Any] | None = None
    notes: RunNotes = field(default_factory=RunNotes)
    observations: Observations = field(default_factory=dict)
    hol: dict[str, Any] | None = None
    timeline: list[list[Any]] | None = None
    timestamps: str = "user"
    rtt_user_us: dict[str, float | None] | None = None
    owd_forward_us: dict[str, float | None] | None = None
    owd_reverse_us: dict[str, float | None] | None = None
    server_turnaround_us: dict[str, float | None] | None = None
    lost_forward: int | None = None
    lost_reverse: int | None = None
    lost_direction_unknown: int | None = None
    loss_forward_ratio: float | None = None
    loss_reverse_ratio: float | None = None
    loss_forward_ci95: list[float] | None = None
    loss_reverse_ci95: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (the `--json` output and one entry of result.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Result:
        """Inverse of `to_dict` (ignores keys it does not know, for forward compatibility)."""
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        values["notes"] = RunNotes.from_dict(data.get("notes"))
        return cls(**values)


# --- reading a result's parts -----------------------------------------------------------------------
# Readers of a result's timeline, head-of-line figures, notes and observations go through these,
# whether they hold a `Result` or its dict form (a result.json entry).
def _part(result: Result | Mapping[str, Any], name: str) -> Any:
    return getattr(result, name) if isinstance(result, Result) else result.get(name)


def timeline_of(result: Result | Mapping[str, Any]) -> list[list[Any]]:
    """The per-probe timeline rows [[seq, t_ms, rtt_ms | None, stream], ...] ([] without one)."""
    return list(_part(result, "timeline") or [])


def hol_of(result: Result | Mapping[str, Any]) -> dict[str, Any] | None:
    """The head-of-line figures of a multi-stream run (lab.metrics.HeadOfLine), None otherwise."""
    hol = _part(result, "hol")
    return dict(hol) if hol else None


def notes_of(result: Result | Mapping[str, Any]) -> RunNotes:
    """What went unusually in a run."""
    notes = _part(result, "notes")
    return notes if isinstance(notes, RunNotes) else RunNotes.from_dict(notes)


def was_interrupted(result: Result | Mapping[str, Any]) -> bool:
    """True for a run a stop signal cut short (its figures cover only what was sent)."""
    return notes_of(result).interrupted


def observations_of(result: Result | Mapping[str, Any], observer: str) -> dict[str, Any]:
    """What protocol `observer` reported of this run (`Observations`; {} if nothing)."""
    return dict((_part(result, "observations") or {}).get(observer) or {})


# --- result.json's first format ------------------------------------------------------------------------
V1_OBSERVATIONS = {"tcp_nodelay": "tcp"}  # v1 `extras` keys that were a protocol's observations


def result_from_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """A result dict of "wirelab-result/1" in today's layout: `extras` split into `timeline`, `hol`,
    `notes` and `observations`, and `tcp_info` moved to `observations["tcp"]`. Keys of `extras` that
    are none of these (none were written) are dropped."""
    out = {k: v for k, v in data.items() if k not in ("extras", "tcp_info")}
    extras = dict(data.get("extras") or {})
    timeline, hol = extras.pop("timeline", None), extras.pop("hol", None)
    observations: Observations = {}
    if data.get("tcp_info") is not None:
        observations.setdefault("tcp", {})["tcp_info"] = data["tcp_info"]
    for key, observer in V1_OBSERVATIONS.items():
        if key in extras:
            observations.setdefault(observer, {})[key] = extras.pop(key)
    known = set(RunNotes.__dataclass_fields__)
    out["notes"] = RunNotes.from_dict({k: v for k, v in extras.items() if k in known}).to_dict()
    out.update(observations=observations, hol=hol, timeline=timeline)  # Result's order
    return out
