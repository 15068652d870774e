"""The ARQ echo server: an ARQ receiver, an echo, and an ARQ sender back, per conversation.

`python -m lab.protocols.arq.server --host H --port P` is a helper process (lab.child): it binds
one UDP socket, answers Ready({"udp": [host, port]}) and serves until SIGTERM/SIGINT. A
conversation is (peer address, connection id); the first DATA segment starts one, with the
scheme and window it carries, so one server answers all three ARQ protocols. Each payload its
receiver delivers, in order, goes back through its sender: reliable both ways.

With `--sink` it is the discard sink of ARQ bulk flows instead (docs/architecture.md#bulk-traffic):
what a conversation's receiver delivers in order is a bulk stream (lab.bulk.wire: a hello, then
blocks), counted by a `lab.bulk.counting.StreamCounter` and never echoed; an empty segment ends
it, and the summary goes back through the conversation's sender (reliable, in segments of at most
`SUMMARY_SEGMENT` bytes). A conversation whose first payload is not a hello is counted
(`not_bulk`) and ignored.

Nothing a peer sends can stop it: a datagram that is not a valid segment is counted and dropped
(`SegmentError`), and every resource is bounded — conversations (the least recently heard one
makes room), bytes queued for the echo (a conversation over its share stops accepting data until
its peer acknowledges some: the peer's ARQ sends it again), and a conversation silent for
`IDLE_S` is forgotten (its client is gone).
"""

from __future__ import annotations

import argparse
import contextlib
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from lab.endpoints.common import LOW_PORTS, RECV_CHUNK, bind_sockets
from lab.errors import LabError
from lab.protocols.arq.endpoint import Endpoint
from lab.protocols.arq.segment import Kind, SegmentError, decode

MAX_CONVERSATIONS = 256
IDLE_S = 30.0  # a conversation not heard from this long is forgotten
QUEUED_BYTES_PER_CONVERSATION = 4 * 1024 * 1024  # echo bytes waiting for the window, each
BATCH = 64  # datagrams per wake-up before timers are looked at again
MAX_WAIT_S = 0.5  # the loop wakes at least this often (stop flag, idle conversations)
SUMMARY_SEGMENT = 1200  # sink mode: the summary's bytes per segment (one packet on any lab link)


@dataclass(slots=True)
class Conversation:
    endpoint: Endpoint
    heard: float  # last time a valid segment of it arrived
    queued_bytes: int = 0
    sink: Any = None  # sink mode: the StreamCounter of its bulk flow, once its hello arrived
    sink_state: str = "hello"  # sink mode: "hello", "counting", "answered", "not bulk"


@dataclass(slots=True)
class ServerCounters:
    datagrams_in: int = 0
    datagrams_out: int = 0
    malformed: int = 0  # not an ARQ segment (truncated, bad CRC, unknown kind...)
    refused: int = 0  # from our own port or a port below 1024 (see `refused`)
    unknown: int = 0  # an ACK (or other segment) for no conversation we have
    conversations: int = 0  # conversations started
    evicted: int = 0  # conversations dropped to make room
    expired: int = 0  # conversations forgotten after IDLE_S of silence
    held_back: int = 0  # DATA not accepted because the echo queue was full
    send_errors: int = 0
    summaries: int = 0  # sink mode: bulk flows answered
    not_bulk: int = 0  # sink mode: conversations that did not start with a bulk hello


class ArqServer:
    """Serves ARQ conversations on one bound UDP socket (sans signals: `serve` until `stop`)."""

    def __init__(self, sock: socket.socket, *, sink: bool = False) -> None:
        self.sink = sink
        self.sock = sock
        self.sock.setblocking(False)
        self.address = sock.getsockname()[:2]
        self.conversations: dict[tuple[Any, int], Conversation] = {}  # least recently heard first
        self.counters = ServerCounters()
        self.stopping = False

    def serve(self) -> None:
        """Run until `stopping` is set (by a signal handler)."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ)
            while not self.stopping:
                sel.select(self.wait_s(time.monotonic()))
                self.read_batch()
                self.on_timers(time.monotonic())

    def wait_s(self, now: float) -> float:
        deadlines = [d for c in self.conversations.values() if (d := c.endpoint.next_deadline()) is not None]
        return max(0.0, min([MAX_WAIT_S, *(d - now for d in deadlines)]))

    def read_batch(self) -> None:
        for _ in range(BATCH):
            try:
                datagram, peer = self.sock.recvfrom(RECV_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. an ICMP error for an earlier send to a client that is gone
                self.counters.send_errors += 1
                continue
            self.on_datagram(datagram, peer, time.monotonic())

    def on_datagram(self, datagram: bytes, peer: Any, now: float) -> None:
        """One datagram from `peer`: never raises for anything the peer put in it."""
        self.counters.datagrams_in += 1
        if self.refused(peer):
            self.counters.refused += 1
            return
        try:
            segment = decode(datagram)
        except SegmentError:
            self.counters.malformed += 1
            return
        key = (peer, segment.conn)
        conversation = self.conversations.pop(key, None)  # re-inserted below: most recently heard
        if conversation is None:
            if segment.kind != Kind.DATA:
                self.counters.unknown += 1
                return
            conversation = self.start(segment.scheme, segment.conn, segment.window, now)
        if segment.kind == Kind.DATA and conversation.queued_bytes >= QUEUED_BYTES_PER_CONVERSATION:
            # Our echo cannot keep up with this peer: accept nothing more until it acknowledges
            # some. Dropping is safe: the peer's ARQ sends the segment again.
            self.counters.held_back += 1
            self.conversations[key] = conversation
            return
        conversation.heard = now
        self.conversations[key] = conversation
        delivered, out = conversation.endpoint.receive_segment(segment, now)
        for payload in delivered:
            if self.sink:
                self.count(conversation, payload)
            else:
                conversation.endpoint.send(payload)  # the echo, reliable too
        out += conversation.endpoint.poll(now)
        self.update_queued(conversation)
        self.transmit(out, peer)

    def count(self, conversation: Conversation, payload: bytes) -> None:
        """Sink mode: one payload of a bulk stream, delivered in order (never raises for its content)."""
        from lab.bulk import wire
        from lab.bulk.counting import StreamCounter
        from lab.errors import RemoteWireError

        state = conversation.sink_state
        if state == "counting" and payload:
            conversation.sink.feed(payload, time.monotonic_ns())
        elif state == "counting":  # the empty segment: the end of the stream
            summary = wire.encode_summary(conversation.sink.summary())
            for start in range(0, len(summary), SUMMARY_SEGMENT):
                conversation.endpoint.send(summary[start:start + SUMMARY_SEGMENT])
            conversation.sink_state = "answered"
            self.counters.summaries += 1
        elif state == "hello":
            try:
                hello = wire.Hello.decode(payload)
            except RemoteWireError:
                conversation.sink_state = "not bulk"
                self.counters.not_bulk += 1
                return
            conversation.sink = StreamCounter(hello.start_ns, hello.interval_ns)
            conversation.sink_state = "counting"

    def refused(self, peer: Any) -> bool:
        """A source never answered: our own port (a datagram spoofed from ourselves would start a
        loop) or a port below 1024 (the classic echo and chargen services would loop with us).
        (The echo server's rate limit and loop detector are not needed: only valid segments are
        answered, a repeated segment gets at most one small ACK, and an ACK gets nothing.)"""
        host, port = str(peer[0]).removeprefix("::ffff:"), peer[1]
        return port < LOW_PORTS or (port == self.address[1] and host in (self.address[0], "127.0.0.1", "::1"))

    def start(self, scheme: Any, conn: int, window: int, now: float) -> Conversation:
        while len(self.conversations) >= MAX_CONVERSATIONS:
            del self.conversations[next(iter(self.conversations))]  # the least recently heard
            self.counters.evicted += 1
        self.counters.conversations += 1
        return Conversation(Endpoint(scheme, conn, window), heard=now)

    def on_timers(self, now: float) -> None:
        """Retransmissions due, and conversations silent for too long forgotten."""
        for key, conversation in list(self.conversations.items()):
            if now - conversation.heard >= IDLE_S:
                del self.conversations[key]
                self.counters.expired += 1
                continue
            deadline = conversation.endpoint.next_deadline()
            if deadline is not None and deadline <= now:
                self.transmit(conversation.endpoint.poll(now), key[0])
                self.update_queued(conversation)

    @staticmethod
    def update_queued(conversation: Conversation) -> None:
        sender = conversation.endpoint.sender
        conversation.queued_bytes = sum(map(len, sender.queue)) + sum(
            len(o.payload) for o in sender.unacked.values())

    def transmit(self, datagrams: list[bytes], peer: Any) -> None:
        for datagram in datagrams:
            try:
                self.sock.sendto(datagram, peer)
                self.counters.datagrams_out += 1
            except OSError:  # a full buffer or an ICMP error: as good as lost; ARQ repairs it
                self.counters.send_errors += 1


def main(argv: list[str] | None = None) -> int:
    """Helper-process entry point: bind, answer Ready (or Failed), serve until SIGTERM/SIGINT."""
    from lab.child import Failed, Ready, child_channel
    from lab.targets import check_lab_target

    parser = argparse.ArgumentParser(prog="python -m lab.protocols.arq.server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--sink", action="store_true", help="count bulk flows instead of echoing")
    args = parser.parse_args(argv)
    channel = child_channel()
    try:
        check_lab_target(args.host)  # served only where the lab's clients are: loopback, 198.18/15
        _, sock = bind_sockets("udp", args.host, args.port)
    except LabError as exc:
        if channel is not None:
            channel.send(Failed(exc))
        print(f"arq server: {exc}", file=sys.stderr)
        return 2
    assert sock is not None
    server = ArqServer(sock, sink=args.sink)

    def stop(signum: int, frame: object) -> None:
        server.stopping = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    if channel is not None:
        channel.send(Ready({"udp": list(server.address)}))
    else:
        what = "sink" if args.sink else "echo"
        print(f"arq {what} listening on {server.address[0]} udp port {server.address[1]}", flush=True)
    with contextlib.closing(sock):
        server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
