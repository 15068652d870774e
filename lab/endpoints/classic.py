"""The course's `socketserver` echo servers: a thread per TCP connection, one handler call per datagram.

Same observable behaviour and counters as the `selectors` loop in `server.py` (so the same tests run
against both), written the textbook way: `ThreadingTCPServer` + `StreamRequestHandler` and
`UDPServer` + `DatagramRequestHandler`. Back-pressure here is simply a blocked `sendall`.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from typing import Any

from lab.endpoints.common import (
    RECV_CHUNK,
    BoundEcho,
    Counters,
    UdpGuard,
)

POLL_INTERVAL_S = 0.05  # socketserver's serve_forever polls for shutdown this often (default 0.5)


class EchoStreamHandler(socketserver.StreamRequestHandler):
    """TCP echo: read what arrives, write it back, until the client closes (RFC 862)."""

    server: ClassicTCPServer

    def handle(self) -> None:
        counters = self.server.counters
        try:
            # Nagle would hold back part of an echo until the client's (delayed) ACK.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.request.settimeout(self.server.idle_timeout or None)
            while True:
                # recv, not rfile.read: echo what has arrived now instead of waiting to fill a buffer.
                data = self.request.recv(RECV_CHUNK)
                if not data:  # the client half-closed: all echoed; socketserver then shuts us down
                    return
                self.server.touch(self.request)
                counters.add(bytes_in=len(data))
                self.request.sendall(data)
                counters.add(bytes_out=len(data))
        except TimeoutError:
            counters.add(closed_idle=1)
        except OSError:  # reset, broken pipe, or our own shutdown: this connection only
            counters.add(errors=1)
        finally:
            self.server.forget(self.request)


class ClassicTCPServer(socketserver.ThreadingTCPServer):
    """ThreadingTCPServer with the lab's limits (max connections, idle timeout) and counters."""

    daemon_threads = True
    block_on_close = True  # server_close joins the handler threads (we end their connections first)

    def __init__(self, sock: socket.socket, counters: Counters, max_conns: int,
                 idle_timeout: float) -> None:
        self.address_family = sock.family
        super().__init__(sock.getsockname(), EchoStreamHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock  # bound and listening already (port sharing with UDP, clear errors)
        sock.setblocking(True)
        self.counters = counters
        self.max_conns = max_conns
        self.idle_timeout = idle_timeout
        self._live: dict[socket.socket, float] = {}  # connection -> when it last echoed
        self._live_lock = threading.Lock()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit every connection; when full, first end the longest-idle one (its handler sees EOF)."""
        with self._live_lock:
            if len(self._live) >= self.max_conns:
                idlest = min(self._live, key=self._live.__getitem__)
                del self._live[idlest]
                self.counters.add(evicted=1, active=-1)
                with contextlib.suppress(OSError):
                    idlest.shutdown(socket.SHUT_RDWR)  # FIN to the client, EOF to its handler
            self._live[request] = time.monotonic()
        self.counters.add(accepted=1, active=1)
        return True

    def touch(self, request: socket.socket) -> None:
        """The connection echoed just now (it is not idle)."""
        with self._live_lock:
            if request in self._live:
                self._live[request] = time.monotonic()

    def forget(self, request: socket.socket) -> None:
        """A handler is done with its connection."""
        with self._live_lock:
            if self._live.pop(request, None) is not None:
                self.counters.add(active=-1)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Count instead of printing a traceback: servers never die (or shout) on input."""
        self.counters.add(errors=1)

    def close_connections(self) -> None:
        """Wake every handler blocked in recv/sendall so its thread ends and closes its socket."""
        with self._live_lock:
            live = list(self._live)
        for sock in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class EchoDatagramHandler(socketserver.DatagramRequestHandler):
    """UDP echo: each datagram goes back to its sender as it came (zero-length ones too)."""

    server: ClassicUDPServer

    def handle(self) -> None:
        data = self.rfile.read()
        counters = self.server.counters
        if len(data) > self.server.max_datagram:
            counters.add(datagrams_in=1, bytes_in=len(data), datagrams_dropped=1)
            self.dropped = True
            return
        self.dropped = False
        # Counted before the echo leaves (as in server.py): its receiver already sees it counted.
        counters.add(datagrams_in=1, bytes_in=len(data), datagrams_out=1, bytes_out=len(data))
        self.wfile.write(data)

    def finish(self) -> None:
        if self.dropped:
            return  # DatagramRequestHandler.finish would send an empty datagram
        try:
            super().finish()  # sendto(wfile contents, client_address)
        except OSError:
            size = len(self.wfile.getvalue())
            self.server.counters.add(datagrams_out=-1, bytes_out=-size, errors=1)


class ClassicUDPServer(socketserver.UDPServer):
    """UDPServer with the lab's max datagram size and counters."""

    max_packet_size = RECV_CHUNK  # socketserver's default of 8192 would truncate larger datagrams

    def __init__(self, sock: socket.socket, counters: Counters, max_datagram: int,
                 guard: UdpGuard) -> None:
        self.address_family = sock.family
        super().__init__(sock.getsockname(), EchoDatagramHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        sock.setblocking(True)
        self.counters = counters
        self.max_datagram = max_datagram
        self.guard = guard

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Leave unanswered what the guard refuses (own port, low ports, rate, echo loops); count it."""
        data = request[0]
        if len(data) > self.max_datagram:
            return True  # the handler counts and drops it
        refused = self.guard.refusal(client_address, data, time.monotonic())
        if refused:
            self.counters.add(datagrams_in=1, bytes_in=len(data), **{refused: 1})
            return False
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Count instead of printing a traceback."""
        self.counters.add(errors=1)

    def get_request(self) -> tuple[Any, Any]:
        try:
            return super().get_request()
        except OSError:
            # ECONNREFUSED from an ICMP error for an earlier echo: count it, keep serving
            # (socketserver would otherwise skip silently).
            self.counters.add(errors=1)
            raise


class ClassicEchoServer(BoundEcho):
    """socketserver TCP and/or UDP echo with the same API as `EchoServer` (binds in BoundEcho)."""

    def __init__(self, kind: str, *, host: str = "127.0.0.1", port: int = 0, **limits: Any) -> None:
        super().__init__(kind, host=host, port=port, **limits)
        limits_ = self.limits
        self._tcp = (ClassicTCPServer(self.tcp_socket, self.counters, limits_.max_conns, limits_.idle_timeout)
                     if self.tcp_socket else None)
        guard = self.udp_guard()
        self._udp = (ClassicUDPServer(self.udp_socket, self.counters, limits_.max_datagram, guard)
                     if self.udp_socket and guard else None)
        self._servers: list[socketserver.BaseServer] = [s for s in (self._tcp, self._udp) if s is not None]
        self._stop = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the counters."""
        return self.counters.snapshot()

    def serve_forever(self) -> None:
        """Serve (one thread per socketserver) until `shutdown()`; then close everything."""
        with self._lock:
            if self._closed or self._stop.is_set():
                return  # shut down before it began, as EchoServer.serve_forever
            self._threads = [
                threading.Thread(target=s.serve_forever, args=(POLL_INTERVAL_S,), daemon=True,
                                 name=f"classic-{type(s).__name__}")
                for s in self._servers
            ]
            for thread in self._threads:
                thread.start()
        try:
            while not self._stop.wait(timeout=1.0):  # a timed wait lets signal handlers run
                pass
        finally:
            self.close()

    def shutdown(self) -> None:
        """Ask it to stop (from any thread, idempotent); returns at once."""
        self._stop.set()

    def close(self) -> None:
        """Stop the servers, end every connection and close every socket (idempotent)."""
        self._stop.set()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
        for server, thread in zip(self._servers, threads, strict=False):
            server.shutdown()  # waits for that serve_forever loop (<= POLL_INTERVAL_S)
            thread.join(timeout=5.0)
        if self._tcp is not None:
            self._tcp.close_connections()
        for server in self._servers:
            server.server_close()

    def __enter__(self) -> ClassicEchoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
