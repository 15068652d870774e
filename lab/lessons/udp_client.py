"""Lesson 2 — a UDP client / Lição 2 — um cliente UDP.

Aula 5: "Desenvolvimento de um cliente UDP" (02_cliente_udp.py).

EN: UDP has no connection: each sendto() is one datagram, sent on its own, and each recvfrom()
returns exactly one datagram. Nothing is retransmitted: if the datagram or its echo is lost, we
would wait forever — so we always set a timeout.

PT: UDP não tem conexão: cada sendto() é um datagrama, enviado sozinho, e cada recvfrom() devolve
exatamente um datagrama. Nada é retransmitido: se o datagrama ou o eco dele se perder, esperaríamos
para sempre — por isso sempre usamos um timeout.

    python -m lab.lessons.udp_client 127.0.0.1 7007 "hello, UDP" --timeout 2 [--lang pt]
"""

import socket
import sys

# EN: what every lesson needs that is not the lesson (language, command line, the lab's addresses):
# PT: o que toda lição precisa e que não é a lição (idioma, linha de comando, os endereços do lab):
from lab.lessons.common import client_failed, client_parser, lab_address, messages, parse_args, print_reply

# EN: ask for the largest possible datagram so a big echo is never cut short.
# PT: pedimos o maior datagrama possível para um eco grande nunca ser cortado.
MAX_DATAGRAM = 65535
PROG = "udp_client"  # EN: our name in error messages  PT: nosso nome nas mensagens de erro

MESSAGES = {
    "en": {
        "description": "A UDP client: sends MESSAGE as one datagram and prints the echo.",
        "port": "server's UDP port",
        "timeout": "seconds to wait (default 2)",
        "bad_timeout": "timeout must be 0 < seconds <= 3600, got {timeout}",
        "no_reply": "{prog}: no reply within {timeout} s (lost, or no server)",
    },
    "pt": {
        "description": "Um cliente UDP: envia MESSAGE como um datagrama e mostra o eco.",
        "port": "porta UDP do servidor",
        "timeout": "segundos de espera (padrão 2)",
        "bad_timeout": "o timeout deve ser 0 < segundos <= 3600, não {timeout}",
        "no_reply": "{prog}: nenhuma resposta em {timeout} s (perdida, ou não há servidor)",
    },
}


def exchange(host: str, port: int, data: bytes, timeout: float = 2.0) -> bytes:
    """EN: Send one datagram to host:port and return the first datagram that comes back.
    Raises TimeoutError if nothing arrives within `timeout` seconds (UDP may lose packets).

    PT: Envia um datagrama para host:port e devolve o primeiro datagrama que voltar.
    Levanta TimeoutError se nada chegar em `timeout` segundos (UDP pode perder pacotes).
    """
    # EN: pick IPv4 or IPv6 from the address itself ("::1" is IPv6).
    # PT: escolhe IPv4 ou IPv6 pelo próprio endereço ("::1" é IPv6).
    family, _, _, _, address = socket.getaddrinfo(lab_address(host), port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        # EN: never via a router: stay on this machine or a lab link.
        # PT: nunca por um roteador: fica nesta máquina ou num enlace do lab.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_DONTROUTE, 1)
        sock.settimeout(timeout)
        # EN: one call = one datagram, no connection first.
        # PT: uma chamada = um datagrama, sem conexão antes.
        sock.sendto(data, address)
        while True:
            reply, sender = sock.recvfrom(MAX_DATAGRAM)
            # EN: anyone can send us a datagram: keep only the server's.
            # PT: qualquer um pode nos enviar um datagrama: ficamos só com o do servidor.
            if sender[:2] == address[:2]:
                return reply


def main(argv: list[str]) -> int:
    """EN: `python -m lab.lessons.udp_client HOST PORT MESSAGE [--timeout S] [--lang pt]`.

    PT: `python -m lab.lessons.udp_client HOST PORT MESSAGE [--timeout S] [--lang pt]`.
    """
    text = messages(MESSAGES, argv)
    parser = client_parser(PROG, text)
    parser.add_argument("--timeout", type=float, default=2.0, help=text["timeout"])
    args = parse_args(parser, text, argv)
    if not 0 < args.timeout <= 3600:  # EN: also refuses NaN and inf  PT: também recusa NaN e inf
        parser.error(text["bad_timeout"].format(timeout=args.timeout))
    try:
        reply = exchange(args.host, args.port, args.message.encode(), args.timeout)
    except TimeoutError:
        # EN: UDP's own failure: nothing came back in time (and nothing will be resent).
        # PT: a falha própria do UDP: nada voltou a tempo (e nada será reenviado).
        print(text["no_reply"].format(prog=PROG, timeout=args.timeout), file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        # EN: not a lab address (nothing was sent), or the system said no: one line, exit 2 or 1.
        # PT: não é endereço do lab (nada foi enviado), ou o sistema disse não: uma linha, código 2 ou 1.
        return client_failed(PROG, text, args, exc)
    return print_reply(reply)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
