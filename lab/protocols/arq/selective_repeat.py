"""Selective repeat: resend only what was lost, and keep what arrived out of order.

EN: Go-back-N throws away every segment after a gap and sends them all again. In selective
repeat the receiver keeps segments that arrive ahead of a gap (up to `window` numbers past the
first missing one) and tells the sender exactly what it has: a cumulative ACK plus a bitmap of
the segments after it (SACK, as TCP's RFC 2018 option does). Each segment has its own timer; when
one expires only that segment is sent again, and a segment the sender knows arrived is never
sent again. The receiver hands the application the data in order, once the gap is filled.

PT: O go-back-N joga fora todo segmento após uma lacuna e reenvia todos. Na repetição seletiva
o receptor guarda os segmentos que chegam depois de uma lacuna (até `window` números após o
primeiro que falta) e diz ao emissor exatamente o que tem: um ACK cumulativo mais um mapa de bits
dos segmentos seguintes (SACK, como a opção RFC 2018 do TCP). Cada segmento tem seu próprio
temporizador; quando um expira, só esse segmento é reenviado, e um segmento que o emissor sabe
que chegou nunca é reenviado. O receptor entrega os dados à aplicação em ordem, quando a lacuna
se fecha.
"""

from __future__ import annotations

from lab.protocols.arq.base import InOrderReceiver, Sender
from lab.protocols.arq.segment import Scheme, Segment, ack


class SelectiveRepeatSender(Sender):
    """A timer per segment; ACK + SACK say exactly which segments arrived."""

    scheme = Scheme.SELECTIVE_REPEAT

    def next_deadline(self) -> float | None:
        return min((o.deadline for o in self.unacked.values()), default=None)

    def on_timer(self, now: float) -> list[Segment]:
        expired = [seq for seq, o in self.unacked.items() if o.deadline <= now]
        if not expired:
            return []
        self.counters.timeouts += 1
        # Back off once per round: only if a copy sent with the current RTO expired. Segments sent
        # a few ms apart expire a few ms apart; if each doubled the RTO, a window whose ACKs were
        # lost would multiply it by 2**window.
        if any(self.unacked[seq].backoffs == self.timer.backoffs for seq in expired):
            self.timer.backoff()
        return [self.resend(seq, now) for seq in expired]

    def on_ack(self, segment: Segment, now: float) -> None:
        arrived = set(segment.acked())
        newly = [seq for seq in self.unacked if seq < segment.ack or seq in arrived]
        if not newly:
            self.counters.duplicate_acks += 1
            return
        self.acknowledge(newly, now, segment)


class SelectiveRepeatReceiver(InOrderReceiver):
    """Buffers up to `window` numbers ahead; delivers in order; ACK + SACK bitmap."""

    scheme = Scheme.SELECTIVE_REPEAT

    def __init__(self, conn: int = 0, window: int = 8) -> None:
        super().__init__(conn, window)
        self.buffer: dict[int, bytes] = {}  # arrived ahead of a gap, waiting for it

    def on_data(self, segment: Segment) -> tuple[list[bytes], Segment]:
        seq = segment.seq
        if seq < self.expected or seq in self.buffer:
            self.counters.duplicates += 1  # its ACK was lost: the ACK below says so again
        elif seq < self.expected + self.window:  # inside the window: keep it
            if seq > self.expected:
                self.counters.out_of_order += 1
            self.buffer[seq] = segment.payload
        # else: beyond the window (a confused or hostile sender): ignored, but still acknowledged
        delivered = []
        while self.expected in self.buffer:  # the gap is filled: hand over the run that follows
            delivered.append(self.buffer.pop(self.expected))
            self.expected += 1
        self.counters.delivered += len(delivered)
        return delivered, self.ack(segment)

    def ack(self, answering: Segment) -> Segment:
        self.counters.acks_sent += 1
        sack = 0
        for seq in self.buffer:  # every buffered seq is in expected+1 .. expected+window-1
            sack |= 1 << (seq - self.expected - 1)
        return ack(self.scheme, self.conn, self.window, self.expected, sack, answering=answering)
