"""Issue 13, item 3: asymmetric links, each direction its own impairment.

netem's words (`--forward 'delay 10ms loss 5%'`) become the same option mapping the keys are; a
scenario's [link.forward]/[link.reverse] tables and sweeps over their keys; `direction` beside them;
the per-direction expected loss; the report's and `lab link`'s description; the loopback relay and
the real link (RTT = forward delay + reverse delay) with per-direction configs.
"""

from __future__ import annotations

import json
import shutil
import statistics
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab.errors import ConfigError, ScenarioError
from lab.link.models import NULL, OPTION_KEYS, LinkConfig
from lab.link.params import NETEM_WORDS, format_netem, parse_netem
from lab.scenario import load_scenario, loss_interval, parse_scenario

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
HOL_SAMPLE = Path(__file__).resolve().parent / "data" / "sample-hol"  # a real run, with link_config


def parse(text: str):
    return parse_scenario(text, source="x.toml", default_name="x")


# --- netem's words --------------------------------------------------------------------------------
@pytest.mark.parametrize(("words", "options"), [
    ("delay 10ms", {"delay": "10ms"}),
    ("delay 10ms 2ms", {"delay": "10ms", "jitter": "2ms"}),
    ("delay 10ms 2ms 25% distribution normal",
     {"delay": "10ms", "jitter": "2ms", "delay_correlation": "25%", "distribution": "normal"}),
    ("loss 5%", {"loss": "5%"}),
    ("loss random 5%", {"loss": "5%"}),
    ("loss gemodel 1% 30%", {"loss": "gemodel 1% 30%"}),
    ("loss gemodel 1% 30% 80% 0.5%", {"loss": "gemodel 1% 30% 80% 0.5%"}),
    ("rate 10mbit limit 100", {"rate": "10mbit", "limit": "100"}),
    ("duplicate 1% corrupt 0.1% delay 5ms reorder 10%",
     {"duplicate": "1%", "corrupt": "0.1%", "delay": "5ms", "reorder": "10%"}),
    ("  LOSS 5%   limit-bytes 8mb jitter 1ms ", {"loss": "5%", "limit_bytes": "8mb", "jitter": "1ms"}),
    ("", {}),
])
def test_netem_words_become_the_option_keys(words: str, options: dict[str, str]) -> None:
    assert parse_netem(words, key="forward") == options
    assert LinkConfig.from_options(parse_netem(words)) == LinkConfig.from_options(options)
    assert parse_netem(format_netem(options)) == options  # and back


VALUES = {  # a few valid values per key, for the round-trip property below
    "loss": ["0%", "5%", "gemodel 1% 30%", "gemodel 1% 30% 80% 0.5%"], "delay": ["10ms", "1.5s", "500us"],
    "jitter": ["2ms"], "distribution": ["uniform", "normal"], "delay_correlation": ["25%"],
    "reorder": ["10%"], "duplicate": ["1%"], "corrupt": ["0.1%"], "rate": ["10mbit", "1.5gbit"],
    "limit": ["100"], "limit_bytes": ["8mb"],
}


@given(st.dictionaries(st.sampled_from(OPTION_KEYS), st.integers(0, 3), max_size=len(OPTION_KEYS)))
def test_any_options_round_trip_through_netem_words(choice: dict[str, int]) -> None:
    """Property: format_netem -> parse_netem gives back any option mapping, whatever its order."""
    options = {key: VALUES[key][index % len(VALUES[key])] for key, index in choice.items()}
    assert parse_netem(format_netem(options), key="forward") == options


def test_every_option_key_has_a_netem_word() -> None:
    assert {key for fills in NETEM_WORDS.values() for key in fills} == set(OPTION_KEYS)


@pytest.mark.parametrize(("words", "message", "key"), [
    ("los 5%", "unknown word 'los'; netem's words here: delay,", "forward"),
    ("5%", "a value without its word '5%'", "forward"),
    ("loss", "loss needs a value, e.g. 'loss 5%'", "forward.loss"),
    ("delay", "delay needs a value, e.g. 'delay 10ms'", "forward.delay"),
    ("delay 10ms loss", "loss needs a value", "forward.loss"),
    ("delay 1ms delay 2ms", "delay is given twice", "forward.delay"),
    ("delay 10ms 2ms jitter 3ms", "jitter is given twice", "forward.jitter"),
    ("loss 5% 25%", "loss correlation is not modelled", "forward.loss"),
    ("duplicate 1% 25%", "duplicate takes one percentage: its correlation is not modelled",
     "forward.duplicate"),
    ("limit 10 20", "limit takes one value", "forward.limit"),
    ("rate 1mbit 20", "packet overhead and cell sizes are not modelled", "forward.rate"),
    ("delay 10ms 1ms 25% 3", "delay takes at most TIME JITTER CORRELATION", "forward.delay"),
    ("loss gemodel", "loss gemodel takes 1 to 4 percentages", "forward.loss"),
    ("loss gemodel 1% 2% 3% 4% 5%", "loss gemodel takes 1 to 4 percentages", "forward.loss"),
    ("loss state 1%", "'loss state' is not supported", "forward.loss"),
    ("ecn", "'ecn' is not supported", "forward"),
    ("delay 10ms reorder 5% gap 5", "'gap' is not supported", "forward"),
])
def test_netem_word_errors_say_what_is_wrong(words: str, message: str, key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_netem(words, key="forward")
    assert str(refused.value).startswith(f"forward {' '.join(words.split())!r}: ")
    assert message in str(refused.value) and refused.value.key == key


def test_a_bad_value_in_words_is_judged_with_the_options() -> None:
    """parse_netem keeps values as given: the option parser judges them, with the direction named."""
    with pytest.raises(ConfigError, match="^forward: loss must be between 0% and 100%, got 150%$") as bad:
        LinkConfig.from_options({}, forward=parse_netem("loss 150%"))
    assert bad.value.key == "forward.loss"
    with pytest.raises(ConfigError, match="^reverse: distribution must be one of uniform, normal"):
        LinkConfig.from_options({}, reverse=parse_netem("delay 1ms 1ms distribution pareto"))


# --- LinkConfig per direction ---------------------------------------------------------------------
def test_expected_loss_per_direction_and_round_trip() -> None:
    config = LinkConfig.from_options({"delay": "5ms"}, forward={"loss": "20%"},
                                     reverse={"loss": "gemodel 1% 30% 100% 0%"})
    assert config.expected_forward_loss_ratio() == pytest.approx(0.2)
    assert config.expected_reverse_loss_ratio() == pytest.approx(0.01 / 0.31)  # GE stationary rate
    assert config.expected_loss_ratio() == pytest.approx(1 - 0.8 * (1 - 0.01 / 0.31))
    one_way = LinkConfig.from_options({"loss": "5%"}, direction="forward")
    assert (one_way.expected_forward_loss_ratio(), one_way.expected_reverse_loss_ratio()) == (0.05, 0.0)


def test_symmetric_and_to_dict_records_both_directions() -> None:
    assert LinkConfig.from_options({"loss": "5%"}).symmetric
    assert LinkConfig.from_options({}, forward={"delay": "1ms"}, reverse={"delay": "1ms"}).symmetric
    config = LinkConfig.from_options({"loss": "1%"}, forward={"delay": "10ms"}, reverse={"delay": "2ms"})
    assert not config.symmetric
    assert config.to_dict() == {"forward": {"loss": "1%", "delay": "10ms"},
                                "reverse": {"loss": "1%", "delay": "2ms"}, "seed": 1, "direction": "both"}


def test_direction_beside_per_direction_impairments() -> None:
    """`direction` says where the shared keys apply; a direction's own impairments where it says
    nothing applies are refused; in the direction it names they are simply on top."""
    config = LinkConfig.from_options({"loss": "5%"}, direction="forward", forward={"delay": "10ms"})
    assert (config.forward.loss, config.forward.delay_s, config.reverse) == (0.05, 0.01, NULL)
    with pytest.raises(ConfigError, match="direction forward leaves server->client unimpaired") as refused:
        LinkConfig.from_options({"loss": "5%"}, direction="forward", reverse={"delay": "2ms"})
    assert refused.value.key == "direction"
    with pytest.raises(ConfigError, match="direction reverse leaves client->server unimpaired"):
        LinkConfig.from_options({}, direction="reverse", forward={"delay": "2ms"})
    assert LinkConfig.from_options({}, direction="reverse", forward={}).forward == NULL  # nothing given
    with pytest.raises(ConfigError, match="direction forward leaves"):  # a running link, changed
        config.with_options({}, reverse={"delay": "1ms"})
    changed = config.with_options({}, direction="both", reverse={"delay": "1ms"})
    assert (changed.forward, changed.reverse.delay_s) == (config.forward, 0.001)


def test_reorder_without_a_delay_that_way_names_the_direction() -> None:
    with pytest.raises(ConfigError, match="^forward: reorder needs a delay") as refused:
        LinkConfig.from_options({}, forward={"reorder": "5%"}, reverse={"delay": "5ms"})
    assert refused.value.key == "forward.reorder"
    assert LinkConfig.from_options({"delay": "5ms"}, forward={"reorder": "5%"}).forward.reorder == 0.05


# --- scenario files -------------------------------------------------------------------------------
ASYMMETRIC = '[link]\nloss = "1%"\n[link.forward]\ndelay = "10ms"\n[link.reverse]\ndelay = "2ms"\n'


def test_per_direction_tables_override_link_for_their_direction() -> None:
    point = parse(ASYMMETRIC).points[0]
    assert point.link_config == LinkConfig.from_options(
        {"loss": "1%"}, forward={"delay": "10ms"}, reverse={"delay": "2ms"})
    assert point.link_options() == {"loss": "1%"} and point.direction_options("forward") == {"delay": "10ms"}
    assert point.impaired and not parse("[link.forward]\n").points[0].impaired
    over = parse('[link]\ndelay = "5ms"\n[link.forward]\ndelay = "10ms"\n').points[0].link_config
    assert (over.forward.delay_s, over.reverse.delay_s) == (0.01, 0.005)


def test_sweeps_name_a_directions_key() -> None:
    plan = parse(ASYMMETRIC + '[sweep]\nlink.forward.loss = ["0%", "20%"]\n'
                 'link.reverse.delay = ["2ms", "4ms"]\n')
    assert [p.id for p in plan.points] == [
        "link.forward.loss=0%,link.reverse.delay=2ms", "link.forward.loss=0%,link.reverse.delay=4ms",
        "link.forward.loss=20%,link.reverse.delay=2ms", "link.forward.loss=20%,link.reverse.delay=4ms"]
    configs = [p.link_config for p in plan.points]
    assert [(c.forward.loss, c.forward.delay_s, c.reverse.loss, c.reverse.delay_s) for c in configs] == [
        (0.0, 0.01, 0.01, 0.002), (0.0, 0.01, 0.01, 0.004),
        (0.2, 0.01, 0.01, 0.002), (0.2, 0.01, 0.01, 0.004)]
    assert [p.link["forward"] for p in plan.points][1:3] == [
        {"delay": "10ms", "loss": "0%"}, {"delay": "10ms", "loss": "20%"}]  # each point its own table
    assert plan.sweep_keys == ("link.forward.loss", "link.reverse.delay")
    point_expect = parse(ASYMMETRIC + '[sweep]\nlink.forward.loss = ["0%", "20%"]\n'
                         '[expect."link.forward.loss=0%".udp]\nloss_ratio = 0\n')
    assert [bool(p.expectations) for p in point_expect.points] == [True, False]


@pytest.mark.parametrize(("text", "message", "key"), [
    ('[link.forward]\nloss = "150%"\n', "x.toml: [link.forward] loss: must be between 0% and 100%, got 150%",
     "link.forward.loss"),
    ('[link.reverse]\ncolour = "blue"\n', "x.toml: [link.reverse] colour: unknown key; allowed: loss, delay,",
     "link.reverse.colour"),
    ('[link.forward]\ndirection = "forward"\n',
     "x.toml: [link.forward] direction: a table is one direction already; `direction` belongs in [link]",
     "link.forward.direction"),
    ('[link]\nforward = "delay 10ms"\n', "x.toml: [link] forward: must be a table ([link.forward])",
     "link.forward"),
    ('[link]\ndirection = "forward"\nloss = "5%"\n[link.reverse]\ndelay = "2ms"\n',
     "x.toml: [link] direction: forward leaves server->client unimpaired, yet reverse impairments were given",
     "link.direction"),
    ('[link.reverse]\nreorder = "5%"\n', "x.toml: [link.reverse]: reorder needs a delay",
     "link.reverse.reorder"),
    ('[sweep]\nlink.forward.colour = ["1"]\n',
     "x.toml: [sweep] link.forward.colour: unknown key of [link.forward]", "sweep.link.forward.colour"),
    ('[sweep]\nforward.loss = ["1%"]\n', "one direction's key as link.forward.KEY or link.reverse.KEY",
     "sweep.forward"),
    ('[link.forward]\nloss = "1%"\n[sweep]\nlink.forward.delay = ["1ms", "5 parsecs"]\n',
     "x.toml: [sweep] point link.forward.delay=5 parsecs: [link.forward] delay: must be a duration",
     "link.forward.delay"),
])
def test_scenario_errors_name_the_directions_key(text: str, message: str, key: str) -> None:
    with pytest.raises(ScenarioError) as refused:
        parse(text)
    assert message in str(refused.value) and refused.value.key == key


def test_the_shipped_asymmetric_scenario() -> None:
    plan = load_scenario(SCENARIOS / "asymmetric.toml")
    assert plan.privileged and not plan.slow
    assert [p.id for p in plan.points] == ["link.forward.loss=0%", "link.forward.loss=20%"]
    delays = [(p.link_config.forward.delay_s, p.link_config.reverse.delay_s) for p in plan.points]
    assert delays == [(0.01, 0.002)] * 2
    assert [p.link_config.expected_forward_loss_ratio() for p in plan.points] == [0.0, 0.2]
    assert [p.link_config.expected_reverse_loss_ratio() for p in plan.points] == [0.0, 0.0]
    # loss_forward_ratio's range is the 99 % binomial interval around the link's own prediction
    lossy = plan.points[1]
    forward = next(e for e in lossy.expectations["udp"] if e.metric == "loss_forward_ratio")
    interval = loss_interval(lossy.link_config.expected_forward_loss_ratio(), lossy.traffic.count)
    assert (forward.min, forward.max) == pytest.approx(interval)
    assert {e.metric for e in lossy.expectations["udp"]} >= {
        "loss_reverse_ratio", "owd_forward_p50_ms", "owd_reverse_p50_ms"}


def test_lab_demo_takes_forward_and_reverse() -> None:
    from lab.runner import demo_scenario

    plan = demo_scenario({"loss": "30%", "reverse": parse_netem("loss 0% delay 2ms")})
    config = plan.points[0].link_config
    assert (config.forward.loss, config.forward.delay_s, config.reverse.loss, config.reverse.delay_s) == (
        0.3, 0.02, 0.0, 0.002)
    assert plan.description.endswith("Steered with --loss 30%, --reverse 'loss 0% delay 2ms'.")


# --- the command line -----------------------------------------------------------------------------
def test_lab_link_builds_the_asymmetric_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import lab.link.session as session
    from lab.cli import main

    built: list[LinkConfig] = []
    monkeypatch.setattr(session, "link_command", lambda name, config, *rest: built.append(config) or 0)
    main(["link", "--loss", "1%", "--forward", "delay 10ms loss 5%", "--reverse", "delay 2ms", "--seed", "3"])
    assert built == [LinkConfig.from_options({"loss": "1%"}, forward={"delay": "10ms", "loss": "5%"},
                                             reverse={"delay": "2ms"}, seed=3)]


@pytest.mark.parametrize(("argv", "message"), [
    (["--forward", "delay 10ms los 5%"], "lab: error: forward 'delay 10ms los 5%': unknown word 'los'"),
    (["--reverse", "loss 150%"], "lab: error: reverse: loss must be between 0% and 100%, got 150%"),
    (["--direction", "forward", "--reverse", "delay 2ms"],
     "lab: error: direction forward leaves server->client unimpaired"),
])
def test_lab_link_refuses_bad_words_before_anything_starts(argv: list[str], message: str,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import lab.link.session as session
    from lab.cli import main

    monkeypatch.setattr(session, "link_command", lambda *args: pytest.fail("the link was started"))
    with pytest.raises(SystemExit) as exit_:
        main(["link", *argv])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith(message)


@pytest.mark.privileged
def test_lab_link_prints_each_direction_when_they_differ() -> None:
    import secrets
    import signal

    from tests.test_link_cli import _lab, _wait_up

    name = f"a{secrets.token_hex(3)}"
    process = _lab("link", "--name", name, "--forward", "delay 10ms loss 5%", "--reverse", "delay 2ms")
    try:
        text = _wait_up(process)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    lines = [line.split(None, 1) for line in text.splitlines() if line.startswith("  ")]
    assert ["client->server", "loss 5%, delay 10ms"] in lines and ["server->client", "delay 2ms"] in lines
    assert f"link {name} removed" in out


# --- the report -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("link", "config", "described"), [
    ({"loss": "5%", "delay": "10ms"}, {"forward": {"loss": "5%", "delay": "10ms"},
                                       "reverse": {"loss": "5%", "delay": "10ms"}}, "loss 5%, delay 10ms"),
    ({"forward": {"delay": "10ms"}, "reverse": {"delay": "2ms"}},
     {"forward": {"delay": "10ms"}, "reverse": {"delay": "2ms"}},
     "client→server: delay 10ms; server→client: delay 2ms"),
    ({"loss": "5%", "direction": "forward"}, {"forward": {"loss": "5%"}, "reverse": {}},
     "client→server: loss 5%; server→client: no impairment"),
    ({"forward": {"delay": "1ms"}, "reverse": {"delay": "1ms"}},
     {"forward": {"delay": "1ms"}, "reverse": {"delay": "1ms"}}, "delay 1ms"),
    ({"delay": "5ms", "forward": {"loss": "1%"}}, None, "delay 5ms; client→server: loss 1%"),  # not parsed
    ({}, None, "no impairment"),
])
def test_link_description_one_line_when_alike_both_when_not(link: dict[str, Any], config: Any,
                                                             described: str) -> None:
    from lab.report.summary import link_description

    assert link_description({"id": "base", "link": link, "link_config": config}) == described


def test_reports_show_both_directions_and_result_json_keeps_the_tables(tmp_path: Path) -> None:
    from lab.report import load_result
    from lab.report.markdown import render_markdown

    target = tmp_path / "run"
    shutil.copytree(HOL_SAMPLE, target)
    payload = json.loads((target / "result.json").read_text(encoding="utf-8"))
    config = LinkConfig.from_options({"loss": "5%"}, forward={"delay": "10ms"}, reverse={"delay": "2ms"})
    payload["points"][0]["link"] = {"loss": "5%", "forward": {"delay": "10ms"}, "reverse": {"delay": "2ms"}}
    payload["points"][0]["link_config"] = config.to_dict()
    (target / "result.json").write_text(json.dumps(payload), encoding="utf-8")
    loaded = load_result(target)  # the schema takes the per-direction tables
    assert loaded["points"][0]["link"]["forward"] == {"delay": "10ms"}
    assert ("Link: client→server: loss 5%, delay 10ms; server→client: loss 5%, delay 2ms."
            in render_markdown(loaded))


# --- the loopback relay ---------------------------------------------------------------------------
SEQ = struct.Struct("!Q")


def _ping_pong(address: tuple[str, int], count: int) -> tuple[list[float], int]:
    """RTTs (s) of `count` datagrams sent one at a time, and how many never came back (0.2 s each)."""
    import socket

    rtts, lost = [], 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        for seq in range(count):
            start = time.perf_counter()
            sock.sendto(SEQ.pack(seq), address)
            try:
                while SEQ.unpack_from(sock.recv(64))[0] != seq:
                    pass
                rtts.append(time.perf_counter() - start)
            except TimeoutError:
                lost += 1
    return rtts, lost


def test_the_relay_applies_each_directions_own(udp_echo_server: Any) -> None:
    from lab.link.relay import UdpRelay

    config = LinkConfig.from_options({}, forward={"delay": "10ms", "loss": "100%"}, reverse={"delay": "2ms"})
    with UdpRelay(config, udp_echo_server.address) as relay:
        rtts, lost = _ping_pong(relay.address, 3)
        assert (rtts, lost) == ([], 3)  # the way out drops everything
        relay.set(forward={"loss": None})
        assert relay.config.forward.delay_s == 0.01 and relay.config.reverse.delay_s == 0.002
        rtts, lost = _ping_pong(relay.address, 20)
        counters = relay.counters()
    assert lost == 0
    p50 = statistics.median(rtts)
    # 10 + 2 ms is the floor; the relay's wake-ups (whole milliseconds) and a loaded box add to it.
    # Either delay applied both ways would give 20 or 4 ms.
    assert 0.012 <= p50 < 0.018, f"RTT p50 {p50 * 1e3:.2f} ms, wanted 12..18 ms"
    assert counters["forward"]["dropped_loss"] == 3 and counters["reverse"]["dropped_loss"] == 0


# --- the real link --------------------------------------------------------------------------------
@pytest.mark.privileged
def test_the_real_links_rtt_is_forward_plus_reverse_delay(impaired_link: Any, lab_seed: int) -> None:
    link = impaired_link(forward={"delay": "10ms"}, reverse={"delay": "2ms"})
    assert link.config == LinkConfig.from_options({}, forward={"delay": "10ms"}, reverse={"delay": "2ms"},
                                                  seed=lab_seed)
    result = link.run("udp", count=30, rate=100, timeout=1.0)
    assert result.received == 30
    p50_ms = result.rtt_us["p50"] / 1e3
    assert 12 <= p50_ms < 18, f"RTT p50 {p50_ms:.2f} ms over 10 ms out and 2 ms back, wanted 12..18 ms"
    link.set(reverse={"loss": "100%"})  # one direction changed while the link is up
    assert link.config.reverse.loss == 1.0 and link.config.forward.loss == 0.0
    lost = link.run("udp", count=5, timeout=0.3)
    assert lost.received == 0 and lost.link["reverse"]["dropped_loss"] == 5
    assert lost.link["forward"]["dropped_loss"] == 0


@pytest.mark.privileged
def test_released_on_time_never_early(impaired_link: Any) -> None:
    """The forwarder stops sleeping a little before each release (its waits end late: it learns by how
    much) and polls for the rest, so a delay is never shortened: every probe's one-way delay is at
    least the configured one, both ways, paced and ping-pong."""
    link = impaired_link(forward={"delay": "5ms"}, reverse={"delay": "1ms"})
    for rate in (400, None):
        result = link.run("udp", count=200, rate=rate, timeout=1.0)
        assert result.received == 200 and result.timestamps == "kernel", result.notes
        assert result.owd_forward_us["min"] >= 5000, result.owd_forward_us
        assert result.owd_reverse_us["min"] >= 1000, result.owd_reverse_us
        assert result.owd_forward_us["p50"] < 5000 + 2000, result.owd_forward_us  # loose: CI is loaded
