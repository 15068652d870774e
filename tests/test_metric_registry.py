"""Issue 9, item 4: one metric registry (expectations, the summary table, Markdown and HTML read it),
`ConfigError.key`, and reports that take a protocol's label, colour and reliability from the registry,
never from its name. Pure: a fake protocol is registered, nothing is sent."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from lab import protocols, scenario
from lab.errors import ConfigError, ScenarioError
from lab.link.models import LinkConfig
from lab.link.params import parse_percent
from lab.metric_registry import Metric, expectation_metrics, metrics, table_rows, value_of
from lab.records import TrafficPlan, observations_of
from lab.report import write_report
from lab.report.appearance import PROTOCOL_PALETTE, appearance, colour
from lab.report.summary import side_by_side, what_happened, why_text
from lab.scenario import Expectation, evaluate, parse_scenario

DATA = Path(__file__).resolve().parent / "data"


def parse(text: str):
    return parse_scenario(text, source="x.toml", default_name="x")


def error_of(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        parse(text)
    return info.value


def sample() -> dict:
    return json.loads((DATA / "sample-run" / "result.json").read_text(encoding="utf-8"))


def relabelled(payload: dict, old: str, new: str) -> dict:
    """The payload with protocol `old`'s runs, checks and place in the scenario under the name `new`."""
    payload = copy.deepcopy(payload)
    for point in payload["points"]:
        for result in point["results"]:
            if result["protocol"] == old:
                result["protocol"] = new
        point["checks"] = {new if k == old else k: v for k, v in point["checks"].items()}
    payload["scenario"]["protocols"] = [new if p == old else p for p in payload["scenario"]["protocols"]]
    return payload


ACKS = Metric(name="acks_sent", unit="acks", read=lambda r: observations_of(r, "arq").get("acks_sent"),
              doc="ACKs the sender sent", label="ACKs sent")


class Arq(protocols.Protocol):
    """A stand-in for a third protocol: only what the registry and the report read."""

    name = "arq"
    transport = "udp"
    label = "ARQ"
    reliable = True
    style = "bold green"
    metrics = (ACKS,)


@pytest.fixture
def arq():
    protocol = protocols.register(Arq())
    try:
        yield protocol
    finally:
        protocols.unregister("arq")


# --- the registry --------------------------------------------------------------------------------------
def test_expectations_accept_exactly_the_registrys_expectable_metrics():
    assert list(scenario.METRICS) == list(expectation_metrics())  # computed when read
    names = {m.name for m in metrics()}
    assert len(names) == len(metrics())  # unique
    for name, metric in expectation_metrics().items():
        point = parse(f"[expect.udp]\n{name} = {{ min = 0 }}\n").points[0]
        assert [e.metric for e in point.expectations["udp"]] == [name]
        assert metric.doc and "\n" not in metric.doc
    for metric in metrics():
        if not metric.expectable:
            error = error_of(f"[expect.udp]\n{metric.name} = 1\n")
            assert "unknown metric" in str(error) and error.key == f"expect.udp.{metric.name}"


def test_the_vocabulary_users_see_is_kept():
    assert list(expectation_metrics())[:4] == ["loss_ratio", "delivered_ratio", "received", "lost"]
    assert {"rtt_p50_ms", "jitter_ms", "goodput_bps", "retransmits", "hol_blocked"} <= set(scenario.METRICS)
    labels = [m.label for m in table_rows()]
    assert labels[:17] == ["sent", "received", "loss", "loss forward", "loss reverse", "RTT p50", "RTT p99",
                           "timestamps", "one-way forward p50", "one-way reverse p50", "jitter", "reordered",
                           "duplicates", "head-of-line blocked", "goodput", "retransmits",  # then other
                           "congestion control"]  # protocols'
    assert {"owd_forward_p50_ms", "owd_reverse_p50_ms", "loss_forward_ratio", "loss_reverse_ratio",
            "rtt_user_p50_ms", "server_turnaround_p50_ms"} <= set(scenario.METRICS)


def test_the_table_rows_come_from_the_registry():
    point = sample()["points"][1]
    rows = side_by_side(point, ["tcp", "udp"])
    shown = [m for m in table_rows() if m.shown is None or m.shown(point)]
    expected = [f"{m.label} ms" if m.timed else m.label for m in shown]
    assert [header for header, _cells in rows] == expected
    udp = point["results"][1]
    loss = dict(rows)["loss"]
    assert loss[1] == f"{100 * udp['loss_ratio']:.1f}%"


def test_a_value_is_read_once_for_expectations_and_tables():
    result = {"sent": 10, "received": 8, "rtt_us": {"p50": 41_500.0}, "jitter_us": 250.0}
    assert value_of(result, "delivered_ratio") == 0.8
    assert value_of(result, "rtt_p50_ms") == 41.5 and value_of(result, "jitter_ms") == 0.25
    assert value_of(result, "retransmits") is None and value_of(result, "no_such_metric") is None
    check = evaluate(Expectation(metric="rtt_p50_ms", kind="equal", value=41.5), result)
    assert check.passed and check.measured == 41.5


def test_a_protocols_metric_shows_up_in_expectations_and_the_table(arq):
    assert "acks_sent" in expectation_metrics() and "acks_sent" in scenario.METRICS
    assert table_rows()[-1] is ACKS  # after the lab's own rows
    point = parse("[scenario]\nprotocols = [\"udp\"]\n[expect.udp]\nacks_sent = { min = 5 }\n").points[0]
    (expectation,) = point.expectations["udp"]
    assert evaluate(expectation, {"protocol": "udp", "observations": {"arq": {"acks_sent": 7}}}).passed
    assert not evaluate(expectation, {"protocol": "udp"}).passed  # not measured
    table = sample()["points"][0]
    table["results"][1]["observations"] = {"arq": {"acks_sent": 12}}
    rows = dict(side_by_side(table, ["tcp", "udp"]))
    assert rows["ACKs sent"] == ["-", "12"]


def test_the_protocols_metric_leaves_with_the_protocol(arq):
    protocols.unregister("arq")
    assert "acks_sent" not in expectation_metrics()
    assert "unknown metric" in str(error_of("[expect.udp]\nacks_sent = 1\n"))
    protocols.register(arq)  # the fixture unregisters it again


# --- ConfigError.key ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "key"), [
    ("[traffic]\ncount = 0\n", "traffic.count"),
    ("[traffic]\nsize = 'x'\n", "traffic.size"),
    ("[traffic]\nbogus = 1\n", "traffic.bogus"),
    ("[link]\nloss = 'lots'\n", "link.loss"),
    ("[link]\ndirection = 'up'\n", "link.direction"),
    ("[sweep]\nloss = ['1%', 'x']\n", "link.loss"),
    ("[sweep]\nrate = [1]\n", "sweep.rate"),
    ("[sweep]\nlink.bogus = [1]\n", "sweep.link.bogus"),
    ("[scenario]\nprotocols = ['sctp']\n", "scenario.protocols"),
    ("[expect.udp]\nlatency = 1\n", "expect.udp.latency"),
    ("[sweep]\nloss = ['1%']\n[expect.'loss=1%'.udp]\nlatency = 1\n", 'expect."loss=1%".udp.latency'),
    ("[bogus]\n", "bogus"),
])
def test_a_scenario_error_names_its_key(text, key):
    assert error_of(text).key == key


def test_config_errors_of_the_api_name_their_option():
    with pytest.raises(ConfigError) as info:
        TrafficPlan(count=0)
    assert info.value.key == "count"
    with pytest.raises(ConfigError) as info:
        TrafficPlan(timeout=-1)
    assert info.value.key == "timeout"
    for options, key in (({"loss": "lots"}, "loss"), ({"delay": "soon"}, "delay"), ({"limit": 0}, "limit"),
                         ({"loss": "gemodel x"}, "loss"), ({"reorder": "5%"}, "reorder"),
                         ({"bogus": 1}, "bogus")):
        with pytest.raises(ConfigError) as info:
            LinkConfig.from_options(options)
        assert info.value.key == key, options
    with pytest.raises(ConfigError) as info:
        LinkConfig.from_options({}, direction="up")
    assert info.value.key == "direction"
    with pytest.raises(ConfigError) as info:
        parse_percent("2x", key="loss gemodel p")
    assert info.value.key == "loss"
    assert ConfigError("not about one key").key is None


def test_seed_override_error_names_the_seed():
    with pytest.raises(ScenarioError) as info:
        parse("").with_seed(-1)
    assert info.value.key == "seed"


# --- how a protocol is shown --------------------------------------------------------------------------
def test_a_protocol_this_install_does_not_know_gets_a_label_and_the_next_colour():
    known = list(protocols.registry())
    look = appearance("dccp")
    assert (look.label, look.reliable, look.known) == ("DCCP", None, False)
    assert colour(known[0]) == PROTOCOL_PALETTE[0] and colour(known[1]) == PROTOCOL_PALETTE[1]
    palette = len(PROTOCOL_PALETTE)  # more protocols than colours: they go round again
    assert colour("dccp", ["tcp", "sctp", "dccp"]) == PROTOCOL_PALETTE[(len(known) + 1) % palette]
    assert colour("sctp", ["tcp", "sctp", "dccp"]) == PROTOCOL_PALETTE[len(known) % palette]


def test_registered_attributes_decide_label_style_and_the_why(arq):
    look = appearance("arq")
    assert (look.label, look.reliable, look.style) == ("ARQ", True, "bold green")
    payload = relabelled(sample(), "tcp", "arq")  # the TCP runs as a protocol that retransmits
    why = why_text(payload)
    assert why.startswith("Why they differ: UDP hands each probe") and "ARQ pays for reliability" in why
    assert "ARQ delivered all" in " ".join(text for _point, text in what_happened(payload))


def test_report_of_a_protocol_this_install_does_not_know(tmp_path):
    renamed = relabelled(sample(), "tcp", "dccp")
    assert why_text(renamed) == ""  # whether DCCP retransmits is not known here: nothing is claimed
    paths = write_report(tmp_path / "out", renamed)
    md = paths["markdown"].read_text(encoding="utf-8")
    html = paths["html"].read_text(encoding="utf-8")
    assert "|  | DCCP | UDP |" in md and "DCCP delivered all" in md
    assert f'<th style="color: {colour("dccp", ["dccp", "udp"])}">DCCP</th>' in html
    assert f'<th style="color: {PROTOCOL_PALETTE[list(protocols.registry()).index("udp")]}">UDP</th>' in html
