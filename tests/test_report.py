"""Report generation from a stored result.json (tests/data/sample-run): HTML, Markdown, `lab report`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.report import load_result, render_command, write_report
from lab.report.summary import what_happened

SAMPLE = Path(__file__).resolve().parent / "data" / "sample-run"
ATLAS = Path(__file__).resolve().parent / "data" / "sample-atlas.json"  # 3 cases from a real `lab probe`
# Goodput and reordering have a section only where they tell something (tests/test_report_story.py).
SECTIONS = ("what-happened", "summary", "latency", "loss", "timeline", "counters", "environment")
PLOTS = 4  # latency CDF, loss, arrival timeline, retransmissions


class _Outline(HTMLParser):
    """Collects section ids, <svg> count, and every attribute that could load something external."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.svgs = 0
        self.external: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id", ""))
        if tag == "svg":
            self.svgs += 1
        for name in ("src", "href", "xlink:href", "action", "data"):
            value = attrs.get(name) or ""
            if re.match(r"\s*(https?:)?//", value):
                self.external.append(f"<{tag} {name}={value}>")
        if tag in ("script", "link", "iframe", "img"):
            self.external.append(f"<{tag}>")


@pytest.fixture
def run_dir(tmp_path):
    target = tmp_path / "run"
    shutil.copytree(SAMPLE, target)
    return target


def test_html_report_is_complete_and_self_contained(run_dir, capsys):
    assert render_command(run_dir) == 0
    assert "report.html" in capsys.readouterr().out
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    outline = _Outline()
    outline.feed(html)
    outline.close()
    assert outline.sections == list(SECTIONS)
    assert outline.svgs == PLOTS, f"expected one <svg> per plot, found {outline.svgs}"
    assert outline.external == []
    assert not re.search(r"url\(\s*['\"]?(https?:)?//|@import|@font-face", html)
    # The numbers and the story are on the page.
    assert "UDP lost 17.0% of probes (51 of 300) (the link predicted 19.0%)" in html
    assert "TCP delivered all 300 probes, but its p99 RTT grew from 2.1 ms (at loss=0%) to 284 ms" in html


def test_rerender_is_deterministic(run_dir):
    render_command(run_dir)
    first = (run_dir / "report.html").read_text(encoding="utf-8")
    render_command(run_dir)
    assert (run_dir / "report.html").read_text(encoding="utf-8") == first


def test_markdown_report(run_dir):
    render_command(run_dir)
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# sample\n")
    assert "| loss | 0.0% | 17.0% |" in md
    assert "## What happened" in md and "## Environment" in md


def test_write_report_round_trips(tmp_path):
    payload = json.loads((SAMPLE / "result.json").read_text(encoding="utf-8"))
    paths = write_report(tmp_path / "out", payload)
    assert set(paths) == {"json", "html", "markdown"}
    assert load_result(tmp_path / "out") == payload


def test_story_mentions_retransmissions():
    payload = load_result(SAMPLE)
    story = dict(what_happened(payload))
    assert "because 57 lost segments were retransmitted" in story["loss=10%"]
    assert story["loss=0%"].startswith("TCP delivered all 300 probes")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "result.json: not found; run `lab run SCENARIO.toml --out"),
        ("{not json", "result.json: not a readable result file"),
        ('{"format": "other", "points": []}', 'not a wirelab result (expected "format": "wirelab-result/2"'),
        (
            '{"format": "wirelab-result/2", "scenario": {"name": "x"}, "points": [{"id": "a"}]}',
            "result.json: points[0].results: missing (required)",
        ),
        (
            '{"format": "wirelab-result/1", "scenario": {"name": "x"}, "points": [{"id": "a"}]}',
            "result.json: points[0].results: missing (required)",
        ),
    ],
)
def test_bad_result_files(tmp_path, content, message):
    if content is not None:
        (tmp_path / "result.json").write_text(content, encoding="utf-8")
    with pytest.raises(LabError) as info:
        render_command(tmp_path)
    assert message in str(info.value)


def test_lab_report_cli(run_dir, tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "lab", "report", str(run_dir)], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr
    assert (run_dir / "report.html").is_file() and f"wrote {run_dir / 'report.html'}" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "lab", "report", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("lab: error: ") and "not a directory" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_longest_loss_run():
    from lab.report.summary import longest_loss_run

    timeline = [
        [0, 0, 1.0],
        [1, 1, None],
        [2, 2, None],
        [3, 3, 1.0],
        [4, 4, None],
        [5, 5, None],
        [6, 6, None],
    ]
    assert longest_loss_run({"timeline": timeline}) == 3
    assert longest_loss_run({"timeline": None}) == 0 and longest_loss_run({}) == 0


def _outline(html: str) -> _Outline:
    outline = _Outline()
    outline.feed(html)
    outline.close()
    return outline


def test_atlas_section(tmp_path):
    """A run of a scenario with `atlas = true` stores the probe rows; the report shows them."""
    payload = json.loads((SAMPLE / "result.json").read_text(encoding="utf-8"))
    atlas = json.loads(ATLAS.read_text(encoding="utf-8"))
    atlas[1] = {**atlas[1], "matches_expected": False, "verdict": "delivered to the application"}
    payload["atlas"] = atlas
    paths = write_report(tmp_path, payload)
    html = paths["html"].read_text(encoding="utf-8")
    outline = _outline(html)
    assert outline.sections == [*SECTIONS[:-1], "atlas", "environment"]
    assert outline.svgs == PLOTS and outline.external == []
    section = html[html.index('<section id="atlas">') : html.index('<section id="environment">')]
    assert "2 of 3 cases behaved as expected." in section
    for row in atlas:
        assert f"<td>{row['name']}</td>" in section
    # expected verdicts are a list in result.json: shown joined, never as a Python list
    assert "[&#39;" not in section and "['" not in section
    assert "<td style=\"text-align:left\">dropped by the kernel: IP header checksum</td>" in section
    assert section.count('class="pass"') == 2 and section.count('class="fail"') == 1
    assert "IpExtInCsumErrors +1" in section  # the evidence column
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "## Malformed-packet atlas" in md and "2 of 3 cases behaved as expected." in md
    assert "| udp-closed-port | udp |" in md and "**delivered to the application** (unexpected)" in md


def test_no_atlas_section_without_atlas(run_dir):
    render_command(run_dir)
    assert 'id="atlas"' not in (run_dir / "report.html").read_text(encoding="utf-8")


def test_fragment_prediction_is_what_the_report_shows(tmp_path):
    """A within_ci_fragments check's prediction 1-(1-e)^k replaces the link's per-packet figure."""
    from lab.scenario import Expectation, evaluate

    payload = json.loads((SAMPLE / "result.json").read_text(encoding="utf-8"))
    point = payload["points"][1]  # loss=10% each way: e = 0.19 per round trip
    udp = next(r for r in point["results"] if r["protocol"] == "udp")
    udp["size"] = 4000  # 3 fragments at MTU 1500
    check = evaluate(Expectation(metric="loss_ratio", kind="within_ci_fragments"), udp, mtu=1500)
    point["checks"]["udp"] = [check.to_dict()]
    predicted = 1 - (1 - 0.19) ** 3  # 46.9 %
    assert check.to_dict()["expected"] == pytest.approx(predicted)
    paths = write_report(tmp_path, payload)
    html = paths["html"].read_text(encoding="utf-8")
    md = paths["markdown"].read_text(encoding="utf-8")
    story = dict(what_happened(payload))["loss=10%"]
    assert "(the link predicted 46.9%: 1-(1-0.1900)^3 for 3 fragments/datagram at MTU 1500)" in story
    assert story in html.replace("&#39;", "'")
    # the link's round-trip rate once, above the table; the datagram prediction only for UDP
    assert "Link round-trip drop rate: 19.0%" in md
    assert "| predicted loss | - | 46.9% |" in md


def test_story_names_queue_drops():
    """Bufferbloat: losses at a full queue are named as such, not compared with a 0 % random loss."""
    point = {
        "id": "limit=10",
        "link": {"rate": "1mbit", "limit": 10},
        "results": [
            {
                "protocol": "udp",
                "sent": 400,
                "received": 252,
                "lost": 148,
                "loss_ratio": 0.37,
                "expected_loss_ratio": 0.0,
                "rtt_us": {"p50": 96_300.0, "p99": 102_000.0},
                "link": {"forward": {"dropped_queue": 148, "dropped_loss": 0}, "reverse": {}},
            },
            {
                "protocol": "tcp",
                "sent": 400,
                "received": 400,
                "lost": 0,
                "loss_ratio": 0.0,
                "expected_loss_ratio": 0.0,
                "rtt_us": {"p50": 1_512_000.0, "p99": 2_057_000.0},
                "observations": {"tcp": {"tcp_info": {"total_retrans": 139}}},
                "link": {"forward": {"dropped_queue": 144}, "reverse": {"dropped_queue": 83}},
            },
        ],
    }
    (story,) = [text for _, text in what_happened({"points": [point]})]
    assert "UDP lost 37.0% of probes (148 of 400); the link's queue was full and dropped 148 packets" in story
    assert "predicted 0.0%" not in story
    assert (
        "TCP delivered all 400 probes; the link's queue was full and dropped 227 packets, which it "
        "recovered by retransmitting 139 segments (median RTT 1512 ms)."
    ) in story


HOL_SAMPLE = Path(__file__).resolve().parent / "data" / "sample-hol"  # a real head-of-line run, seed 1


def test_multi_stream_report_shows_head_of_line(tmp_path):
    """4 streams: the timeline has a legend entry per stream, the text explains the colours, and
    the story gives both protocols' head-of-line figures."""
    target = tmp_path / "hol"
    shutil.copytree(HOL_SAMPLE, target)
    assert render_command(target) == 0
    html = (target / "report.html").read_text(encoding="utf-8")
    timeline = html[html.index('<section id="timeline">') : html.index('<section id="counters">')]
    for n in range(4):
        assert f"<!-- stream {n} -->" in timeline, f"no legend entry for stream {n}"
    assert "<!-- stream 4 -->" not in timeline
    assert "each colour is one of the 4 logical streams" in timeline
    assert "39 held back by another stream" in timeline  # the RTT-per-stream panel's title
    assert (
        "Head-of-line blocking (4 streams): a loss on one stream stalled the others: 39 of 300 TCP"
        " probes waited behind another stream&#39;s retransmission; UDP: 0." in html
    )
    md = (target / "report.md").read_text(encoding="utf-8")
    assert "Head-of-line blocking (4 streams)" in md
    assert "| head-of-line blocked | 39 | 0 |" in md  # the table's row, for several streams only


def test_single_stream_report_has_no_head_of_line_text(run_dir):
    """One stream (and 3-column timeline rows of an older result.json): no stream legend, no HOL text."""
    render_command(run_dir)
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "<!-- stream 0 -->" not in html
    assert "logical streams" not in html and "Head-of-line" not in html


def test_head_of_line_sentence():
    from lab.report.summary import head_of_line_sentence

    def result(proto, blocked):
        hol = {"streams": 3, "blocked": blocked}
        return {"protocol": proto, "sent": 90, "hol": hol}

    assert head_of_line_sentence({"results": [result("tcp", 0), result("udp", 0)]}) == (
        "Head-of-line blocking (3 streams): no probe waited behind another stream's loss (TCP: 0, UDP: 0)."
    )
    assert head_of_line_sentence({"results": [result("tcp", 7), result("udp", 0)]}) == (
        "Head-of-line blocking (3 streams): a loss on one stream stalled the others: 7 of 90 TCP probes"
        " waited behind another stream's retransmission; UDP: 0."
    )
    assert head_of_line_sentence({"results": [{"protocol": "tcp", "sent": 9, "hol": None}]}) == ""


def test_timeline_rows_read_old_and_new_rows():
    from lab.report.summary import stream_count, timeline_rows

    old = {"timeline": [[0, 0.0, 1.0], [1, 1.0, None]]}
    new = {"timeline": [[0, 0.0, 1.0, 0], [1, 1.0, None, 1], [2, 2.0, 3.0, 2]]}
    assert timeline_rows(old) == [(0, 0.0, 1.0, 0), (1, 1.0, None, 0)]
    assert stream_count(old) == 1 and stream_count(new) == 3
    assert stream_count({"hol": {"streams": 4}, "timeline": []}) == 4


def test_result_json_text_is_indented_with_plain_lists_on_one_line():
    """A timeline row is one line (the largest run stays far under the 64 MiB read limit); the text
    is the same JSON, and NaN (not JSON) is written as null, which the schema reads as not measured."""
    from lab.report import to_json

    payload = json.loads((SAMPLE / "result.json").read_text(encoding="utf-8"))
    text = to_json(payload)
    assert json.loads(text) == payload
    assert '"timeline": [\n      [0, 0.0, 0.572],\n      [1, 10.0, 0.892],\n' in text
    assert max(len(line) for line in text.splitlines()) < 400
    assert len(text) < len(json.dumps(payload, indent=1)) / 1.8
    odd = {"rows": [[1, None], [2.5, "x]"]], "nan": [float("nan"), 1.0], "brackets": ["[", "{"], "empty": []}
    assert json.loads(to_json(odd)) == {**odd, "nan": [None, 1.0]}
