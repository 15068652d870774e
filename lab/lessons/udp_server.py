"""Lesson 3 — a UDP echo server / Lição 3 — um servidor UDP de eco.

Aula 6: "Desenvolvimento de um Servidor" (03_server_udp.py).

EN: A UDP server binds one socket to a port and answers datagrams one by one: recvfrom() tells us
who sent each datagram, so we can sendto() the same bytes straight back (the echo service of
RFC 862). There are no connections to accept or to close.

PT: Um servidor UDP liga (bind) um soquete a uma porta e responde os datagramas um a um: recvfrom()
diz quem enviou cada datagrama, então podemos devolver os mesmos bytes com sendto() (o serviço de
eco da RFC 862). Não há conexões para aceitar nem para fechar.

    python -m lab.lessons.udp_server --port 7007 [--lang pt]
    (in another terminal / em outro terminal)  python -m lab.lessons.udp_client 127.0.0.1 7007 "olá"
"""

import socket
import sys

# EN: what every lesson needs that is not the lesson (language, command line, the lab's addresses):
# PT: o que toda lição precisa e que não é a lição (idioma, linha de comando, os endereços do lab):
from lab.lessons.common import messages, parse_args, serve_until_ctrl_c, server_parser

# EN: read buffer: big enough for any UDP datagram.
# PT: buffer de leitura: cabe qualquer datagrama UDP.
MAX_DATAGRAM = 65535
PROG = "udp_server"  # EN: our name in error messages  PT: nosso nome nas mensagens de erro

MESSAGES = {
    "en": {
        "description": "A UDP echo server: every datagram goes back to its sender.",
        "port": "UDP port (0 = any free one)",
        "listening": "UDP echo server listening on {host}:{port} (Ctrl-C to stop)",
    },
    "pt": {
        "description": "Um servidor UDP de eco: cada datagrama volta para quem o enviou.",
        "port": "porta UDP (0 = qualquer uma livre)",
        "listening": "Servidor UDP de eco ouvindo em {host}:{port} (Ctrl-C para parar)",
    },
}


def make_server(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """EN: Create a UDP socket bound to host:port (port 0 lets the system pick a free one).

    PT: Cria um soquete UDP ligado a host:port (porta 0 deixa o sistema escolher uma livre).
    """
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def serve(sock: socket.socket) -> None:
    """EN: Echo every datagram back to its sender, until the socket is shut down or closed.

    PT: Devolve cada datagrama a quem o enviou, até o soquete ser desligado (shutdown) ou fechado.
    """
    own_address = sock.getsockname()
    while True:
        try:
            data, sender = sock.recvfrom(MAX_DATAGRAM)
            if sender is None:
                # EN: no sender: sock.shutdown() was called (that is how tests stop us).
                # PT: sem remetente: sock.shutdown() foi chamado (é assim que os testes nos param).
                return
            # EN: a forged sender could be another echo server (port 7), or us: answering would
            #     start an endless echo between the two. Real clients use ports from 1024 up.
            # PT: um remetente forjado pode ser outro servidor de eco (porta 7), ou nós mesmos:
            #     responder começaria um eco sem fim entre os dois. Clientes de verdade usam
            #     portas de 1024 para cima.
            if sender[1] < 1024 or sender[:2] == own_address[:2]:
                continue
            sock.sendto(data, sender)  # EN: zero-length datagrams too  PT: datagramas vazios também
        except ConnectionRefusedError:
            # EN: an earlier echo's receiver had gone away (ICMP "port unreachable"): keep serving.
            # PT: o destino de um eco anterior já tinha ido embora (ICMP "port unreachable"): segue.
            continue
        except OSError:
            return  # EN: the socket was closed: time to stop  PT: o soquete foi fechado: hora de parar


def main(argv: list[str]) -> int:
    """EN: `python -m lab.lessons.udp_server --port N [--host H] [--lang pt]`: serve until Ctrl-C.

    PT: `python -m lab.lessons.udp_server --port N [--host H] [--lang pt]`: serve até o Ctrl-C.
    """
    text = messages(MESSAGES, argv)
    args = parse_args(server_parser(PROG, text), text, argv)
    # EN: make_server(host, port), then serve(sock) until Ctrl-C, which closes the socket.
    # PT: make_server(host, port), depois serve(sock) até o Ctrl-C, que fecha o soquete.
    return serve_until_ctrl_c(PROG, text, args, make_server, serve)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
