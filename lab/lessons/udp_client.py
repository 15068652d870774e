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

import argparse
import ipaddress
import os
import socket
import sys

# EN: ask for the largest possible datagram so a big echo is never cut short.
# PT: pedimos o maior datagrama possível para um eco grande nunca ser cortado.
MAX_DATAGRAM = 65535

MESSAGES = {
    "en": {
        "description": "A UDP client: sends MESSAGE as one datagram and prints the echo.",
        "host": "server address (this machine or a lab address)",
        "port": "server's UDP port",
        "message": "text to send",
        "timeout": "seconds to wait (default 2)",
        "lang": "language of the messages: en or pt (default: from LANG)",
        "bad_port": "port must be 0..65535, got {port}",
        "bad_timeout": "timeout must be 0 < seconds <= 3600, got {timeout}",
        "no_reply": "{prog}: no reply within {timeout} s (lost, or no server)",
        "refusing": "{prog}: refusing {host}: {host} is neither this machine (127.0.0.0/8, ::1) "
                    "nor a lab address (198.18/15)",
        "cannot": "{prog}: cannot talk to {host}:{port}: {error}",
    },
    "pt": {
        "description": "Um cliente UDP: envia MESSAGE como um datagrama e mostra o eco.",
        "host": "endereço do servidor (esta máquina ou um endereço do lab)",
        "port": "porta UDP do servidor",
        "message": "texto a enviar",
        "timeout": "segundos de espera (padrão 2)",
        "lang": "idioma das mensagens: en ou pt (padrão: conforme LANG)",
        "bad_port": "a porta deve estar entre 0 e 65535, não {port}",
        "bad_timeout": "o timeout deve ser 0 < segundos <= 3600, não {timeout}",
        "no_reply": "{prog}: nenhuma resposta em {timeout} s (perdida, ou não há servidor)",
        "refusing": "{prog}: recusando {host}: {host} não é esta máquina (127.0.0.0/8, ::1) "
                    "nem um endereço do lab (198.18/15)",
        "cannot": "{prog}: não foi possível falar com {host}:{port}: {error}",
    },
}


def pick_language(argv: list[str]) -> str:
    """EN: "pt" or "en": `--lang` if given, else the locale variables (as gettext reads them).

    PT: "pt" ou "en": `--lang` se houver, senão as variáveis de idioma (na ordem do gettext).
    """
    for i, arg in enumerate(argv):
        if arg.startswith("--lang="):
            return arg.split("=", 1)[1]
        if arg == "--lang" and i + 1 < len(argv):
            return argv[i + 1]
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        if os.environ.get(name):
            return "pt" if os.environ[name].lower().startswith("pt") else "en"
    return "en"


def lab_address(host: str) -> str:
    """EN: This lab's rule: talk only to this machine or the lab's namespaces, never the network.

    PT: A regra deste lab: falar só com esta máquina ou com os namespaces do lab, nunca com a rede.
    """
    # EN: a name other than localhost is a ValueError: we look no name up.
    # PT: um nome que não seja localhost dá ValueError: não consultamos nomes (DNS).
    ip = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
    if not (ip.is_loopback or ip in ipaddress.ip_network("198.18.0.0/15")):
        raise ValueError(f"{host} is neither this machine (127.0.0.0/8, ::1) nor a lab address (198.18/15)")
    return str(ip)


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
    prog = "udp_client"
    text = MESSAGES.get(pick_language(argv), MESSAGES["en"])
    parser = argparse.ArgumentParser(prog="python -m lab.lessons.udp_client", description=text["description"],
                                     allow_abbrev=False)
    parser.add_argument("host", help=text["host"])
    parser.add_argument("port", type=int, help=text["port"])
    parser.add_argument("message", help=text["message"])
    parser.add_argument("--timeout", type=float, default=2.0, help=text["timeout"])
    parser.add_argument("--lang", choices=["en", "pt"], help=text["lang"])
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        # EN: ports are 16 bits; Python would quietly use 99999 % 65536.
        # PT: portas têm 16 bits; o Python usaria calado 99999 % 65536.
        parser.error(text["bad_port"].format(port=args.port))
    if not 0 < args.timeout <= 3600:  # EN: also refuses NaN and inf  PT: também recusa NaN e inf
        parser.error(text["bad_timeout"].format(timeout=args.timeout))
    try:
        reply = exchange(args.host, args.port, args.message.encode(), args.timeout)
    except TimeoutError:
        print(text["no_reply"].format(prog=prog, timeout=args.timeout), file=sys.stderr)
        return 1
    except ValueError:
        # EN: not an address this lab may talk to: nothing was sent.
        # PT: não é um endereço com que este lab pode falar: nada foi enviado.
        print(text["refusing"].format(prog=prog, host=args.host), file=sys.stderr)
        return 2
    except OSError as exc:
        print(text["cannot"].format(prog=prog, host=args.host, port=args.port, error=exc.strerror or exc),
              file=sys.stderr)
        return 1
    print(reply.decode(errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
