"""Textbook oracles: what a flow should achieve, beside what it did (docs/architecture.md#flows-and-oracles).

Pure functions of plain numbers, tested against hand-computed answers (tests/test_theory.py):

- `mathis`: the steady-state throughput of a Reno-style TCP flow, MSS/RTT x C/sqrt(p)
  (Mathis, Semke, Mahdavi, Ott, "The macroscopic behavior of the TCP congestion avoidance
  algorithm", CCR 1997; C = sqrt(3/2) for a receiver that ACKs every segment);
- `arq_utilisation`: the share of a link's time an ARQ sender keeps busy with new data
  (stop-and-wait 1/(1+2a); go-back-N and selective repeat min(1, N/(1+2a)); both times (1-p));
- `jain_index`: Jain's fairness index of a set of throughputs (Jain, Chiu, Hawe, DEC-TR-301, 1984);
- `rpm`: responsiveness in round trips per minute, 60 / RTT, the figure networkQuality-style tools
  report (IETF IPPM "Responsiveness under Working Conditions" draft), aggregated as that draft
  does: a single-sided 95 % trimmed mean, dropping the slowest 5 % of the samples (the draft's
  reference client, network-quality/goresponsiveness, trims 5 % by default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MATHIS_C = math.sqrt(3 / 2)  # ACK every segment; sqrt(3/4) with delayed ACKs (one ACK per 2 segments)
RPM_TRIM_PERCENTILE = 95  # the draft's single-sided trimmed mean keeps the samples up to the 95th percentile
ARQ_SCHEMES = ("sw", "gbn", "sr")


def mathis(mss_bytes: float, rtt_s: float, p: float, c: float = MATHIS_C) -> float:
    """Predicted goodput in bits/s: (MSS x 8 / RTT) x C / sqrt(p). `math.inf` when p is 0 (the
    model has no loss to limit the window: the link's rate is then the only ceiling)."""
    if mss_bytes <= 0 or rtt_s <= 0:
        raise ValueError(f"mathis needs MSS > 0 and RTT > 0, got MSS {mss_bytes!r}, RTT {rtt_s!r}")
    if not 0 <= p <= 1:
        raise ValueError(f"mathis needs a loss probability in [0, 1], got {p!r}")
    if p == 0:
        return math.inf
    return mss_bytes * 8 / rtt_s * c / math.sqrt(p)


def propagation_ratio(frame_bytes: float, rate_bps: float, rtt_s: float) -> float:
    """The textbook `a`: one-way propagation time over one frame's transmission time, taking the
    one-way time as half the round trip (`rtt_s`, the link's delays without the frame's own)."""
    if frame_bytes <= 0 or rate_bps <= 0 or rtt_s < 0:
        raise ValueError("propagation_ratio needs frame > 0 bytes, rate > 0 and rtt >= 0")
    return (rtt_s / 2) / (frame_bytes * 8 / rate_bps)


def arq_utilisation(scheme: str, window: int, a: float, p: float = 0.0) -> float:
    """Textbook link utilisation of an ARQ sender: stop-and-wait 1/(1+2a); go-back-N and selective
    repeat min(1, N/(1+2a)) with N the window; times (1-p), the share of frames not lost.

    (1-p) is the first-order correction the issue states: it counts a lost frame's slot as wasted
    and ignores that go-back-N also resends the frames after it, so at high loss and a window
    larger than 1+2a it flatters go-back-N.
    """
    if scheme not in ARQ_SCHEMES:
        raise ValueError(f"unknown ARQ scheme {scheme!r}; one of {', '.join(ARQ_SCHEMES)}")
    if a < 0 or not 0 <= p <= 1 or window < 1:
        raise ValueError("arq_utilisation needs a >= 0, 0 <= p <= 1 and a window >= 1")
    window = 1 if scheme == "sw" else window
    return min(1.0, window / (1 + 2 * a)) * (1 - p)


def jain_index(values: Sequence[float]) -> float:
    """(sum x)^2 / (n x sum x^2): 1 when every flow got the same, 1/n when one got everything.
    An empty list, or every value 0, is an error: nothing to judge fairness by."""
    xs = [float(v) for v in values]
    if not xs or any(v < 0 for v in xs):
        raise ValueError("jain_index needs at least one value, none negative")
    squares = sum(v * v for v in xs)
    if squares == 0:
        raise ValueError("jain_index: every value is 0")
    return min(1.0, sum(xs) ** 2 / (len(xs) * squares))  # rounding may not lift it over 1


def trimmed_mean(values: Sequence[float], keep_percentile: float = RPM_TRIM_PERCENTILE) -> float:
    """Mean of the values at or below the `keep_percentile`th percentile (nearest rank): the top
    (100 - keep_percentile) % are dropped, at least one value is kept."""
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("trimmed_mean needs at least one value")
    keep = max(1, math.ceil(len(xs) * keep_percentile / 100))
    kept = xs[:keep]
    return sum(kept) / len(kept)


def rpm(rtt_s: Sequence[float], keep_percentile: float = RPM_TRIM_PERCENTILE) -> float:
    """Round trips per minute: 60 / the trimmed mean of the RTT samples (seconds)."""
    mean = trimmed_mean(rtt_s, keep_percentile)
    if mean <= 0:
        raise ValueError("rpm needs RTT samples > 0")
    return 60.0 / mean
