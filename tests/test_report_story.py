"""Reports that explain (issue 11, item 6): the link's drop rate once per point, the why, the rows and
plots of reordering, retransmissions vs link drops, goodput only where it tells, readable figures."""

from __future__ import annotations

import copy
import json
import re
import warnings
from pathlib import Path

import pytest

from lab.report import write_report
from lab.report.appearance import PROTOCOL_PALETTE
from lab.report.plots import (
    FIGURES,
    OKABE_ITO,
    REPORT,
    STREAM_COLORS,
    STREAM_MARKERS,
    loss_figure,
    reorder_series,
)
from lab.report.summary import (
    demo_explanation,
    goodput_tells,
    retransmission_sentence,
    side_by_side,
    why_text,
)

DATA = Path(__file__).resolve().parent / "data"


def sample(name: str = "sample-run") -> dict:
    return json.loads((DATA / name / "result.json").read_text(encoding="utf-8"))


def render(tmp_path: Path, payload: dict) -> tuple[str, str]:
    paths = write_report(tmp_path / "out", payload)
    return paths["html"].read_text(encoding="utf-8"), paths["markdown"].read_text(encoding="utf-8")


def tcp_result(drops: int, rexmit: int, reordered: int = 0) -> dict:
    direction = {"dropped_loss": drops, "dropped_queue": 0, "reordered": reordered}
    return {
        "protocol": "tcp",
        "observations": {"tcp": {"tcp_info": {"total_retrans": rexmit}}},
        "kernel": {"server": {"TcpRetransSegs": 0}},
        "link": {"forward": direction, "reverse": {"dropped_loss": 0, "reordered": 0}},
    }


def test_link_drop_rate_is_the_links_and_shown_once(tmp_path):
    html, md = render(tmp_path, sample())
    assert "expected loss" not in md and "expected loss" not in html.split('id="what-happened"')[1]
    assert md.count("Link round-trip drop rate: 19.0%") == 1  # the lossy point only, above its table
    assert html.count("Link round-trip drop rate: 19.0%") == 1
    rows = dict(side_by_side(sample()["points"][1], ["tcp", "udp"]))
    assert rows["loss"] == ["0.0%", "17.0%"] and "predicted loss" not in rows


def test_rows_for_reordered_and_duplicates(tmp_path):
    payload = sample()
    udp = payload["points"][1]["results"][1]
    udp["reordered"], udp["duplicates"] = 7, 3
    _html, md = render(tmp_path, payload)
    assert "| reordered | 0 | 7 |" in md and "| duplicates | 0 | 3 |" in md


def test_why_they_differ_where_tcp_and_udp_both_ran(tmp_path):
    payload = sample()
    html, md = render(tmp_path, payload)
    why = why_text(payload)
    assert "TCP pays for reliability in latency" in why and "UDP's loss is close to" in why
    assert why.replace("'", "&#39;") in html and why in md
    udp_only = copy.deepcopy(payload)
    for point in udp_only["points"]:
        point["results"] = [r for r in point["results"] if r["protocol"] == "udp"]
        point["checks"].pop("tcp", None)
        point["skipped"] = {"tcp": "needs root"}
    assert why_text(udp_only) == ""
    assert "pays for reliability" not in render(tmp_path / "u", udp_only)[1]


def test_demo_explanation_both_and_udp_only():
    assert "TCP pays for reliability in latency" in demo_explanation(["tcp", "udp"])
    assert demo_explanation(["tcp", "udp"]).startswith("Both protocols crossed the same impaired link")
    udp_only = demo_explanation(["udp"], ["tcp"])
    assert udp_only.startswith("Only UDP could cross") and "pays for reliability" not in udp_only


def test_retransmissions_vs_link_drops_explained():
    fewer = retransmission_sentence(tcp_result(drops=110, rexmit=62))
    assert "The link dropped 110 packets during TCP's run, yet TCP retransmitted only 62 segments" in fewer
    assert "dropped ACK needs no retransmission" in fewer and "one retransmission can recover" in fewer
    spurious = retransmission_sentence(tcp_result(drops=0, rexmit=75, reordered=296))
    assert "retransmitted 75 segments although the link dropped none: it reordered 296" in spurious
    assert "spurious" in spurious
    assert retransmission_sentence(tcp_result(drops=0, rexmit=0)) == ""
    assert retransmission_sentence({"protocol": "udp", "link": {"forward": {"dropped_loss": 5}}}) == ""


def test_report_explains_the_retransmission_counts(tmp_path):
    payload = sample()
    tcp = payload["points"][1]["results"][0]
    tcp["link"] = tcp_result(drops=110, rexmit=0)["link"]
    html, md = render(tmp_path, payload)
    counters = html[html.index('<section id="counters">') :]
    assert "yet TCP retransmitted only 57 segments" in counters
    assert "## Retransmissions and link drops" in md and "yet TCP retransmitted only 57" in md


def reordered_payload() -> dict:
    payload = sample()
    udp = payload["points"][1]["results"][1]
    rows = udp["timeline"]
    answered = [i for i, row in enumerate(rows) if row[2] is not None]
    # probe a arrives 30 ms later than it did: after the next answered probes (sent 10 ms apart)
    a = answered[5]
    rows[a] = [rows[a][0], rows[a][1], rows[a][2] + 30.0, *rows[a][3:]]
    udp["reordered"] = 1
    return payload


def test_reorder_series_finds_the_overtaken_probe():
    rows = [[0, 0.0, 5.0], [1, 1.0, 1.0], [2, 2.0, 1.0], [3, 3.0, None]]
    in_order, overtaken = reorder_series({"timeline": rows})
    # arrivals: 1 (t=2), 2 (t=3), 0 (t=5): probe 0 came third, after probes sent later
    assert overtaken == [(0, 2)] and in_order == [(1, 0), (2, 1)]


def test_reordering_plot_only_when_some_run_saw_reordering(tmp_path):
    html, _md = render(tmp_path, sample())
    assert 'id="reordering"' not in html
    html, _md = render(tmp_path / "r", reordered_payload())
    section = html[html.index('<section id="reordering">') : html.index('<section id="counters">')]
    assert section.count("<svg") == 1 and "<!-- send order -->" in section
    assert "<!-- arrival order -->" in section and "1 reordered" in section


def test_goodput_only_where_it_tells(tmp_path):
    payload = sample()
    assert not any(goodput_tells(p) for p in payload["points"])  # open loop: goodput = delivered share
    html, md = render(tmp_path, payload)
    assert 'id="goodput"' not in html and "| goodput |" not in md
    payload["points"][1]["results"][0]["goodput_bps"] /= 2  # TCP took twice as long
    html, md = render(tmp_path / "g", payload)
    assert 'id="goodput"' in html and "| goodput |" in md
    ping_pong = sample()
    ping_pong["points"][0]["traffic"].pop("rate")
    assert goodput_tells(ping_pong["points"][0])  # closed loop: goodput follows the RTT


def test_a_single_point_is_named_by_its_link_never_base(tmp_path):
    payload = sample("sample-hol")
    assert payload["points"][0]["id"] == "base"
    html, md = render(tmp_path, payload)
    assert not re.search(r">\s*base\s*<", html) and "<!-- base -->" not in html
    assert "### base" not in md and "**base**" not in md
    assert "<h3>loss 5%, delay 10ms</h3>" in html and "<!-- loss 5%, delay 10ms -->" in html


def test_loss_labels_sit_above_the_error_bars():
    payload = sample()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = loss_figure(payload, REPORT)
    try:
        ax = fig.axes[0]
        labels = [t for t in ax.texts if t.get_text().endswith("%")]
        assert len(labels) == 4  # 2 points x 2 protocols
        caps = sorted(
            100 * r["loss_ci95"][1] for p in payload["points"] for r in p["results"]
        )
        assert sorted(t.xy[1] for t in labels) == pytest.approx(caps)  # anchored at the interval's top
        assert all(t.get_va() == "bottom" for t in labels)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_figures_are_wide_with_readable_text(tmp_path):
    payload = reordered_payload()
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, build in FIGURES.items():
            fig = build(payload, REPORT)
            try:
                assert fig.get_size_inches()[0] * 96 >= 800, name  # CSS px: at least 800 wide
                texts = fig.findobj(lambda a: hasattr(a, "get_fontsize") and hasattr(a, "get_text"))
                small = [(t.get_text(), t.get_fontsize()) for t in texts
                         if t.get_text().strip() and t.get_visible() and t.get_fontsize() < 11]
                assert small == [], name
            finally:
                plt.close(fig)


def test_colours_are_colour_blind_safe_and_streams_differ_in_shape_too():
    from lab.protocols import names
    from lab.report.appearance import TOL_MUTED, colour

    assert set(PROTOCOL_PALETTE) <= set(OKABE_ITO) | set(TOL_MUTED) and "#F0E442" not in PROTOCOL_PALETTE
    assert PROTOCOL_PALETTE[:2] == OKABE_ITO[:2]  # TCP blue, UDP vermillion, as the classroom knows them
    assert len({colour(name) for name in names()}) == len(names())  # every built-in its own colour
    assert len(set(STREAM_COLORS)) == len(STREAM_COLORS) and set(STREAM_COLORS) <= set(OKABE_ITO)
    assert len(set(STREAM_MARKERS)) == len(STREAM_MARKERS) >= 4
    assert "#F0E442" not in STREAM_COLORS[:4]  # yellow is unreadable on white: not among the first four


def test_rtt_unit_fits_the_values():
    point = {"results": [{"protocol": "udp", "rtt_us": {"p50": 45.0, "p99": 80.0}, "jitter_us": 3.2}]}
    rows = dict(side_by_side(point, ["udp"]))
    assert rows["RTT p50 µs"] == ["45"] and rows["jitter µs"] == ["3.2"]
    point["results"][0]["rtt_us"] = {"p50": 40600.0, "p99": 42000.0}
    assert dict(side_by_side(point, ["udp"]))["RTT p50 ms"] == ["40.6"]


def test_lab_send_summary_uses_ms_on_a_40ms_link():
    from lab.endpoints.client import format_summary
    from lab.metrics import Result

    udp = sample()["points"][1]["results"][1]  # 20 ms each way
    result = Result.from_dict({k: v for k, v in udp.items() if k in Result.__dataclass_fields__})
    text = format_summary(result, "there")
    assert "rtt ms: min 40" in text and "rtt µs" not in text
    loopback = Result.from_dict({**result.to_dict(), "rtt_us": {k: 45.0 for k in result.rtt_us}})
    assert "rtt µs: min 45.0" in format_summary(loopback, "here")
