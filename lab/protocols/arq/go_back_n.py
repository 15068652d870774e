"""Go-back-N: up to N segments in flight; on a timeout, send all of them again.

EN: Stop-and-wait leaves the link idle for a round trip after every segment. Go-back-N keeps up
to `window` (N) segments in flight. The receiver still accepts only the next segment in order and
drops anything after a gap, so its cumulative ACK ("everything below n arrived") is all the
sender learns. One timer runs for the oldest unacknowledged segment; when it expires the sender
goes back to it and sends it and every segment after it again — including ones that had arrived
and were dropped. A lost ACK costs nothing if a later cumulative ACK arrives.

PT: O pare-e-espere deixa o enlace ocioso uma ida e volta após cada segmento. O go-back-N mantém
até `window` (N) segmentos em trânsito. O receptor continua a aceitar só o próximo segmento em
ordem e descarta o que vier depois de uma lacuna, então o ACK cumulativo ("chegou tudo abaixo de
n") é tudo o que o emissor fica sabendo. Um temporizador corre para o segmento mais antigo não
confirmado; quando expira, o emissor volta a ele e reenvia-o junto com todos os seguintes —
inclusive os que tinham chegado e foram descartados. Um ACK perdido não custa nada se um ACK
cumulativo posterior chegar.
"""

from __future__ import annotations

from lab.protocols.arq.base import InOrderReceiver, Sender
from lab.protocols.arq.segment import Scheme, Segment


class GoBackNSender(Sender):
    """Up to `window` unacknowledged segments; one timer, for the oldest of them."""

    scheme = Scheme.GO_BACK_N

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.deadline: float | None = None  # the one timer (None: stopped)

    def next_deadline(self) -> float | None:
        return self.deadline

    def started(self, seq: int, now: float) -> None:
        if self.deadline is None:  # RFC 6298 (5.1): start the timer if it is not running
            self.deadline = now + self.timer.rto

    def on_timer(self, now: float) -> list[Segment]:
        if self.deadline is None or now < self.deadline:
            return []
        self.counters.timeouts += 1
        self.timer.backoff()
        # Go back: every unacknowledged segment again, oldest first (the receiver dropped the
        # ones after the gap, so they are needed too).
        out = [self.resend(seq, now) for seq in self.unacked]
        self.deadline = now + self.timer.rto
        return out

    def on_ack(self, segment: Segment, now: float) -> None:
        if not self.base < segment.ack <= self.next_seq:  # acknowledges nothing new (or nonsense)
            self.counters.duplicate_acks += 1
            return
        self.acknowledge([seq for seq in self.unacked if seq < segment.ack], now, segment)
        # RFC 6298 (5.2, 5.3): all acknowledged -> stop the timer; else restart it for the rest.
        self.deadline = now + self.timer.rto if self.unacked else None


class GoBackNReceiver(InOrderReceiver):
    """Accepts only the next segment in order; cumulative ACKs (see InOrderReceiver)."""

    scheme = Scheme.GO_BACK_N
