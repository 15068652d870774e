"""The live arrival strip of `lab demo --live`: every probe's fate, drawn in the terminal as it happens.

One strip per protocol, one cell per probe in send order (wrapping over a few rows): a bar whose
height is the probe's round-trip time on a log scale shared by every strip (so TCP's stalls stand
tall next to UDP's flat line), a red ✗ for a probe that never came back, a dim dot for one still on
its way. A class watches UDP's gaps and TCP's stalls appear, side by side, on the same scale.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from lab.i18n import N_, _

BARS = "▁▂▃▄▅▆▇█"
LOST, WAITING = "✗", "·"
MAX_WIDTH = 100  # cells per row: readable on a projector
MAX_ROWS = 10  # beyond it, several probes share a cell
SEND_SLACK_S = 0.2  # progress reports come every 0.1 s: a probe may have left up to this much earlier
LEGEND = N_("{low}…{high} round-trip time (log scale up to the timeout)   {lost} lost   {waiting} on its way")
SHARED_CELLS = N_(" (a cell holds several probes: {lost} when most of them were lost)")


@dataclass(slots=True)
class ProbeStrip:
    """What one protocol's run looked like so far; `render` draws it."""

    label: str
    count: int
    timeout_s: float
    style: str = "bold"
    sent: int = 0
    rtt_ms: dict[int, float] = field(default_factory=dict)
    sent_at: list[float] = field(default_factory=list)  # local clock when each probe was reported sent
    lost: set[int] | None = None  # exact, once the run's result is known
    clock: Any = time.monotonic

    def progress(self, sent: int, total: int, arrivals: list[tuple[int, float]] | None = None) -> None:
        """A client progress report: probes sent so far and replies since the last report."""
        self.count = max(self.count, total)
        now = self.clock()
        self.sent_at.extend([now] * max(0, sent - self.sent))
        self.sent = max(self.sent, sent)
        for seq, rtt in arrivals or ():
            if rtt >= 0 and seq not in self.rtt_ms:
                self.rtt_ms[seq] = rtt

    def finish(self, timeline: list[list[Any]] | None) -> None:
        """The run is over: take each probe's fate from its result's timeline ([seq, t, rtt|None, ...])."""
        if not timeline:
            return
        self.lost = set()
        for row in timeline:
            seq, rtt = int(row[0]), row[2]
            if rtt is None:
                self.lost.add(seq)
            else:
                self.rtt_ms[seq] = float(rtt)
        self.sent = max(self.sent, max((int(r[0]) for r in timeline), default=-1) + 1)

    def fate(self, seq: int, now: float) -> str:
        """'rtt', 'lost', 'waiting' or 'unsent' for probe `seq`."""
        if seq in self.rtt_ms:
            return "rtt"
        if seq >= self.sent:
            return "unsent"
        if self.lost is not None:
            return "lost" if seq in self.lost else "waiting"
        sent_at = self.sent_at[seq] if seq < len(self.sent_at) else now
        return "lost" if now - sent_at > self.timeout_s + SEND_SLACK_S else "waiting"


def _glyph(rtt_ms: float, floor_ms: float, timeout_ms: float) -> str:
    if rtt_ms <= floor_ms or timeout_ms <= floor_ms:
        return BARS[0]
    level = math.log(rtt_ms / floor_ms) / math.log(timeout_ms / floor_ms)
    return BARS[min(len(BARS) - 1, max(0, int(level * len(BARS))))]


def render_strips(strips: list[ProbeStrip], width: int, now: float | None = None) -> Any:
    """A rich renderable: the strips on one shared RTT scale, and the legend."""
    from rich.console import Group
    from rich.text import Text

    now = time.monotonic() if now is None else now
    seen = [r for s in strips for r in s.rtt_ms.values() if r > 0]
    floor_ms = min(seen) if seen else 1.0
    timeout_ms = max((s.timeout_s for s in strips), default=1.0) * 1000
    width = max(20, min(MAX_WIDTH, width - 12))
    lines: list[Any] = []
    for strip in strips:
        per_cell = max(1, math.ceil(strip.count / (width * MAX_ROWS)))
        cells = math.ceil(strip.count / per_cell)
        text = Text()
        for row_start in range(0, cells, width):
            text.append(f"{strip.label:>8} " if row_start == 0 else " " * 9, style=strip.style)
            for cell in range(row_start, min(cells, row_start + width)):
                text.append(*_cell(strip, range(cell * per_cell, min(strip.count, (cell + 1) * per_cell)),
                                   now, floor_ms, timeout_ms))
            text.append("\n")
        lines.append(text)
    shared = any(math.ceil(s.count / (width * MAX_ROWS)) > 1 for s in strips)
    legend = _(LEGEND).format(low=BARS[0], high=BARS[-1], lost=LOST, waiting=WAITING)
    lines.append(Text(legend + (_(SHARED_CELLS).format(lost=LOST) if shared else ""), style="dim"))
    return Group(*lines)


def _cell(strip: ProbeStrip, seqs: range, now: float, floor_ms: float, timeout_ms: float) -> tuple[str, str]:
    fates = [(strip.fate(seq, now), seq) for seq in seqs]
    lost = sum(f == "lost" for f, _ in fates)
    if 2 * lost > len(fates):  # one probe a cell: lost is lost; shared: when most were
        return LOST, "bold red"
    if any(f == "waiting" for f, _ in fates):
        return WAITING, "dim"
    rtts = [strip.rtt_ms[seq] for f, seq in fates if f == "rtt"]
    if not rtts:
        return " ", ""
    return _glyph(max(rtts), floor_ms, timeout_ms), strip.style.replace("bold ", "")
