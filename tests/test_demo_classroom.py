"""Issue 11, item 4: a demo the teacher can steer ("what if...?"), watch live, and capture."""

from __future__ import annotations

import time

import pytest
from rich.console import Console

from lab.cli import main
from lab.live import BARS, LOST, WAITING, ProbeStrip, render_strips
from lab.records import TrafficPlan
from lab.runner import demo_scenario


def test_demo_options_lay_over_the_demo_link():
    plain = demo_scenario()
    assert dict(plain.points[0].link) == {"loss": "10%", "delay": "20ms"}
    steered = demo_scenario({"loss": "30%", "jitter": "5ms"}, seed=7)
    (point,) = steered.points
    assert dict(point.link) == {"loss": "30%", "delay": "20ms", "jitter": "5ms"}  # the delay stays
    assert point.seed == 7 and steered.name == "demo"
    assert "Steered with --loss 30%, --jitter 5ms." in steered.description
    assert point.traffic == plain.points[0].traffic and point.expectations == plain.points[0].expectations


def test_demo_description_is_translatable():
    from lab import i18n
    from lab.runner import DEMO_DESCRIPTION
    from lab.scenario import load_scenario

    assert load_scenario("scenarios/demo.toml").description == DEMO_DESCRIPTION
    i18n.set_language("pt")
    try:
        assert demo_scenario().description.startswith("TCP vs UDP no mesmo enlace")
    finally:
        i18n.set_language("en")


def test_demo_bad_what_if_value_is_one_line(capsys):
    with pytest.raises(SystemExit) as code:
        main(["demo", "--loss", "150%"])
    assert code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lab: error: lab demo --loss 150%: [link] loss:"), err


def test_probe_strip_from_a_real_run_marks_every_fate():
    """A real loopback UDP run reports arrivals to a live view; a probe nobody answers turns ✗."""
    from lab.endpoints.server import running_server
    from lab.protocols import get_protocol

    strip = ProbeStrip(label="UDP", count=40, timeout_s=0.3)
    reports = []

    def progress(sent, total, arrivals=None):
        reports.append(arrivals)
        strip.progress(sent, total, arrivals)

    progress.wants_arrivals = True
    with running_server("udp") as server:
        plan = TrafficPlan(count=40, rate=400, timeout=0.3)
        get_protocol("udp").run(server.address, plan, progress=progress)
    assert any(reports) and all(r is not None for r in reports)
    assert sorted(strip.rtt_ms) == list(range(40)) and strip.sent == 40
    assert all(strip.fate(seq, time.monotonic()) == "rtt" for seq in range(40))

    silent = ProbeStrip(label="UDP", count=3, timeout_s=0.05, clock=lambda: 100.0)
    silent.progress(2, 3, [(0, 1.5)])
    assert silent.fate(0, 100.0) == "rtt" and silent.fate(1, 100.0) == "waiting"
    assert silent.fate(1, 100.5) == "lost" and silent.fate(2, 100.5) == "unsent"


def test_strips_share_one_scale_and_a_run_result_settles_them():
    tcp = ProbeStrip(label="TCP", count=4, timeout_s=1.0, style="bold blue")
    udp = ProbeStrip(label="UDP", count=4, timeout_s=1.0, style="bold red")
    tcp.finish([[0, 0, 20.0, 0], [1, 5, 900.0, 0], [2, 10, 21.0, 0], [3, 15, 20.0, 0]])
    udp.finish([[0, 0, 20.0, 0], [1, 5, None, 0], [2, 10, 20.0, 0], [3, 15, 20.0, 0]])
    console = Console(width=60, record=True, color_system=None)
    console.print(render_strips([tcp, udp], console.width))
    text = console.export_text()
    tcp_line = next(line for line in text.splitlines() if "TCP" in line)
    udp_line = next(line for line in text.splitlines() if "UDP" in line)
    # TCP's 900 ms stall stands tall beside its 20 ms neighbours; UDP's lost probe is a cross
    assert tcp_line.split()[-1] == BARS[0] + BARS[-1] + BARS[0] + BARS[0]  # 900 ms of a 1 s timeout
    assert udp_line.split()[-1] == BARS[0] + LOST + BARS[0] + BARS[0]
    assert WAITING in text and LOST in text  # the legend


def test_many_probes_share_cells_and_a_cell_is_lost_only_when_most_were():
    strip = ProbeStrip(label="UDP", count=4000, timeout_s=1.0)
    strip.finish([[i, i, None if i % 3 == 0 else 10.0, 0] for i in range(4000)])  # a third lost
    console = Console(width=60, record=True, color_system=None)
    console.print(render_strips([strip], console.width))
    text = console.export_text()
    assert "several probes" in text
    assert LOST not in "".join(line for line in text.splitlines() if "UDP" in line or line.startswith(" "))
