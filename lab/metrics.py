"""From a `RunRecord` to the figures of a `Result`. Pure functions over records, no I/O.

Definitions (each function below implements one):

* A probe is **received** if an *intact* reply with its seq arrives within `plan.timeout` of its
  actual send (`sent_ns`); the first such reply counts. Any later intact copy is a **duplicate**.
  A probe whose first intact reply came after the window is **late** and counts as lost — never
  both. Duplicates therefore never cancel losses (docs/architecture.md#result-object:
  iperf3 lets duplicates make up for losses).
* **RTT** of a received probe is measured from its *intended* send time (`rtt_us`; the same as the
  actual send for ping-pong); open-loop runs also get `rtt_uncorrected_us` from `sent_ns`
  (coordinated omission). `rtt_censored_us` adds every lost probe at the timeout.
* **Jitter** is RFC 3550 §6.4.1's interarrival jitter over received replies in arrival order.
* **Reordering** is RFC 4737 over received replies in arrival order, duplicates removed first.
* **Corrupted** counts replies whose CRC failed plus replies too damaged to attribute.
* **Goodput** is 8 x bytes of distinct intact replies (late ones included: they were delivered)
  / the delivery span: from the first send to the last of those replies. Not the run's duration,
  which ends one timeout after the last send when probes are missing — that wait would make a
  lossy protocol's goodput look smaller than what it delivered. A probe's bytes are its whole
  message (header + payload): from the transport's point of view all of it is application data.
* **Head-of-line blocking** (runs with several logical streams): a reply delayed well past the base
  RTT that waited behind an earlier, delayed probe of *another* stream — see `head_of_line`.
* **Kernel timestamps** (docs/architecture.md#timestamps-and-one-way-delay): when every received
  probe has the kernel's send and receive stamps, `rtt_us` is theirs (plus, open loop, how late the
  send left after its intended time, so coordinated omission stays corrected); `rtt_user_us` is
  always the user-space figure. **One-way delays** and the server's **turnaround** come from the
  times a wire v2 reply carries; the **loss by direction** from its reports (`loss_directions`).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from statistics import NormalDist
from typing import Any

from lab.records import RTT_KEYS, Arrival, Result, RunRecord, Send
from lab.wire import SEEN_BITS

NS_PER_US = 1_000
NS_PER_S = 1_000_000_000
# HdrHistogram range in µs: 1 µs to one hour (TrafficPlan's timeout is at most 3600 s), with
# 3 significant digits (values below 2048 µs are exact; above, within 0.1 %).
HDR_LOWEST_US = 1
HDR_HIGHEST_US = 3_600_000_000
HDR_SIGNIFICANT_DIGITS = 3
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
# RFC 3550 §6.4.1: J(i) = J(i-1) + (|D(i-1,i)| - J(i-1)) / 16 — the gain 1/16 is the RFC's.
JITTER_GAIN_DIVISOR = 16
NS_PER_MS = 1_000_000
# Head-of-line blocking (`head_of_line`): the base RTT is the 10th percentile of answered probes'
# RTTs (the unimpeded round trip, robust to a few fast outliers); a reply is *delayed* when its RTT
# exceeds both 2x the base and the base + 10 ms — a retransmission costs at least one more round
# trip, while scheduler noise on a loaded host stays well below 10 ms.
HOL_BASE_PERCENTILE = 10
HOL_DELAY_FACTOR = 2
HOL_DELAY_MARGIN_NS = 10 * NS_PER_MS


@dataclass(slots=True, kw_only=True)
class Classified:
    """Arrivals sorted into what they mean for loss (see the module docstring)."""

    received: list[Arrival] = field(default_factory=list)  # first in-window intact reply per seq
    late: list[Arrival] = field(default_factory=list)  # first intact reply per seq, after the window
    duplicates: int = 0
    corrupted: int = 0  # arrivals with intact=False (attributable ones)
    unknown: int = 0  # intact arrivals for a seq that was never sent


def classify(record: RunRecord) -> Classified:
    """Sort a record's arrivals into received, late, duplicate, corrupted and unknown."""
    sends = {s.seq: s for s in record.sends}
    window_ns = round(record.plan.timeout * NS_PER_S)
    out = Classified()
    seen: set[int] = set()
    for arrival in record.arrivals:
        if not arrival.intact:
            out.corrupted += 1
            continue
        send = sends.get(arrival.seq)
        if send is None:
            out.unknown += 1
            continue
        if arrival.seq in seen:
            out.duplicates += 1
            continue
        seen.add(arrival.seq)
        if arrival.recv_ns - send.sent_ns <= window_ns:
            out.received.append(arrival)
        else:
            out.late.append(arrival)
    return out


def wilson_interval(lost: int, sent: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the loss ratio lost/sent at `confidence` ([0, 1] when sent is 0).

    The closed form of Wilson (1927), the same as scipy's
    ``binomtest(lost, sent).proportion_ci(confidence, method="wilson")`` (the tests check they
    agree) without importing scipy, which costs a second of `lab send`'s start-up.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if sent < 0 or not 0 <= lost <= sent:
        raise ValueError(f"need 0 <= lost <= sent, got lost={lost} sent={sent}")
    if sent == 0:
        return (0.0, 1.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = lost / sent
    z2n = z * z / sent
    denom = 1 + z2n
    center = (p + z2n / 2) / denom
    half = z * math.sqrt(p * (1 - p) / sent + z2n / (4 * sent)) / denom
    lo = 0.0 if lost == 0 else max(0.0, center - half)
    hi = 1.0 if lost == sent else min(1.0, center + half)
    return (lo, hi)


@dataclass(slots=True)
class Distribution:
    """Summary of a latency distribution in µs, plus how many values had to be clamped."""

    summary: dict[str, float | None]
    clamped: int = 0


def summarize_us(values_us: Sequence[float]) -> Distribution:
    """min/p50/p90/p99/p999/max/mean of values in µs; percentiles via HdrHistogram.

    min, max and mean are exact; percentiles carry HdrHistogram's 3-significant-digit
    resolution. Values outside [1 µs, 1 h] are clamped into range and counted in `clamped`,
    never dropped (HdrHistogram's `record_value` returns False for values it cannot hold).
    """
    if not values_us:
        return Distribution({key: None for key in RTT_KEYS})
    from hdrh.histogram import HdrHistogram

    hist = HdrHistogram(HDR_LOWEST_US, HDR_HIGHEST_US, HDR_SIGNIFICANT_DIGITS)
    clamped = 0
    for value in values_us:
        whole = round(value)
        if whole < HDR_LOWEST_US or whole > HDR_HIGHEST_US:
            clamped += 1
            whole = min(max(whole, HDR_LOWEST_US), HDR_HIGHEST_US)
        if not hist.record_value(whole):
            raise AssertionError(f"HdrHistogram refused in-range value {whole}")  # a bug, not input
    by_pct = hist.get_percentile_to_value_dict(list(PERCENTILES.values()))
    summary: dict[str, float | None] = {
        "min": float(min(values_us)),
        **{key: float(by_pct[pct]) for key, pct in PERCENTILES.items()},
        "max": float(max(values_us)),
        "mean": float(sum(values_us) / len(values_us)),
    }
    return Distribution(summary, clamped)


def rtts_us(received: Iterable[Arrival], sends: dict[int, Send], *, corrected: bool = True) -> list[float]:
    """RTT in µs of each received reply: from intended send (`corrected`) or actual send."""
    out = []
    for arrival in received:
        send = sends[arrival.seq]
        start = send.intended_ns if corrected else send.sent_ns
        out.append((arrival.recv_ns - start) / NS_PER_US)
    return out


def jitter_us(received: Sequence[Arrival], sends: dict[int, Send]) -> float:
    """RFC 3550 §6.4.1 interarrival jitter in µs, over replies in arrival order.

    D(i,j) = (Rj - Ri) - (Sj - Si) with S the probe's send timestamp (the intended send time the
    probe header carries) and R its arrival; J += (|D| - J) / 16.
    """
    jitter = 0.0
    previous: tuple[int, int] | None = None
    for arrival in received:
        pair = (arrival.recv_ns, sends[arrival.seq].intended_ns)
        if previous is not None:
            d = (pair[0] - previous[0]) - (pair[1] - previous[1])
            jitter += (abs(d) - jitter) / JITTER_GAIN_DIVISOR
        previous = pair
    return jitter / NS_PER_US


@dataclass(slots=True)
class Reordering:
    """RFC 4737 reordering figures."""

    reordered: int
    ratio: float
    extent_max: int


def reordering(seqs: Sequence[int]) -> Reordering:
    """RFC 4737 §3.3 reordered packets and §4.2.2 maximum reordering extent of an arrival order.

    Duplicates are removed first (a later copy of a seq is ignored). A packet is reordered if its
    seq is below NextExp (the highest seq seen so far + 1). Its extent is its arrival index minus
    the index of the earliest arrival with a larger seq.
    """
    distinct: list[int] = []
    seen: set[int] = set()
    for seq in seqs:
        if seq not in seen:
            seen.add(seq)
            distinct.append(seq)
    reordered = 0
    extent_max = 0
    next_exp: int | None = None
    # Arrival indexes of in-order packets; their seqs are strictly increasing, so the earliest
    # arrival with a larger seq is found by bisecting them.
    in_order_seqs: list[int] = []
    in_order_idx: list[int] = []
    for index, seq in enumerate(distinct):
        if next_exp is None or seq >= next_exp:
            next_exp = seq + 1
            in_order_seqs.append(seq)
            in_order_idx.append(index)
            continue
        reordered += 1
        first_larger = in_order_idx[bisect_right(in_order_seqs, seq)]
        extent_max = max(extent_max, index - first_larger)
    ratio = reordered / len(distinct) if distinct else 0.0
    return Reordering(reordered, ratio, extent_max)


def goodput_bps(delivered_bytes: int, duration_s: float) -> float:
    """Bits per second of application bytes delivered over the run (0 for a zero-length run)."""
    return 8 * delivered_bytes / duration_s if duration_s > 0 else 0.0


def delivery_span_s(sends: Sequence[Send], delivered: Sequence[Arrival]) -> float:
    """Seconds from the first send to the last delivered reply (0 when nothing was delivered)."""
    if not sends or not delivered:
        return 0.0
    first = min(s.sent_ns for s in sends)
    return max(0, max(a.recv_ns for a in delivered) - first) / NS_PER_S


@dataclass(slots=True, kw_only=True)
class HeadOfLine:
    """Head-of-line blocking figures of one run (see `head_of_line`). Times in ns."""

    streams: int
    base_rtt_ns: int
    threshold_ns: int
    delayed: int  # answered probes whose RTT exceeded the threshold
    blocked: int  # of those, the ones that waited behind another stream's delayed probe
    in_stream: int  # of those, the ones that waited behind a delayed probe of their own stream

    def to_dict(self, sent: int) -> dict[str, Any]:
        """The `Result.hol` form (µs, plus the share of sent probes blocked)."""
        return {
            "streams": self.streams,
            "base_rtt_us": self.base_rtt_ns / NS_PER_US,
            "threshold_us": self.threshold_ns / NS_PER_US,
            "delayed": self.delayed,
            "blocked": self.blocked,
            "in_stream": self.in_stream,
            "blocked_ratio": self.blocked / sent if sent else 0.0,
        }


def head_of_line(record: RunRecord, received: Sequence[Arrival] | None = None) -> HeadOfLine:
    """Probes held back by another stream's loss: head-of-line blocking, counted from the record.

    Head-of-line blocking is what an ordered byte stream does to independent messages multiplexed
    over it: one lost segment holds back everything sent after it until the retransmission arrives
    (RFC 8095 §3.1; QUIC's streams exist to avoid it, RFC 9000 §2.2: "a loss on one stream does
    not delay data on other streams"). From the client's record alone:

    * base RTT = the 10th percentile (nearest rank) of answered probes' RTTs (from intended send);
      a probe is **delayed** if answered in time with RTT > max(2 x base, base + 10 ms).
    * a delayed probe q **waited behind** an earlier-sent delayed probe p when p's reply had not
      arrived by the time q's would have without hindrance (q's intended send + base) and came
      no later than q's: q was released only once p was. Its **blocker** is the earliest-sent such
      p — the probe whose loss opened the stall (a stall's own first probe has none).
    * q is **blocked** (head-of-line) when its blocker belongs to another stream, and
      **in_stream** when it belongs to q's own stream (that wait an ordered stream imposes anyway).

    Never-answered probes block nothing: only a recovered loss can hold later data back. Separate
    UDP flows therefore count ~0 — a probe lost on one flow delays no other — while one TCP
    connection counts the victims of every retransmission. Limits, stated: a second loss inside a
    stall is attributed to the stall's first probe; a stall of the whole path (the client or the
    forwarder descheduled for longer than the margin) would look the same.
    """
    sends = {s.seq: s for s in record.sends}
    if received is None:
        received = classify(record).received
    rtts = sorted(a.recv_ns - sends[a.seq].intended_ns for a in received)
    if not rtts:
        return HeadOfLine(streams=record.plan.streams, base_rtt_ns=0, threshold_ns=0, delayed=0, blocked=0,
                          in_stream=0)
    base = rtts[max(0, math.ceil(len(rtts) * HOL_BASE_PERCENTILE / 100) - 1)]
    threshold = max(HOL_DELAY_FACTOR * base, base + HOL_DELAY_MARGIN_NS)
    delayed = sorted(
        ((sends[a.seq], a.recv_ns) for a in received if a.recv_ns - sends[a.seq].intended_ns > threshold),
        key=lambda pair: (pair[0].intended_ns, pair[0].seq),
    )
    window_ns = round(record.plan.timeout * NS_PER_S)
    blocked = in_stream = 0
    # Earlier delayed probes that may still hold later ones back, in send order. An answered reply
    # came within the window of its send, so one sent more than a window before q's due time
    # cannot have been outstanding then (due times only grow: q goes in send order).
    pending: deque[tuple[Send, int]] = deque()
    for send, recv in delayed:
        due = send.intended_ns + base
        while pending and pending[0][0].sent_ns + window_ns < due:
            pending.popleft()
        blocker = next((p for p, p_recv in pending if due < p_recv <= recv), None)
        if blocker is not None:
            if blocker.stream != send.stream:
                blocked += 1
            else:
                in_stream += 1
        pending.append((send, recv))
    return HeadOfLine(
        streams=record.plan.streams,
        base_rtt_ns=base,
        threshold_ns=threshold,
        delayed=len(delayed),
        blocked=blocked,
        in_stream=in_stream,
    )


def kernel_rtts_us(received: Iterable[Arrival], sends: dict[int, Send], *,
                   corrected: bool = True) -> list[float] | None:
    """RTT in µs of each received reply from the kernel's stamps (None unless every one has both):
    receive stamp - transmit stamp, plus (`corrected`) how late the send left after its intended
    time, as the user-space figure counts it (coordinated omission)."""
    out = []
    for arrival in received:
        send = sends[arrival.seq]
        if send.kernel_sent_ns is None or arrival.kernel_recv_ns is None:
            return None
        late = send.sent_ns - send.intended_ns if corrected else 0
        out.append((arrival.kernel_recv_ns - send.kernel_sent_ns + late) / NS_PER_US)
    return out


@dataclass(slots=True)
class OneWay:
    """One-way delays and the server's turnaround of the received probes, in µs."""

    forward: list[float]
    reverse: list[float]
    turnaround: list[float]


def one_way_delays(record: RunRecord, received: Iterable[Arrival], sends: dict[int, Send], *,
                   kernel: bool) -> OneWay | None:
    """Forward delay (server's receive time - client's send), reverse delay (client's receive -
    server's send) and turnaround (server's send - its receive) of each received probe whose reply
    carries the server's times. The client's times are the kernel's stamps (`kernel`), else its
    monotonic times moved to CLOCK_REALTIME by `realtime_offset_ns`. None when no reply carries
    them (a plain echo server) or the client's times cannot be set beside them."""
    offset = record.realtime_offset_ns
    if not kernel and offset is None:
        return None
    out = OneWay([], [], [])
    for arrival in received:
        if not arrival.server_rx_ns or not arrival.server_tx_ns:
            continue
        send = sends[arrival.seq]
        if kernel:
            sent, recv = send.kernel_sent_ns, arrival.kernel_recv_ns
        else:
            sent, recv = send.sent_ns + offset, arrival.recv_ns + offset  # type: ignore[operator]
        if sent is None or recv is None:
            continue
        out.forward.append((arrival.server_rx_ns - sent) / NS_PER_US)
        out.reverse.append((recv - arrival.server_tx_ns) / NS_PER_US)
        out.turnaround.append((arrival.server_tx_ns - arrival.server_rx_ns) / NS_PER_US)
    return out if out.forward else None


def loss_directions(streams: int, arrivals: Iterable[Arrival], loss_reports: Iterable[Sequence[int]],
                    lost: Iterable[int]) -> tuple[set[int], set[int], set[int]] | None:
    """(forward, reverse, unknown): which of the `lost` seqs never reached the server, which did
    and whose reply never came, and which no report covered. None when no reply carried a report.

    A reply's report says which of the SEEN_BITS seqs before its own the server had received from
    that socket (one socket per stream, so only the seqs of the reply's stream count); a reply that
    came back at all (late or damaged) proves the server saw its probe; `loss_reports` are the
    closing query's answers, [stream, seq, seen]. A probe the server saw in any report is reverse
    lost, even if an earlier report had not seen it yet (reordered on the way).
    """
    lost_sorted = sorted(set(lost))
    lost_set = set(lost_sorted)
    reports = [(a.stream, a.seq, a.server_seen) for a in arrivals if a.server_seen is not None]
    if not reports and not loss_reports:
        return None
    seen = {a.seq for a in arrivals if a.server_rx_ns is not None} & lost_set
    unseen: set[int] = set()
    for stream, seq, bitmap in (*reports, *loss_reports):
        lo, hi = bisect_left(lost_sorted, seq - SEEN_BITS), bisect_left(lost_sorted, seq)
        for k in lost_sorted[lo:hi]:
            if k % streams == stream:
                (seen if bitmap >> (seq - 1 - k) & 1 else unseen).add(k)
    forward = unseen - seen
    return forward, seen, lost_set - forward - seen


def compute_result(record: RunRecord, *, expected_loss_ratio: float | None = None) -> Result:
    """Every figure of the result object (docs/architecture.md#result-object), from one client run."""
    plan = record.plan
    sends = {s.seq: s for s in record.sends}
    c = classify(record)
    sent = len(sends)
    received = len(c.received)
    lost = sent - received
    lo, hi = wilson_interval(lost, sent, 0.95)

    user_rtts = rtts_us(c.received, sends)
    user_rtt = summarize_us(user_rtts)
    fallback = record.notes.timestamps_fallback
    kernel_rtts = kernel_rtts_us(c.received, sends) if record.timestamps == "kernel" else None
    if record.timestamps == "kernel" and kernel_rtts is None:
        missing = sum(1 for a in c.received
                      if a.kernel_recv_ns is None or sends[a.seq].kernel_sent_ns is None)
        fallback = (f"{missing} of {len(c.received)} replies lack the kernel's send or receive stamp, "
                    "so every figure uses user-space times")
    kernel = kernel_rtts is not None and bool(c.received)
    best_rtts = kernel_rtts if kernel else user_rtts
    rtt = summarize_us(best_rtts) if kernel else user_rtt  # type: ignore[arg-type]
    timeout_us = plan.timeout * 1e6
    censored = summarize_us(best_rtts + [timeout_us] * lost)  # type: ignore[operator]
    uncorrected = None
    if plan.rate:
        uncorrected = summarize_us((kernel_rtts_us(c.received, sends, corrected=False) if kernel else None)
                                   or rtts_us(c.received, sends, corrected=False))
    one_way = one_way_delays(record, c.received, sends, kernel=kernel)
    received_seqs = {a.seq for a in c.received}
    directions = loss_directions(plan.streams, record.arrivals, record.loss_reports,
                                 (seq for seq in sends if seq not in received_seqs))
    by_direction = _loss_by_direction(directions, sent)
    order = reordering([a.seq for a in c.received])
    duration_s = max(0, record.ended_ns - record.started_ns) / NS_PER_S
    delivered_arrivals = (*c.received, *c.late)
    delivered = sum(sends[a.seq].size for a in delivered_arrivals)
    span_s = delivery_span_s(record.sends, delivered_arrivals)

    clamped = rtt.clamped + censored.clamped + (uncorrected.clamped if uncorrected else 0)
    notes = replace(record.notes, unknown_seq=c.unknown, rtt_clamped=clamped,
                    timestamps_fallback=None if kernel else fallback)
    return Result(
        protocol=record.protocol,
        sent=sent,
        received=received,
        lost=lost,
        loss_ratio=lost / sent if sent else 0.0,
        loss_ci95=[lo, hi],
        expected_loss_ratio=expected_loss_ratio,
        duplicates=c.duplicates,
        reordered=order.reordered,
        reordered_ratio=order.ratio,
        reorder_extent_max=order.extent_max,
        corrupted=c.corrupted + record.unattributed_corrupt,
        late=len(c.late),
        rtt_us=rtt.summary,
        rtt_censored_us=censored.summary,
        rtt_uncorrected_us=uncorrected.summary if uncorrected else None,
        jitter_us=jitter_us(c.received, sends),
        goodput_bps=goodput_bps(delivered, span_s),
        duration_s=duration_s,
        size=plan.size,
        rate=plan.rate,
        timeout_s=plan.timeout,
        notes=notes,
        observations={observer: dict(figures) for observer, figures in record.observations.items()},
        hol=head_of_line(record, c.received).to_dict(sent) if plan.streams > 1 else None,
        timestamps="kernel" if kernel else "user",
        rtt_user_us=user_rtt.summary,
        owd_forward_us=summarize_us(one_way.forward).summary if one_way else None,
        owd_reverse_us=summarize_us(one_way.reverse).summary if one_way else None,
        server_turnaround_us=summarize_us(one_way.turnaround).summary if one_way else None,
        **by_direction,
    )


def _loss_by_direction(directions: tuple[set[int], set[int], set[int]] | None, sent: int) -> dict[str, Any]:
    """The Result's per-direction loss fields (docs/architecture.md#timestamps-and-one-way-delay):
    forward = lost_forward / decided; reverse = lost_reverse / (decided - lost_forward), the
    probes that reached the server. Empty (all None) without the server's reports."""
    if directions is None:
        return {}
    forward, reverse, unknown = (len(d) for d in directions)
    decided = sent - unknown
    reached = decided - forward
    out: dict[str, Any] = {"lost_forward": forward, "lost_reverse": reverse,
                           "lost_direction_unknown": unknown}
    if decided:
        out["loss_forward_ratio"] = forward / decided
        out["loss_forward_ci95"] = list(wilson_interval(forward, decided))
    if reached:
        out["loss_reverse_ratio"] = reverse / reached
        out["loss_reverse_ci95"] = list(wilson_interval(reverse, reached))
    return out
