"""`arq-sw`, `arq-gbn`, `arq-sr`: the probes carried reliably over UDP by the lab's own ARQ machines.

The measuring client hands each probe (the lab's wire bytes, one probe per segment) to an ARQ
sender on a connected UDP socket; the server (lab.protocols.arq.server, a process of its own)
receives them in order, echoes each one back through an ARQ sender of its own, and the client's
receiver books each echo with `ProbeSchedule.arrived` as it is delivered in order. So every RTT
includes the waiting and the retransmissions of both directions, as TCP's does.

The window comes from the plan (`window = 8` in a scenario's [traffic], `lab send --window`;
stop-and-wait ignores it). The client's counters and timer end up in `observations["arq"]`
(the same key for the three schemes, as TCP's variants share "tcp"); the `arq_*` metrics read
them. docs/architecture.md#protocols describes the interface.
"""

from __future__ import annotations

import secrets
import selectors
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from lab.errors import ConfigError
from lab.i18n import N_
from lab.metric_registry import Metric
from lab.protocols import Protocol
from lab.protocols.arq.endpoint import Endpoint
from lab.protocols.arq.segment import HEADER_SIZE as ARQ_HEADER_SIZE
from lab.protocols.arq.segment import MAX_PAYLOAD, MAX_WINDOW, Scheme
from lab.protocols.common import (
    MAX_BURST,
    connected_datagram_socket,
    received_datagrams,
    selector,
    unreachable,
)
from lab.records import RunRecord, TrafficPlan, observations_of
from lab.schedule import NS_PER_S, ProbeSchedule
from lab.targets import lab_address
from lab.timing import fine_timers
from lab.wire import HEADER_SIZE, frame

OBSERVER = "arq"  # observations["arq"]: the client's endpoint (lab.protocols.arq.endpoint.observations)
DEFAULT_WINDOW = 8


def _sender_count(name: str) -> Callable[[Mapping[str, Any]], int | None]:
    def read(result: Mapping[str, Any]) -> int | None:
        return (observations_of(result, OBSERVER).get("sender") or {}).get(name)

    return read


def _point_has_arq(point: Mapping[str, Any]) -> bool:
    return any(observations_of(r, OBSERVER) for r in point.get("results", []))


ARQ_METRICS = (
    Metric(name="arq_retransmitted", unit="segments", read=_sender_count("retransmitted"),
           doc="ARQ segments the client sent again after a timeout (its sender's count)",
           label=N_("ARQ retransmissions"), row=120, shown=_point_has_arq),
    Metric(name="arq_timeouts", unit="timeouts", read=_sender_count("timeouts"),
           doc="times the client's ARQ retransmission timer expired"),
    Metric(name="arq_duplicate_acks", unit="acks", read=_sender_count("duplicate_acks"),
           doc="ACKs the client's ARQ sender got that acknowledged nothing new"),
    Metric(name="arq_window_stalls", unit="stalls", read=_sender_count("window_stalls"),
           doc="times probes waited in the client because the ARQ window was full"),
)


def window_of(plan: TrafficPlan) -> int:
    """The plan's window (default 8); ConfigError if the ARQ header cannot carry it."""
    window = getattr(plan, "window", None) or DEFAULT_WINDOW
    if not 1 <= window <= MAX_WINDOW:
        raise ConfigError(f"window must be between 1 and {MAX_WINDOW} segments for the ARQ protocols "
                          f"(the SACK bitmap's width), got {window}", key="window")
    return window


class ArqProtocol(Protocol):
    """What the three schemes share: the client loop and the server of their own."""

    transport = "udp"
    reliable = True
    scheme: Scheme
    metrics = ARQ_METRICS
    bulk_driver = "lab.bulk.arq:run_arq_bulk"  # as fast as the window allows, to `sink_argv`'s server

    def server_argv(self, host: str, port: int) -> list[str]:
        from lab.child import python_argv

        return python_argv("lab.protocols.arq.server", "--host", host, "--port", str(port))

    def sink_argv(self, host: str, port: int) -> list[str]:
        """The ARQ server in sink mode: it counts bulk flows (docs/architecture.md#bulk-traffic)."""
        return [*self.server_argv(host, port), "--sink"]

    def run_client(self, address: tuple[str, int], plan: TrafficPlan, *,
                   progress: Callable[..., None] | None = None, deadline_s: float | None = None,
                   round_trip_s: float = 0.0) -> RunRecord:
        """Probes through an ARQ sender on one connected UDP socket; echoes booked as delivered."""
        host, port = lab_address(address)
        window = window_of(plan)
        if plan.size > MAX_PAYLOAD:
            raise ConfigError(f"size must be at most {MAX_PAYLOAD} bytes for the ARQ protocols (a UDP "
                              f"datagram holds the probe and the {ARQ_HEADER_SIZE}-byte ARQ header), "
                              f"got {plan.size}",
                              key="size")
        endpoint = Endpoint(self.scheme, secrets.randbits(32), window)
        with connected_datagram_socket((host, port), self.label) as sock:
            run = ProbeSchedule(self.name, plan, deadline_s=deadline_s, progress=progress)
            with selector([sock]) as sel, fine_timers():
                sel.register(sock, selectors.EVENT_READ)
                try:
                    _Client(run, sock, endpoint, (host, port), self.label).loop(sel)
                except KeyboardInterrupt:
                    run.observations[OBSERVER] = endpoint.observations()
                    raise run.interrupted(time.monotonic_ns()) from None
            run.observations[OBSERVER] = endpoint.observations()
            return run.record(time.monotonic_ns())


class _Client:
    """One run: the schedule hands probes to the endpoint; the socket carries its datagrams."""

    def __init__(self, run: ProbeSchedule, sock: socket.socket, endpoint: Endpoint,
                 address: tuple[str, int], label: str) -> None:
        self.run = run
        self.sock = sock
        self.endpoint = endpoint
        self.address = address
        self.label = label
        self.max_payload = run.plan.size - HEADER_SIZE

    def loop(self, sel: selectors.BaseSelector) -> None:
        run, endpoint = self.run, self.endpoint
        while True:
            for seq, stream, payload, crc, intended, sent_ns in run.due_probes(MAX_BURST):
                # Booked as sent when handed to the ARQ sender: time it waits there for the window
                # is part of the latency the application sees (as in TCP's send buffer).
                endpoint.send(frame(seq, stream, intended, payload, crc))
                run.sent(seq, stream, intended, sent_ns)
            now = time.monotonic_ns()
            self.transmit(endpoint.poll(now / NS_PER_S))
            if run.done(now):
                return
            wait_s = 0.0 if run.burst >= MAX_BURST else run.wait_s(now)
            if (deadline := endpoint.next_deadline()) is not None:
                wait_s = min(wait_s, max(0.0, deadline - now / NS_PER_S))
            if sel.select(wait_s):
                self.drain()

    def drain(self) -> None:
        for datagram, recv_ns in received_datagrams(self.sock, self.refused):
            delivered, out = self.endpoint.receive(datagram, recv_ns / NS_PER_S)
            self.transmit(out)  # the ACK first: the server's timer is running
            for payload in delivered:
                self.book(payload, recv_ns)

    def book(self, payload: bytes, recv_ns: int) -> None:
        """One echo delivered in order: the probe it carries arrived now."""
        if not self.run.arrived_datagram(payload, recv_ns):
            self.run.unattributed += 1  # delivered, but not a probe: the server echoed something else

    def transmit(self, datagrams: list[bytes]) -> None:
        for datagram in datagrams:
            try:
                self.sock.send(datagram)
            except BlockingIOError:
                pass  # our own send buffer is full: as good as lost, the ARQ sends it again
            except ConnectionRefusedError as exc:
                self.refused(exc)
            except OSError as exc:
                raise unreachable(self.address, self.label, exc, connected=False) from exc

    def refused(self, exc: OSError) -> None:
        """ICMP port unreachable: no server at all (an error), or one that went away (a note)."""
        if not self.run.arrivals:
            raise unreachable(self.address, self.label, exc, connected=False) from exc
        self.run.notes.icmp_refused += 1


class StopAndWait(ArqProtocol):
    name = "arq-sw"
    label = "ARQ-SW"
    scheme = Scheme.STOP_AND_WAIT
    description = "stop-and-wait ARQ over UDP (one segment in flight, RFC 6298 timer)"
    style = "bold yellow"


class GoBackN(ArqProtocol):
    name = "arq-gbn"
    label = "ARQ-GBN"
    scheme = Scheme.GO_BACK_N
    description = "go-back-N ARQ over UDP (window of segments, cumulative acks)"
    style = "bold magenta"


class SelectiveRepeat(ArqProtocol):
    name = "arq-sr"
    label = "ARQ-SR"
    scheme = Scheme.SELECTIVE_REPEAT
    description = "selective-repeat ARQ over UDP (window, selective acks, a timer per segment)"
    style = "bold green"
