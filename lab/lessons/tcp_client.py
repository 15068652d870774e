"""Lesson 1 — a TCP client (aula 4: "Desenvolvimento de um cliente TCP", 01_tcp.py).

TCP is a connection: we connect once, then read and write a *byte stream*. The stream has no
message boundaries, so to get our whole echo back we tell the server we are done writing
(half-close) and read until it closes its side too.

Run it against any echo server, e.g. `lab serve tcp` in another terminal:

    python -m lab.lessons.tcp_client 127.0.0.1 7007 "hello, TCP"
"""

import argparse
import ipaddress
import socket
import sys

BUFFER_SIZE = 4096  # how many bytes we ask for per recv(); any size works, TCP is a stream


def lab_address(host: str) -> str:
    """This lab's rule: talk only to this machine or the lab's namespaces, never the network."""
    ip = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)  # names: ValueError
    if not (ip.is_loopback or ip in ipaddress.ip_network("198.18.0.0/15")):
        raise ValueError(f"{host} is neither this machine (127.0.0.0/8, ::1) nor a lab address (198.18/15)")
    return str(ip)


def exchange(host: str, port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Connect, send `data`, half-close, and return everything the server sent back."""
    ip = lab_address(host)
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET  # "::1" is IPv6
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_DONTROUTE, 1)  # never via a router: stay local
        sock.settimeout(timeout)
        sock.connect((ip, port))  # the three-way handshake ("conectar ao servidor")
        sock.sendall(data)  # send() may send only part; sendall() loops until all is sent
        sock.shutdown(socket.SHUT_WR)  # "I am done writing": the server sees end-of-stream
        chunks = []
        while True:
            chunk = sock.recv(BUFFER_SIZE)
            if not chunk:  # b"" means the server closed its side: nothing more will come
                break
            chunks.append(chunk)
    return b"".join(chunks)


def main(argv: list[str]) -> int:
    """`python -m lab.lessons.tcp_client HOST PORT MESSAGE`: send and print the reply."""
    parser = argparse.ArgumentParser(prog="python -m lab.lessons.tcp_client")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("message")
    args = parser.parse_args(argv)  # a PORT that is not a number: usage message, exit status 2
    if not 0 <= args.port <= 65535:  # ports are 16 bits; Python would quietly use 99999 % 65536
        parser.error(f"port must be 0..65535, got {args.port}")
    host, port, message = args.host, args.port, args.message
    try:
        reply = exchange(host, port, message.encode())
    except ValueError as exc:  # not an address this lab may talk to: nothing was sent
        print(f"tcp_client: refusing {args.host}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"tcp_client: cannot talk to {host}:{port}: {exc}", file=sys.stderr)
        return 1
    print(reply.decode(errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
