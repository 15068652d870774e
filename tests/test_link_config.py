"""Issue 9, item 3: the link configuration is parsed once, at the edge, from one list of keys.

A scenario file, `lab link`'s and `lab demo`'s options and open_link/impaired_link's keywords all
become one `LinkConfig`; everything downstream (runner, Link.set, the forwarder and relay processes)
receives that parsed object or its numbers (`to_wire`) and never parses a netem string again.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest
import typer.main

import lab.link.models as models
import lab.runner as runner
from lab.cli import app
from lab.errors import ConfigError, ScenarioError
from lab.link.models import OPTION_KEYS, LinkConfig
from lab.scenario import LINK_KEYS, parse_scenario

# A valid value for every impairment key, all at once (reorder needs the delay).
EVERY_KEY = {
    "loss": "1%", "delay": "5ms", "jitter": "1ms", "distribution": "normal",
    "delay_correlation": "25%", "reorder": "10%", "duplicate": "1%", "corrupt": "0.1%",
    "rate": "10mbit", "limit": "500", "limit_bytes": "8mb",
}
# What `lab link` and `lab demo` take besides the impairment keys.
NOT_IMPAIRMENT = {
    "link": {"name", "direction", "forward", "reverse", "seed", "mtu", "capture", "capture_limit"},
    "demo": {"out", "direction", "forward", "reverse", "seed", "live", "capture", "slides", "lang"},
}
QUICK = "[traffic]\ncount = 20\nrate = 400\ntimeout = 0.5\n"


def parse(text: str):
    return parse_scenario(text, source="x.toml", default_name="x")


@pytest.fixture
def count_parses(monkeypatch) -> list[dict[str, Any]]:
    """Every LinkConfig.from_options call, recorded (the real parser still runs)."""
    calls: list[dict[str, Any]] = []
    real = LinkConfig.from_options.__func__

    def counted(cls, options, **kwargs):
        calls.append(dict(options))
        return real(cls, options, **kwargs)

    monkeypatch.setattr(LinkConfig, "from_options", classmethod(counted))
    return calls


@pytest.fixture
def forbid_parsing(monkeypatch) -> Callable[[], None]:
    """Call it, and from then on parsing any netem-style option fails the test."""
    def refuse(options):
        raise AssertionError(f"impairment options parsed again: {dict(options)}")

    return lambda: monkeypatch.setattr(models, "_fields_from_options", refuse)


@pytest.fixture
def unprivileged(monkeypatch) -> None:
    """Run as an unprivileged user would (the mode choice only: sockets stay real)."""
    monkeypatch.setattr(runner, "has_link_privileges", lambda: False)


def _leaves(data: Any) -> list[Any]:
    if isinstance(data, dict):
        return [leaf for value in data.values() for leaf in _leaves(value)]
    return [data]


# --- one list of keys ----------------------------------------------------------------------------
def test_every_key_is_in_the_one_list():
    assert set(EVERY_KEY) == set(OPTION_KEYS) and len(OPTION_KEYS) == len(set(OPTION_KEYS))


@pytest.mark.parametrize("command", ["link", "demo"])
def test_lab_link_and_lab_demo_take_exactly_the_impairment_keys(command):
    params = [p.name for p in typer.main.get_command(app).commands[command].params]
    assert [p for p in params if p in OPTION_KEYS] == list(OPTION_KEYS)
    assert set(params) - set(OPTION_KEYS) == NOT_IMPAIRMENT[command], (
        "a new option: if it is an impairment, it belongs in lab.link.models.OPTION_KEYS")


def test_scenario_link_tables_take_exactly_the_impairment_keys():
    assert (*OPTION_KEYS, "direction") == LINK_KEYS
    point = parse("[link]\n" + "".join(f'{k} = "{v}"\n' for k, v in EVERY_KEY.items())).points[0]
    assert point.link_config == LinkConfig.from_options(EVERY_KEY)
    with pytest.raises(ScenarioError, match="colour: unknown key"):
        parse('[link]\ncolour = "blue"\n')


def test_lab_demo_overrides_take_every_impairment_key():
    from lab.runner import demo_scenario

    point = demo_scenario(EVERY_KEY).points[0]
    assert point.link_config == LinkConfig.from_options(EVERY_KEY, seed=point.seed)


@pytest.mark.parametrize("key", OPTION_KEYS)
def test_open_link_judges_every_key_by_its_value_not_as_unknown(key):
    """A bad value is refused naming the key (before anything is created); an unknown key as unknown."""
    from lab.link.session import open_link

    with pytest.raises(ConfigError) as refused:
        open_link(**{key: "not a value"})
    assert "unknown" not in str(refused.value)
    with pytest.raises(ConfigError, match="unknown impairment option"):
        open_link(colour="blue")


@pytest.mark.privileged
def test_impaired_link_takes_every_key_at_once(impaired_link, lab_seed):
    link = impaired_link(**EVERY_KEY)
    assert link.config == LinkConfig.from_options(EVERY_KEY, seed=lab_seed)


# --- delay_correlation in scenario files ---------------------------------------------------------
def test_delay_correlation_works_in_a_scenario_file_and_its_sweep():
    point = parse('[link]\ndelay = "10ms"\njitter = "2ms"\ndelay_correlation = "25%"\n').points[0]
    assert point.link_config.forward.delay_correlation == 0.25 == point.link_config.reverse.delay_correlation
    swept = parse('[link]\ndelay = "10ms"\njitter = "2ms"\n[sweep]\ndelay_correlation = ["0%", "50%"]\n')
    assert [p.link_config.forward.delay_correlation for p in swept.points] == [0.0, 0.5]
    with pytest.raises(ScenarioError, match=r"\[link\] delay_correlation: .*between 0% and 100%"):
        parse('[link]\ndelay_correlation = "150%"\n')


# --- parsed once ---------------------------------------------------------------------------------
def test_a_scenario_point_is_parsed_once_and_reseeding_parses_nothing(count_parses):
    plan = parse('[scenario]\nseed = 4\n[link]\ndelay = "5ms"\ndirection = "forward"\n'
                 '[sweep]\nloss = ["0%", "5%", "10%"]\n')
    assert len(count_parses) == len(plan.points) == 3
    for point, loss in zip(plan.points, (0.0, 0.05, 0.1), strict=True):
        config = point.link_config
        assert (config.forward.loss, config.reverse.loss, config.seed, config.direction) == (
            loss, 0.0, 4, "forward")
    reseeded = plan.with_seed(9)
    assert len(count_parses) == 3
    assert [p.link_config.seed for p in reseeded.points] == [9, 9, 9] == [p.seed for p in reseeded.points]
    assert [p.link_config.forward for p in reseeded.points] == [p.link_config.forward for p in plan.points]


def test_a_bad_value_still_names_its_key(count_parses):
    """Finding the key costs extra parses only when the point is wrong."""
    with pytest.raises(ScenarioError, match=r"\[link\] jitter: "):
        parse('[link]\ndelay = "5ms"\njitter = "5 parsecs"\n')


def test_the_relay_run_receives_the_points_config(forbid_parsing, unprivileged):
    plan = parse(QUICK + '[link]\nloss = "20%"\ndelay = "1ms"\n')
    point = plan.points[0]
    forbid_parsing()
    outcome = runner.run_point(plan, point, protocols=("udp",))
    assert outcome.mode == "relay"
    assert outcome.link_config == point.link_config.to_dict()  # result.json's link_config, as before
    assert outcome.results["udp"].expected_loss_ratio == pytest.approx(1 - 0.8 * 0.8)


@pytest.mark.privileged
def test_the_link_run_receives_the_points_config(forbid_parsing, monkeypatch):
    import lab.link.session as session

    given: list[object] = []
    real_open = session.open_link

    def open_link(config, **kwargs):
        given.append(config)
        return real_open(config, **kwargs)

    monkeypatch.setattr(session, "open_link", open_link)
    plan = parse(QUICK + '[link]\nloss = "20%"\ndelay = "1ms"\n')
    point = plan.points[0]
    forbid_parsing()
    outcome = runner.run_point(plan, point, protocols=("udp",))
    assert outcome.mode == "link" and given == [point.link_config] and given[0] is point.link_config
    assert outcome.link_config == point.link_config.to_dict()  # result.json's link_config, as before
    assert outcome.results["udp"].link["forward"]["packets_in"] > 0


# --- what the helper processes receive -----------------------------------------------------------
CONFIGS = [
    LinkConfig(),
    LinkConfig.from_options(EVERY_KEY, seed=7),
    LinkConfig.from_options({"loss": "gemodel 1% 30% 80% 0.5%", "rate": "1.5mbit"}, direction="reverse"),
    LinkConfig.from_options({"delay": "10ms"}, forward={"loss": "5%"}, reverse={"delay": "30ms"}),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_the_wire_form_is_numbers_and_comes_back_without_parsing(config, forbid_parsing):
    forbid_parsing()
    wire = json.loads(json.dumps(config.to_wire()))  # what the forwarder's spec and "set" carry
    words = {leaf for leaf in _leaves(wire) if isinstance(leaf, str)}
    assert words <= {*models.DISTRIBUTIONS, *models.DIRECTIONS}  # names, never a netem value
    assert LinkConfig.from_wire(wire) == config

    from lab.link import forwarder

    assert forwarder._config_from_wire(wire) == config  # how the forwarder child builds its config


@pytest.mark.parametrize("bad", [
    {"forward": {"loss": "5%"}},  # a netem string is refused, not parsed
    {"forward": {"colour": 1}},
    {"seed": "1"},
    {"reverse": None},
])
def test_a_malformed_wire_form_is_one_config_error(bad):
    wire = LinkConfig().to_wire()
    for key, value in bad.items():
        wire[key] = {**wire[key], **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError, match="malformed"):
        LinkConfig.from_wire(wire)


def test_the_forwarder_child_applies_a_parsed_set_and_reseeds_from_its_seeds(forbid_parsing):
    """The forwarder child's own request handling, in process: "set" carries numbers; a later reseed
    starts from the new config's seeds; option strings are not understood there any more."""
    from lab.link import forwarder

    forbid_parsing()
    new = LinkConfig(forward=models.Impairment(loss=0.5), seed=11)
    dirs = forwarder._directions(LinkConfig(seed=3), (-1, -1), 0, None)  # no devices: no offloads to set
    assert all(d.mode == forwarder.FAST for d in dirs) and [d.seed for d in dirs] == [3, 4]

    class InProcess:  # a direction host without its thread or process: the requests as they arrive
        def __init__(self, direction: forwarder._Direction) -> None:
            self.direction = direction

        def request(self, op: str, argument: object = None) -> object:
            return forwarder._direction_request(self.direction, op, argument)

    handle = forwarder._control_handler([InProcess(d) for d in dirs], None, [])
    assert handle("set", json.loads(json.dumps(new.to_wire()))) is None
    assert [d.model.impairment for d in dirs] == [new.forward, new.reverse]
    assert [d.mode for d in dirs] == [forwarder.PER_PACKET, forwarder.FAST]
    assert [d.seed for d in dirs] == [11, 12]
    with pytest.raises(ConfigError, match="malformed"):
        handle("set", {"options": {"loss": "5%"}, "direction": "both"})
    handle("reseed", None)
    replay = models.DirectionModel(new.forward, 11)
    packets = [bytes([0x45]) + bytes(40)] * 50
    assert [dirs[0].model.decide(p, 0.0).dropped for p in packets] == [
        replay.decide(p, 0.0).dropped for p in packets]


def test_the_relay_process_loop_applies_a_parsed_config(forbid_parsing):
    """The relay child's event loop, in process: it receives LinkConfig objects and builds models."""
    from lab.child import Channel
    from lab.link.relay import _Relay

    forbid_parsing()
    ours, theirs = socket.socketpair()
    with ours, Channel(theirs) as conn:
        relay = _Relay(conn, CONFIGS[1], ("127.0.0.1", 9), "127.0.0.1")
        try:
            assert (relay.forward.impairment, relay.reverse.impairment) == (CONFIGS[1].forward,
                                                                          CONFIGS[1].reverse)
            assert relay.handle("set", CONFIGS[3]) is None
            applied = (relay.forward.impairment, relay.reverse.impairment)
            assert applied == (CONFIGS[3].forward, CONFIGS[3].reverse)
        finally:
            relay.close()


@pytest.mark.privileged
def test_link_set_sends_the_parsed_config_to_the_forwarder(impaired_link, monkeypatch):
    from lab.link.forwarder import Forwarder

    sent: list[object] = []
    real_set = Forwarder.set
    monkeypatch.setattr(Forwarder, "set", lambda self, config: (sent.append(config), real_set(self, config)))
    link = impaired_link(delay="1ms", direction="forward")
    link.set(loss="100%")
    assert sent == [link.config] and link.config.forward.loss == 1.0 and link.config.reverse.loss == 0.0
    lost = link.run("udp", count=5, timeout=0.2)
    assert lost.received == 0 and lost.link["forward"]["dropped_loss"] == 5
    link.set(LinkConfig(seed=link.config.seed))  # a whole parsed config
    assert link.run("udp", count=5, timeout=0.5).received == 5
    with pytest.raises(ConfigError, match="not both"):
        link.set(LinkConfig(), loss="1%")


def test_open_link_refuses_a_config_and_keywords_together():
    from lab.link.session import open_link

    with pytest.raises(ConfigError, match="not both"):
        open_link(LinkConfig(), loss="5%")
    with pytest.raises(ConfigError, match="not both"):
        open_link(LinkConfig(), seed=3)
    with pytest.raises(ConfigError, match="expected a LinkConfig"):
        open_link({"loss": "5%"})  # type: ignore[arg-type]


# --- per direction ([link.forward]/[link.reverse], --forward/--reverse; tests/test_asymmetric.py) --
def test_per_direction_overrides_are_parsed_with_the_rest():
    config = LinkConfig.from_options({"delay": "10ms", "loss": "1%"}, forward={"loss": "5%"},
                                     reverse={"delay": "30ms"}, seed=2)
    assert (config.forward.loss, config.forward.delay_s) == (0.05, 0.01)
    assert (config.reverse.loss, config.reverse.delay_s) == (0.01, 0.03)
    one_way = LinkConfig.from_options({"loss": "1%"}, direction="forward", forward={"delay": "5ms"})
    assert (one_way.forward.loss, one_way.forward.delay_s, one_way.reverse) == (0.01, 0.005, models.NULL)
    changed = config.with_options({}, reverse={"loss": None})
    assert changed.forward == config.forward and changed.reverse.loss == 0.0
    with pytest.raises(ConfigError, match="unknown impairment option"):
        LinkConfig.from_options({}, forward={"colour": "blue"})
