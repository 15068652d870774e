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
SECTIONS = ("what-happened", "summary", "latency", "loss", "timeline", "goodput", "counters", "environment")
PLOTS = 5  # latency CDF, loss, arrival timeline, goodput, retransmissions


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
    assert "TCP delivered all 300 probes, but its p99 RTT grew from 2.1 ms to 284 ms" in html


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
        ('{"format": "other", "points": []}', 'not a wirelab result (expected "format": "wirelab-result/1"'),
        ('{"format": "wirelab-result/1", "points": [{"id": "a"}]}', "points[0] is malformed"),
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
    assert longest_loss_run({"extras": {"timeline": timeline}}) == 3
    assert longest_loss_run({"extras": {}}) == 0
