"""The result.json schema ("wirelab-result/2", and the "/1" it replaces), checked before anything renders.

`lab report DIR` re-renders whatever DIR/result.json holds, and the file may have been edited by
hand. The runner writes it (`RunOutcome.payload`, `PointOutcome.to_dict`, `Result.to_dict`); this
module states that format as typed checks and refuses anything else with one line naming the
place, e.g. ``points[0].results[1].rtt_us.p50: expected a number, got 'x'``. A key the runner
never wrote may be absent (the renderer has a default for each), and unknown keys are tolerated
(newer files); a key that is present must have the runner's type and a sensible range, so that
what renders cannot fail and cannot take unbounded time (stream indexes, timeline rows, protocols
and points are bounded). Hand-written rather than jsonschema: the lab does not depend on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from lab.errors import LabError
from lab.records import TIMELINE_MAX_POINTS
from lab.scenario import MAX_SCENARIO_PROTOCOLS, MAX_SWEEP_POINTS

MAX_DEPTH = 32  # the runner nests at most 8 deep (scenario.source of a per-point expectation)
MAX_INT = 2**64  # kernel counters are unsigned 64-bit (TCP_INFO max_pacing_rate "unlimited" is 2^64-1)
MAX_VALUE = 1e15  # measured figures (µs, ms, bit/s, counts): far beyond any run, small for a plot
MAX_PROTOCOLS = MAX_SCENARIO_PROTOCOLS  # distinct protocols in one file (11 are built in): a plot column each
MAX_STREAMS = 64  # lab.records.TrafficPlan: 1..64 logical streams
MAX_TIMELINE_ROWS = TIMELINE_MAX_POINTS  # rows the runner keeps per result (plot time stays bounded)
MAX_LABEL = 500  # characters of a point id or protocol name (drawn in the plots)
MAX_ATLAS_ROWS = 1000


class SchemaError(LabError):
    """The document does not follow the result.json format; `where` is the path to the bad value."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where


Check = Callable[[Any, str], None]  # (value, where) -> None, or SchemaError


# --- describing values and places -----------------------------------------------------------------
def describe(value: Any) -> str:
    """A value as an error message shows it: JSON words, short, always one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, int | float):
        text = repr(value)
        return text if len(text) <= 40 else text[:20] + "..." + text[-8:]
    if isinstance(value, str):
        text = repr(value[:60])  # repr escapes newlines, control and unpaired surrogate characters
        return text if len(value) <= 60 else text[:-1] + "...'"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def key_path(where: str, key: str) -> str:
    """`where.key`, or `where["odd key"]` for a key that is not a plain name (kept to one line)."""
    if key.isidentifier() and key.isascii():
        return f"{where}.{key}" if where else key
    quoted = ascii(key[:40] + ("..." if len(key) > 40 else ""))[1:-1].replace('"', '\\"')
    return f'{where}["{quoted}"]'


def _expected(what: str, value: Any, where: str) -> SchemaError:
    return SchemaError(where, f"expected {what}, got {describe(value)}")


# --- the whole document, before any typed check ------------------------------------------------------
def check_json_values(document: Any) -> None:
    """Depth, finite numbers, 64-bit integers and encodable text everywhere (iterative: the document
    can nest as deep as the JSON parser allowed). Scalars are judged in their container's loop and
    a place is only spelled out for containers or on error: a timeline holds a million numbers."""
    if not isinstance(document, dict | list):
        _check_scalar(document, "")
        return
    stack: list[tuple[dict[str, Any] | list[Any], str, int]] = [(document, "", 0)]
    while stack:
        container, where, depth = stack.pop()
        if depth >= MAX_DEPTH:
            raise SchemaError(where, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(container, dict):
            for key, item in container.items():
                _check_text(key, where or "document", "a key")
                if isinstance(item, dict | list):
                    stack.append((item, key_path(where, key), depth + 1))
                elif not _plain(item):
                    _check_scalar(item, key_path(where, key))
        else:
            flat_ok = depth + 1 < MAX_DEPTH  # a flat list one level down needs no visit of its own
            for i, item in enumerate(container):
                if flat_ok and type(item) is list and all(map(_plain, item)):
                    continue  # a timeline row, the bulk of a big document
                if isinstance(item, dict | list):
                    stack.append((item, f"{where}[{i}]", depth + 1))
                elif not _plain(item):
                    _check_scalar(item, f"{where}[{i}]")


def _plain(value: Any) -> bool:
    """The common, obviously fine scalars (fast path of check_json_values)."""
    kind = type(value)
    if kind is float:
        return -math.inf < value < math.inf
    if kind is int:
        return -MAX_INT <= value <= MAX_INT
    return value is None or kind is bool or (kind is str and value.isascii())


def _check_scalar(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise SchemaError(where, f"expected a finite number, got {describe(value)}")
    if isinstance(value, int) and not isinstance(value, bool) and not -MAX_INT <= value <= MAX_INT:
        raise SchemaError(where, f"expected an integer within ±2^64, got {describe(value)}")
    if isinstance(value, str):
        _check_text(value, where, "a string")


def _check_text(text: str, where: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # "\ud800" parses, but no report file can hold it
        raise SchemaError(where, f"{what} holds an unpaired surrogate ({describe(text)})") from None


# --- typed checks ---------------------------------------------------------------------------------------
def anything(_value: Any, _where: str) -> None:
    """Free-form data (already checked by check_json_values): environment, counters, sources."""


def number(lo: float = -MAX_VALUE, hi: float = MAX_VALUE) -> Check:
    def check(value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _expected("a number", value, where)
        if isinstance(value, float) and not math.isfinite(value):  # an int past 2^1024 has no float
            raise _expected("a finite number", value, where)
        if not lo <= value <= hi:
            raise _expected(f"a number from {lo:g} to {hi:g}", value, where)

    return check


def integer(lo: int = 0, hi: int = MAX_INT) -> Check:
    def check(value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _expected("an integer", value, where)
        if not lo <= value <= hi:
            raise _expected(f"an integer from {lo} to {hi}", value, where)

    return check


def text(max_length: int | None = None, *, min_length: int = 0) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, str):
            raise _expected("a string", value, where)
        if len(value) < min_length:
            raise _expected("a non-empty string", value, where)
        if max_length is not None and len(value) > max_length:
            raise SchemaError(where, f"expected at most {max_length} characters, got {len(value)}")

    return check


def boolean(value: Any, where: str) -> None:
    if not isinstance(value, bool):
        raise _expected("true or false", value, where)


def nullable(inner: Check) -> Check:
    def check(value: Any, where: str) -> None:
        if value is not None:
            inner(value, where)

    return check


def either(first: Check, second: Check, what: str) -> Check:
    def check(value: Any, where: str) -> None:
        try:
            first(value, where)
        except SchemaError:
            try:
                second(value, where)
            except SchemaError:
                raise _expected(what, value, where) from None

    return check


def array(item: Check, *, max_items: int, lengths: tuple[int, ...] | None = None) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, list):
            raise _expected("a list", value, where)
        if lengths is not None and len(value) not in lengths:
            counts = " or ".join(str(n) for n in lengths)
            raise SchemaError(where, f"expected a list of {counts} items, got {len(value)}")
        if len(value) > max_items:
            raise SchemaError(where, f"expected at most {max_items} items, got {len(value)}")
        for i, element in enumerate(value):
            item(element, f"{where}[{i}]")

    return check


def row(*columns: Check) -> Check:
    """A fixed-layout list; the trailing columns past the shortest accepted length are optional."""

    def check(value: Any, where: str) -> None:
        for i, (column, element) in enumerate(zip(columns, value, strict=False)):
            column(element, f"{where}[{i}]")

    return check


def obj(
    required: Mapping[str, Check] | None = None,
    optional: Mapping[str, Check] | None = None,
    *,
    others: Check = anything,
    max_items: int | None = None,
) -> Check:
    """An object with these keys (required ones must be present); any other key must pass `others`."""
    required = dict(required or {})
    optional = dict(optional or {})

    def check(value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise _expected("an object", value, where)
        if max_items is not None and len(value) > max_items:
            raise SchemaError(where, f"expected at most {max_items} entries, got {len(value)}")
        for key in required:
            if key not in value:
                raise SchemaError(key_path(where, key), "missing (required)")
        for key, item in value.items():
            known = required.get(key) or optional.get(key)
            (known or others)(item, key_path(where, key))

    return check


def mapping(item: Check, *, max_items: int | None = None) -> Check:
    """An object whose keys are free names and whose values all pass `item`."""
    return obj(others=item, max_items=max_items)


# --- the format the runner writes ------------------------------------------------------------------------
LABEL = text(MAX_LABEL)
PROTOCOL = text(MAX_LABEL, min_length=1)
COUNT = integer(0, int(MAX_VALUE))
RATIO = number(0.0, 1.0)
MEASURE = number(0.0, MAX_VALUE)  # µs, ms, seconds, bit/s: never negative
PERCENTILES = mapping(nullable(MEASURE), max_items=64)


def scalar(value: Any, where: str) -> None:
    """A link option as the scenario wrote it: "10%", 20, true."""
    if not isinstance(value, str | int | float):  # bool is an int
        raise _expected("a string, number or boolean", value, where)


# A point's [link] as the scenario wrote it, with its [link.forward]/[link.reverse] tables.
LINK_DIRECTION = mapping(scalar, max_items=64)
LINK_TABLE = obj(optional={"forward": LINK_DIRECTION, "reverse": LINK_DIRECTION}, others=scalar, max_items=64)


SCENARIO = obj(
    {"name": text()},
    {
        "description": text(),
        "file": nullable(text()),
        "protocols": array(PROTOCOL, max_items=MAX_PROTOCOLS),
        "seed": nullable(integer()),
        "capture": boolean,
        "mtu": integer(),
        "slow": boolean,
        "privileged": boolean,
        "atlas": boolean,
        "sweep_keys": array(text(), max_items=64),
        "source": anything,
    },
)

TRAFFIC = obj(
    optional={
        "count": COUNT,
        "size": COUNT,
        "rate": nullable(number(0.0, MAX_VALUE)),
        "timeout": MEASURE,
        "streams": integer(1, MAX_STREAMS),
    }
)

CHECK = obj(
    {"expectation": text(), "passed": boolean, "message": text()},
    {
        "metric": text(),
        "measured": nullable(number()),
        "interval": nullable(array(number(), max_items=2, lengths=(2,))),
        "expected": nullable(MEASURE),  # statistical loss checks (a ratio) and oracles (lab.flows) record one
        "expected_label": text(),
    },
)

TIMELINE_ROW = array(anything, max_items=4, lengths=(3, 4))
TIMELINE_COLUMNS = row(COUNT, number(), nullable(MEASURE), integer(0, MAX_STREAMS - 1))


def timeline(value: Any, where: str) -> None:
    """[[seq, t_ms, rtt_ms | null, stream]]; rows of older files have no stream column."""
    if not isinstance(value, list):
        raise _expected("a list", value, where)
    if len(value) > MAX_TIMELINE_ROWS:
        raise SchemaError(where, f"expected at most {MAX_TIMELINE_ROWS} items, got {len(value)}")
    for i, entry in enumerate(value):
        if not _plain_row(entry):  # the slow, precise checks say what is wrong
            TIMELINE_ROW(entry, f"{where}[{i}]")
            TIMELINE_COLUMNS(entry, f"{where}[{i}]")


def _plain_row(entry: Any) -> bool:
    """A well-formed timeline row, judged fast (a result holds up to MAX_TIMELINE_ROWS of them)."""
    if type(entry) is not list or not 3 <= len(entry) <= 4:
        return False
    seq, t_ms, rtt = entry[0], entry[1], entry[2]
    return (
        type(seq) is int
        and 0 <= seq <= MAX_VALUE
        and type(t_ms) in (int, float)
        and -MAX_VALUE <= t_ms <= MAX_VALUE
        and (rtt is None or (type(rtt) in (int, float) and 0 <= rtt <= MAX_VALUE))
        and (len(entry) == 3 or (type(entry[3]) is int and 0 <= entry[3] < MAX_STREAMS))
    )


HOL = obj(
    {"streams": integer(1, MAX_STREAMS), "blocked": COUNT},
    {"threshold_us": nullable(MEASURE), "base_rtt_us": nullable(MEASURE)},
)
NOTES = obj(  # lab.records.RunNotes
    optional={
        "interrupted": boolean,
        "undecided": COUNT,
        "deadline_hit": boolean,
        "connection_ended": nullable(text()),
        "merged_replies": COUNT,
        "icmp_refused": COUNT,
        "unknown_seq": COUNT,
        "rtt_clamped": COUNT,
        "timestamps_fallback": nullable(text()),
    }
)
TCP_INFO = obj(optional={"total_retrans": COUNT, "retransmits": COUNT})
# lab.records.Observations: protocol -> named figures, free-form but for what the report reads (TCP's).
OBSERVATIONS = obj(optional={"tcp": obj(optional={"tcp_info": nullable(TCP_INFO)})}, others=obj())
EXTRAS_V1 = obj(optional={"timeline": timeline, "hol": HOL, "interrupted": boolean})



def link_counters(value: Any, where: str) -> None:
    """The link's counters per direction ({"forward": {...}, "reverse": {...}}): free-form, but the
    drops and reorderings the story counts must be counts."""
    obj()(value, where)
    counted = obj(optional={"dropped_queue": COUNT, "dropped_loss": COUNT, "reordered": COUNT})
    for key, direction in value.items():
        if isinstance(direction, dict):
            counted(direction, key_path(where, key))


def _timestamps_source(value: Any, where: str) -> None:
    """Which clock a result's RTT reads (lab.timestamps): "kernel" or "user"."""
    if value not in ("kernel", "user"):
        raise _expected('"kernel" or "user"', value, where)


RESULT_FIELDS = (
    {"protocol": PROTOCOL, "sent": COUNT, "received": COUNT, "lost": COUNT, "loss_ratio": RATIO},
    {
        "loss_ci95": nullable(array(RATIO, max_items=2, lengths=(2,))),
        "duplicates": COUNT,
        "reordered": COUNT,
        "reordered_ratio": number(0.0, MAX_VALUE),
        "reorder_extent_max": COUNT,
        "corrupted": COUNT,
        "late": COUNT,
        "rtt_us": nullable(PERCENTILES),
        "rtt_censored_us": nullable(PERCENTILES),
        "rtt_uncorrected_us": nullable(PERCENTILES),
        "jitter_us": nullable(MEASURE),
        "goodput_bps": nullable(MEASURE),
        "duration_s": nullable(MEASURE),
        "size": nullable(COUNT),
        "rate": nullable(MEASURE),
        "timeout_s": nullable(MEASURE),
        "expected_loss_ratio": nullable(RATIO),
        "link": nullable(link_counters),
        "kernel": nullable(obj(optional={"server": nullable(obj(optional={"TcpRetransSegs": COUNT}))})),
        # Timestamps and one-way delay (docs/architecture.md#timestamps-and-one-way-delay): optional,
        # so files written before them stay readable as wirelab-result/2.
        "timestamps": _timestamps_source,
        "rtt_user_us": nullable(PERCENTILES),
        "owd_forward_us": nullable(PERCENTILES),
        "owd_reverse_us": nullable(PERCENTILES),
        "server_turnaround_us": nullable(PERCENTILES),
        "lost_forward": nullable(COUNT),
        "lost_reverse": nullable(COUNT),
        "lost_direction_unknown": nullable(COUNT),
        "loss_forward_ratio": nullable(RATIO),
        "loss_reverse_ratio": nullable(RATIO),
        "loss_forward_ci95": nullable(array(RATIO, max_items=2, lengths=(2,))),
        "loss_reverse_ci95": nullable(array(RATIO, max_items=2, lengths=(2,))),
    },
)
RESULT = obj(RESULT_FIELDS[0], {
    **RESULT_FIELDS[1],
    "notes": NOTES,
    "observations": OBSERVATIONS,
    "hol": nullable(HOL),
    "timeline": nullable(timeline),
})
RESULT_V1 = obj(RESULT_FIELDS[0], {**RESULT_FIELDS[1], "tcp_info": nullable(TCP_INFO), "extras": EXTRAS_V1})

# Bulk points and flow groups (lab.flow_runner, docs/architecture.md#flows-and-oracles): optional, so
# older files stay readable. A flow entry holds the figures metrics read at its top, a bulk flow's
# BulkResult under `bulk` (intervals and TCP_INFO trace bounded for the plots), the textbook's
# predictions; a probes flow is a whole Result with its name.
MAX_FLOWS = 16  # lab.flows.MAX_FLOWS
MAX_TRACE_ROWS = 100_000  # lab.bulk.counting.MAX_INTERVALS
FLOW_ROW = array(nullable(number()), max_items=8)
BULK = obj(optional={
    "protocol": PROTOCOL,
    "bytes_sent": COUNT,
    "bytes_delivered": COUNT,
    "duration_s": MEASURE,
    "goodput_bps": MEASURE,
    "interval_s": MEASURE,
    "intervals": array(FLOW_ROW, max_items=MAX_TRACE_ROWS),
    "tcp_trace": array(FLOW_ROW, max_items=MAX_TRACE_ROWS),
    "retransmits": nullable(COUNT),
    "mss": nullable(COUNT),
    "min_rtt_us": nullable(MEASURE),
    "datagrams": nullable(obj()),
    "observations": obj(),
    "stopped": text(100),
    "plan": obj(),
})
FLOW = obj(
    {"name": LABEL, "protocol": PROTOCOL, "kind": text(20)},
    {
        "start_s": MEASURE,
        "direction": text(20),
        "goodput_bps": nullable(MEASURE),
        "utilisation": nullable(MEASURE),
        "bytes_delivered": nullable(COUNT),
        "srtt_mean_ms": nullable(MEASURE),
        "late_s": MEASURE,
        "bulk": BULK,
        "predictions": mapping(obj(), max_items=16),
        "rtt_us": nullable(PERCENTILES),
        "timeline": nullable(timeline),
    },
)
GROUP = obj(optional={
    "name": LABEL,
    "jain_index": RATIO,
    "rpm_idle": MEASURE,
    "rpm_loaded": MEASURE,
    "rpm_loaded_upload": MEASURE,
    "rpm_loaded_download": MEASURE,
    "load_direction": text(20),
    "rtt_us": nullable(PERCENTILES),
    "idle_rtt_us": nullable(PERCENTILES),
})

POINT_FIELDS = (
    {"id": LABEL},
    {
        "link": LINK_TABLE,
        "link_config": nullable(obj()),
        "traffic": TRAFFIC,
        "seed": nullable(integer()),
        "mode": text(100),
        "interrupted": boolean,
        "skipped": mapping(text(), max_items=MAX_PROTOCOLS),
        "checks": mapping(array(CHECK, max_items=1000), max_items=MAX_PROTOCOLS + MAX_FLOWS + 1),
        "flows": array(FLOW, max_items=MAX_FLOWS),
        "group": nullable(GROUP),
    },
)


def point_check(result: Check) -> Check:
    return obj({**POINT_FIELDS[0], "results": array(result, max_items=MAX_PROTOCOLS)}, POINT_FIELDS[1])


RESULT_OF_FORMAT = {"wirelab-result/2": RESULT, "wirelab-result/1": RESULT_V1}

ATLAS_ROW = obj(
    optional={
        "name": text(),
        "layer": text(),
        "defect": text(),
        "verdict": text(),
        "evidence": nullable(text()),
        "expected_verdict": either(text(), array(text(), max_items=16), "a string or a list of strings"),
        "matches_expected": boolean,
        "server_alive": boolean,
    }
)


def document_check(format_name: str) -> Check:
    return obj(
        {
            "format": _exactly(format_name),
            "scenario": SCENARIO,
            "points": array(point_check(RESULT_OF_FORMAT.get(format_name, RESULT)),
                            max_items=MAX_SWEEP_POINTS),
        },
        {
            "seed": nullable(integer()),
            "started_at": text(),
            "finished_at": text(),
            "interrupted": boolean,
            "interrupted_by": text(100),
            "error": nullable(obj(optional={"point": text(), "message": text()})),
            "environment": obj(),
            "atlas": array(ATLAS_ROW, max_items=MAX_ATLAS_ROWS),
        },
    )


def _exactly(expected: str) -> Check:
    def check(value: Any, where: str) -> None:
        if value != expected:
            raise _expected(f'"{expected}"', value, where)

    return check


def validate(document: Any, format_name: str) -> None:
    """SchemaError (one line: where, what was expected, what was found) unless `document` is a
    result.json of this format that every report renderer can draw."""
    if not isinstance(document, dict):
        raise SchemaError("", f"expected a JSON object, got {describe(document)}")
    if document.get("format") != format_name:
        raise SchemaError("format", f'expected "{format_name}" (not a wirelab result?), got '
                          f"{describe(document.get('format'))}")
    # The typed checks first: they stop at the first list over its bound (a 64 MiB list of numbers
    # as `points`) without a walk over everything, and never recurse into free-form parts.
    document_check(format_name)(document, "")
    check_json_values(document)
    protocols = set(document["scenario"].get("protocols") or [])
    for point in document["points"]:
        protocols.update(result["protocol"] for result in point["results"])
    if len(protocols) > MAX_PROTOCOLS:
        raise SchemaError(
            "points", f"expected at most {MAX_PROTOCOLS} distinct protocols, got {len(protocols)}"
        )
