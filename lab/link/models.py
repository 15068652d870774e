"""Seeded impairment models, netem's vocabulary; pure (no sockets, no clock), stdlib only.

A `DirectionModel` owns one `random.Random(seed)` and is asked once per packet,
`decide(packet, now) -> Verdict`: which copies leave the link and when (same clock as `now`).
Same seed + same packets + same `now` sequence -> identical verdicts, always.

Order of decisions per packet (each random draw is made only when its impairment is set, so a
null impairment costs no randomness): loss (Bernoulli or Gilbert-Elliott) -> duplicate ->
corrupt -> reorder -> delay/jitter -> rate + queue limit.

Differences from netem worth knowing:
- a lost packet is never duplicated (netem may let one copy of a duplicated-and-lost packet through),
  so the loss rate is exactly the configured one;
- `limit` counts every packet the link holds (waiting for the rate *or* the delay), as netem does:
  a large delay x rate product needs a large limit; `limit_bytes` bounds the same packets by their
  size (like a bfifo's limit), so a flood into a slow link cannot make the link hold gigabytes;
- delay with jitter reorders packets (each gets its own delay), as netem does; only jitter=0
  keeps FIFO order;
- delay correlation uses netem's approximation next = (1-c)*random + c*last, which keeps the mean
  but shrinks the spread by sqrt((1-c)/(1+c)) (netem has the same flaw).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from lab.errors import ConfigError
from lab.link.params import (
    check_rate,
    format_duration,
    format_percent,
    format_rate,
    format_size,
    parse_count,
    parse_duration,
    parse_percent,
    parse_rate,
    parse_size,
)

DISTRIBUTIONS = ("uniform", "normal")
DIRECTIONS = ("both", "forward", "reverse")
# THE list of impairment keys (netem's vocabulary): `lab link`'s and `lab demo`'s options, a scenario
# file's [link] table, open_link(...) and impaired_link(...) all take exactly these
# (docs/architecture.md#link-configuration; tests/test_link_config.py keeps them in step).
OPTION_KEYS = (
    "loss", "delay", "jitter", "distribution", "delay_correlation",
    "reorder", "duplicate", "corrupt", "rate", "limit", "limit_bytes",
)
COUNTER_KEYS = (
    "packets_in", "bytes_in", "forwarded", "bytes_out", "dropped_loss", "dropped_queue",
    "duplicated", "reordered", "corrupted", "delayed",
)
DEFAULT_LIMIT = 1000  # netem's default queue limit, packets
MAX_LIMIT = 100_000  # packets; with Python's per-packet overhead (~200 B) at most ~20 MB of bookkeeping
DEFAULT_LIMIT_BYTES = 32 * 2**20  # bytes the link holds per direction: 32 MiB, ~22k full 1500-byte packets
MIN_LIMIT_BYTES = 64 * 2**10  # >= the largest IPv4 datagram, so an empty queue always takes a packet
MAX_LIMIT_BYTES = 512 * 2**20
_IPV4_MIN_HEADER = 20  # RFC 791
_IPV6_HEADER = 40  # RFC 8200


def _whole_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_probability(value: float, key: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key} must be between 0% and 100%, got {value * 100:g}%", key=key)


@dataclass(frozen=True, kw_only=True, slots=True)
class GilbertElliott:
    """netem's `loss gemodel p r 1-h 1-k`: Good/Bad Markov chain with a loss probability per state."""

    p: float  # P(Good -> Bad) per packet
    r: float = 1.0  # P(Bad -> Good) per packet; tc's default when omitted is 100%
    one_minus_h: float = 1.0  # loss probability in Bad (netem default 100%)
    one_minus_k: float = 0.0  # loss probability in Good (netem default 0%)

    def __post_init__(self) -> None:
        for key in ("p", "r", "one_minus_h", "one_minus_k"):
            _check_probability(getattr(self, key), f"loss gemodel {key.replace('one_minus_', '1-')}")

    def stationary_loss(self) -> float:
        """Mean loss rate: p/(p+r)*(1-h) + r/(p+r)*(1-k) (starts and stays Good if p=r=0)."""
        if self.p + self.r == 0:
            return self.one_minus_k
        bad = self.p / (self.p + self.r)
        return bad * self.one_minus_h + (1.0 - bad) * self.one_minus_k

    def describe(self) -> str:
        """The netem spelling, e.g. 'gemodel 1% 30% 100% 0%'."""
        values = (self.p, self.r, self.one_minus_h, self.one_minus_k)
        return "gemodel " + " ".join(format_percent(v) for v in values)


@dataclass(frozen=True, kw_only=True, slots=True)
class Impairment:
    """One direction's validated impairment plan (netem semantics; see the module docstring)."""

    loss: float = 0.0
    gemodel: GilbertElliott | None = None
    delay_s: float = 0.0
    jitter_s: float = 0.0
    distribution: str = "uniform"
    delay_correlation: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    rate_bps: float | None = None
    limit: int = DEFAULT_LIMIT
    limit_bytes: int = DEFAULT_LIMIT_BYTES

    def __post_init__(self) -> None:
        for key in ("loss", "delay_correlation", "reorder", "duplicate", "corrupt"):
            _check_probability(getattr(self, key), key)
        if self.loss and self.gemodel is not None:
            raise ConfigError("loss: give either a percentage or a gemodel, not both", key="loss")
        if self.delay_s < 0 or self.jitter_s < 0:
            raise ConfigError("delay and jitter must not be negative")
        if self.distribution not in DISTRIBUTIONS:
            raise ConfigError(
                f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {self.distribution!r}",
                key="distribution",
            )
        if self.reorder and self.delay_s <= 0:
            raise ConfigError("reorder needs a delay (e.g. --delay 10ms --reorder 25%): "
                              "reordered packets are the ones sent without it, as in netem", key="reorder")
        if self.rate_bps is not None:
            check_rate(self.rate_bps)  # built in Python, not parsed: the same bounds
        if not _whole_in(self.limit, 1, MAX_LIMIT):
            raise ConfigError(f"limit must be a whole number of packets from 1 to {MAX_LIMIT}, "
                              f"got {self.limit!r}", key="limit")
        if not _whole_in(self.limit_bytes, MIN_LIMIT_BYTES, MAX_LIMIT_BYTES):
            raise ConfigError(f"limit_bytes must be a whole number of bytes from "
                              f"{format_size(MIN_LIMIT_BYTES)} to {format_size(MAX_LIMIT_BYTES)}, "
                              f"got {self.limit_bytes!r}", key="limit_bytes")

    @property
    def is_null(self) -> bool:
        """True if this direction leaves every packet alone (the forwarder's fast path)."""
        return (
            self.loss == 0 and self.gemodel is None and self.delay_s == 0 and self.jitter_s == 0
            and self.duplicate == 0 and self.corrupt == 0 and self.rate_bps is None
        )

    def expected_loss(self) -> float:
        """Mean loss probability (Bernoulli p or GE stationary rate; queue drops not included)."""
        if self.gemodel is not None:
            return self.gemodel.stationary_loss()
        return self.loss

    def to_dict(self) -> dict[str, str]:
        """Human-readable, non-default settings with the option keys, e.g. {'loss': '10%'}."""
        out: dict[str, str] = {}
        if self.gemodel is not None:
            out["loss"] = self.gemodel.describe()
        elif self.loss:
            out["loss"] = format_percent(self.loss)
        if self.delay_s:
            out["delay"] = format_duration(self.delay_s)
        if self.jitter_s:
            out["jitter"] = format_duration(self.jitter_s)
            out["distribution"] = self.distribution
        if self.delay_correlation:
            out["delay_correlation"] = format_percent(self.delay_correlation)
        for key in ("reorder", "duplicate", "corrupt"):
            value = getattr(self, key)
            if value:
                out[key] = format_percent(value)
        if self.rate_bps is not None:
            out["rate"] = format_rate(self.rate_bps)
        if self.limit != DEFAULT_LIMIT:
            out["limit"] = str(self.limit)
        if self.limit_bytes != DEFAULT_LIMIT_BYTES:
            out["limit_bytes"] = format_size(self.limit_bytes)
        return out

    def to_wire(self) -> dict[str, Any]:
        """Every field as the parsed number it is (JSON-able); `from_wire` rebuilds it without parsing."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.gemodel is not None:
            out["gemodel"] = {f.name: getattr(self.gemodel, f.name) for f in fields(self.gemodel)}
        return out

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Impairment:
        """The inverse of `to_wire`: numbers in, no netem string parsed (ranges are still checked)."""
        try:
            values = dict(data)
            gemodel = values.get("gemodel")
            if gemodel is not None:
                values["gemodel"] = GilbertElliott(**gemodel)
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"malformed impairment in a link message: {exc}") from None


NULL = Impairment()


def _parse_loss(value: object) -> dict[str, Any]:
    """'5%' / 0.05 -> Bernoulli; 'gemodel P [R [1-H [1-K]]]' -> Gilbert-Elliott."""
    if isinstance(value, str) and value.strip().lower().startswith("gemodel"):
        words = value.split()[1:]
        if not 1 <= len(words) <= 4:
            raise ConfigError(
                f"loss gemodel takes 1 to 4 percentages 'gemodel P [R [1-H [1-K]]]', e.g. "
                f"'gemodel 1% 30%', got {value!r}", key="loss"
            )
        names = ("p", "r", "1-h", "1-k")
        fields = ("p", "r", "one_minus_h", "one_minus_k")
        parsed = {
            f: parse_percent(w, key=f"loss gemodel {n}")
            for f, n, w in zip(fields, names, words, strict=False)  # fewer words: netem defaults
        }
        return {"loss": 0.0, "gemodel": GilbertElliott(**parsed)}
    return {"loss": parse_percent(value, key="loss"), "gemodel": None}  # type: ignore[arg-type]


def _fields_from_options(options: Mapping[str, object]) -> dict[str, Any]:
    """Option keys -> Impairment field values; None means 'back to the default'."""
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown impairment option(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(OPTION_KEYS)}", key=unknown[0] if len(unknown) == 1 else None
        )
    fields: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            if key == "loss":
                fields.update(loss=0.0, gemodel=None)
            else:
                name = {"delay": "delay_s", "jitter": "jitter_s", "rate": "rate_bps"}.get(key, key)
                fields[name] = Impairment.__dataclass_fields__[name].default
        elif key == "loss":
            fields.update(_parse_loss(value))
        elif key in ("delay", "jitter"):
            fields[f"{key}_s"] = parse_duration(value, key=key)  # type: ignore[arg-type]
        elif key == "distribution":
            text = str(value).strip().lower()
            if text not in DISTRIBUTIONS:
                raise ConfigError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {value!r}",
                                  key="distribution")
            fields["distribution"] = text
        elif key == "rate":
            fields["rate_bps"] = parse_rate(value, key=key)  # type: ignore[arg-type]
        elif key == "limit":
            fields["limit"] = parse_count(value, key=key, maximum=MAX_LIMIT)  # type: ignore[arg-type]
        elif key == "limit_bytes":
            fields["limit_bytes"] = parse_size(
                value, key=key, minimum=MIN_LIMIT_BYTES, maximum=MAX_LIMIT_BYTES)  # type: ignore[arg-type]
        else:
            fields[key] = parse_percent(value, key=key)  # type: ignore[arg-type]
    return fields


def _check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}",
                          key="direction")
    return direction


DIRECTION_NAMES = ("forward", "reverse")  # forward = client -> server
_OTHER = {"forward": "reverse", "reverse": "forward"}
DIRECTION_ARROWS = {"forward": "client->server", "reverse": "server->client"}


def _check_tables(direction: str, forward: Mapping[str, object] | None,
                  reverse: Mapping[str, object] | None) -> None:
    """Refuse a direction's own impairments where `direction` says that direction is left alone
    (docs/architecture.md#link-configuration: `direction` picks where the shared keys apply)."""
    for name, own in (("forward", forward), ("reverse", reverse)):
        if direction == _OTHER[name] and own and any(v is not None for v in own.values()):
            raise ConfigError(
                f"direction {direction} leaves {DIRECTION_ARROWS[name]} unimpaired, yet {name} impairments "
                f"were given too; drop direction (each direction's own impairments already say which "
                f"way they apply) or make it both", key="direction")


def _per_direction(
    options: Mapping[str, object], direction: str,
    forward: Mapping[str, object] | None, reverse: Mapping[str, object] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Impairment field changes for (forward, reverse): `options` where `direction` says, then each
    direction's own overrides on top (each value parsed exactly once; an error in a direction's own
    says which direction: `forward: loss must be ...`, key `forward.loss`)."""
    _check_tables(direction, forward, reverse)
    shared = _fields_from_options(options)
    out = []
    for name, own in (("forward", forward), ("reverse", reverse)):
        changes = dict(shared) if direction in ("both", name) else {}
        try:
            changes.update(_fields_from_options(own or {}))
        except ConfigError as exc:
            raise _in_direction(name, exc) from None
        out.append(changes)
    return out[0], out[1]


def _in_direction(name: str, exc: ConfigError) -> ConfigError:
    """`exc` said of direction `name`'s own impairments."""
    return ConfigError(f"{name}: {exc}", key=f"{name}.{exc.key}" if exc.key else name)


def _impairment(name: str, fields_: Mapping[str, Any], own: Mapping[str, object] | None,
                base: Impairment | None = None) -> Impairment:
    """Impairment(**fields_) (or `base` changed by them); an error about a key of the direction's
    own impairments names the direction (`forward: reorder needs a delay...`)."""
    try:
        return replace(base, **fields_) if base is not None else Impairment(**fields_)
    except ConfigError as exc:
        raise (_in_direction(name, exc) if own and (exc.key is None or exc.key in own) else exc) from None


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkConfig:
    """THE parsed link configuration: both directions, seeded (forward with `seed`, reverse with
    `seed + 1`). Built once at the edge (scenario file, CLI options, open_link's keywords) and handed
    on as this object, or its `to_wire` form to a helper process; see
    docs/architecture.md#link-configuration."""

    forward: Impairment = NULL  # client -> server
    reverse: Impairment = NULL  # server -> client
    seed: int = 1
    direction: str = "both"  # as last given to from_options/with_options (informational)

    @classmethod
    def from_options(
        cls, options: Mapping[str, object], *, direction: str = "both", seed: int = 1,
        forward: Mapping[str, object] | None = None, reverse: Mapping[str, object] | None = None,
    ) -> LinkConfig:
        """Options with the impairment keys (OPTION_KEYS, netem-style values) -> validated config.

        `options` apply in `direction`; `forward`/`reverse` (same keys) override one direction only.
        A direction's own impairments where `direction` leaves that direction alone (direction
        forward with reverse=...) contradict it: ConfigError (key `direction`).
        """
        _check_direction(direction)
        forward_fields, reverse_fields = _per_direction(options, direction, forward, reverse)
        return cls(forward=_impairment("forward", forward_fields, forward),
                   reverse=_impairment("reverse", reverse_fields, reverse),
                   seed=seed, direction=direction)

    def with_options(
        self, options: Mapping[str, object], *, direction: str | None = None,
        forward: Mapping[str, object] | None = None, reverse: Mapping[str, object] | None = None,
    ) -> LinkConfig:
        """A copy with `options` changed in `direction` (default: this config's) and `forward`/
        `reverse` changed in that direction only; every other setting kept."""
        direction = _check_direction(direction or self.direction)
        changed = []
        for name, impairment, own, fields_ in zip(
                DIRECTION_NAMES, (self.forward, self.reverse), (forward, reverse),
                _per_direction(options, direction, forward, reverse), strict=True):
            if "delay_s" in fields_ and fields_["delay_s"] == 0 and "reorder" not in fields_:
                fields_["reorder"] = 0.0  # removing the delay removes netem-style reordering with it
            changed.append(_impairment(name, fields_, own, impairment) if fields_ else impairment)
        return replace(self, forward=changed[0], reverse=changed[1], direction=direction)

    def to_wire(self) -> dict[str, Any]:
        """Parsed numbers only (JSON-able), for a helper process: `from_wire` parses no netem string."""
        return {"forward": self.forward.to_wire(), "reverse": self.reverse.to_wire(),
                "seed": self.seed, "direction": self.direction}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> LinkConfig:
        """The inverse of `to_wire` (ConfigError for a malformed message)."""
        try:
            seed, direction = data["seed"], _check_direction(data["direction"])
            forward, reverse = data["forward"], data["reverse"]
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"malformed link configuration in a link message: {exc}") from None
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"malformed link configuration in a link message: seed {seed!r}")
        return cls(forward=Impairment.from_wire(forward), reverse=Impairment.from_wire(reverse),
                   seed=seed, direction=direction)

    @property
    def forward_seed(self) -> int:
        """Seed of the client->server model."""
        return self.seed

    @property
    def reverse_seed(self) -> int:
        """Seed of the server->client model (seed + 1, so the directions are independent)."""
        return self.seed + 1

    def build_models(self) -> tuple[DirectionModel, DirectionModel]:
        """(forward, reverse) models seeded as documented."""
        forward = DirectionModel(self.forward, self.forward_seed)
        return forward, DirectionModel(self.reverse, self.reverse_seed)

    def expected_loss_ratio(self) -> float:
        """Loss of an echo round trip: 1-(1-pf)(1-pr)."""
        return 1.0 - (1.0 - self.forward.expected_loss()) * (1.0 - self.reverse.expected_loss())

    def expected_forward_loss_ratio(self) -> float:
        """pf: the probability the link drops a packet client->server (the loss setting, or the
        Gilbert-Elliott stationary rate; queue drops and corruption not included)."""
        return self.forward.expected_loss()

    def expected_reverse_loss_ratio(self) -> float:
        """pr: the same for server->client."""
        return self.reverse.expected_loss()

    @property
    def symmetric(self) -> bool:
        """True if both directions carry the same impairment (a report then shows one line)."""
        return self.forward == self.reverse

    def to_dict(self) -> dict[str, Any]:
        """{'forward': {...}, 'reverse': {...}, 'seed': n, 'direction': ...} with readable values."""
        return {
            "forward": self.forward.to_dict(),
            "reverse": self.reverse.to_dict(),
            "seed": self.seed,
            "direction": self.direction,
        }


@dataclass(frozen=True, slots=True)
class Release:
    """One copy of a packet leaving the link at time `at` (same clock as `now`)."""

    at: float
    packet: bytes


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the link did to one packet: the copies it releases (none = dropped) and why."""

    releases: tuple[Release, ...]
    notes: tuple[str, ...] = ()

    @property
    def dropped(self) -> bool:
        """True if no copy leaves the link."""
        return not self.releases


_DROP_LOSS = Verdict((), ("dropped (loss)",))
_DROP_QUEUE = Verdict((), ("dropped (queue full)",))
_DROP_QUEUE_BYTES = Verdict((), ("dropped (queue full: byte limit)",))


def flip_payload_bit(packet: bytes, rng: random.Random) -> tuple[bytes, int]:
    """Flip one random bit after the IP header (IPv4: IHL*4, IPv6: 40); else anywhere. -> (packet, bit)."""
    start = 0
    if packet:
        version = packet[0] >> 4
        if version == 4:
            header = (packet[0] & 0x0F) * 4
            if header >= _IPV4_MIN_HEADER and len(packet) > header:
                start = header
        elif version == 6 and len(packet) > _IPV6_HEADER:
            start = _IPV6_HEADER
    bit = start * 8 + rng.randrange((len(packet) - start) * 8)
    data = bytearray(packet)
    data[bit >> 3] ^= 0x80 >> (bit & 7)
    return bytes(data), bit


class DirectionModel:
    """One direction's impairment state: its RNG, Gilbert-Elliott state, queue and counters."""

    def __init__(self, impairment: Impairment, seed: int) -> None:
        self._rng = random.Random(seed)
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_KEYS, 0)
        self._bad = False  # Gilbert-Elliott state: starts Good, as netem
        self._last_offset = 0.0  # last jitter offset, for delay correlation
        self._last_departure = float("-inf")  # when the rate shaper finishes the previous packet
        self._held: list[tuple[float, int]] = []  # heap of (release time, size) of packets still held
        self._held_bytes = 0
        self.update(impairment)

    @property
    def impairment(self) -> Impairment:
        """The impairment currently applied."""
        return self._imp

    def update(self, impairment: Impairment) -> None:
        """Apply new parameters from the next packet on; counters and RNG state carry on."""
        self._imp = impairment
        self._null = impairment.is_null
        self._holds = bool(impairment.delay_s or impairment.jitter_s or impairment.rate_bps)

    # --- the queue, for a forwarder holding whole GSO batches beside it (lab.link.forwarder) ---
    def queue_has_room(self, size: int, now: float, *, also_held: int = 0, also_bytes: int = 0) -> bool:
        """Whether a packet of `size` bytes arriving at `now` fits the queue (`limit` packets,
        `limit_bytes` bytes), counting `also_held` packets of `also_bytes` held elsewhere; an empty
        queue takes any packet. What is due by `now` leaves first. (`decide` applies the same rule
        inline: it runs once per packet.)"""
        held = self._held
        while held and held[0][0] <= now:
            self._held_bytes -= heapq.heappop(held)[1]
        entries = len(held) + also_held
        return not entries or (entries < self._imp.limit
                               and self._held_bytes + also_bytes + size <= self._imp.limit_bytes)

    def absorb(self, entries: list[tuple[float, int]]) -> None:
        """Hold packets that were held elsewhere, (release time, bytes) each, as `decide` holds its own."""
        for entry in entries:
            heapq.heappush(self._held, entry)
            self._held_bytes += entry[1]

    def reseed(self, seed: int) -> None:
        """Restart the random decisions from `seed` (Gilbert-Elliott back to Good, no jitter memory).

        Counters and packets already held carry on. The runner reseeds before each protocol of a
        sweep point, so TCP and UDP meet the same sequence of link decisions.
        """
        self._rng = random.Random(seed)
        self._bad = False
        self._last_offset = 0.0

    def _lost(self) -> bool:
        imp = self._imp
        ge = imp.gemodel
        if ge is None:
            return imp.loss > 0 and self._rng.random() < imp.loss
        # Kernel order (net/sched/sch_netem.c loss_gilb_ell): move, then lose with the old state's odds.
        rng = self._rng
        if self._bad:
            if rng.random() < ge.r:
                self._bad = False
            return rng.random() < ge.one_minus_h
        if rng.random() < ge.p:
            self._bad = True
        return rng.random() < ge.one_minus_k

    def _delay(self) -> float:
        imp = self._imp
        if not imp.jitter_s:
            return imp.delay_s
        if imp.distribution == "normal":
            offset = self._rng.gauss(0.0, imp.jitter_s)
        else:
            offset = imp.jitter_s * (2.0 * self._rng.random() - 1.0)
        c = imp.delay_correlation
        if c:
            offset = (1.0 - c) * offset + c * self._last_offset
            self._last_offset = offset
        return max(0.0, imp.delay_s + offset)

    def decide(self, packet: bytes, now: float) -> Verdict:
        """The link's verdict on one packet arriving at `now` (one call per packet, in order)."""
        c = self.counters
        size = len(packet)
        c["packets_in"] += 1
        c["bytes_in"] += size
        if self._null:
            c["forwarded"] += 1
            c["bytes_out"] += size
            return Verdict((Release(now, packet),))

        if self._lost():
            c["dropped_loss"] += 1
            return _DROP_LOSS
        imp = self._imp
        rng = self._rng
        notes: list[str] = []
        copies = 2 if imp.duplicate and rng.random() < imp.duplicate else 1
        original = packet
        if imp.corrupt and size and rng.random() < imp.corrupt:
            packet, bit = flip_payload_bit(packet, rng)
            c["corrupted"] += 1
            notes.append(f"corrupted (bit {bit} flipped)")
        early = bool(imp.reorder) and rng.random() < imp.reorder
        delay = 0.0 if early else self._delay()

        if not self._holds:
            c["forwarded"] += copies
            c["bytes_out"] += size * copies
            if copies == 2:
                c["duplicated"] += 1
                notes.append("duplicated")
                return Verdict((Release(now, packet), Release(now, original)), tuple(notes))
            return Verdict((Release(now, packet),), tuple(notes))

        held = self._held
        while held and held[0][0] <= now:
            self._held_bytes -= heapq.heappop(held)[1]
        if len(held) >= imp.limit:
            c["dropped_queue"] += 1
            return _DROP_QUEUE
        if self._held_bytes + size > imp.limit_bytes:
            c["dropped_queue"] += 1
            return _DROP_QUEUE_BYTES
        releases = []
        for copy in (packet, original)[:copies]:
            if releases and (len(held) >= imp.limit or self._held_bytes + size > imp.limit_bytes):
                break  # no room for the duplicate: it is simply not made
            departure = now
            if imp.rate_bps:
                # Serialisation: one packet at a time at the configured rate.
                departure = max(now, self._last_departure) + size * 8 / imp.rate_bps
                self._last_departure = departure
            at = departure + delay
            if at > now:
                heapq.heappush(held, (at, size))
                self._held_bytes += size
            releases.append(Release(at, copy))
        if len(releases) == 2:
            c["duplicated"] += 1
            notes.append("duplicated")
        c["forwarded"] += len(releases)
        c["bytes_out"] += size * len(releases)
        wait = releases[0].at - now
        if early:
            c["reordered"] += 1
            notes.append("reordered (sent early)")
        if wait > 0:
            c["delayed"] += 1
            notes.append(f"delayed {wait * 1e3:.1f} ms")
        return Verdict(tuple(releases), tuple(notes))


def null_counters() -> dict[str, int]:
    """A counters dict with every key at zero (for reports of a direction that saw nothing)."""
    return dict.fromkeys(COUNTER_KEYS, 0)


__all__ = [
    "COUNTER_KEYS", "DEFAULT_LIMIT_BYTES", "DIRECTION_ARROWS", "DIRECTION_NAMES", "DIRECTIONS",
    "DISTRIBUTIONS", "MAX_LIMIT",
    "MAX_LIMIT_BYTES", "MIN_LIMIT_BYTES", "NULL", "OPTION_KEYS", "DirectionModel",
    "GilbertElliott", "Impairment", "LinkConfig", "Release", "Verdict", "flip_payload_bit",
    "null_counters",
]
