"""What a bulk flow is and what it measures: `BulkPlan`, `BulkResult`, `BulkInterrupted`.

Re-exported by `lab.bulk` (docs/architecture.md#bulk-traffic); its own module so that
`lab.protocols` can name these types without importing what runs flows.
"""


from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lab.errors import ConfigError

MAX_BULK_SECONDS = 600.0  # one flow; a scenario's run limits bound the whole
MAX_BULK_BYTES = 100 * 10**9  # 100 GB: at 40 Gbit/s, 20 s
MAX_BULK_RATE_BPS = 100e9
DEFAULT_INTERVAL_S = 0.1  # goodput sample period: the report's goodput-over-time lines
MIN_INTERVAL_S = 0.01
DIRECTIONS = ("upload", "download")  # upload: client -> server (the link's forward way); download: back


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkPlan:
    """One bulk flow.

    It sends for `duration_s` seconds, or until `max_bytes` payload bytes are sent, whichever
    comes first (a flow is always bounded in time). `rate_bps` paces it (bits/s on the wire of
    payload); a protocol without congestion control (UDP, UDP-Lite, QUIC DATAGRAM) needs one, a
    reliable protocol with None sends as fast as it allows. `size` is the message size for
    datagram protocols (payload bytes per datagram). `interval_s` is the sampling period of
    goodput (and of the TCP_INFO trace). `start_at_ns` (CLOCK_MONOTONIC, which every process on
    the host shares) makes several flows start together; None starts at once. `window` is for
    the protocols with a sending window (ARQ), as in `TrafficPlan`. `direction` is which way the
    data goes through a link: "upload" (the sender in the client namespace, the sink in the server's:
    the forward direction) or "download" (the other way round: the reverse direction).
    """

    duration_s: float = 5.0
    max_bytes: int | None = None
    rate_bps: float | None = None
    size: int = 1200
    interval_s: float = DEFAULT_INTERVAL_S
    start_at_ns: int | None = None
    window: int | None = None
    direction: str = "upload"

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ConfigError(f'direction must be "upload" or "download", got {self.direction!r}',
                              key="direction")
        if not (isinstance(self.duration_s, int | float) and 0 < self.duration_s <= MAX_BULK_SECONDS):
            raise ConfigError(f"duration must be > 0 and <= {MAX_BULK_SECONDS:g} seconds, "
                              f"got {self.duration_s!r}", key="duration")
        if self.max_bytes is not None and not (
            isinstance(self.max_bytes, int) and not isinstance(self.max_bytes, bool)
            and 1 <= self.max_bytes <= MAX_BULK_BYTES
        ):
            raise ConfigError(f"bytes must be between 1 and {MAX_BULK_BYTES}, got {self.max_bytes!r}",
                              key="bytes")
        if self.rate_bps is not None and not (
            isinstance(self.rate_bps, int | float) and math.isfinite(self.rate_bps)
            and 0 < self.rate_bps <= MAX_BULK_RATE_BPS
        ):
            raise ConfigError(f"rate must be > 0 and <= 100gbit, got {self.rate_bps!r}", key="rate")
        if not (isinstance(self.size, int) and 16 <= self.size <= 65507):
            raise ConfigError(f"size must be between 16 and 65507 bytes, got {self.size!r}", key="size")
        interval_ok = isinstance(self.interval_s, int | float)
        if not (interval_ok and MIN_INTERVAL_S <= self.interval_s <= self.duration_s):
            raise ConfigError(f"interval must be between {MIN_INTERVAL_S} s and the duration, "
                              f"got {self.interval_s!r}", key="interval")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True, kw_only=True)
class BulkResult:
    """What one bulk flow achieved (docs/architecture.md#bulk-traffic).

    `bytes_delivered` is what the sink counted in order and intact; `goodput_bps` is
    bytes_delivered * 8 / duration_s, where `duration_s` runs from the flow's first byte sent to
    its last byte delivered. `intervals` is `[[t_s, bytes]]`: bytes delivered per `interval_s`
    (receiver side), t_s the interval's end since the flow started. `stopped` says why sending
    stopped: "duration", "bytes", "interrupted", "error".
    """

    protocol: str
    bytes_sent: int = 0
    bytes_delivered: int = 0
    duration_s: float = 0.0
    goodput_bps: float = 0.0
    interval_s: float = DEFAULT_INTERVAL_S
    intervals: list[list[float]] = field(default_factory=list)
    retransmits: int | None = None  # segments/packets the sender sent again (None: not known)
    # TCP: [[t_s, snd_cwnd (segments), srtt_us, total_retrans, delivery_rate_bps]], sampled every interval
    tcp_trace: list[list[float]] = field(default_factory=list)
    mss: int | None = None  # TCP: the connection's MSS (tcpi_snd_mss), for the Mathis model
    min_rtt_us: float | None = None  # the flow's own smallest RTT sample (TCP: tcpi_min_rtt)
    # rate-driven datagrams: sent, received, lost, loss_ratio, loss_ci95, jitter_us, reordered, duplicates
    datagrams: dict[str, Any] | None = None
    observations: dict[str, Any] = field(default_factory=dict)  # protocol-specific, as Result.observations
    stopped: str = "duration"
    plan: dict[str, Any] = field(default_factory=dict)  # BulkPlan.to_dict()
    # CLOCK_MONOTONIC when the flow started (a datagram flow: its planned start_at_ns if any): the
    # instant its `intervals` count from, shared by every process on the host
    started_ns: int | None = None
    # through a link (Link.bulk): its forwarder counters per direction and the kernels' counter
    # deltas per side during the flow, as Result.link / Result.kernel
    link: dict[str, Any] | None = None
    kernel: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BulkResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class BulkInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM/SIGHUP) stopped a bulk flow; `.result` holds what it measured
    (`stopped="interrupted"`). A KeyboardInterrupt, so callers that stop on Ctrl-C still do."""

    def __init__(self, result: BulkResult) -> None:
        super().__init__()
        self.result = result

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.result,))  # it crosses a process boundary (a flow in a namespace)

