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

import argparse
import errno
import ipaddress
import os
import socket
import sys

# EN: read buffer: big enough for any UDP datagram.
# PT: buffer de leitura: cabe qualquer datagrama UDP.
MAX_DATAGRAM = 65535

MESSAGES = {
    "en": {
        "description": "A UDP echo server: every datagram goes back to its sender.",
        "host": "address to listen on (default 127.0.0.1, this machine only)",
        "port": "UDP port (0 = any free one)",
        "lang": "language of the messages: en or pt (default: from LANG)",
        "bad_port": "port must be 0..65535, got {port}",
        "listening": "UDP echo server listening on {host}:{port} (Ctrl-C to stop)",
        "exposed": "{prog}: warning: listening on {host}, not loopback: other machines can reach this server",
        "in_use": "{prog}: cannot listen on {host}:{port}: the port is already in use (pick another --port)",
        "cannot_listen": "{prog}: cannot listen on {host}:{port}: {error}",
        "stopped": "server stopped",
    },
    "pt": {
        "description": "Um servidor UDP de eco: cada datagrama volta para quem o enviou.",
        "host": "endereço onde escutar (padrão 127.0.0.1, só esta máquina)",
        "port": "porta UDP (0 = qualquer uma livre)",
        "lang": "idioma das mensagens: en ou pt (padrão: conforme LANG)",
        "bad_port": "a porta deve estar entre 0 e 65535, não {port}",
        "listening": "Servidor UDP de eco ouvindo em {host}:{port} (Ctrl-C para parar)",
        "exposed": "{prog}: aviso: ouvindo em {host}, que não é loopback: outras máquinas alcançam "
                   "este servidor",
        "in_use": "{prog}: não foi possível ouvir em {host}:{port}: a porta já está em uso "
                  "(escolha outra --port)",
        "cannot_listen": "{prog}: não foi possível ouvir em {host}:{port}: {error}",
        "stopped": "servidor parado",
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
    prog = "udp_server"
    text = MESSAGES.get(pick_language(argv), MESSAGES["en"])
    parser = argparse.ArgumentParser(prog="python -m lab.lessons.udp_server", description=text["description"],
                                     allow_abbrev=False)
    parser.add_argument("--host", default="127.0.0.1", help=text["host"])
    parser.add_argument("--port", type=int, required=True, help=text["port"])
    parser.add_argument("--lang", choices=["en", "pt"], help=text["lang"])
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        # EN: ports are 16 bits; Python would quietly use 99999 % 65536.
        # PT: portas têm 16 bits; o Python usaria calado 99999 % 65536.
        parser.error(text["bad_port"].format(port=args.port))
    try:
        sock = make_server(args.host, args.port)
    except OSError as exc:
        key = "in_use" if exc.errno == errno.EADDRINUSE else "cannot_listen"
        print(text[key].format(prog=prog, host=args.host, port=args.port, error=exc.strerror or exc),
              file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    ip = ipaddress.ip_address(host)
    if not (ip.is_loopback or ip in ipaddress.ip_network("198.18.0.0/15")):
        # EN: anyone on the network could use this server (198.18/15 is only the lab's link).
        # PT: qualquer um na rede poderia usar este servidor (198.18/15 é só o enlace do lab).
        print(text["exposed"].format(prog=prog, host=host), file=sys.stderr, flush=True)
    try:
        # EN: from here on, Ctrl-C is a clean stop. PT: daqui em diante, Ctrl-C é uma parada limpa.
        print(text["listening"].format(host=host, port=port), flush=True)
        serve(sock)
    except KeyboardInterrupt:
        # EN: Ctrl-C: a normal way to stop a server, not an error. PT: Ctrl-C: jeito normal de parar.
        pass
    finally:
        sock.close()
    print(text["stopped"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
