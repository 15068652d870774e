"""One end of an ARQ conversation, still sans-IO: a sender for our data, a receiver for the peer's.

The client and the server each hold one `Endpoint` per conversation. Datagrams go in with the
time (`receive`), and out come the payloads the application can now have, in order, and the
datagrams to transmit. `poll(now)` returns the retransmissions (and window openings) due without
any arrival; `next_deadline()` says when that is. The socket loops around it
(lab.protocols.arq.client, lab.protocols.arq.server) only move bytes and read the clock.
"""

from __future__ import annotations

from typing import Any

from lab.protocols.arq.base import InOrderReceiver, Sender
from lab.protocols.arq.go_back_n import GoBackNReceiver, GoBackNSender
from lab.protocols.arq.segment import Kind, Scheme, Segment, SegmentError, decode
from lab.protocols.arq.selective_repeat import SelectiveRepeatReceiver, SelectiveRepeatSender
from lab.protocols.arq.stop_and_wait import StopAndWaitReceiver, StopAndWaitSender

MACHINES: dict[Scheme, tuple[type[Sender], type[InOrderReceiver]]] = {
    Scheme.STOP_AND_WAIT: (StopAndWaitSender, StopAndWaitReceiver),
    Scheme.GO_BACK_N: (GoBackNSender, GoBackNReceiver),
    Scheme.SELECTIVE_REPEAT: (SelectiveRepeatSender, SelectiveRepeatReceiver),
}
SHORT_NAMES = {"sw": Scheme.STOP_AND_WAIT, "gbn": Scheme.GO_BACK_N, "sr": Scheme.SELECTIVE_REPEAT}


def machines(scheme: Scheme, conn: int = 0, window: int = 8) -> tuple[Sender, InOrderReceiver]:
    """A fresh (sender, receiver) pair of `scheme` (stop-and-wait ignores `window`: it is 1)."""
    sender_class, receiver_class = MACHINES[scheme]
    return sender_class(conn, window), receiver_class(conn, window)


class Endpoint:
    """Our sender and receiver for one conversation (`conn`), and what arrived that was not for it."""

    def __init__(self, scheme: Scheme, conn: int, window: int = 8) -> None:
        self.scheme = scheme
        self.conn = conn
        self.sender, self.receiver = machines(scheme, conn, window)
        self.malformed = 0  # datagrams that were not ARQ segments (bad CRC, truncated, ...)
        self.foreign = 0  # valid segments of another conversation or scheme

    def send(self, payload: bytes) -> None:
        """Queue application bytes (one segment); `poll` or `receive` hands out the datagram."""
        self.sender.send(payload)

    def receive(self, datagram: bytes, now: float) -> tuple[list[bytes], list[bytes]]:
        """(payloads now deliverable in order, datagrams to transmit) for one arriving datagram."""
        try:
            segment = decode(datagram)
        except SegmentError:
            self.malformed += 1
            return [], []
        return self.receive_segment(segment, now)

    def receive_segment(self, segment: Segment, now: float) -> tuple[list[bytes], list[bytes]]:
        """`receive` for a segment already decoded."""
        if segment.conn != self.conn or segment.scheme != self.scheme:
            self.foreign += 1
            return [], []
        delivered: list[bytes] = []
        out: list[bytes] = []
        if segment.kind == Kind.DATA:
            delivered, ack = self.receiver.on_data(segment)
            out.append(ack.encode())
        else:
            self.sender.on_ack(segment, now)  # it may open the window: poll below sends more
        out += self.poll(now)
        return delivered, out

    def poll(self, now: float) -> list[bytes]:
        """Datagrams due now without any arrival: retransmissions, and new data the window allows."""
        return [segment.encode() for segment in self.sender.poll(now)]

    def next_deadline(self) -> float | None:
        """When `poll` must run again (None: no timer running)."""
        return self.sender.next_deadline()

    def observations(self) -> dict[str, Any]:
        """The counters a student reads, and the timer's state, as plain values."""
        timer = self.sender.timer
        return {
            "scheme": self.scheme.name.lower().replace("_", "-"),
            "window": self.sender.window,
            "sender": self.sender.counters.to_dict(),
            "receiver": self.receiver.counters.to_dict(),
            "rto_s": round(timer.rto, 6),
            "srtt_s": None if timer.srtt is None else round(timer.srtt, 6),
            "rtt_samples": timer.samples,
            "malformed": self.malformed,
            "foreign": self.foreign,
        }
