"""Scenario parsing (valid, invalid, generated) and expectation evaluation. Pure: no network, but
for one pytester run of a tiny scenario on loopback (per-point expectations end to end)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from lab.errors import ScenarioError
from lab.protocols import names as protocol_names
from lab.records import TrafficPlan
from lab.scenario import (
    EXPECTATION_DOC,
    METRICS,
    Expectation,
    evaluate,
    evaluate_all,
    fragments_per_datagram,
    load_scenario,
    loss_interval,
    measured_value,
    parse_scenario,
)

pytest_plugins = ["pytester"]

F = "scenarios/x.toml: "
SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


def parse(text: str):
    return parse_scenario(text, source="scenarios/x.toml", default_name="x")


def error_of(text: str) -> str:
    with pytest.raises(ScenarioError) as info:
        parse(text)
    return str(info.value)


# --- valid files ----------------------------------------------------------------------------------
def test_minimal_file_gets_defaults():
    s = parse("")
    assert s.name == "x"
    assert s.protocols == ("tcp", "udp")
    assert [p.id for p in s.points] == ["base"]
    assert s.points[0].traffic == TrafficPlan()
    assert not s.points[0].impaired
    assert not s.slow


def test_full_file():
    s = parse(
        """
        [scenario]
        name = "full"
        description = "d"
        protocols = ["udp"]
        seed = 7
        mtu = 1400
        slow = true
        [traffic]
        count = 10
        size = 100
        rate = 50
        timeout = 0.5
        streams = 2
        [link]
        loss = "5%"
        delay = "10ms"
        direction = "forward"
        [expect.udp]
        loss_ratio = "within_ci"
        rtt_p50_ms = { min = 20, max = 25 }
        duplicates = 0
        """
    )
    assert (s.name, s.protocols, s.seed, s.mtu, s.slow) == ("full", ("udp",), 7, 1400, True)
    point = s.points[0]
    assert point.traffic == TrafficPlan(count=10, size=100, rate=50.0, timeout=0.5, streams=2)
    assert point.link_options() == {"loss": "5%", "delay": "10ms"}
    assert point.direction == "forward" and point.impaired and point.seed == 7 and point.mtu == 1400
    kinds = [(e.metric, e.kind) for e in point.expectations["udp"]]
    assert kinds == [("loss_ratio", "within_ci"), ("rtt_p50_ms", "range"), ("duplicates", "equal")]


def test_duration_becomes_count():
    s = parse("[traffic]\nrate = 200\nduration = 1.5\n")
    assert s.points[0].traffic.count == 300


def test_sweep_is_cartesian_in_file_order():
    s = parse(
        """
        [sweep]
        loss = ["0%", "5%"]
        delay = ["1ms", "2ms", "3ms"]
        traffic.rate = [10, 20.5]
        """
    )
    ids = [p.id for p in s.points]
    assert len(ids) == 12
    assert ids[0] == "loss=0%,delay=1ms,traffic.rate=10"
    assert ids[1] == "loss=0%,delay=1ms,traffic.rate=20.5"
    assert ids[-1] == "loss=5%,delay=3ms,traffic.rate=20.5"
    assert s.points[1].traffic.rate == 20.5 and s.points[1].link == {"loss": "0%", "delay": "1ms"}


def test_sweep_link_rate_and_traffic_count():
    s = parse('[sweep]\nlink.rate = ["1mbit", "2mbit"]\ncount = [5]\n')
    assert [p.id for p in s.points] == ["link.rate=1mbit,count=5", "link.rate=2mbit,count=5"]
    assert s.points[0].link == {"rate": "1mbit"} and s.points[0].traffic.count == 5


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_scenarios_parse(path):
    s = load_scenario(path)
    assert s.name == path.stem
    assert s.description
    assert s.points and all(p.expectations for p in s.points)


# --- invalid files: exact messages naming file and key ----------------------------------------------
@pytest.mark.parametrize(
    "text, message",
    [
        ('[link]\nloss = "150%"', "scenarios/x.toml: [link] loss: must be between 0% and 100%, got 150%"),
        (
            '[link]\ndelay = "20"',
            "scenarios/x.toml: [link] delay: must be a duration with a unit (s, ms, us, ns) such as '20ms', "
            "got '20'",
        ),
        (
            '[link]\nspeed = "1mbit"',
            F + "[link] speed: unknown key; allowed: loss, delay, jitter, distribution, delay_correlation, "
            "reorder, duplicate, corrupt, rate, limit, limit_bytes, direction, and the tables "
            "[link.forward], [link.reverse]",
        ),
        (
            '[link]\ndirection = "up"',
            "scenarios/x.toml: [link] direction: must be both, forward or reverse, got 'up'",
        ),
        (
            "[traffic]\ncount = 0",
            "scenarios/x.toml: [traffic] count: count must be between 1 and 10000000, got 0",
        ),
        ('[traffic]\ncount = "5"', "scenarios/x.toml: [traffic] count: must be an integer, got '5'"),
        (
            "[traffic]\nduration = 2",
            "scenarios/x.toml: [traffic] duration: needs a rate (count = rate * duration)",
        ),
        (
            "[sweep]\nrate = [1, 2]",
            F + "[sweep] rate: ambiguous: write link.rate (bandwidth) or traffic.rate (probes/s)",
        ),
        ("[sweep]\nloss = []", "scenarios/x.toml: [sweep] loss: must be a non-empty list of values, got []"),
        (
            '[sweep]\nloss = ["1%", "200%"]',
            "scenarios/x.toml: [sweep] point loss=200%: [link] loss: must be between 0% and 100%, got 200%",
        ),
        (
            '[scenario]\nprotocols = ["sctp"]',
            F + "[scenario] protocols: must be a non-empty list of at most 16 distinct names from "
            + ", ".join(sorted(protocol_names())) + ", got ['sctp']",
        ),
        (
            "[scenario]\nmtu = 100",
            "scenarios/x.toml: [scenario] mtu: must be an integer in 576..65535, got 100",
        ),
        ("[scenario]\nslow = 1", "scenarios/x.toml: [scenario] slow: must be true or false, got 1"),
        (
            "[expect.quic]\nloss_ratio = 0",
            "scenarios/x.toml: [expect.quic]: not one of this scenario's protocols (tcp, udp)",
        ),
        (
            "[expect.udp]\nrtt_p50_ms = { min = 5, max = 1 }",
            "scenarios/x.toml: [expect.udp] rtt_p50_ms: min (5) is greater than max (1)",
        ),
        (
            "[results]\nx = 1",
            F + "results: unknown table; allowed: [scenario], [traffic], [link], [sweep], [expect], "
            "[[flows]]",
        ),
    ],
)
def test_invalid_files_name_file_and_key(text, message):
    assert error_of(text) == message


def test_unknown_metric_lists_the_vocabulary():
    message = error_of("[expect.udp]\nlatency = 3")
    assert message.startswith("scenarios/x.toml: [expect.udp] latency: unknown metric; allowed: loss_ratio,")
    assert "rtt_p99_ms" in message


def test_within_ci_only_for_loss():
    message = error_of('[expect.udp]\nrtt_p50_ms = "within_ci"')
    assert message.startswith("scenarios/x.toml: [expect.udp] rtt_p50_ms: unknown expectation 'within_ci';")


def test_bad_toml_and_missing_file(tmp_path):
    assert error_of("[link\n").startswith("scenarios/x.toml: not valid TOML:")
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "nope.toml")


def test_reorder_needs_delay_names_the_link():
    assert "reorder needs a delay" in error_of('[link]\nreorder = "10%"')


# --- generated values -------------------------------------------------------------------------------
@given(st.floats(min_value=0, max_value=100, allow_nan=False).map(lambda v: round(v, 3)))
@example(0.0)
@example(100.0)
def test_any_valid_percent_parses(value):
    """Property: every percentage in 0..100 % is a valid loss and lands in the point's link options."""
    s = parse(f'[link]\nloss = "{value}%"')
    assert s.points[0].link["loss"] == f"{value}%"


@given(st.floats(min_value=100.001, max_value=1e6, allow_nan=False))
def test_any_percent_over_100_is_refused_naming_the_key(value):
    """Property: a loss over 100 % always fails with the file and `[link] loss` in the message."""
    assert error_of(f'[link]\nloss = "{value}%"').startswith("scenarios/x.toml: [link] loss: ")


@given(st.integers(min_value=0, max_value=60_000), st.sampled_from(["ms", "us", "s"]))
def test_durations(value, unit):
    """Property: a duration within the link's 60 s bound parses; beyond it the error names delay."""
    seconds = value * {"ms": 1e-3, "us": 1e-6, "s": 1.0}[unit]
    text = f'[link]\ndelay = "{value}{unit}"'
    if seconds <= 60:
        assert parse(text).points[0].link["delay"] == f"{value}{unit}"
    else:
        assert error_of(text).startswith("scenarios/x.toml: [link] delay: ")


@given(
    st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=6, unique=True),
    st.lists(st.sampled_from(["0%", "1%", "2.5%", "50%"]), min_size=1, max_size=4, unique=True),
)
def test_sweep_product(counts, losses):
    """Property: a sweep yields len(a) * len(b) points, unique ids, each with its own values, in order."""
    s = parse(f"[sweep]\ncount = {counts}\nloss = {losses}\n".replace("'", '"'))
    assert len(s.points) == len(counts) * len(losses)
    assert len({p.id for p in s.points}) == len(s.points)
    assert [p.traffic.count for p in s.points] == [c for c in counts for _ in losses]
    assert [p.link["loss"] for p in s.points] == [loss for _ in counts for loss in losses]


# --- expectations (pure) -----------------------------------------------------------------------------
def result(**overrides):
    base = {
        "protocol": "udp",
        "sent": 1000,
        "received": 810,
        "lost": 190,
        "loss_ratio": 0.19,
        "duplicates": 0,
        "rtt_us": {"p50": 41_000.0, "p99": 43_000.0},
        "jitter_us": 500.0,
        "size": 64,
        "expected_loss_ratio": 0.19,
    }
    base.update(overrides)
    return base


def test_equal_and_range():
    assert evaluate(Expectation(metric="duplicates", kind="equal", value=0), result()).passed
    check = evaluate(Expectation(metric="loss_ratio", kind="equal", value=0), result())
    assert not check.passed and check.message == "loss_ratio = 0.19, expected 0"
    rng = Expectation(metric="rtt_p50_ms", kind="range", min=40, max=45)
    assert evaluate(rng, result()).passed
    assert evaluate(rng, result()).measured == 41.0
    assert not evaluate(rng, result(rtt_us={"p50": 46_000.0})).passed
    assert evaluate(Expectation(metric="rtt_p99_ms", kind="range", min=40), result()).passed
    assert evaluate(Expectation(metric="delivered_ratio", kind="equal", value=0.81), result()).passed


def test_missing_measurement_fails_with_reason():
    check = evaluate(Expectation(metric="retransmits", kind="range", min=1), result())
    assert not check.passed and "was not measured" in check.message
    tcp = result(observations={"tcp": {"tcp_info": {"total_retrans": 3, "retransmits": 0}}})
    assert measured_value(tcp, "retransmits") == 3


def test_loss_interval_pinned():
    lo, hi = loss_interval(0.19, 1000)
    # binom(1000, 0.19): P(X < 159) = 0.0048 and P(X > 223) = 0.0040, each tail within 0.5 %.
    assert (lo, hi) == (0.159, 0.223)
    assert loss_interval(0.0, 100) == (0.0, 0.0)


def test_within_ci():
    exp = Expectation(metric="loss_ratio", kind="within_ci")
    check = evaluate(exp, result())
    assert check.passed and check.interval == (0.159, 0.223)
    assert "99% interval [0.1590, 0.2230]" in check.message
    assert not evaluate(exp, result(lost=300, loss_ratio=0.3)).passed
    assert not evaluate(exp, result(expected_loss_ratio=None)).passed


def test_fragments():
    assert fragments_per_datagram(4000, 1500) == 3  # 4008 bytes in 1480-byte fragments
    assert fragments_per_datagram(1472, 1500) == 1  # exactly one full packet
    assert fragments_per_datagram(1473, 1500) == 2
    exp = Expectation(metric="loss_ratio", kind="within_ci_fragments")
    e = 1 - 0.97**2
    predicted = 1 - (1 - e) ** 3
    lost = round(predicted * 1000)
    check = evaluate(
        exp, result(size=4000, lost=lost, loss_ratio=lost / 1000, expected_loss_ratio=e), mtu=1500
    )
    assert check.passed, check.message
    assert math.isclose(sum(check.interval) / 2, predicted, abs_tol=0.01)
    assert "3 fragments/datagram at MTU 1500" in check.message


def test_statistical_check_records_its_prediction():
    """The check carries the value its interval is centred on, so reports show that figure."""
    frag = evaluate(
        Expectation(metric="loss_ratio", kind="within_ci_fragments"), result(size=4000), mtu=1500
    ).to_dict()
    assert frag["expected"] == pytest.approx(1 - 0.81**3)
    assert frag["expected_label"] == "1-(1-0.1900)^3 for 3 fragments/datagram at MTU 1500"
    plain = evaluate(Expectation(metric="loss_ratio", kind="within_ci"), result()).to_dict()
    assert plain["expected"] == pytest.approx(0.19) and plain["expected_label"] == "link's expected loss"
    equal = evaluate(Expectation(metric="loss_ratio", kind="equal", value=0), result()).to_dict()
    assert "expected" not in equal  # only statistical checks predict a value


@pytest.mark.parametrize("seed", [-1, 2**32, True, 1.5])
def test_seed_override_out_of_range(seed):
    """`--seed` is held to the same range as the file's `seed` key."""
    with pytest.raises(ScenarioError) as info:
        parse("").with_seed(seed)
    assert str(info.value).startswith("--seed: must be an integer in 0..4294967295, got ")


def test_seed_override_reaches_every_point():
    s = parse('[sweep]\nloss = ["1%", "2%"]').with_seed(7)
    assert s.seed == 7 and [p.seed for p in s.points] == [7, 7]


# --- per-sweep-point expectations ---------------------------------------------------------------------
POINTS = """
[sweep]
loss = ["0%", "5%"]
delay = ["1ms"]
[expect.udp]
loss_ratio = "within_ci"
duplicates = 0
[expect."loss=0%,delay=1ms".udp]
loss_ratio = 0
rtt_p99_ms = { max = 20 }
[expect."loss=5%,delay=1ms".tcp]
rtt_p99_ms = { min = 2 }
"""


def described(point, protocol):
    return [e.describe() for e in point.expectations.get(protocol, ())]


def test_point_expectations_replace_the_general_metric_at_that_point_only():
    clean, lossy = parse(POINTS).points
    # The point's loss_ratio takes the general one's place; duplicates still applies; rtt is added.
    assert described(clean, "udp") == ["loss_ratio == 0", "duplicates == 0", "rtt_p99_ms in [-inf, 20]"]
    assert described(lossy, "udp") == ["loss_ratio within_ci (99%)", "duplicates == 0"]
    # A protocol with no general table gets expectations only where a point names it.
    assert described(clean, "tcp") == [] and described(lossy, "tcp") == ["rtt_p99_ms in [2, inf]"]


def test_general_only_file_applies_alike_everywhere():
    """Backward compatible: without point tables every point holds the same expectations."""
    s = parse('[sweep]\nlimit = [10, 300]\n[expect.udp]\nloss_ratio = "within_ci"\n[expect.tcp]\nlost = 0')
    assert [dict(p.expectations) for p in s.points] == [dict(s.points[0].expectations)] * 2
    assert described(s.points[1], "tcp") == ["lost == 0"]


def test_point_expectations_survive_the_seed_override():
    s = parse(POINTS).with_seed(9)
    assert described(s.points[0], "udp")[0] == "loss_ratio == 0"


def test_evaluate_all_uses_each_points_own_set():
    clean, lossy = parse(POINTS).points
    lossless = result(lost=0, received=1000, loss_ratio=0.0, expected_loss_ratio=0.0)
    lossy_run = result(expected_loss_ratio=0.2)  # 19% lost: inside the 99% interval around 20%
    assert [c.passed for c in evaluate_all(clean, "udp", lossless)] == [True, True, False]  # p99 43 ms
    assert [c.expectation.describe() for c in evaluate_all(clean, "udp", lossless)][0] == "loss_ratio == 0"
    assert [c.passed for c in evaluate_all(lossy, "udp", lossy_run)] == [True, True]
    # The same 19% loss fails at the clean point, where loss_ratio = 0 replaced within_ci.
    assert not evaluate_all(clean, "udp", lossy_run)[0].passed
    assert evaluate_all(clean, "tcp", lossless) == []


SWEEP = "[sweep]\nlimit = [10, 300]\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            SWEEP + '[expect."limit=20".udp]\nlost = 0',
            F + '[expect."limit=20"]: not one of this scenario\'s protocols (tcp, udp) nor one of its '
            "sweep point ids (limit=10, limit=300)",
        ),
        (
            SWEEP + "[expect.quic]\nlost = 0",
            F + "[expect.quic]: not one of this scenario's protocols (tcp, udp) nor one of its "
            "sweep point ids (limit=10, limit=300)",
        ),
        (
            SWEEP + '[expect."limit=10".quic]\nlost = 0',
            F + '[expect."limit=10".quic]: not one of this scenario\'s protocols (tcp, udp)',
        ),
        (
            SWEEP + '[expect."limit=10"]\nlost = 0',
            F + '[expect."limit=10".lost]: not one of this scenario\'s protocols (tcp, udp); '
            'a metric goes in [expect."limit=10".PROTOCOL]',
        ),
        (
            SWEEP + '[expect]\n"limit=10" = 3',
            F + '[expect."limit=10"]: must hold a table per protocol, e.g. [expect."limit=10".udp]',
        ),
        (
            SWEEP + '[expect."limit=10".udp]\nlatency = 0',
            F + '[expect."limit=10".udp] latency: unknown metric; allowed: ' + ", ".join(METRICS),
        ),
        (
            SWEEP + '[expect."limit=10".udp]\nrtt_p50_ms = { min = 5, max = 1 }',
            F + '[expect."limit=10".udp] rtt_p50_ms: min (5) is greater than max (1)',
        ),
        (
            SWEEP + '[expect."limit=10".udp]\nloss_ratio = "yes"',
            F + "[expect.\"limit=10\".udp] loss_ratio: unknown expectation 'yes'; " + EXPECTATION_DOC,
        ),
        (  # without a [sweep] the only point is `base`, and there is nothing to single out
            "[expect.base.udp]\nlost = 0",
            F + "[expect.base]: not one of this scenario's protocols (tcp, udp)",
        ),
    ],
)
def test_invalid_point_expectations_name_file_key_and_what_is_allowed(text, message):
    assert error_of(text) == message


def test_multi_key_point_id_must_match_exactly():
    """A point id names every sweep key, in [sweep] order: a partial or reordered id is refused."""
    for key in ("loss=0%", "delay=1ms,loss=0%"):
        message = error_of(POINTS.replace("loss=0%,delay=1ms", key))
        assert "sweep point ids (loss=0%,delay=1ms, loss=5%,delay=1ms)" in message


def test_shipped_sweeps_single_out_points():
    """bandwidth-queue and loss-sweep hold different expectations at different points."""
    queue = {p.id: p for p in load_scenario(SCENARIOS / "bandwidth-queue.toml").points}
    assert "loss_ratio in [0.25, 0.5]" in described(queue["limit=10"], "udp")
    assert "loss_ratio == 0" in described(queue["limit=300"], "udp")
    sweep = {p.id: p for p in load_scenario(SCENARIOS / "loss-sweep.toml").points}
    assert described(sweep["loss=0%"], "udp") != described(sweep["loss=5%"], "udp")


def test_pytest_failure_names_the_point_whose_own_expectation_failed(pytester, monkeypatch):
    """End to end on loopback: only the point with the impossible expectation fails, and says so."""
    monkeypatch.setenv("COLUMNS", "200")
    pytester.makeini("[pytest]\nwirelab_scenarios = scenarios\n")  # where the plugin collects scenarios
    pytester.mkdir("scenarios")
    pytester.path.joinpath("scenarios", "tiny.toml").write_text(
        '[scenario]\nname = "tiny"\nprotocols = ["udp"]\n'
        "[traffic]\ncount = 20\nrate = 400\ntimeout = 0.5\n"
        "[sweep]\nsize = [64, 100]\n"
        "[expect.udp]\nloss_ratio = 0\n"
        '[expect."size=100".udp]\nloss_ratio = { min = 0.5 }   # nothing is lost on loopback\n'
    )
    result = pytester.runpytest_subprocess("scenarios", "-p", "no:randomly", "-p", "no:xdist")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*tiny[[]size=100[]]::udp: 1 of 1 expectation(s) failed for udp:*",
            "*loss_ratio in [[]0.5, inf[]]: loss_ratio = 0, expected loss_ratio in [[]0.5, inf[]]*",
        ]
    )
    assert "size=64]::udp: " not in result.stdout.str()


def test_readme_scenario_example_parses_as_documented():
    """README's "Scenario files" example is a valid file, and its point tables do what it says."""
    readme = (SCENARIOS.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Scenario files") :]
    start = section.index("```toml\n") + len("```toml\n")
    points = {p.id: p for p in parse(section[start : section.index("```", start)]).points}
    assert described(points["loss=0%"], "udp") == ["loss_ratio == 0"]
    assert described(points["loss=5%"], "udp") == ["loss_ratio within_ci (99%)"]
    assert described(points["loss=20%"], "tcp") == ["loss_ratio == 0", "rtt_p50_ms in [10, inf]"]
    assert described(points["loss=10%"], "tcp") == ["loss_ratio == 0", "rtt_p50_ms in [10, 15]"]


def test_link_keys_are_the_same_as_lab_link_options():
    """Scenario files take every impairment `lab link` takes (delay_correlation and limit_bytes had
    drifted out), with the same validation."""
    plan = parse_scenario(
        '[link]\ndelay = "10ms"\njitter = "2ms"\ndelay_correlation = "25%"\nlimit_bytes = "1mb"\n',
        source="x.toml", default_name="x",
    )
    assert plan.points[0].link_options()["limit_bytes"] == "1mb"
    with pytest.raises(ScenarioError, match="limit_bytes"):
        parse_scenario('[link]\nlimit_bytes = "1tb"\n', source="x.toml", default_name="x")


def test_a_scenario_is_bounded_in_protocol_runs_so_its_result_reads_back() -> None:
    """Points x protocols stays within what result.json may hold (lab.report.schema.MAX_PROTOCOLS)."""
    from lab.scenario import MAX_PROTOCOL_RUNS, MAX_SCENARIO_PROTOCOLS

    losses = ", ".join(f'"{n}%"' for n in range(15))
    delays = ", ".join(f'"{n}ms"' for n in range(10))  # 150 points x 3 protocols = 450 runs
    text = f'[scenario]\nprotocols = ["tcp", "udp", "quic"]\n[sweep]\nloss = [{losses}]\ndelay = [{delays}]\n'
    limit = f"150 points x 3 protocols is over the limit of {MAX_PROTOCOL_RUNS}"
    with pytest.raises(ScenarioError, match=limit):
        parse_scenario(text)
    assert len(protocol_names()) <= MAX_SCENARIO_PROTOCOLS
