"""Stop-and-wait: send one segment, wait for its acknowledgement, then send the next.

EN: The simplest reliable protocol over an unreliable channel. One segment is in flight at a
time; if its ACK does not come back before the retransmission timer expires (RFC 6298, see
timer.py), the segment is sent again. A lost ACK makes the sender resend a segment the receiver
already has: the receiver recognises the old number, drops the copy and acknowledges again. The
price: one round trip per segment, whatever the link's capacity — the window is 1.

PT: O protocolo confiável mais simples sobre um canal não confiável. Um segmento viaja de cada
vez; se o ACK dele não voltar antes de o temporizador de retransmissão expirar (RFC 6298, ver
timer.py), o segmento é enviado de novo. Um ACK perdido faz o emissor reenviar um segmento que o
receptor já tem: o receptor reconhece o número antigo, descarta a cópia e confirma de novo. O
preço: uma ida e volta por segmento, seja qual for a capacidade do enlace — a janela é 1.
"""

from __future__ import annotations

from lab.protocols.arq.base import InOrderReceiver, Sender
from lab.protocols.arq.segment import Scheme, Segment
from lab.protocols.arq.timer import RetransmissionTimer


class StopAndWaitSender(Sender):
    """One segment in flight; on timeout, that one again."""

    scheme = Scheme.STOP_AND_WAIT

    def __init__(self, conn: int = 0, window: int = 1, timer: RetransmissionTimer | None = None) -> None:
        super().__init__(conn, 1, timer)  # the window is 1 by definition, whatever is asked

    def in_flight(self) -> int | None:
        """The number of the segment waiting for its ACK (None when nothing is)."""
        return next(iter(self.unacked), None)

    def next_deadline(self) -> float | None:
        seq = self.in_flight()
        return None if seq is None else self.unacked[seq].deadline

    def on_timer(self, now: float) -> list[Segment]:
        seq = self.in_flight()
        if seq is None or now < self.unacked[seq].deadline:
            return []
        self.counters.timeouts += 1
        self.timer.backoff()  # wait twice as long for the copy: the path may be congested
        return [self.resend(seq, now)]

    def on_ack(self, segment: Segment, now: float) -> None:
        seq = self.in_flight()
        if seq is not None and segment.ack == seq + 1:
            self.acknowledge([seq], now, segment)
        else:
            self.counters.duplicate_acks += 1  # an ACK of an older segment: a copy, or late


class StopAndWaitReceiver(InOrderReceiver):
    """Expects segment n, then n+1, ...: a copy of an old one is dropped and acknowledged again."""

    scheme = Scheme.STOP_AND_WAIT

    def __init__(self, conn: int = 0, window: int = 1) -> None:
        super().__init__(conn, 1)
