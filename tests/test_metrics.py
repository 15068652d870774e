"""lab.metrics: pinned answers on hand-made records, and properties over generated ones."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab.metrics import (
    classify,
    compute_result,
    jitter_us,
    reordering,
    summarize_us,
    wilson_interval,
)
from lab.records import RTT_KEYS, Arrival, Result, RunRecord, Send, TrafficPlan

MS = 1_000_000  # ns
US = 1_000  # ns
S = 1_000_000_000  # ns


def _record(arrivals: list[Arrival], *, n: int = 5, rate: float | None = None, lag_ns: int = 0,
            timeout: float = 1.0, ended_ns: int = 5 * S) -> RunRecord:
    """n probes of 64 bytes intended 1 ms apart (sent `lag_ns` after intended)."""
    plan = TrafficPlan(count=n, size=64, rate=rate, timeout=timeout)
    sends = [Send(seq=i, intended_ns=i * MS, sent_ns=i * MS + lag_ns, size=64) for i in range(n)]
    return RunRecord(protocol="udp", plan=plan, started_ns=0, ended_ns=ended_ns, sends=sends,
                     arrivals=arrivals)


# seq 0 back after 100 µs; seq 2 after 300 µs; seq 1 after 1500 µs (so after seq 2: reordered);
# seq 1 again (duplicate); seq 3 corrupted; seq 4 after 2 s (late: lost, the window is 1 s).
HAND = [
    Arrival(seq=0, recv_ns=100 * US),
    Arrival(seq=2, recv_ns=2 * MS + 300 * US),
    Arrival(seq=1, recv_ns=1 * MS + 1500 * US),
    Arrival(seq=1, recv_ns=1 * MS + 1600 * US),
    Arrival(seq=3, recv_ns=3 * MS + 200 * US, intact=False),
    Arrival(seq=4, recv_ns=4 * MS + 2 * S),
]


def _wilson_closed_form(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return center - half, center + half


def test_hand_record_pinned() -> None:
    r = compute_result(_record(HAND), expected_loss_ratio=0.25)
    figures = r.to_dict()
    assert (r.sent, r.received, r.lost, r.late, r.duplicates, r.corrupted) == (5, 3, 2, 1, 1, 1), figures
    assert r.loss_ratio == pytest.approx(0.4)
    assert r.loss_ci95 == pytest.approx([0.117621, 0.769276], abs=1e-6)
    assert r.expected_loss_ratio == 0.25
    assert (r.reordered, r.reordered_ratio, r.reorder_extent_max) == (1, pytest.approx(1 / 3), 1)
    assert r.rtt_us == {"min": 100.0, "p50": 300.0, "p90": 1500.0, "p99": 1500.0, "p999": 1500.0,
                        "max": 1500.0, "mean": pytest.approx(1900 / 3)}
    # Lost probes (seq 3 and 4) enter the censored picture at the 1 s timeout = 1e6 µs.
    censored = r.rtt_censored_us
    assert censored["p50"] == 1500.0 and censored["max"] == 1e6
    assert censored["p99"] == pytest.approx(1e6, rel=1e-3)  # HdrHistogram: 3 significant digits
    assert censored["mean"] == pytest.approx((100 + 300 + 1500 + 2e6) / 5)
    assert r.rtt_uncorrected_us is None  # ping-pong
    # RFC 3550: D1 = 2.2 ms - 2 ms = 200 µs -> J = 12.5 µs; D2 = 0.2 ms + 1 ms -> J += (1200 - 12.5)/16
    assert r.jitter_us == pytest.approx(12.5 + (1200 - 12.5) / 16)
    # Distinct intact replies: seqs 0, 1, 2 and late 4 -> 4 x 64 bytes over the delivery span,
    # from the first send (0) to the last of them (seq 4 at 2.004 s) — not the 5 s run.
    assert r.goodput_bps == pytest.approx(4 * 64 * 8 / 2.004)
    assert r.duration_s == 5.0 and r.size == 64 and r.timeout_s == 1.0 and r.rate is None


def test_every_result_field_is_filled() -> None:
    r = compute_result(_record(HAND))
    assert isinstance(r, Result)
    assert set(r.rtt_us) == set(RTT_KEYS) == set(r.rtt_censored_us)
    assert Result.from_dict(r.to_dict()) == r


def test_open_loop_reports_corrected_and_uncorrected() -> None:
    arrivals = [Arrival(seq=i, recv_ns=i * MS + 500 * US) for i in range(5)]
    # The sender ran 400 µs behind schedule: corrected RTT 500 µs, uncorrected 100 µs.
    r = compute_result(_record(arrivals, rate=1000.0, lag_ns=400 * US))
    assert r.rtt_us["p50"] == 500.0 and r.rtt_us["max"] == 500.0
    assert r.rtt_uncorrected_us is not None and r.rtt_uncorrected_us["p50"] == 100.0
    assert r.rate == 1000.0


def test_window_is_measured_from_actual_send() -> None:
    # Sent 600 ms after it was intended, back 500 ms later: within the 1 s window of the actual send.
    record = _record([Arrival(seq=0, recv_ns=1100 * MS)], n=1, rate=10.0, lag_ns=600 * MS)
    assert classify(record).received and not classify(record).late
    assert compute_result(record).rtt_us["p50"] == pytest.approx(1.1e6, rel=1e-3)


def test_late_reply_is_lost_not_double_counted() -> None:
    arrivals = [Arrival(seq=0, recv_ns=2 * S), Arrival(seq=0, recv_ns=2 * S + 1)]
    r = compute_result(_record(arrivals, n=1))
    assert (r.received, r.lost, r.late, r.duplicates) == (0, 1, 1, 1)
    assert r.rtt_us["p50"] is None and r.rtt_censored_us["p50"] == pytest.approx(1e6, rel=1e-3)


def test_unknown_seq_and_unattributed_corruption() -> None:
    record = _record([Arrival(seq=99, recv_ns=1)], n=1)
    record.unattributed_corrupt = 2
    r = compute_result(record)
    assert r.notes.unknown_seq == 1 and r.corrupted == 2 and r.lost == 1


def test_empty_record() -> None:
    record = RunRecord(protocol="tcp", plan=TrafficPlan(), started_ns=5, ended_ns=5)
    r = compute_result(record)
    assert (r.sent, r.lost, r.loss_ratio, r.loss_ci95, r.goodput_bps) == (0, 0, 0.0, [0.0, 1.0], 0.0)
    assert r.rtt_us == dict.fromkeys(RTT_KEYS)


def test_notes_and_observations_carry_over_from_the_record() -> None:
    record = _record([], n=1)
    record.observations["tcp"] = {"tcp_info": {"rtt_us": 30}, "tcp_nodelay": True}
    record.notes.deadline_hit = True
    r = compute_result(record)
    assert r.observations == {"tcp": {"tcp_info": {"rtt_us": 30}, "tcp_nodelay": True}}
    assert r.notes.deadline_hit and not r.notes.interrupted and r.notes.unknown_seq == 0
    assert r.observations["tcp"] is not record.observations["tcp"]  # the result has its own copy


@pytest.mark.parametrize(("lost", "sent"), [(0, 10), (2, 5), (10, 10), (37, 1000), (1, 3)])
def test_wilson_matches_closed_form(lost: int, sent: int) -> None:
    lo, hi = wilson_interval(lost, sent, 0.95)
    assert (lo, hi) == pytest.approx(_wilson_closed_form(lost, sent), abs=1e-9)
    lo99, hi99 = wilson_interval(lost, sent, 0.99)
    assert lo99 <= lo and hi <= hi99


@pytest.mark.parametrize(("lost", "sent"), [(0, 1), (0, 10), (2, 5), (10, 10), (37, 1000), (999, 1000)])
@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_wilson_agrees_with_scipy(lost: int, sent: int, confidence: float) -> None:
    from scipy.stats import binomtest

    ci = binomtest(lost, sent).proportion_ci(confidence_level=confidence, method="wilson")
    assert wilson_interval(lost, sent, confidence) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_wilson_rejects_nonsense() -> None:
    assert wilson_interval(0, 0, 0.95) == (0.0, 1.0)
    for args in [(3, 2, 0.95), (-1, 2, 0.95), (1, 2, 1.0), (1, 2, 0.0)]:
        with pytest.raises(ValueError):
            wilson_interval(*args)


@pytest.mark.parametrize(
    ("seqs", "reordered", "extent"),
    [
        ([0, 1, 2, 3], 0, 0),
        ([1, 2, 3, 5, 4, 6], 1, 1),  # RFC 4737 §4.2.2 style: 4 arrives one place late
        ([1, 2, 4, 5, 3], 1, 2),  # 3 arrives after 4 and 5: extent 4 - 2 = 2
        ([3, 0, 1, 2], 3, 3),  # every one of 0, 1, 2 is reordered; 2's extent is 3
        ([0, 1, 1, 2], 0, 0),  # a duplicate is not a reordering
        ([0, 2, 2, 1], 1, 1),  # duplicates are removed before indexes are counted
        ([], 0, 0),
    ],
)
def test_reordering_rfc4737(seqs: list[int], reordered: int, extent: int) -> None:
    got = reordering(seqs)
    assert (got.reordered, got.extent_max) == (reordered, extent), seqs


def test_summaries_clamp_and_count_out_of_range() -> None:
    dist = summarize_us([0.2, 5.0, 4e9])
    assert dist.clamped == 2
    assert dist.summary["min"] == 0.2 and dist.summary["max"] == 4e9  # exact values stay exact
    assert dist.summary["p50"] == 5.0


def test_summaries_of_nothing_are_none() -> None:
    assert summarize_us([]).summary == dict.fromkeys(RTT_KEYS)


# --- properties ------------------------------------------------------------------------------------
# A reply per probe: None (lost), or (delay in µs up to 1.5 s so some are late, intact, copies).
replies = st.one_of(
    st.none(),
    st.tuples(st.integers(1, 1_500_000), st.booleans(), st.integers(1, 3)),
)


def _generated(spec: list[tuple[int, bool, int] | None], timeout: float = 1.0) -> RunRecord:
    arrivals = []
    for seq, reply in enumerate(spec):
        if reply is None:
            continue
        delay_us, intact, copies = reply
        for copy in range(copies):
            arrivals.append(Arrival(seq=seq, recv_ns=seq * MS + delay_us * US + copy, intact=intact))
    arrivals.sort(key=lambda a: a.recv_ns)
    return _record(arrivals, n=len(spec), timeout=timeout, ended_ns=len(spec) * MS + 2 * S)


@given(st.lists(replies, min_size=1, max_size=60))
def test_lost_plus_received_is_sent(spec: list) -> None:
    """Property: lost + received == sent, and loss_ratio lies inside its own 95% interval."""
    r = compute_result(_generated(spec))
    assert r.lost + r.received == r.sent == len(spec)
    lo, hi = r.loss_ci95
    assert lo - 1e-12 <= r.loss_ratio <= hi + 1e-12, r.to_dict()


@given(st.lists(replies, min_size=1, max_size=60), st.randoms(use_true_random=False))
def test_permutation_changes_order_not_loss(spec: list, rnd) -> None:
    """Property: permuting the arrivals (single copies) may change reordering but never loss."""
    spec = [None if r is None else (r[0], r[1], 1) for r in spec]
    record = _generated(spec)
    before = compute_result(record)
    rnd.shuffle(record.arrivals)
    after = compute_result(record)
    assert (after.lost, after.received, after.late, after.corrupted) == (
        before.lost, before.received, before.late, before.corrupted)


@given(st.lists(replies, min_size=1, max_size=60), st.lists(st.integers(0, 10_000), max_size=20))
def test_duplicates_never_change_loss(spec: list, picks: list[int]) -> None:
    """Property: appending later copies of replies never changes lost (duplicates hide no loss)."""
    record = _generated(spec)
    before = compute_result(record)
    originals = list(record.arrivals)
    last = max((a.recv_ns for a in originals), default=0)
    for i, pick in enumerate(picks if originals else []):
        copy = originals[pick % len(originals)]
        record.arrivals.append(Arrival(seq=copy.seq, recv_ns=last + i + 1, intact=copy.intact))
    after = compute_result(record)
    assert after.lost == before.lost and after.received == before.received


@given(st.lists(st.integers(0, 10 * MS), min_size=2, max_size=50), st.integers(1, 900_000))
def test_constant_delay_has_zero_jitter(gaps: list[int], delay_us: int) -> None:
    """Property: however irregular the sends, a constant one-way delay gives jitter 0."""
    sends, arrivals, t = {}, [], 0
    for seq, gap in enumerate(gaps):
        t += gap
        sends[seq] = Send(seq=seq, intended_ns=t, sent_ns=t, size=64)
        arrivals.append(Arrival(seq=seq, recv_ns=t + delay_us * US))
    assert jitter_us(arrivals, sends) == 0.0


@given(st.lists(st.integers(0, 200), max_size=80))
def test_reordering_bounds(seqs: list[int]) -> None:
    """Property: 0 <= reordered <= distinct - 1 and the extent is below the number of arrivals."""
    got = reordering(seqs)
    distinct = len(set(seqs))
    assert 0 <= got.reordered <= max(0, distinct - 1)
    assert 0 <= got.extent_max < max(1, distinct)
    assert reordering(sorted(set(seqs))).reordered == 0


def test_retransmitted_segments_counts_both_ends() -> None:
    """Client TCP_INFO plus the server namespace's TcpRetransSegs; None without TCP_INFO."""
    from lab.protocols.tcp import retransmitted_segments

    assert retransmitted_segments({"observations": {}}) is None
    assert retransmitted_segments({"observations": {"tcp": {"tcp_info": None}}}) is None
    assert retransmitted_segments({"observations": {"tcp": {"tcp_info": {"total_retrans": 7}}}}) == 7
    linked = {"observations": {"tcp": {"tcp_info": {"total_retrans": 7}}},
              "kernel": {"server": {"TcpRetransSegs": 5}}}
    assert retransmitted_segments(linked) == 12


# --- head-of-line blocking -----------------------------------------------------------------------
def _streams_record(rtts_ms: list[float | None], *, streams: int = 4, gap_ms: int = 5) -> RunRecord:
    """Probe i on stream i % streams, sent i x gap_ms; answered after rtts_ms[i] (None = lost)."""
    plan = TrafficPlan(count=len(rtts_ms), size=64, rate=1000 / gap_ms, timeout=1.0, streams=streams)
    sends = [Send(seq=i, intended_ns=i * gap_ms * MS, sent_ns=i * gap_ms * MS, size=64, stream=i % streams)
             for i in range(len(rtts_ms))]
    arrivals = sorted(
        (Arrival(seq=i, recv_ns=round(i * gap_ms * MS + rtt * MS), stream=i % streams)
         for i, rtt in enumerate(rtts_ms) if rtt is not None),
        key=lambda a: a.recv_ns,
    )
    return RunRecord(protocol="tcp", plan=plan, started_ns=0, ended_ns=10 * S, sends=sends,
                     arrivals=arrivals)


def test_head_of_line_ordered_stall_blocks_other_streams() -> None:
    """One ordered connection: probe 10 (stream 2) lost and retransmitted, released at 120 ms with
    everything sent behind it. Base RTT 20 ms, threshold 40 ms: probes 11..15 (sent 55..75 ms) come
    back at 120 ms too (RTT 65..45 ms), 16 (80 ms, RTT 40 ms) is not delayed, the rest on time.
    11, 12, 13, 15 (streams 3, 0, 1, 3) waited behind stream 2: blocked; 14 (stream 2): in-stream."""
    from lab.metrics import head_of_line

    rtts: list[float | None] = [20.0] * 30
    for i in range(10, 17):
        rtts[i] = 120.0 - 5 * i if i > 10 else 70.0  # all released at 120 ms
    hol = head_of_line(_streams_record(rtts))
    assert (hol.base_rtt_ns, hol.threshold_ns) == (20 * MS, 40 * MS), hol
    assert (hol.delayed, hol.blocked, hol.in_stream) == (6, 4, 1), hol  # 10..15 delayed; 10 is the root


def test_head_of_line_independent_flows_block_nothing() -> None:
    """Separate flows: losses never come back, so nothing waits behind them; a delayed probe of
    one flow that comes back *before* an earlier delayed one was not held back by it."""
    from lab.metrics import head_of_line

    rtts: list[float | None] = [20.0] * 30
    rtts[5] = rtts[9] = rtts[10] = None  # lost on streams 1, 1, 2
    rtts[12] = 90.0  # stream 0, back at 150 ms
    rtts[13] = 50.0  # stream 1, sent later, back at 115 ms: before 12, so not behind it
    hol = head_of_line(_streams_record(rtts))
    assert (hol.delayed, hol.blocked, hol.in_stream) == (2, 0, 0), hol


def test_head_of_line_in_the_result_only_with_streams() -> None:
    """Result.hol (µs, ratio of sent) only for plan.streams > 1."""
    rtts: list[float | None] = [20.0] * 30
    for i in range(10, 17):
        rtts[i] = 120.0 - 5 * i if i > 10 else 70.0
    hol = compute_result(_streams_record(rtts)).hol
    assert hol == {"streams": 4, "base_rtt_us": 20_000.0, "threshold_us": 40_000.0, "delayed": 6,
                   "blocked": 4, "in_stream": 1, "blocked_ratio": pytest.approx(4 / 30)}
    assert compute_result(_streams_record(rtts, streams=1)).hol is None


def test_head_of_line_threshold_margin_on_fast_links() -> None:
    """A 1 ms base: the threshold is base + 10 ms (not 2 ms), so sub-10 ms noise is not a stall."""
    from lab.metrics import head_of_line

    rtts: list[float | None] = [1.0] * 20
    rtts[4], rtts[5] = 8.0, 7.0  # stream 0 then 1, both well under 11 ms
    hol = head_of_line(_streams_record(rtts))
    assert (hol.threshold_ns, hol.delayed, hol.blocked) == (11 * MS, 0, 0), hol
    assert head_of_line(_streams_record([None] * 4)).delayed == 0  # nothing answered: no base
