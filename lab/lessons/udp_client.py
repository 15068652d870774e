"""Lesson 2 — a UDP client (aula 5: "Desenvolvimento de um cliente UDP", 02_cliente_udp.py).

UDP has no connection: each sendto() is one datagram, sent on its own, and each recvfrom() returns
exactly one datagram. Nothing is retransmitted: if the datagram or its echo is lost, we would wait
forever — so we always set a timeout.

    python -m lab.lessons.udp_client 127.0.0.1 7007 "hello, UDP" --timeout 2
"""

import argparse
import ipaddress
import socket
import sys

MAX_DATAGRAM = 65535  # ask for the largest possible datagram so a big echo is never cut short


def lab_address(host: str) -> str:
    """This lab's rule: talk only to this machine or the lab's namespaces, never the network."""
    ip = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)  # names: ValueError
    if not (ip.is_loopback or ip in ipaddress.ip_network("198.18.0.0/15")):
        raise ValueError(f"{host} is neither this machine (127.0.0.0/8, ::1) nor a lab address (198.18/15)")
    return str(ip)


def exchange(host: str, port: int, data: bytes, timeout: float = 2.0) -> bytes:
    """Send one datagram to host:port and return the first datagram that comes back.

    Raises TimeoutError if nothing arrives within `timeout` seconds (UDP may lose packets).
    """
    # Pick IPv4 or IPv6 from the address itself ("::1" is IPv6).
    family, _, _, _, address = socket.getaddrinfo(lab_address(host), port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_DONTROUTE, 1)  # never via a router: stay local
        sock.settimeout(timeout)
        sock.sendto(data, address)  # one call = one datagram, no connection first
        while True:
            reply, sender = sock.recvfrom(MAX_DATAGRAM)
            if sender[:2] == address[:2]:  # anyone can send us a datagram: keep only the server's
                return reply


def main(argv: list[str]) -> int:
    """`python -m lab.lessons.udp_client HOST PORT MESSAGE [--timeout S]`."""
    parser = argparse.ArgumentParser(prog="python -m lab.lessons.udp_client")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("message")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait (default 2)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:  # ports are 16 bits; Python would quietly use 99999 % 65536
        parser.error(f"port must be 0..65535, got {args.port}")
    try:
        reply = exchange(args.host, args.port, args.message.encode(), args.timeout)
    except TimeoutError:
        print(f"udp_client: no reply within {args.timeout} s (lost, or no server)", file=sys.stderr)
        return 1
    except ValueError as exc:  # not an address this lab may talk to: nothing was sent
        print(f"udp_client: refusing {args.host}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"udp_client: cannot talk to {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(reply.decode(errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
