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

import argparse
import ipaddress
import os
import socket
import sys

# EN: how many bytes we ask for per recv(); any size works, TCP is a stream.
# PT: quantos bytes pedimos por recv(); qualquer tamanho serve, TCP é um fluxo.
BUFFER_SIZE = 4096

MESSAGES = {
    "en": {
        "description": "A TCP client: sends MESSAGE to an echo server and prints the reply.",
        "host": "server address (this machine or a lab address)",
        "port": "server's TCP port",
        "message": "text to send",
        "lang": "language of the messages: en or pt (default: from LANG)",
        "bad_port": "port must be 0..65535, got {port}",
        "refusing": "{prog}: refusing {host}: {host} is neither this machine (127.0.0.0/8, ::1) "
                    "nor a lab address (198.18/15)",
        "cannot": "{prog}: cannot talk to {host}:{port}: {error}",
    },
    "pt": {
        "description": "Um cliente TCP: envia MESSAGE a um servidor de eco e mostra a resposta.",
        "host": "endereço do servidor (esta máquina ou um endereço do lab)",
        "port": "porta TCP do servidor",
        "message": "texto a enviar",
        "lang": "idioma das mensagens: en ou pt (padrão: conforme LANG)",
        "bad_port": "a porta deve estar entre 0 e 65535, não {port}",
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
    prog = "tcp_client"
    text = MESSAGES.get(pick_language(argv), MESSAGES["en"])
    parser = argparse.ArgumentParser(prog="python -m lab.lessons.tcp_client", description=text["description"],
                                     allow_abbrev=False)
    parser.add_argument("host", help=text["host"])
    parser.add_argument("port", type=int, help=text["port"])
    parser.add_argument("message", help=text["message"])
    parser.add_argument("--lang", choices=["en", "pt"], help=text["lang"])
    # EN: a PORT that is not a number: usage message, exit status 2.
    # PT: uma PORT que não é número: mensagem de uso, código de saída 2.
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        # EN: ports are 16 bits; Python would quietly use 99999 % 65536.
        # PT: portas têm 16 bits; o Python usaria calado 99999 % 65536.
        parser.error(text["bad_port"].format(port=args.port))
    host, port, message = args.host, args.port, args.message
    try:
        reply = exchange(host, port, message.encode())
    except ValueError:
        # EN: not an address this lab may talk to: nothing was sent.
        # PT: não é um endereço com que este lab pode falar: nada foi enviado.
        print(text["refusing"].format(prog=prog, host=host), file=sys.stderr)
        return 2
    except OSError as exc:
        print(text["cannot"].format(prog=prog, host=host, port=port, error=exc.strerror or exc),
              file=sys.stderr)
        return 1
    print(reply.decode(errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
