"""Lesson 3 — a UDP echo server (aula 6: "Desenvolvimento de um Servidor", 03_server_udp.py).

A UDP server binds one socket to a port and answers datagrams one by one: recvfrom() tells us
who sent each datagram, so we can sendto() the same bytes straight back (the echo service of
RFC 862). There are no connections to accept or to close.

    python -m lab.lessons.udp_server --port 7007
    (in another terminal)  python -m lab.lessons.udp_client 127.0.0.1 7007 "olá"
"""

import argparse
import socket
import sys

MAX_DATAGRAM = 65535  # read buffer: big enough for any UDP datagram


def make_server(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """Create a UDP socket bound to host:port (port 0 lets the system pick a free one)."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def serve(sock: socket.socket) -> None:
    """Echo every datagram back to its sender, until the socket is shut down or closed."""
    own_address = sock.getsockname()
    while True:
        try:
            data, sender = sock.recvfrom(MAX_DATAGRAM)
            if sender is None:  # no sender: sock.shutdown() was called (that is how tests stop us)
                return
            # A forged sender could be another echo server (port 7), or us: answering would start
            # an endless echo between the two. Real clients use ports from 1024 up.
            if sender[1] < 1024 or sender[:2] == own_address[:2]:
                continue
            sock.sendto(data, sender)  # zero-length datagrams are echoed too
        except ConnectionRefusedError:
            # An earlier echo's receiver had gone away (ICMP "port unreachable"): keep serving.
            continue
        except OSError:
            return  # the socket was closed: time to stop


def main(argv: list[str]) -> int:
    """`python -m lab.lessons.udp_server --port N [--host H]`: serve until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m lab.lessons.udp_server")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="UDP port (0 = any free)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:  # ports are 16 bits; Python would quietly use 99999 % 65536
        parser.error(f"port must be 0..65535, got {args.port}")
    try:
        sock = make_server(args.host, args.port)
    except OSError as exc:
        print(f"udp_server: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    print(f"UDP echo server listening on {host}:{port} (Ctrl-C to stop)", flush=True)
    try:
        serve(sock)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
