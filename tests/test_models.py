"""Impairment models without a network: injected clock, fixed seeds, binomial checks of the rates."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy.stats import binomtest

from lab.errors import ConfigError
from lab.link.models import (
    COUNTER_KEYS,
    DirectionModel,
    GilbertElliott,
    Impairment,
    LinkConfig,
    Release,
    Verdict,
)

N = 20_000  # packets per statistical test: rates of 1..20 % give hundreds to thousands of events
P_MIN = 0.001  # a binomial p-value below this fails (fixed seed, so it is not flaky)
SEED = 7
# A minimal IPv4 header (IHL=5) + 80 bytes of payload; models only look at the IHL nibble.
IP_PACKET = bytes([0x45]) + bytes(19) + bytes(range(80))
TICK = 1e-4  # seconds between packets (10 000 packets/s)


def run(impairment: Impairment, n: int = N, seed: int = SEED, tick: float = TICK) -> tuple[
    DirectionModel, list[Verdict]
]:
    """Feed `n` packets `tick` apart through a fresh model; return it and the verdicts."""
    model = DirectionModel(impairment, seed)
    return model, [model.decide(IP_PACKET, i * tick) for i in range(n)]


def assert_binomial(events: int, trials: int, p: float, what: str) -> None:
    result = binomtest(events, trials, p)
    assert result.pvalue > P_MIN, (
        f"{what}: {events}/{trials} = {events / trials:.4f}, configured {p}, "
        f"binomial p-value {result.pvalue:.2g} (seed {SEED})"
    )


def options(**kw: object) -> Impairment:
    return LinkConfig.from_options(kw).forward


FULL = dict(loss="5%", delay="20ms", jitter="5ms", reorder="10%", duplicate="2%", corrupt="3%",
            rate="10mbit", limit="50")


def test_same_seed_same_verdicts_different_seed_different() -> None:
    imp = options(**FULL)
    _, first = run(imp, n=3000)
    _, again = run(imp, n=3000)
    _, other = run(imp, n=3000, seed=SEED + 1)
    assert first == again
    assert first != other


def test_reverse_direction_uses_seed_plus_one() -> None:
    config = LinkConfig.from_options({"loss": "30%"}, seed=11)
    forward, reverse = config.build_models()
    f = [forward.decide(IP_PACKET, 0.0).dropped for _ in range(500)]
    r = [reverse.decide(IP_PACKET, 0.0).dropped for _ in range(500)]
    _, by_hand = run(config.reverse, n=500, seed=12)
    assert f != r
    assert r == [v.dropped for v in by_hand]


def test_null_impairment_passes_packet_untouched_now() -> None:
    model = DirectionModel(Impairment(), 1)
    verdict = model.decide(IP_PACKET, 12.5)
    assert verdict == Verdict((Release(12.5, IP_PACKET),), ())
    assert verdict.releases[0].packet is IP_PACKET
    assert model.counters == {**dict.fromkeys(COUNTER_KEYS, 0), "packets_in": 1, "bytes_in": 100,
                              "forwarded": 1, "bytes_out": 100}


@pytest.mark.parametrize(("key", "p", "counter"), [
    ("loss", 0.10, "dropped_loss"), ("duplicate", 0.05, "duplicated"), ("corrupt", 0.02, "corrupted"),
])
def test_rates_are_binomially_consistent(key: str, p: float, counter: str) -> None:
    model, _ = run(options(**{key: f"{p * 100:g}%"}))
    assert_binomial(model.counters[counter], N, p, key)


def test_reorder_rate_and_that_early_packets_overtake() -> None:
    model, verdicts = run(options(delay="10ms", reorder="20%"))
    assert_binomial(model.counters["reordered"], N, 0.2, "reorder")
    arrival = [v.releases[0].at for v in verdicts]
    overtaking = sum(1 for a, b in zip(arrival, arrival[1:], strict=False) if b < a)
    assert overtaking > 0.1 * N, f"only {overtaking} of {N} packets arrive before their predecessor"


def test_all_impairments_together_keep_the_counter_invariant() -> None:
    model, verdicts = run(options(**FULL), n=5000)
    c = model.counters
    assert c["packets_in"] == 5000
    assert c["packets_in"] == c["forwarded"] - c["duplicated"] + c["dropped_loss"] + c["dropped_queue"]
    assert c["forwarded"] == sum(len(v.releases) for v in verdicts)
    assert c["bytes_out"] == sum(len(r.packet) for v in verdicts for r in v.releases)
    assert all(v.notes for v in verdicts), "every packet here is at least delayed or dropped"
    assert verdicts[0].notes[-1].startswith("delayed ")


def test_gilbert_elliott_mean_loss_and_burst_length() -> None:
    ge = GilbertElliott(p=0.02, r=0.25)  # 1-h = 100%, 1-k = 0% as netem's defaults
    model, verdicts = run(Impairment(gemodel=ge), n=100_000)
    lost = [v.dropped for v in verdicts]
    expected = 0.02 / (0.02 + 0.25)
    bursts = [len(run_) for run_ in "".join("x" if x else " " for x in lost).split()]
    mean_burst = statistics.fmean(bursts)
    figures = f"loss {sum(lost) / len(lost):.4f} vs {expected:.4f}, burst {mean_burst:.2f} vs 4.0"
    # Loss runs are correlated, so the tolerance is wider than a binomial one: +-10 % relative.
    assert sum(lost) / len(lost) == pytest.approx(expected, rel=0.10), figures
    assert mean_burst == pytest.approx(1 / 0.25, rel=0.10), figures
    assert Impairment(gemodel=ge).expected_loss() == pytest.approx(expected)
    assert model.counters["dropped_loss"] == sum(lost)


def test_gilbert_elliott_with_losses_in_both_states() -> None:
    ge = GilbertElliott(p=0.05, r=0.20, one_minus_h=0.5, one_minus_k=0.01)
    _, verdicts = run(Impairment(gemodel=ge), n=100_000)
    observed = sum(v.dropped for v in verdicts) / len(verdicts)
    expected = 0.05 / 0.25 * 0.5 + 0.20 / 0.25 * 0.01
    assert observed == pytest.approx(expected, rel=0.10), f"observed {observed:.4f}, expected {expected:.4f}"


@pytest.mark.parametrize(("distribution", "sigma_factor"), [("uniform", 1 / math.sqrt(3)), ("normal", 1.0)])
def test_delay_distribution_mean_and_sigma(distribution: str, sigma_factor: float) -> None:
    d, j = 0.050, 0.005
    _, verdicts = run(options(delay="50ms", jitter="5ms", distribution=distribution), n=N)
    delays = [v.releases[0].at - i * TICK for i, v in enumerate(verdicts)]
    mean, sigma = statistics.fmean(delays), statistics.pstdev(delays)
    figures = (f"{distribution}: mean {mean * 1e3:.3f} ms (50), "
               f"sigma {sigma * 1e3:.3f} ms ({j * sigma_factor * 1e3:.3f})")
    assert mean == pytest.approx(d, abs=0.0002), figures  # 0.2 ms ~ 6 standard errors of the mean
    assert sigma == pytest.approx(j * sigma_factor, rel=0.05), figures
    if distribution == "uniform":
        assert d - j <= min(delays) and max(delays) <= d + j, figures


def test_delay_correlation_keeps_mean_and_shrinks_sigma_like_netem() -> None:
    c = 0.5
    _, verdicts = run(options(delay="50ms", jitter="6ms", delay_correlation="50%"))
    delays = [v.releases[0].at - i * TICK for i, v in enumerate(verdicts)]
    expected_sigma = 0.006 / math.sqrt(3) * math.sqrt((1 - c) / (1 + c))
    sigma = statistics.pstdev(delays)
    assert statistics.fmean(delays) == pytest.approx(0.050, abs=0.0002)
    assert sigma == pytest.approx(expected_sigma, rel=0.05), f"sigma {sigma} vs {expected_sigma}"
    lag1 = statistics.correlation(delays[:-1], delays[1:])
    assert lag1 == pytest.approx(c, abs=0.05), f"lag-1 correlation {lag1:.3f}"


def test_delay_is_clamped_at_zero() -> None:
    _, verdicts = run(options(delay="1ms", jitter="5ms", distribution="normal"), n=2000)
    assert all(v.releases[0].at >= i * TICK for i, v in enumerate(verdicts))


def test_delay_without_jitter_keeps_fifo_with_jitter_reorders() -> None:
    _, fixed = run(options(delay="20ms"), n=2000)
    times = [v.releases[0].at for v in fixed]
    assert times == sorted(times)
    _, jittered = run(options(delay="20ms", jitter="5ms"), n=2000)
    times = [v.releases[0].at for v in jittered]
    assert times != sorted(times)


def test_token_bucket_never_exceeds_rate_and_tail_drops() -> None:
    rate = 1e6  # 1 mbit/s: a 100-byte packet takes 0.8 ms, while they arrive every 0.1 ms
    model, verdicts = run(options(rate="1mbit", limit="100"), n=5000)
    releases = sorted(r.at for v in verdicts for r in v.releases)
    one_packet = len(IP_PACKET) * 8
    for window in (0.001, 0.01, 0.1):
        j = 0
        for i, start in enumerate(releases):
            while j < len(releases) and releases[j] < start + window:
                j += 1
            released_bits = (j - i) * one_packet
            assert released_bits <= rate * window + one_packet, (
                f"{released_bits} bits released in {window}s from t={start:.4f}s at 1 mbit/s")
    c = model.counters
    assert c["dropped_queue"] > 0 and c["dropped_loss"] == 0
    assert c["forwarded"] + c["dropped_queue"] == 5000
    # Offered 8 mbit/s into 1 mbit/s: about 1/8 gets through, plus the queue that was filled.
    assert c["forwarded"] == pytest.approx(5000 / 8 + 100, abs=3)
    assert "dropped (queue full)" in {n for v in verdicts for n in v.notes}


def test_queue_overflow_is_tail_drop_exactly_at_limit() -> None:
    model = DirectionModel(options(rate="8kbit", limit="10"), 1)  # 100 ms per 100-byte packet
    burst = [model.decide(IP_PACKET, 0.0) for _ in range(15)]
    assert [v.dropped for v in burst] == [False] * 10 + [True] * 5
    assert [v.releases[0].at for v in burst[:10]] == pytest.approx([0.1 * (k + 1) for k in range(10)])
    assert not model.decide(IP_PACKET, 0.1).dropped, "the first packet left at 0.1 s, making room"


def test_limit_counts_packets_held_by_delay_like_netem() -> None:
    model = DirectionModel(options(delay="1s", limit="5"), 1)
    assert [model.decide(IP_PACKET, 0.0).dropped for _ in range(7)] == [False] * 5 + [True] * 2
    assert not model.decide(IP_PACKET, 1.0).dropped


def test_corruption_flips_one_bit_of_the_ip_payload() -> None:
    _, verdicts = run(options(corrupt="100%"), n=500)
    for verdict in verdicts:
        out = verdict.releases[0].packet
        assert out[:20] == IP_PACKET[:20], "the IPv4 header (and so its checksum) is untouched"
        diff = int.from_bytes(out, "big") ^ int.from_bytes(IP_PACKET, "big")
        assert diff.bit_count() == 1
        bit = int(verdict.notes[0].split()[2])
        assert verdict.notes == (f"corrupted (bit {bit} flipped)",)
        assert 160 <= bit < len(IP_PACKET) * 8
        assert (out[bit // 8] ^ IP_PACKET[bit // 8]) == 0x80 >> (bit % 8)


@pytest.mark.parametrize("packet", [b"\x00hello", b"\x45", bytes([0x46]) + bytes(10)])
def test_corruption_of_non_ip_or_short_packets_stays_within_the_packet(packet: bytes) -> None:
    model = DirectionModel(options(corrupt="100%"), 3)
    out = model.decide(packet, 0.0).releases[0].packet
    assert len(out) == len(packet)
    assert (int.from_bytes(out, "big") ^ int.from_bytes(packet, "big")).bit_count() == 1


def test_duplicate_copy_is_the_uncorrupted_original_released_no_earlier() -> None:
    model = DirectionModel(options(duplicate="100%", delay="5ms"), 1)
    verdict = model.decide(IP_PACKET, 1.0)
    first, second = verdict.releases
    assert first.packet == second.packet == IP_PACKET
    assert first.at == pytest.approx(1.005) and second.at >= first.at
    assert verdict.notes == ("duplicated", "delayed 5.0 ms")


def test_update_keeps_counters_and_rng_state() -> None:
    low, high = options(loss="10%"), options(loss="50%")
    model = DirectionModel(low, SEED)
    first = [model.decide(IP_PACKET, 0.0).dropped for _ in range(1000)]
    model.update(high)
    second = [model.decide(IP_PACKET, 0.0).dropped for _ in range(1000)]
    assert model.counters["packets_in"] == 2000
    assert model.counters["dropped_loss"] == sum(first) + sum(second)
    assert model.impairment is high
    # RNG continues: the same as one model whose impairment changed at packet 1000.
    fresh = DirectionModel(high, SEED)
    assert second != [fresh.decide(IP_PACKET, 0.0).dropped for _ in range(1000)]
    assert sum(second) > 400


def test_loss_stops_after_update_to_null() -> None:
    model = DirectionModel(options(loss="100%"), 1)
    assert model.decide(IP_PACKET, 0.0).dropped
    model.update(Impairment())
    assert not model.decide(IP_PACKET, 0.0).dropped


# --- LinkConfig ---------------------------------------------------------------------------------
def test_from_options_directions_and_expected_loss() -> None:
    both = LinkConfig.from_options({"loss": "10%"})
    assert both.forward == both.reverse == Impairment(loss=0.1)
    assert both.expected_loss_ratio() == pytest.approx(1 - 0.9**2)
    fwd = LinkConfig.from_options({"loss": "10%"}, direction="forward", seed=4)
    assert fwd.reverse.is_null and not fwd.forward.is_null
    assert fwd.expected_loss_ratio() == pytest.approx(0.1)
    assert fwd.to_dict() == {"forward": {"loss": "10%"}, "reverse": {}, "seed": 4, "direction": "forward"}


def test_gemodel_option_and_defaults() -> None:
    imp = LinkConfig.from_options({"loss": "gemodel 1% 30%"}).forward
    assert imp.gemodel == GilbertElliott(p=0.01, r=0.30, one_minus_h=1.0, one_minus_k=0.0)
    assert imp.to_dict() == {"loss": "gemodel 1% 30% 100% 0%"}
    full = LinkConfig.from_options({"loss": "gemodel 1% 30% 80% 0.5%"}).forward.gemodel
    assert full == GilbertElliott(p=0.01, r=0.30, one_minus_h=0.8, one_minus_k=0.005)


def test_to_dict_round_trips_through_from_options() -> None:
    imp = options(**FULL, distribution="normal", delay_correlation="25%")
    assert LinkConfig.from_options(imp.to_dict()).forward == imp


def test_with_options_changes_only_the_given_keys() -> None:
    config = LinkConfig.from_options({"loss": "5%", "delay": "20ms", "reorder": "10%"}, seed=3)
    changed = config.with_options({"loss": "20%"})
    assert changed.forward == Impairment(loss=0.2, delay_s=0.02, reorder=0.1)
    assert changed.seed == 3
    one_way = config.with_options({"loss": "gemodel 2% 20%"}, direction="reverse")
    assert one_way.forward == config.forward and one_way.reverse.gemodel is not None
    cleared = config.with_options({"delay": None, "loss": None})
    assert cleared.forward.is_null


@pytest.mark.parametrize(("opts", "message"), [
    ({"los": "5%"}, "unknown impairment option(s) 'los'; allowed: loss, delay, jitter"),
    ({"loss": "150%"}, "loss must be between 0% and 100%, got 150%"),
    ({"reorder": "10%"}, "reorder needs a delay"),
    ({"distribution": "pareto", "jitter": "1ms"}, "distribution must be one of uniform, normal"),
    ({"loss": "gemodel"}, "loss gemodel takes 1 to 4 percentages"),
    ({"loss": "gemodel 1% 200%"}, "loss gemodel r must be between 0% and 100%"),
    ({"limit": "0"}, "limit must be between 1 and"),
    ({"rate": "fast"}, "rate must be a number with a unit such as '10mbit'"),
])
def test_from_options_errors_are_actionable(opts: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        LinkConfig.from_options(opts)
    assert message in str(info.value)


def test_bad_direction_is_refused() -> None:
    with pytest.raises(ConfigError, match="direction must be one of both, forward, reverse"):
        LinkConfig.from_options({}, direction="sideways")
