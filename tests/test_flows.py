"""Several flows on one link, bulk points and their oracles (lab.flows, lab.flow_runner, the report).

The pure parts (the scenario format, the predictions, the group's figures, the report of a made-up
result) run everywhere; three short runs over the real link check the issue's claims: at 10 Mbit/s
no flow's goodput exceeds the rate and 4 CUBIC flows get Jain's index >= 0.9; Reno at 1 % forward
loss and 10 ms lies within [0.5, 1.5] of Mathis; the RTT under load grows with the queue limit.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest

from lab import flows as flowlib
from lab.errors import ScenarioError
from lab.scenario import evaluate, parse_scenario

RATE = 10e6


def scenario(text: str) -> Any:
    return parse_scenario(text, source="x.toml")


def error_of(text: str) -> str:
    with pytest.raises(ScenarioError) as caught:
        scenario(text)
    return str(caught.value)


# --- the scenario format ----------------------------------------------------------------------------
GROUPS = """
[link]
rate = "10mbit"
[[flows]]
group = "same"
protocol = "tcp-cubic"
duration = 3
[[flows]]
group = "same"
protocol = "tcp-cubic"
duration = 3
[[flows]]
group = "mixed"
name = "flood"
protocol = "udp"
rate = "8mbit"
duration = 3
[[flows]]
group = "mixed"
name = "ping"
protocol = "udp"
kind = "probes"
start = 1
duration = 2
rate = 10
[expect.each]
goodput_bps = "link_rate"
[expect."group=same".all]
jain_index = { min = 0.9 }
[expect.flood]
goodput_bps = { min = 7e6 }
"""


def test_flows_make_one_point_per_group_with_their_expectations() -> None:
    plan = scenario(GROUPS)
    assert plan.protocols == ("tcp-cubic", "udp")
    assert [p.id for p in plan.points] == ["group=same", "group=mixed"]
    same, mixed = plan.points
    assert [f.name for f in same.flows] == ["tcp-cubic", "tcp-cubic-2"]
    assert [f.name for f in mixed.flows] == ["flood", "ping"]
    assert mixed.flows[0].bulk is not None and mixed.flows[0].bulk.rate_bps == 8e6
    assert mixed.flows[1].probes is not None and mixed.flows[1].probes.count == 20  # 10/s x 2 s
    assert mixed.flows[1].start_s == 1.0
    described = {k: [e.describe() for e in v] for k, v in same.expectations.items()}
    assert described["all"] == ["jain_index in [0.9, inf]"]
    assert described["tcp-cubic-2"] == ["goodput_bps within [0, 1] x link_rate"]  # [expect.each]
    own = [e.describe() for e in mixed.expectations["flood"]]
    assert own == ["goodput_bps in [7e+06, inf]"]  # its own table wins over [expect.each]
    assert "ping" not in mixed.expectations  # each: bulk flows only
    assert "all" not in mixed.expectations


def test_bulk_traffic_sweeps_every_protocol_alone() -> None:
    plan = scenario("""
[scenario]
protocols = ["tcp-reno", "tcp-cubic"]
[traffic]
kind = "bulk"
duration = 2
rate = "5mbit"
[sweep]
loss = ["0%", "1%"]
[expect.tcp-reno]
goodput_bps = "mathis"
[expect."loss=1%".tcp-cubic]
goodput_bps = { oracle = "mathis", within = [0.3, 3] }
""")
    assert [p.id for p in plan.points] == ["loss=0%", "loss=1%"]
    assert plan.points[0].bulk.duration_s == 2 and plan.points[0].bulk.rate_bps == 5e6
    reno = plan.points[1].expectations["tcp-reno"][0]
    assert (reno.kind, reno.oracle, reno.min, reno.max) == ("oracle", "mathis", 0.5, 1.5)
    assert plan.points[1].expectations["tcp-cubic"][0].describe() == "goodput_bps within [0.3, 3] x mathis"


@pytest.mark.parametrize(("text", "message"), [
    ("[[flows]]\nprotocol = 'nope'", "[[flows]] #1 protocol: must be one of"),
    ("[[flows]]\nprotocol = 'tcp'\ncolour = 1", "[[flows]] #1 colour: unknown key; allowed: name, protocol"),
    ("[[flows]]\nprotocol = 'tcp'\nkind = 'x'", "[[flows]] #1 kind: must be \"bulk\" or \"probes\""),
    ("[[flows]]\nprotocol = 'tcp'\nname = 'all'", "[[flows]] #1 name: 'all' is reserved"),
    ("[[flows]]\nprotocol = 'tcp'\nname = 'a'\n[[flows]]\nprotocol = 'tcp'\nname = 'a'",
     "[[flows]] #2 name: 'a' names two flows"),
    ("[[flows]]\nprotocol = 'tcp'\nduration = 0", "[[flows]] #1 duration: must be > 0"),
    ("[[flows]]\nprotocol = 'tcp'\nstart = 100\nduration = 250", "[[flows]] #1 duration: start + duration"),
    ("[[flows]]\nprotocol = 'udp'\nrate = 'fast'", "[[flows]] #1 rate: must be a number with a unit"),
    ("[[flows]]\nprotocol = 'tcp'\ncount = 5", "[[flows]] #1 count: is for probes flows"),
    ("[[flows]]\nprotocol = 'tcp'\ndirection = 'up'", '[[flows]] #1 direction: must be "upload"'),
    ("[[flows]]\nprotocol = 'udp'\nkind = 'probes'\ndirection = 'download'",
     "[[flows]] #1 direction: is for bulk flows"),
    ("[[flows]]\nprotocol = 'tcp'\n[traffic]\ncount = 5", "[traffic]: a scenario with [[flows]]"),
    ("[[flows]]\nprotocol = 'tcp'\n[expect.tcp]\njain_index = 'mathis'",
     "[expect.tcp] jain_index: the mathis oracle predicts goodput_bps, not jain_index"),
    ("[[flows]]\nprotocol = 'tcp'\n[expect.tcp]\ngoodput_bps = {oracle = 'mathis', within = [2, 1]}",
     "[expect.tcp] goodput_bps: within must be [LO, HI]"),
    ("[[flows]]\nprotocol = 'tcp'\n[expect.udp]\ngoodput_bps = 1", "[expect.udp]: not one of"),
    ("[traffic]\nkind = 'bulk'\ncount = 5", "[traffic] count: not a key of bulk traffic"),
    ("[traffic]\nkind = 'stream'", '[traffic] kind: must be "probes" or "bulk"'),
    ("[traffic]\nbytes = 5", "[traffic] bytes: unknown key"),
    ("flows = 3", "[[flows]]: must be an array of tables"),
    ("[[flows]]\nprotocol = 'udp'\nkind = 'probes'\n[[flows]]\nprotocol = 'udp'\nkind = 'probes'",
     "[[flows]] #2 kind: a group has at most one probes flow"),
])
def test_errors_name_the_key(text: str, message: str) -> None:
    assert message in error_of(text)


def test_a_bulk_flow_uploads_unless_it_says_download() -> None:
    (up, down) = scenario("[[flows]]\nprotocol = 'tcp'\n[[flows]]\nprotocol = 'tcp'\n"
                          "direction = 'download'").points[0].flows
    assert up.bulk is not None and up.bulk.direction == "upload"
    assert down.bulk is not None and down.bulk.direction == "download"


def test_too_many_flows() -> None:
    text = "\n".join("[[flows]]\nprotocol = 'tcp'" for _ in range(flowlib.MAX_FLOWS + 1))
    assert f"over the limit of {flowlib.MAX_FLOWS}" in error_of(text)


# --- predictions and figures (hand-computed) ----------------------------------------------------------
LINK = {"forward": {"loss": 0.01, "delay_s": 0.010, "rate_bps": RATE},
        "reverse": {"loss": 0.0, "delay_s": 0.0}, "expected_forward_loss": 0.01}


def test_mathis_prediction_uses_the_flows_srtt_and_mss() -> None:
    entry = {"protocol": "tcp-reno", "kind": "bulk", "goodput_bps": 9e6, "srtt_mean_ms": 10.0,
             "bulk": {"mss": 1448, "min_rtt_us": 9000}}
    flowlib.add_oracles(entry, LINK)
    mathis = entry["predictions"]["mathis"]
    # 1448 x 8 / 0.010 x 1.2247 / 0.1 = 14.19 Mbit/s
    assert mathis["goodput_bps"] == pytest.approx(14.187e6, rel=1e-3)
    used = (mathis["p"], mathis["rtt_s"], mathis["rtt_source"], mathis["mss"])
    assert used == (0.01, 0.010, "mean srtt", 1448)
    assert mathis["c"] == pytest.approx(math.sqrt(1.5))
    assert entry["predictions"]["link_rate"]["goodput_bps"] == RATE
    assert entry["utilisation"] == pytest.approx(0.9)
    check = evaluate(scenario("[[flows]]\nprotocol = 'tcp-reno'\n[expect.tcp-reno]\ngoodput_bps = 'mathis'")
                     .points[0].expectations["tcp-reno"][0], entry)
    assert check.passed and check.interval == pytest.approx((0.5 * 14.187e6, 1.5 * 14.187e6), rel=1e-3)
    assert "0.63 x the prediction" in check.message and "sqrt(p 0.01)" in check.expected_label
    # without TCP_INFO: min_rtt, then the link's delay; and MTU - 52 for the MSS
    bare = flowlib.predictions({"protocol": "tcp-reno", "bulk": {}}, LINK)
    assert (bare["mathis"]["rtt_source"], bare["mathis"]["mss"]) == ("link delay", 1448)
    assert "mathis" not in flowlib.predictions({"protocol": "udp", "bulk": {}}, LINK)


def test_a_download_is_predicted_from_the_reverse_direction() -> None:
    link = {"forward": {"loss": 0.01, "delay_s": 0.010, "rate_bps": RATE},
            "reverse": {"loss": 0.02, "delay_s": 0.0, "rate_bps": RATE / 2},
            "expected_forward_loss": 0.01, "expected_reverse_loss": 0.02}
    entry = flowlib.add_oracles({"protocol": "tcp-reno", "direction": "download", "goodput_bps": 2.5e6,
                                 "bulk": {"mss": 1448, "min_rtt_us": 10000}}, link)
    assert entry["predictions"]["link_rate"]["rate_bps"] == RATE / 2
    assert entry["predictions"]["mathis"]["p"] == 0.02
    assert entry["utilisation"] == pytest.approx(0.5)


def test_arq_textbook_prediction() -> None:
    entry = {"protocol": "arq-gbn", "bulk": {"plan": {"window": 4, "size": 936}}}
    textbook = flowlib.predictions(entry, LINK)["textbook"]
    # frame 936 + 64 = 1000 bytes: 0.8 ms at 10 Mbit/s; a = 5 ms / 0.8 ms = 6.25; 4 / 13.5 x 0.99,
    # of which the payload, 936 of 1000 bytes
    assert textbook["a"] == pytest.approx(6.25)
    assert textbook["link_busy"] == pytest.approx(4 / 13.5 * 0.99)
    assert textbook["utilisation"] == pytest.approx(4 / 13.5 * 0.99 * 0.936)
    assert textbook["goodput_bps"] == pytest.approx(4 / 13.5 * 0.99 * 0.936 * RATE)


def test_an_oracle_without_a_prediction_fails_saying_why() -> None:
    expectation = scenario("[[flows]]\nprotocol = 'tcp'\n[expect.tcp]\ngoodput_bps = 'mathis'") \
        .points[0].expectations["tcp"][0]
    check = evaluate(expectation, {"goodput_bps": 5e6, "predictions": {}})
    assert not check.passed and "predicts nothing" in check.message


def test_group_figures() -> None:
    flows = [{"kind": "bulk", "goodput_bps": g} for g in (1, 2, 3, 4)]
    group = flowlib.group_figures(flows, {"rtt_us": {"p50": 10000}}, [0.1] * 19 + [1.0], [0.01] * 10)
    assert group["jain_index"] == pytest.approx(100 / 120)
    assert group["rpm_loaded"] == pytest.approx(600.0)  # the slowest 5 % (1 of 20) trimmed
    assert group["rpm_idle"] == pytest.approx(6000.0)
    assert group["rtt_us"]["p50"] == pytest.approx(100000.0)
    assert group["load_direction"] == "upload" and group["rpm_loaded_upload"] == group["rpm_loaded"]
    assert "rpm_loaded_download" not in group


def test_group_figures_say_which_way_the_load_went() -> None:
    down = [{"kind": "bulk", "goodput_bps": 1.0, "direction": "download"}]
    group = flowlib.group_figures(down, None, [0.1] * 20, [])
    assert group["load_direction"] == "download"
    assert group["rpm_loaded_download"] == pytest.approx(600.0) and "rpm_loaded_upload" not in group
    both = flowlib.group_figures(down + [{"kind": "bulk", "goodput_bps": 1.0}], None, [0.1] * 20, [])
    assert both["load_direction"] == "both" and both["rpm_loaded"] == pytest.approx(600.0)
    assert "rpm_loaded_upload" not in both and "rpm_loaded_download" not in both


def test_the_report_names_the_loads_direction() -> None:
    from lab.report import flows as report

    entry = _bulk("dl", "tcp-cubic", 2e6, direction="download")
    probes = {"name": "ping", "protocol": "udp", "kind": "probes", "start_s": 1.0}
    point = {"id": "limit=10", "flows": [entry, probes],
             "group": flowlib.group_figures([entry, probes], None, [0.1] * 20, [])}
    assert "RPM under download load 600" in report.group_line(point)
    headers, rows = report.flow_table(point)
    assert "direction" in headers and rows[0][headers.index("direction")] == "download"
    upload = dict(point, flows=[_bulk("ul", "tcp-cubic", 2e6), probes])
    assert "direction" not in report.flow_table(upload)[0]  # every flow uploads: the default, not shown


# --- the report of a made-up result ---------------------------------------------------------------------
def _bulk(name: str, proto: str, goodput: float, **extra: Any) -> dict[str, Any]:
    intervals = [[0.1 * (i + 1), goodput * 0.1 / 8] for i in range(30)]
    trace = [[0.1 * (i + 1), 10 + i, 12000, 0, goodput] for i in range(30)]
    entry = {"name": name, "protocol": proto, "kind": "bulk", "start_s": 0.0, "goodput_bps": goodput,
             "bulk": {"protocol": proto, "goodput_bps": goodput, "interval_s": 0.1, "intervals": intervals,
                      "tcp_trace": trace if proto.startswith("tcp") else [], "mss": 1448, "plan": {}},
             "srtt_mean_ms": 12.0, **extra}
    return flowlib.add_oracles(entry, LINK)


def payload() -> dict[str, Any]:
    from lab.report import FORMAT

    def point(point_id: str, flows: list[dict[str, Any]], group: dict[str, Any] | None) -> dict[str, Any]:
        return {"id": point_id, "link": {"rate": "10mbit"}, "traffic": {}, "mode": "link",
                "interrupted": False, "results": [], "skipped": {}, "checks": {}, "flows": flows,
                "group": group}

    cubic = [_bulk(f"c{i}", "tcp-cubic", 2.4e6 + 1e5 * i) for i in range(4)]
    probes = {"name": "ping", "protocol": "udp", "kind": "probes", "start_s": 1.0, "sent": 3,
              "rtt_us": {"p50": 120000},
              "timeline": [[0, 0.0, 110.0, 0], [1, 50.0, 120.0, 0], [2, 100.0, None, 0]]}
    idle = {"rtt_us": {"p50": 11000}}
    loaded = flowlib.group_figures(cubic[:1] + [probes], idle, [0.11, 0.12], [0.011] * 5)
    return {"format": FORMAT, "scenario": {"name": "made-up", "protocols": ["tcp-cubic", "udp"]}, "points": [
        point("group=four", cubic, flowlib.group_figures(cubic, None, [], [])),
        point("limit=100", [cubic[0], probes], loaded),
    ]}


def test_report_tells_the_story_and_draws_the_flows(tmp_path: Any) -> None:
    from lab.report import load_result, render_files, to_json
    from lab.report.figures import figures_for
    from lab.report.summary import what_happened

    data = payload()
    (tmp_path / "result.json").write_text(to_json(data))
    loaded = load_result(tmp_path)  # the schema takes flows and group
    assert figures_for(loaded) == ["flow_goodput", "flow_cwnd", "flow_fairness", "flow_latency"]
    story = what_happened(loaded)
    assert story[0][0] == "in short"
    assert "4 TCP-CUBIC flows shared 10.00 Mbit/s: Jain's index 0.99" in story[0][1]
    assert "Probes under the upload load: RTT p50 110.0 ms" in story[2][1] and "idle" in story[2][1]
    assert story[2][1] not in story[0][1]  # "in short" says what the points' own paragraphs do not
    paths = render_files(tmp_path, loaded)
    html = paths["html"].read_text()
    for section in ("flow-goodput", "flow-fairness", "flow-cwnd", "flow-latency"):
        assert f'id="{section}"' in html
    assert 'id="latency"' not in html  # no probe runs: their sections stay out
    markdown = paths["markdown"].read_text()
    assert "| c0 | TCP-CUBIC | 0 s | 2.40 Mbit/s | " in markdown
    assert "Mathis: 1448 B x 8 / 12.0 ms (mean srtt) x C 1.225 / sqrt(p 0.01)" in markdown


def test_old_results_without_flows_still_read(tmp_path: Any) -> None:
    from lab.report import load_result, to_json

    data = payload()
    for point in data["points"]:
        del point["flows"], point["group"]
    (tmp_path / "result.json").write_text(to_json(data))
    assert load_result(tmp_path)["points"][0]["id"] == "group=four"


def test_schema_refuses_a_bad_flow(tmp_path: Any) -> None:
    from lab.errors import LabError
    from lab.report import load_result, to_json

    data = payload()
    broken = copy.deepcopy(data)
    broken["points"][0]["flows"][0]["goodput_bps"] = -1
    (tmp_path / "result.json").write_text(to_json(broken))
    with pytest.raises(LabError, match=r"points\[0\].flows\[0\].goodput_bps"):
        load_result(tmp_path)


# --- over the real link ----------------------------------------------------------------------------
def _run(text: str) -> Any:
    from lab.runner import run_point

    plan = scenario(text)
    outcomes = []
    for point in plan.points:
        outcome = run_point(plan, point)
        outcome.evaluate()
        outcomes.append(outcome)
    return outcomes


@pytest.mark.privileged
def test_four_cubic_flows_share_a_10mbit_link_fairly() -> None:
    # A 100-packet queue: with the default 1000 (1.2 s) a 3-4 s run is still slow start, where a flow
    # that left 20 ms first kept twice the others' share (Jain 0.86-0.88 in 2 of 6 runs); here the
    # first losses come early and the flows converge (Jain 0.926-0.999 in 14 runs at load 7-9 on 2 cores).
    flows = "\n".join("[[flows]]\nprotocol = 'tcp-cubic'\nduration = 4" for _ in range(4))
    (outcome,) = _run(f"[link]\nrate = '10mbit'\ndelay = '5ms'\nlimit = 100\n{flows}\n"
                      "[expect.each]\ngoodput_bps = 'link_rate'\n[expect.all]\njain_index = { min = 0.9 }")
    goodputs = [f["goodput_bps"] for f in outcome.flows]
    assert len(goodputs) == 4 and all(0 < g <= RATE for g in goodputs), goodputs
    assert outcome.group["jain_index"] >= 0.9, goodputs
    assert all(c.passed for checks in outcome.checks.values() for c in checks), outcome.checks


@pytest.mark.privileged
def test_reno_at_one_percent_loss_follows_mathis() -> None:
    (outcome,) = _run("[scenario]\nprotocols = ['tcp-reno']\n[traffic]\nkind = 'bulk'\nduration = 5\n"
                      "[link]\nloss = '1%'\ndelay = '10ms'\ndirection = 'forward'\n"
                      "[expect.tcp-reno]\ngoodput_bps = { oracle = 'mathis', within = [0.5, 1.5] }")
    (check,) = outcome.checks["tcp-reno"]
    assert check.passed, check.message


@pytest.mark.privileged
def test_latency_under_load_grows_with_the_queue_limit() -> None:
    outcomes = _run("[link]\nrate = '10mbit'\ndelay = '5ms'\n[sweep]\nlimit = [10, 1000]\n"
                    "[[flows]]\nprotocol = 'tcp-cubic'\nduration = 2.5\n"
                    "[[flows]]\nprotocol = 'udp'\nkind = 'probes'\nstart = 1.0\nduration = 1.2\nrate = 25\n"
                    "size = 64\ntimeout = 3.0")
    short, long = (o.group for o in outcomes)
    assert long["rtt_us"]["p50"] > 3 * short["rtt_us"]["p50"], (short["rtt_us"], long["rtt_us"])
    assert long["rpm_loaded"] < short["rpm_loaded"] < short["rpm_idle"] * 1.2


@pytest.mark.privileged
@pytest.mark.slow
def test_ctrl_c_keeps_every_flow_of_a_group(tmp_path: Any) -> None:
    import json
    import signal
    import subprocess
    import sys
    import time

    plan = tmp_path / "two.toml"
    plan.write_text("[link]\nrate = '10mbit'\n" + "[[flows]]\nprotocol = 'tcp-cubic'\nduration = 30\n" * 2)
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "lab", "run", str(plan), "--out", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(8)  # the link, the sinks, then a few seconds of both flows
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=60) == 130, run.stderr.read() if run.stderr else ""
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    data = json.loads((out / "result.json").read_text())
    assert data["interrupted"] and data["interrupted_by"] == "Ctrl-C"
    (point,) = data["points"]
    assert [f["name"] for f in point["flows"]] == ["tcp-cubic", "tcp-cubic-2"]
    assert all(f["bulk"]["stopped"] == "interrupted" and f["goodput_bps"] > 0 for f in point["flows"])
    assert point["checks"] == {}  # cut short: shown, not judged


def test_without_the_link_a_bulk_point_runs_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unprivileged and unimpaired: each protocol alone on loopback (no link rate, so no ceiling to
    check); an impaired point and a flow group are skipped with the reason."""
    import lab.runner
    from lab.runner import run_point

    monkeypatch.setattr(lab.runner, "has_link_privileges", lambda: False)
    bulk = "[scenario]\nprotocols = ['tcp']\n[traffic]\nkind = 'bulk'\nduration = 0.5\n"
    plan = scenario(bulk + "[expect.tcp]\ngoodput_bps = { min = 1e6 }")
    clean = run_point(plan, plan.points[0])
    impaired = scenario(bulk + "[link]\nloss = '1%'")
    lossy = run_point(impaired, impaired.points[0])
    clean.evaluate()
    assert clean.mode == "loopback" and clean.flows[0]["predictions"] == {}
    assert all(c.passed for c in clean.checks["tcp"]), clean.checks
    assert lossy.mode == "skipped" and "bulk flows need the real link" in lossy.skipped["tcp"]
    group = scenario("[[flows]]\nprotocol = 'tcp'\nduration = 1")
    outcome = run_point(group, group.points[0])
    assert outcome.mode == "skipped" and "over the real link only" in outcome.skipped["tcp"]


def test_durations_stay_within_the_run_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WIRELAB_MAX_RUN_SECONDS", "5")
    flow = "[[flows]]\nprotocol = 'tcp'\nduration = 8"
    assert "must end within 5 s (the run limit), got 8" in error_of(flow)
    assert "[traffic] duration: must be within the run limit of 5 s" in error_of(
        "[traffic]\nkind = 'bulk'\nduration = 8")
