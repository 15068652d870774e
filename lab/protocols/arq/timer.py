"""The retransmission timer of RFC 6298 (the one TCP uses), with Karn's rule.

How long should a sender wait for an acknowledgement before it sends a segment again? Too short
and it resends segments that were only slow; too long and a loss stalls everything. RFC 6298
keeps a smoothed round-trip time (SRTT) and its variation (RTTVAR) from measured samples::

    first sample R:   SRTT = R, RTTVAR = R/2
    each later R:     RTTVAR = 3/4 RTTVAR + 1/4 |SRTT - R|
                      SRTT   = 7/8 SRTT   + 1/8 R
    RTO = SRTT + max(G, 4 RTTVAR)        G: the clock granularity

Before any sample the RTO is 1 s. Each time the timer expires the RTO doubles (backoff: the path
may be congested, so back off), up to a maximum; the next valid sample computes it afresh.

Karn's rule: a segment sent more than once gives no sample, because its acknowledgement may be
for either copy. The sender (not this class) applies it, and only to an ACK that does not name the
copy it answers: the lab's ACKs do name it (segment.py), so each one is a valid sample, as TCP's
timestamps make it (RFC 7323), and a backoff ends with the next ACK of new data.

The lab's choices: RTO at least 200 ms (RFC 6298 says 1 s; Linux TCP uses 200 ms, and the lab's
links are short), at most 60 s, G = 1 ms. Times are seconds, passed in by the caller: no clock here.
"""

from __future__ import annotations

INITIAL_RTO_S = 1.0  # RFC 6298 (2.1): before the first sample
MIN_RTO_S = 0.2  # the lab's choice (RFC 6298 (2.4) says 1 s; Linux TCP uses 200 ms)
MAX_RTO_S = 60.0  # RFC 6298 (2.5): a maximum of at least 60 s may be placed on the RTO
GRANULARITY_S = 0.001  # G: the clock granularity
ALPHA = 1 / 8  # gain of SRTT
BETA = 1 / 4  # gain of RTTVAR
K = 4  # how many RTTVARs of headroom the RTO keeps over SRTT


class RetransmissionTimer:
    """SRTT, RTTVAR and the RTO of one sender; `sample(rtt)` after an ack, `backoff()` on expiry."""

    __slots__ = ("srtt", "rttvar", "rto", "min_rto", "max_rto", "samples", "backoffs")

    def __init__(self, *, initial_rto: float = INITIAL_RTO_S, min_rto: float = MIN_RTO_S,
                 max_rto: float = MAX_RTO_S) -> None:
        self.srtt: float | None = None  # None until the first sample
        self.rttvar: float | None = None
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.rto = self._bounded(initial_rto)
        self.samples = 0  # RTT samples taken (a student can check Karn's rule with it)
        self.backoffs = 0

    def sample(self, rtt: float) -> None:
        """Fold one measured round trip (seconds) in; the RTO is computed afresh (ending any backoff)."""
        rtt = max(0.0, rtt)
        if self.srtt is None or self.rttvar is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            # RTTVAR first: it uses the SRTT from before this sample (RFC 6298 (2.3)).
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - rtt)
            self.srtt = (1 - ALPHA) * self.srtt + ALPHA * rtt
        self.rto = self._bounded(self.srtt + max(GRANULARITY_S, K * self.rttvar))
        self.samples += 1

    def backoff(self) -> None:
        """The timer expired: double the RTO (RFC 6298 (5.5)), up to the maximum."""
        self.rto = self._bounded(self.rto * 2)
        self.backoffs += 1

    def _bounded(self, rto: float) -> float:
        return min(max(rto, self.min_rto), self.max_rto)

    def __repr__(self) -> str:
        srtt = "-" if self.srtt is None else f"{self.srtt:.3f}"
        return f"<RTO {self.rto:.3f} s, SRTT {srtt} s>"
