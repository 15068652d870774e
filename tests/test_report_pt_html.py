"""Issue 11, item 2: report.html, its plots and the slides in Portuguese (`--lang pt`), English by default."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest

from lab import i18n
from lab.errors import LabError
from lab.report import load_result
from lab.report.figures import render_plots
from lab.report.html import render_html
from lab.report.plots import _pyplot, story_figure
from lab.report.slides import write_slides

DATA = Path(__file__).resolve().parent / "data"
# Headings, paragraphs and plot texts of the English page that must all be gone in Portuguese.
ENGLISH = (
    "<h2>What happened</h2>",
    "per sweep point</h2>",
    "<h2>Latency</h2>",
    "Cumulative share of probes answered",
    "Bars: share of probes that never came back",
    "Each reply plotted at its receive time",
    "TCP counts retransmitted segments",
    "Counter deltas over each protocol",
    "Re-render with",
    "sweep points · mode",
    "This run was interrupted",
    "cases behaved as expected",
    "<th>expectation</th>",
    "<!-- sequence number -->",
    "<!-- probes lost (%) -->",
    "<!-- share of probes answered -->",
    "<!-- count -->",
    "<!-- TCP retransmissions and packets the link dropped -->",
    "open loop",
)


def _payload() -> dict:
    """The sample run, interrupted, with the malformed-packet atlas and TCP skipped at its first point."""
    payload = copy.deepcopy(load_result(DATA / "sample-run"))
    payload["interrupted"] = True
    payload["atlas"] = json.loads((DATA / "sample-atlas.json").read_text())
    first = payload["points"][0]
    first["skipped"] = {"tcp": "no CAP_NET_ADMIN"}
    first["results"] = [r for r in first["results"] if r["protocol"] != "tcp"]
    return payload


def test_html_report_in_portuguese(portuguese):
    payload = _payload()
    html = render_html(payload, render_plots(payload))
    assert html.startswith('<!DOCTYPE html>\n<html lang="pt">')
    for text in (
        "<h2>O que aconteceu</h2>",
        "<h2>Resumo: TCP vs UDP por ponto de varredura</h2>",
        "<h2>Latência</h2>",
        "<h2>Perda: medida vs a taxa de descarte do enlace</h2>",
        "<h2>Retransmissões e contadores</h2>",
        "<h2>Atlas de pacotes malformados</h2>",
        "<h2>Ambiente</h2>",
        "Protocolos TCP vs UDP · semente 1",
        "2 pontos de varredura · modo link",
        "Esta execução foi interrompida (Ctrl-C)",
        "com o intervalo de 95% para esse número de sondas",  # a literal % through newstyle gettext
        "3 de 3 casos se comportaram como esperado.",
        "<th>expectativa</th>",
        "TCP pulado: no CAP_NET_ADMIN",
        "tráfego: 300 × 64 B, 100/s em ritmo fixo, tempo limite 1.0 s",
        "Gere de novo com <code>lab report DIR</code>",  # markup inside a message stays markup
        # the plots: matplotlib names each text of the SVG in a comment
        "<!-- número de sequência -->",
        "<!-- sondas perdidas (%) -->",
        "<!-- Retransmissões do TCP e pacotes descartados pelo enlace -->",
        "<!-- retransmissões do TCP -->",
    ):
        assert text in html, text
    assert 'class="skipped"' in html  # the skipped cells keep their style in any language
    leftovers = [text for text in ENGLISH if text in html]
    assert not leftovers, leftovers


def test_head_of_line_text_and_stream_plots_in_portuguese(portuguese):
    payload = load_result(DATA / "sample-hol")
    html = render_html(payload, render_plots(payload))
    assert "Bloqueio de cabeça de fila (head-of-line): cada cor é um dos 4 fluxos lógicos." in html
    assert "<em>todas</em> as cores de uma vez" in html
    assert "<!-- fluxo 3 -->" in html and "retidas por outro fluxo: 39" in html
    assert "tempo limite 1.5 s, 4 fluxos" in html
    assert "Head-of-line blocking: each colour" not in html and "<!-- stream 3 -->" not in html


def test_story_slide_in_portuguese(portuguese):
    fig = story_figure(load_result(DATA / "sample-run"))
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    _pyplot().close(fig)
    svg = buf.getvalue()
    for title in ("Latência", "Chegadas", "Perda", "UDP perdidas", "número de sequência"):
        assert f"<!-- {title} -->" in svg, title
    assert "<!-- Arrivals -->" not in svg and "<!-- UDP lost -->" not in svg


def test_slides_error_in_portuguese(portuguese, tmp_path):
    (tmp_path / "slides").write_text("a file where the folder goes")
    with pytest.raises(LabError, match="não foi possível criar a pasta dos slides"):
        write_slides(tmp_path, load_result(DATA / "sample-run"))


def test_english_again_after_portuguese():
    payload = load_result(DATA / "sample-run")
    i18n.set_language("pt")
    try:
        assert '<html lang="pt">' in render_html(payload, {})
    finally:
        i18n.set_language("en")
    html = render_html(payload, {})
    assert html.startswith('<!DOCTYPE html>\n<html lang="en">')
    assert "<h2>What happened</h2>" in html and "2 sweep points · mode link" in html
    assert "100/s open loop, timeout 1.0 s" in html and "O que aconteceu" not in html
