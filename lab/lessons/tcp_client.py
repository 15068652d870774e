"""Lesson 1 — a TCP client / Lição 1 — um cliente TCP.

Aula 4: "Desenvolvimento de um cliente TCP" (01_tcp.py).

EN: TCP is a connection: we connect once, then read and write a *byte stream*. The stream has no
message boundaries, so to get our whole echo back we tell the server we are done writing
(half-close) and read until it closes its side too.

PT: TCP é uma conexão: conectamos uma vez, depois lemos e escrevemos um *fluxo de bytes*. O fluxo
não tem fronteiras entre mensagens, então, para receber todo o eco, avisamos o servidor que
terminamos de escrever (meio-fechamento, half-close) e lemos até ele fechar o lado dele também.

Run it against any echo server / Rode contra qualquer servidor de eco, e.g. `lab serve tcp`,
`python -m lab.lessons.tcp_server --port 7007`:

    python -m lab.lessons.tcp_client 127.0.0.1 7007 "hello, TCP" [--lang pt]
"""

import socket
import sys

# EN: what every lesson needs that is not the lesson (language, command line, the lab's addresses):
# PT: o que toda lição precisa e que não é a lição (idioma, linha de comando, os endereços do lab):
from lab.lessons.common import client_failed, client_parser, lab_address, messages, parse_args, print_reply

# EN: how many bytes we ask for per recv(); any size works, TCP is a stream.
# PT: quantos bytes pedimos por recv(); qualquer tamanho serve, TCP é um fluxo.
BUFFER_SIZE = 4096
PROG = "tcp_client"  # EN: our name in error messages  PT: nosso nome nas mensagens de erro

MESSAGES = {
    "en": {
        "description": "A TCP client: sends MESSAGE to an echo server and prints the reply.",
        "port": "server's TCP port",
    },
    "pt": {
        "description": "Um cliente TCP: envia MESSAGE a um servidor de eco e mostra a resposta.",
        "port": "porta TCP do servidor",
    },
}


def exchange(host: str, port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """EN: Connect, send `data`, half-close, and return everything the server sent back.

    PT: Conecta, envia `data`, meio-fecha, e devolve tudo o que o servidor mandou de volta.
    """
    ip = lab_address(host)
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET  # EN/PT: "::1" is IPv6 / é IPv6
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # EN: never via a router: stay on this machine or a lab link.
        # PT: nunca por um roteador: fica nesta máquina ou num enlace do lab.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_DONTROUTE, 1)
        sock.settimeout(timeout)
        # EN: the three-way handshake. PT: o aperto de mão em três vias ("conectar ao servidor").
        sock.connect((ip, port))
        # EN: send() may send only part; sendall() loops until all is sent.
        # PT: send() pode enviar só uma parte; sendall() repete até enviar tudo.
        sock.sendall(data)
        # EN: "I am done writing": the server sees end-of-stream.
        # PT: "terminei de escrever": o servidor vê o fim do fluxo.
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = sock.recv(BUFFER_SIZE)
            if not chunk:
                # EN: b"" means the server closed its side: nothing more will come.
                # PT: b"" quer dizer que o servidor fechou o lado dele: não virá mais nada.
                break
            chunks.append(chunk)
    return b"".join(chunks)


def main(argv: list[str]) -> int:
    """EN: `python -m lab.lessons.tcp_client HOST PORT MESSAGE [--lang pt]`: send and print the reply.

    PT: `python -m lab.lessons.tcp_client HOST PORT MESSAGE [--lang pt]`: envia e mostra a resposta.
    """
    text = messages(MESSAGES, argv)
    args = parse_args(client_parser(PROG, text), text, argv)
    try:
        reply = exchange(args.host, args.port, args.message.encode())
    except (ValueError, OSError) as exc:
        # EN: not a lab address (nothing was sent), or the system said no: one line, exit 2 or 1.
        # PT: não é endereço do lab (nada foi enviado), ou o sistema disse não: uma linha, código 2 ou 1.
        return client_failed(PROG, text, args, exc)
    return print_reply(reply)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
