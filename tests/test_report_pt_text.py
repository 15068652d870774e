"""Issue 11, item 2: the report's sentences (report.md, and what `lab demo` prints) in Portuguese.

lab.report.summary makes every sentence the terminal, report.html and report.md show; lab.report.markdown
lays them out with its own headings. With `--lang pt` all of them are Portuguese; English stays the
default and comes back unchanged.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from lab import i18n
from lab.report import load_result
from lab.report.markdown import render_markdown
from lab.report.summary import (
    demo_explanation,
    link_drop_line,
    retransmission_sentence,
    side_by_side,
    what_happened,
    why_text,
)

DATA = Path(__file__).resolve().parent / "data"


def _payload() -> dict:
    """The sample run with one of everything the story tells: TCP skipped at the first point, a full
    queue, duplicates and reordering, a protocol cut short, the run interrupted, a failed point, the
    malformed-packet atlas."""
    payload = copy.deepcopy(load_result(DATA / "sample-run"))
    first, lossy = payload["points"]
    first["skipped"] = {"tcp": "no CAP_NET_ADMIN"}
    first["results"] = [r for r in first["results"] if r["protocol"] != "tcp"]
    udp = next(r for r in lossy["results"] if r["protocol"] == "udp")
    udp["link"] = {"forward": {"dropped_loss": 40, "dropped_queue": 5}, "reverse": {"dropped_loss": 11}}
    udp.update(duplicates=2, reordered=3)
    udp["notes"]["interrupted"] = True
    payload["interrupted"] = True
    payload["error"] = {"point": "loss=20%", "message": "boom"}
    payload["atlas"] = json.loads((DATA / "sample-atlas.json").read_text(encoding="utf-8"))
    return payload


# Sentences and headings of the English report that must all be gone in Portuguese.
ENGLISH = (
    "## What happened",
    "## Summary",
    "## Retransmissions and link drops",
    "## Malformed-packet atlas",
    "## Environment",
    "Seed 1, started",
    "Interrupted (Ctrl-C)",
    "Link: ",
    "Link round-trip drop rate",
    "no impairment",
    "delivered all",
    "lost 17.0% of probes",
    "the link predicted",
    "the link's queue was full",
    "the longest run of consecutive losses",
    " saw ",
    "was cut short",
    "was skipped",
    "The run was interrupted",
    "failed: boom",
    "Why they differ",
    "hands each probe to the network once",
    "numbers every byte",
    "retransmitted 57 segments although the link dropped none",
    "cases behaved as expected",
    "| sent |",
    "| received |",
    "| loss |",
    "| reordered |",
    "| duplicates |",
    "| retransmits |",
    "server alive",
    "Counters:",
    " pass: ",
)


def test_markdown_report_in_portuguese(portuguese):
    md = render_markdown(_payload())
    for text in (
        "## O que aconteceu",
        "## Resumo",
        "## Retransmissões e descartes do enlace",
        "## Atlas de pacotes malformados",
        "## Ambiente",
        "Semente 1, iniciado em 2026-01-01T00:00:00+00:00.",
        "**Interrompido (Ctrl-C): só os pontos medidos antes disso são mostrados.**",
        "Enlace: perda 10%, atraso 20ms.",
        "Enlace: sem defeitos.",
        "Taxa de descarte de ida e volta do enlace: 19.0%",
        "O TCP foi pulado: no CAP_NET_ADMIN",  # the reason is the run's own text
        "O UDP entregou todas as 300 sondas.",
        "O TCP entregou todas as 300 sondas, embora o enlace tenha descartado pacotes (cerca de 19.0% das "
        "idas e voltas): ele retransmitiu 57 segmentos.",
        "O UDP perdeu 17.0% das sondas (51 de 300) (o enlace previa 19.0%); a fila do enlace encheu e "
        "descartou 5 pacotes (RTT mediano 41.1 ms)",
        "Sondas do UDP: 2 duplicadas, 3 reordenadas.",
        "A execução do UDP foi interrompida após 300 das 300 sondas planejadas",
        "**interrupção**: A execução foi interrompida (Ctrl-C); estes são os pontos medidos até aqui.",
        "**erro**: O ponto loss=20% falhou: boom; os pontos anteriores a ele são mostrados.",
        "Por que eles diferem: O UDP entrega cada sonda à rede uma única vez",
        "o TCP paga a confiabilidade em latência",
        "O TCP retransmitiu 57 segmentos, embora o enlace não tenha descartado nenhum pacote",
        "| enviadas | pulado | 300 |",
        "| recebidas |",
        "| perda | 0.0% | 17.0% |",
        "| RTT p50 ms |",
        "| reordenadas |",
        "| duplicadas |",
        "| retransmissões |",
        "passou: ",
        "3 de 3 casos se comportaram como esperado.",
        "| caso | camada | defeito | esperado | veredito | servidor ativo |",
        "Contadores:",
    ):
        assert text in md, text
    leftovers = [text for text in ENGLISH if text in md]
    assert not leftovers, leftovers


def test_tail_growth_in_portuguese(portuguese):
    story = dict(what_happened(load_result(DATA / "sample-run")))
    assert story["loss=10%"].startswith(
        "O TCP entregou todas as 300 sondas, mas o seu RTT p99 subiu de 2.1 ms (em loss=0%) para 284 ms "
        "porque 57 segmentos perdidos foram retransmitidos. O UDP perdeu 17.0% das sondas (51 de 300)"
    )


def test_head_of_line_sentences_in_portuguese(portuguese):
    payload = load_result(DATA / "sample-hol")
    story = dict(what_happened(payload))["perda 5%, atraso 10ms"]
    assert "Bloqueio de cabeça de fila (4 fluxos): uma perda em um fluxo travou os outros: 39 de 300 " \
           "sondas do TCP esperaram atrás da retransmissão de outro fluxo; UDP: 0." in story
    assert "o seu RTT p99 (55.6 ms) fica bem acima da mediana (23.3 ms), o custo de 27 segmentos " \
           "retransmitidos" in story
    rows = dict(side_by_side(payload["points"][0], ["tcp", "udp"]))
    assert rows["bloqueadas na cabeça da fila"] == ["39", "0"]
    md = render_markdown(payload)
    assert "O enlace descartou 43 pacotes durante a execução do TCP, mas o TCP retransmitiu só 27 " \
           "segmentos" in md
    assert "Head-of-line blocking" not in md and "head-of-line blocked" not in md


def test_retransmission_notes_in_portuguese(portuguese):
    def tcp(drops: int, rexmit: int, reordered: int = 0) -> dict:
        return {
            "protocol": "tcp",
            "observations": {"tcp": {"tcp_info": {"total_retrans": rexmit}}},
            "kernel": {"server": {"TcpRetransSegs": 0}},
            "link": {"forward": {"dropped_loss": drops, "dropped_queue": 0, "reordered": reordered}},
        }

    assert retransmission_sentence(tcp(3, 8, reordered=4)).startswith(
        "O TCP retransmitiu 8 segmentos para os 3 pacotes que o enlace descartou: uma retransmissão "
        "também pode ser descartada, e um segmento que está só atrasado ou foi ultrapassado (o enlace "
        "reordenou 4 pacotes)"
    )
    assert "três ACKs duplicados disparam uma retransmissão rápida" in retransmission_sentence(
        tcp(0, 5, reordered=9)
    )


def test_demo_explanation_in_portuguese(portuguese):
    both, udp_only = demo_explanation(["tcp", "udp"]), demo_explanation(["udp"], ["tcp"])
    assert both.startswith(
        "Os dois protocolos atravessaram o mesmo enlace com defeitos, com a mesma semente. O UDP entrega "
        "cada sonda"
    )
    assert udp_only.startswith("Só o UDP pôde atravessar o enlace com defeitos aqui")
    assert "`sudo make demo`" in udp_only
    for text in (both, udp_only):
        assert "UDP hands" not in text and "TCP numbers" not in text and "crossed" not in text


def test_english_is_back_and_unchanged_after_portuguese():
    payload = _payload()
    i18n.set_language("pt")
    try:
        assert "## O que aconteceu" in render_markdown(payload)
    finally:
        i18n.set_language("en")
    md = render_markdown(payload)
    assert "## What happened" in md and "O que aconteceu" not in md
    assert "UDP lost 17.0% of probes (51 of 300) (the link predicted 19.0%); the link's queue was full " \
           "and dropped 5 packets (median RTT 41.1 ms)" in md
    assert "| sent | skipped | 300 |" in md and "Link: loss 10%, delay 20ms." in md
    assert why_text(payload).startswith("Why they differ: UDP hands each probe")
    assert link_drop_line(payload["points"][1]).startswith("Link round-trip drop rate: 19.0% (a probe")
    assert demo_explanation(["tcp", "udp"]).startswith("Both protocols crossed the same impaired link")


def test_a_check_made_in_either_language_names_the_links_rate_once(portuguese):
    """lab run --lang pt stores the link's label in Portuguese: neither language shows it as a special
    prediction (no 'predicted loss' row, no label after the link's figure); the fragment formula stays."""
    from lab.scenario import Expectation, evaluate

    payload = copy.deepcopy(load_result(DATA / "sample-run"))
    point = payload["points"][1]
    udp = next(r for r in point["results"] if r["protocol"] == "udp")
    point["checks"]["udp"] = [evaluate(Expectation(metric="loss_ratio", kind="within_ci"), udp).to_dict()]
    assert point["checks"]["udp"][0]["expected_label"] == "perda prevista pelo enlace"
    for language, predicted_row, plain in (
        ("pt", "perda prevista", "(o enlace previa 19.0%);"),
        ("en", "predicted loss", "(the link predicted 19.0%);"),
    ):
        i18n.set_language(language)
        assert predicted_row not in dict(side_by_side(point, ["tcp", "udp"]))
        assert plain in dict(what_happened(payload))["loss=10%"]
    i18n.set_language("pt")
    udp["size"] = 4000  # 3 fragments at MTU 1500: the check predicts more than the link's rate
    point["checks"]["udp"] = [
        evaluate(Expectation(metric="loss_ratio", kind="within_ci_fragments"), udp, mtu=1500).to_dict()
    ]
    assert dict(side_by_side(point, ["tcp", "udp"]))["perda prevista"] == ["-", "46.9%"]
    assert "(o enlace previa 46.9%: 1-(1-0.1900)^3 para 3 fragmentos/datagrama com MTU 1500)" in dict(
        what_happened(payload)
    )["loss=10%"]
