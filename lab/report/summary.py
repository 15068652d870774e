"""From result.json data to the figures and sentences every report format shows. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lab.i18n import N_, _
from lab.metric_registry import format_percent, format_rate, format_us, table_rows, value_of
from lab.metric_registry import goodput_tells as goodput_tells  # the goodput row's rule (plots use it)
from lab.records import hol_of, timeline_of, was_interrupted
from lab.report.appearance import label as protocol_label
from lab.report.appearance import reliable as protocol_reliable

US_PER_MS = 1000.0
TAIL_GROWTH_NOTABLE = 1.5  # a p99 at least 1.5x the p50 is worth a sentence about the tail...
TAIL_ABS_NOTABLE_US = 5000.0  # ...if it is also 5 ms longer (sub-ms loopback noise is not a story)


def fmt_ms(us: float | None) -> str:
    """Microseconds as a short millisecond string ('-' when missing)."""
    return format_us(us, "ms")


fmt_pct = format_percent  # a ratio as a percentage string ('-' when missing)
fmt_rate = format_rate  # bits per second with a unit
fmt_us = format_us  # microseconds in 'ms' or 'µs', short ('-' when missing)


def retransmits(result: Mapping[str, Any]) -> int | None:
    """Segments a run retransmitted (the `retransmits` metric; None for a protocol without it)."""
    value = value_of(result, "retransmits")
    return None if value is None else int(value)


# The side-by-side table's rows are lab.metric_registry's metrics with a label, in its order; labels
# are marked for translation there and translated (`_(label)`) when a table is made.
PREDICTED_ROW = N_("predicted loss")  # only where a protocol's prediction is not the link's drop rate
SKIPPED_CELL = N_("skipped")  # a skipped protocol's cells (`_(SKIPPED_CELL)` in the language in use)


def rtt_unit(results: list[Mapping[str, Any]]) -> str:
    """'µs' when every median RTT is under a millisecond (loopback), else 'ms': 0.045 ms reads worse."""
    medians = [(r.get("rtt_us") or {}).get("p50") for r in results]
    medians = [m for m in medians if m is not None]
    return "µs" if medians and max(medians) < US_PER_MS else "ms"


def link_drop_rate(point: Mapping[str, Any]) -> float | None:
    """The link's round-trip drop rate: the share of probes or their echoes its loss drops (None if not
    known). It is the same for every protocol on the point; only a protocol without retransmission
    (UDP) is expected to lose it."""
    for result in point.get("results", []):
        if result.get("expected_loss_ratio") is not None:
            return float(result["expected_loss_ratio"])
    return None


def link_drop_line(point: Mapping[str, Any]) -> str:
    """One line above a point's table: the link's round-trip drop rate ('' when not known)."""
    rate = link_drop_rate(point)
    if rate is None:
        return ""
    return _(
        "Link round-trip drop rate: {rate} (a probe or its echo dropped by the link: what a protocol "
        "that does not retransmit should lose)"
    ).format(rate=fmt_pct(rate))


def protocols_of(payload: Mapping[str, Any]) -> list[str]:
    """Protocols in the order the scenario lists them."""
    listed = list((payload.get("scenario") or {}).get("protocols") or [])
    for point in payload.get("points", []):
        for result in point.get("results", []):
            if result["protocol"] not in listed:
                listed.append(result["protocol"])
    return listed


def results_by_protocol(point: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A point's results keyed by protocol name."""
    return {r["protocol"]: r for r in point.get("results", [])}


def expected_loss(point: Mapping[str, Any], result: Mapping[str, Any]) -> tuple[float | None, str]:
    """The loss a result should show, and where that figure comes from ('' = the link's round trip).

    A statistical loss expectation may predict more than the link's per-packet round-trip loss (a
    datagram of k IPv4 fragments is lost when any fragment is: 1-(1-e)^k); its check records the
    prediction it tested, and the report shows that one.
    """
    for check in (point.get("checks") or {}).get(result.get("protocol"), []):
        if check.get("metric") == "loss_ratio" and check.get("expected") is not None:
            label = str(check.get("expected_label") or "")
            expected = float(check["expected"])
            return expected, "" if _is_link_label(label, expected, result) else label
    return result.get("expected_loss_ratio"), ""


LINK_LABEL = "link's expected loss"  # lab.scenario's label for a plain within_ci check (translated)


def _is_link_label(label: str, expected: float, result: Mapping[str, Any]) -> bool:
    """Whether a check's label names the link's own round-trip rate: lab.scenario's label, in English
    or in the language in use, or (a result.json written in another language) any label but the
    fragment formula `1-(1-e)^k ...` on a check that predicted exactly the link's rate."""
    if label in (LINK_LABEL, _(LINK_LABEL)):
        return True
    link_rate = result.get("expected_loss_ratio")
    return not label.startswith("1-(") and link_rate is not None and abs(float(link_rate) - expected) < 1e-12


def side_by_side(point: Mapping[str, Any], protocols: list[str]) -> list[tuple[str, list[str]]]:
    """Rows (metric, [value per protocol]) for one point; skipped protocols show 'skipped'.

    The link's round-trip drop rate is not a row (link_drop_line): it is the link's, not a protocol's.
    A 'predicted loss' row appears only when a protocol's check predicted something else (a datagram
    of several fragments); head-of-line only for several streams; goodput where it tells something.
    """
    by_proto = results_by_protocol(point)
    unit = rtt_unit(list(by_proto.values()))
    special = {p: expected_loss(point, r) for p, r in by_proto.items()}
    rows = []
    for metric in table_rows():
        if metric.shown is not None and not metric.shown(point):
            continue
        cells = []
        for proto in protocols:
            result = by_proto.get(proto)
            skipped = proto in (point.get("skipped") or {})
            if not result:
                cells.append(_(SKIPPED_CELL) if skipped else "-")
            else:
                cells.append(metric.format_cell(metric.value(result), unit))
        rows.append((f"{_(metric.label)} {unit}" if metric.timed else _(metric.label), cells))
        if metric.name == "loss_ratio" and any(source for _value, source in special.values()):
            predicted = [
                fmt_pct(special[p][0]) if p in special and special[p][1] else "-" for p in protocols
            ]
            rows.append((_(PREDICTED_ROW), predicted))
    return rows


def _link_count(result: Mapping[str, Any], *counters: str) -> int:
    """The sum of these link counters over both directions during this result's run."""
    link = result.get("link") or {}
    return sum(
        int(d.get(name, 0) or 0) for d in link.values() if isinstance(d, Mapping) for name in counters
    )


def queue_drops(result: Mapping[str, Any]) -> int:
    """Packets the link's queue dropped (rate + limit) during this result's run, both directions."""
    return _link_count(result, "dropped_queue")


def timeline_rows(result: Mapping[str, Any]) -> list[tuple[int, float, float | None, int]]:
    """The per-probe timeline as (seq, t_ms, rtt_ms | None, stream); 3-column rows of older
    result.json files (before the stream column) read as stream 0."""
    rows = timeline_of(result)
    return [(row[0], row[1], row[2], row[3] if len(row) > 3 else 0) for row in rows]


def stream_count(result: Mapping[str, Any]) -> int:
    """Logical streams of a run: from its head-of-line figures, else from its timeline (1 if neither)."""
    hol = hol_of(result) or {}
    if hol.get("streams"):
        return int(hol["streams"])
    return 1 + max((row[3] for row in timeline_rows(result)), default=0)


def longest_loss_run(result: Mapping[str, Any]) -> int:
    """Most consecutive sequence numbers lost, from the per-probe timeline (0 without one)."""
    longest = run = 0
    for _seq, _t, rtt, _stream in timeline_rows(result):
        run = run + 1 if rtt is None else 0
        longest = max(longest, run)
    return longest


def _point_sentence(point: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> list[str]:
    sentences = []
    by_proto = results_by_protocol(point)
    for proto, result in by_proto.items():
        name = protocol_label(proto)
        sent, received, lost = result["sent"], result["received"], result["lost"]
        expected, source = expected_loss(point, result)
        p50 = (result.get("rtt_us") or {}).get("p50")
        queued = queue_drops(result)
        rexmit = retransmits(result)
        if lost:
            figures = {"name": name, "ratio": fmt_pct(result["loss_ratio"]), "lost": lost, "sent": sent}
            if expected is not None and (expected or not queued):  # 0% says nothing about queue drops
                if source:
                    text = _("{name} lost {ratio} of probes ({lost} of {sent}) (the link predicted "
                             "{expected}: {source})")
                else:
                    text = _("{name} lost {ratio} of probes ({lost} of {sent}) (the link predicted "
                             "{expected})")
                clauses = [text.format(expected=fmt_pct(expected), source=source, **figures)]
            else:
                clauses = [_("{name} lost {ratio} of probes ({lost} of {sent})").format(**figures)]
            if queued:
                clauses.append(_("the link's queue was full and dropped {queued} packets (median RTT "
                                 "{p50} ms)").format(queued=queued, p50=fmt_ms(p50)))
            burst = longest_loss_run(result)
            if burst > 1:
                clauses.append(
                    _("the longest run of consecutive losses was {burst} probes").format(burst=burst)
                )
            sentences.append("; ".join(clauses) + ".")
        else:
            delivered, told_rexmit = _delivered_clause(name, sent, result, expected, baseline)
            clauses = [delivered]
            if queued:
                if rexmit and not told_rexmit:
                    text = _("the link's queue was full and dropped {queued} packets, which it recovered by "
                             "retransmitting {rexmit} segments (median RTT {p50} ms)")
                else:
                    text = _("the link's queue was full and dropped {queued} packets (median RTT {p50} ms)")
                clauses.append(text.format(queued=queued, rexmit=rexmit, p50=fmt_ms(p50)))
            sentences.append("; ".join(clauses) + ".")
        if received < sent and lost == 0 and received:
            sentences.append(_("{name} received {received} of {sent}.").format(
                name=name, received=received, sent=sent))
        dup, reo, cor = result.get("duplicates", 0), result.get("reordered", 0), result.get("corrupted", 0)
        oddities = [
            text.format(n=n)
            for n, text in ((dup, _("{n} duplicates")), (reo, _("{n} reordered")), (cor, _("{n} corrupted")))
            if n
        ]
        if oddities:
            sentences.append(_("{name} saw {counts}.").format(name=name, counts=", ".join(oddities)))
        if was_interrupted(result):
            planned = (point.get("traffic") or {}).get("count")
            if isinstance(planned, int):
                text = _("{name}'s run was cut short after {sent} probes of the {planned} planned: its "
                         "figures cover those, and its expectations were not checked.")
            else:
                text = _("{name}'s run was cut short after {sent} probes: its figures cover those, and its "
                         "expectations were not checked.")
            sentences.append(text.format(name=name, sent=sent, planned=planned))
    hol = head_of_line_sentence(point)
    if hol:
        sentences.append(hol)
    for proto, reason in (point.get("skipped") or {}).items():
        sentences.append(_("{name} was skipped: {reason}").format(name=protocol_label(proto), reason=reason))
    return sentences


def _delivered_clause(
    name: str,
    sent: int,
    result: Mapping[str, Any],
    expected: float | None,
    baseline: Mapping[str, Any] | None,
) -> tuple[str, bool]:
    """'TCP delivered all 200 probes', and what that cost when it shows (one clause, unpunctuated),
    and whether it told the retransmissions."""
    rtt = result.get("rtt_us") or {}
    p50, p99 = rtt.get("p50"), rtt.get("p99")
    rexmit = retransmits(result)
    base = results_by_protocol(baseline).get(str(result.get("protocol"))) if baseline else None
    base_p99 = ((base or {}).get("rtt_us") or {}).get("p99")
    figures = {"name": name, "sent": sent, "rexmit": rexmit, "p50": fmt_ms(p50), "p99": fmt_ms(p99)}
    if base_p99 and p99 and p99 > TAIL_GROWTH_NOTABLE * base_p99 and p99 - base_p99 > TAIL_ABS_NOTABLE_US:
        if rexmit:
            text = _("{name} delivered all {sent} probes, but its p99 RTT grew from {base_p99} ms (at "
                     "{baseline}) to {p99} ms because {rexmit} lost segments were retransmitted")
        else:
            text = _("{name} delivered all {sent} probes, but its p99 RTT grew from {base_p99} ms (at "
                     "{baseline}) to {p99} ms")
        text = text.format(base_p99=fmt_ms(base_p99), baseline=baseline_label(baseline), **figures)
        return text, bool(rexmit)
    if p50 and p99 and p99 > TAIL_GROWTH_NOTABLE * p50 and p99 - p50 > TAIL_ABS_NOTABLE_US:
        if rexmit:
            text = _("{name} delivered all {sent} probes; its p99 RTT ({p99} ms) is well above its median "
                     "({p50} ms), the cost of {rexmit} retransmitted segments")
        else:
            text = _("{name} delivered all {sent} probes; its p99 RTT ({p99} ms) is well above its median "
                     "({p50} ms)")
        return text.format(**figures), bool(rexmit)
    if expected:
        if rexmit:
            text = _("{name} delivered all {sent} probes although the link dropped packets (about "
                     "{expected} of round trips): it retransmitted {rexmit} segments")
        else:
            text = _("{name} delivered all {sent} probes although the link dropped packets (about "
                     "{expected} of round trips)")
        return text.format(expected=fmt_pct(expected), **figures), bool(rexmit)
    return _("{name} delivered all {sent} probes").format(**figures), False


def link_drops(result: Mapping[str, Any]) -> int:
    """Packets the link dropped (loss and full queue, both directions) during this result's run."""
    return _link_count(result, "dropped_loss", "dropped_queue")


def link_reordered(result: Mapping[str, Any]) -> int:
    """Packets the link sent early (reordered), both directions, during this result's run."""
    return _link_count(result, "reordered")


def retransmission_sentence(result: Mapping[str, Any]) -> str:
    """Why a run's retransmissions differ from the link's drops ('' for a protocol without the
    `retransmits` figure, a run without link counters, or when there is nothing to explain)."""
    rexmit = retransmits(result)
    if rexmit is None or not result.get("link"):
        return ""
    drops, early = link_drops(result), link_reordered(result)
    name = protocol_label(str(result.get("protocol", "?")))
    figures = {"name": name, "rexmit": rexmit, "drops": drops, "early": early}
    if drops and rexmit < drops:
        return _(
            "The link dropped {drops} packets during {name}'s run, yet {name} retransmitted only {rexmit} "
            "segments: a dropped ACK needs no retransmission (the next ACK acknowledges everything before "
            "it, and delayed ACKs cover two segments at a time), and one retransmitted segment can carry "
            "several probes whose packets were dropped separately, so one retransmission can recover "
            "several drops."
        ).format(**figures)
    if drops and rexmit > drops:
        if early:
            return _(
                "{name} retransmitted {rexmit} segments for the {drops} packets the link dropped: a "
                "retransmission can itself be dropped, and a segment that is only late or overtaken (the "
                "link reordered {early} packets) is sent again needlessly (a spurious retransmission)."
            ).format(**figures)
        return _(
            "{name} retransmitted {rexmit} segments for the {drops} packets the link dropped: a "
            "retransmission can itself be dropped, and a segment that is only late is sent again "
            "needlessly (a spurious retransmission)."
        ).format(**figures)
    if not drops and rexmit:
        if early:
            return _(
                "{name} retransmitted {rexmit} segments although the link dropped none: it reordered "
                "{early} packets, and a segment overtaken by later ones looks lost to {name} (the receiver "
                "repeats its last ACK, and three duplicate ACKs trigger a fast retransmit), so it was "
                "sent again needlessly: spurious retransmissions."
            ).format(**figures)
        return _(
            "{name} retransmitted {rexmit} segments although the link dropped none: a segment delayed "
            "past {name}'s retransmission timeout is sent again needlessly (a spurious retransmission)."
        ).format(**figures)
    return ""


def retransmission_notes(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(point label, sentence) for every run whose retransmissions differ from the link's drops."""
    notes = []
    for point in payload.get("points", []):
        for result in point.get("results", []):
            sentence = retransmission_sentence(result)
            if sentence:
                notes.append((point_label(point), sentence))
    return notes


def head_of_line_sentence(point: Mapping[str, Any]) -> str:
    """How many probes of each protocol waited behind another stream's loss ('' for one stream)."""
    figures = [
        (protocol_label(proto), result["sent"], hol_of(result))
        for proto, result in results_by_protocol(point).items()
    ]
    figures = [(name, sent, hol) for name, sent, hol in figures if hol]
    if not figures:
        return ""
    streams = max(hol["streams"] for _name, _sent, hol in figures)
    blocking = [(name, sent, hol) for name, sent, hol in figures if hol["blocked"]]
    if not blocking:
        counts = ", ".join(f"{name}: 0" for name, _sent, _hol in figures)
        return _(
            "Head-of-line blocking ({streams} streams): no probe waited behind another stream's loss "
            "({counts})."
        ).format(streams=streams, counts=counts)
    parts = [
        _("{blocked} of {sent} {name} probes waited behind another stream's retransmission").format(
            blocked=hol["blocked"], sent=sent, name=name
        )
        for name, sent, hol in blocking
    ]
    parts += [f"{name}: 0" for name, _sent, hol in figures if not hol["blocked"]]
    return _(
        "Head-of-line blocking ({streams} streams): a loss on one stream stalled the others: {parts}."
    ).format(streams=streams, parts="; ".join(parts))


def point_label(point: Mapping[str, Any] | None) -> str:
    """How a report names a point: its sweep id, or its link for a single point (never 'base')."""
    if not point:
        return "-"
    return link_description(point) if point.get("id") == "base" else str(point["id"])


baseline_label = point_label  # the name the story used first


# Why protocols differ, phrased by what a protocol does (its `reliable` attribute), not by its name.
UNRELIABLE_WHY = N_(
    "{name} hands each probe to the network once: when the link drops it (on the way out or back), it "
    "is gone, so {name}'s loss is close to the link's round-trip drop rate."
)
SAME_FOR = N_("The same holds for {names}.")
RELIABLE_WHY = N_(
    "{name} retransmits what was not acknowledged, so it delivers everything, but each retransmission "
    "waits for a timeout or duplicate acknowledgements, and the probes queued behind a lost one wait "
    "too: {name} pays for reliability in latency (its p99 RTT and the flat steps in the arrival "
    "timeline)."
)


def why_sentences(protocols: list[str]) -> list[str]:
    """Why each of these protocols loses what it loses: the ones that do not retransmit first, then
    those that do (a protocol this install does not know says nothing)."""
    kinds = {p: protocol_reliable(p) for p in protocols}
    out = []
    for text, kind in ((UNRELIABLE_WHY, False), (RELIABLE_WHY, True)):
        alike = [p for p in protocols if kinds[p] is kind]
        if alike:  # the explanation once, then who else it holds for (eleven protocols, two stories)
            out.append(_(text).format(name=protocol_label(alike[0])))
        if len(alike) > 1:
            out.append(_(SAME_FOR).format(names=", ".join(map(protocol_label, alike[1:]))))
    return out


def _both_kinds(protocols: list[str]) -> bool:
    """Whether a protocol that retransmits and one that does not are both among these."""
    kinds = {protocol_reliable(p) for p in protocols}
    return True in kinds and False in kinds


def demo_explanation(ran: list[str], skipped: list[str] | tuple[str, ...] = ()) -> str:
    """What `lab demo` prints after its table: why the protocols that `ran` differ, or, where only some
    could run (the others `skipped`, e.g. without root), why those lose what they lose."""
    if len(ran) > 1 and _both_kinds(ran):
        if len(ran) == 2:
            crossed = _("Both protocols crossed the same impaired link with the same seed.")
        else:
            crossed = _("All {count} protocols crossed the same impaired link with the same seed.").format(
                count=len(ran))
        return " ".join((crossed, *why_sentences(ran)))
    whys = why_sentences(ran)
    if not skipped or not ran:
        return " ".join(whys)
    figures = {"names": ", ".join(map(protocol_label, ran)),
               "skipped": ", ".join(map(protocol_label, skipped))}
    if len(ran) + len(skipped) == 2:
        only = _("Only {names} could cross the impaired link here (see why {skipped} was skipped above; "
                 "`sudo make demo` runs both).")
    else:
        only = _("Only {names} could cross the impaired link here (see why {skipped} were skipped above; "
                 "`sudo make demo` runs them all).")
    return " ".join((only.format(**figures), *whys))


def why_text(payload: Mapping[str, Any]) -> str:
    """The report's 'why' paragraph, for the first point where a protocol that retransmits and one that
    does not both ran ('' if there is none)."""
    for point in payload.get("points", []):
        ran = [str(p) for p in dict.fromkeys(r.get("protocol") for r in point.get("results", []))]
        if _both_kinds(ran):
            return " ".join((_("Why they differ:"), *why_sentences(ran)))
    return ""


def what_happened(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """One plain-language paragraph per sweep point: [(point id, paragraph)]."""
    from lab.report.flows import has_flows, headline, point_story

    points = payload.get("points", [])
    baseline = points[0] if points else None
    out = []
    first = headline(payload)  # bulk points and flow groups: the story across the points comes first
    if first:
        out.append((_("in short"), first))
    for point in points:
        if has_flows(point):
            out.append((point_label(point), point_story(point) or _("Nothing was measured.")))
            continue
        sentences = _point_sentence(point, baseline if point is not baseline else None)
        out.append((point_label(point), " ".join(sentences) or _("Nothing was measured.")))
    if payload.get("interrupted"):
        text = _("The run was interrupted ({signal}); these are the points measured so far.")
        out.append((_("interrupted"), text.format(signal=interrupted_by(payload))))
    error = payload.get("error")
    if error:
        text = _("Point {point} failed: {message}; the points before it are shown.")
        text = text.format(point=error.get("point", "?"), message=error.get("message", "?"))
        out.append((_("error"), text))
    return out


def interrupted_by(payload: Mapping[str, Any]) -> str:
    """What stopped an interrupted run: `Ctrl-C` (older files say nothing else), `SIGTERM`..."""
    return str(payload.get("interrupted_by") or "Ctrl-C")


# A link's options as a report names them (the scenario file's keys in English).
LINK_OPTION_NAMES = {
    "loss": N_("loss"),
    "delay": N_("delay"),
    "jitter": N_("jitter"),
    "distribution": N_("distribution"),
    "delay_correlation": N_("delay_correlation"),
    "reorder": N_("reorder"),
    "duplicate": N_("duplicate"),
    "corrupt": N_("corrupt"),
    "rate": N_("rate"),
    "limit": N_("limit"),
    "limit_bytes": N_("limit_bytes"),
}


# The link's two directions as a report names them (lab.link.models.DIRECTION_NAMES).
LINK_DIRECTION_NAMES = {"forward": N_("client→server"), "reverse": N_("server→client")}


def link_description(point: Mapping[str, Any]) -> str:
    """A point's link in one line: `loss 10%, delay 20ms` when both directions are alike (its
    [link] as written), `client→server: loss 20%, delay 10ms; server→client: delay 2ms` when they
    differ (from the parsed `link_config`), or `no impairment`."""
    link = point.get("link") or {}
    tables = {d: link[d] for d in LINK_DIRECTION_NAMES if isinstance(link.get(d), Mapping)}
    config = point.get("link_config")
    if isinstance(config, Mapping) and all(isinstance(config.get(d), Mapping) for d in LINK_DIRECTION_NAMES):
        if config["forward"] != config["reverse"]:
            return _by_direction({d: config[d] for d in LINK_DIRECTION_NAMES})
        if tables:  # alike, though written per direction
            return _link_options_text(config["forward"])
    # Alike both ways, or no parsed config (an older file, a run that did not impair): as written.
    shared = {k: v for k, v in link.items() if k not in tables}
    if not tables:
        return _link_options_text(shared)
    return "; ".join(([_link_options_text(shared)] if shared else []) + [_by_direction(tables)])


def _by_direction(options: Mapping[str, Mapping[str, Any]]) -> str:
    return "; ".join(f"{_(LINK_DIRECTION_NAMES[d])}: {_link_options_text(o)}" for d, o in options.items())


def _link_options_text(options: Mapping[str, Any]) -> str:
    text = ", ".join(f"{_(LINK_OPTION_NAMES[k]) if k in LINK_OPTION_NAMES else k} {v}" for k, v in
                     options.items())
    return text or _("no impairment")


def counters_rows(point: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Rows (protocol, source, 'name=value ...') of the link's and the kernel's counters, then each
    group of counters a protocol observed (`observations`: TCP's `tcp_info`; single values such as
    `tcp_nodelay` are settings, not counters, and are left out)."""
    rows = []
    for result in point.get("results", []):
        sources = [(source, result.get(source)) for source in ("link", "kernel")]
        sources += [
            (name, figures)
            for observed in (result.get("observations") or {}).values()
            for name, figures in observed.items()
            if isinstance(figures, Mapping)
        ]
        rows += [(result["protocol"], source, _flatten(data)) for source, data in sources if data]
    return rows


def _flatten(data: Any, prefix: str = "") -> str:
    """Nested counters as `a.b=1` lines; zero counters left out (they are the majority)."""
    if isinstance(data, Mapping):
        parts = [_flatten(v, f"{prefix}{k}.") for k, v in data.items()]
        return "\n".join(p for p in parts if p)
    if data == 0 or data is None:
        return ""
    return f"{prefix[:-1]}={data}"


def flat_environment(env: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """The run's environment as (dotted key, value) rows: `packages.scipy`, `1.13.0`."""
    rows: list[tuple[str, str]] = []
    for key, value in env.items():
        if isinstance(value, Mapping):
            rows.extend(flat_environment(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", str(value)))
    return rows


def atlas_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """One atlas case with every column a report shows (older or edited rows may lack some)."""
    expected = row.get("expected_verdict") or ""
    if not isinstance(expected, str):  # several verdicts would do
        either = " " + _("or") + " "
        expected = either.join(map(str, expected))
    return {
        "name": str(row.get("name", "?")),
        "layer": str(row.get("layer", "")),
        "defect": str(row.get("defect", "")),
        "expected_verdict": expected,
        "verdict": str(row.get("verdict", "")),
        "evidence": str(row.get("evidence") or ""),
        "matches_expected": bool(row.get("matches_expected")),
        "server_alive": bool(row.get("server_alive")),
    }
