"""What every lesson needs that is not the lesson / O que toda lição precisa e que não é a lição.

EN: The lessons (tcp_client, udp_client, udp_server, tcp_server, select_server) each teach one
thing about sockets. Around that, every one of them does the same chores: pick English or
Portuguese, read the command line, refuse a port outside 0..65535, keep to this lab's addresses,
and (the servers) say where they listen, warn when other machines can reach them, and stop
cleanly on Ctrl-C. Those chores live here, once, so each lesson file shows only its lesson.
Standard library only, like the lessons.

PT: As lições (tcp_client, udp_client, udp_server, tcp_server, select_server) ensinam, cada uma,
uma coisa sobre soquetes. Em volta disso, todas fazem as mesmas tarefas: escolher inglês ou
português, ler a linha de comando, recusar uma porta fora de 0..65535, ficar nos endereços deste
lab, e (os servidores) dizer onde escutam, avisar quando outras máquinas os alcançam e parar de
forma limpa no Ctrl-C. Essas tarefas ficam aqui, uma vez só, para cada arquivo de lição mostrar
só a sua lição. Só a biblioteca padrão, como as lições.
"""

import argparse
import errno
import ipaddress
import os
import socket
import socketserver
import sys
from collections.abc import Callable, Mapping
from typing import TypeVar

# EN: 198.18.0.0/15 is reserved for benchmarking (RFC 2544): the lab's links use it, no real network does.
# PT: 198.18.0.0/15 é reservado para testes de desempenho (RFC 2544): os enlaces do lab o usam, nenhuma
#     rede de verdade usa.
LAB_NETWORK = ipaddress.ip_network("198.18.0.0/15")

# EN: the messages every lesson shares; each lesson adds its own (see messages()).
# PT: as mensagens que todas as lições dividem; cada lição soma as suas (veja messages()).
MESSAGES = {
    "en": {
        "host": "server address (this machine or a lab address)",
        "message": "text to send",
        "listen_host": "address to listen on (default 127.0.0.1, this machine only)",
        "lang": "language of the messages: en or pt (default: from LANG)",
        "bad_port": "port must be 0..65535, got {port}",
        "refusing": "{prog}: refusing {host}: {host} is neither this machine (127.0.0.0/8, ::1) "
                    "nor a lab address (198.18/15)",
        "cannot": "{prog}: cannot talk to {host}:{port}: {error}",
        "exposed": "{prog}: warning: listening on {host}, not loopback: other machines can reach this server",
        "in_use": "{prog}: cannot listen on {host}:{port}: the port is already in use (pick another --port)",
        "cannot_listen": "{prog}: cannot listen on {host}:{port}: {error}",
        "stopped": "server stopped",
    },
    "pt": {
        "host": "endereço do servidor (esta máquina ou um endereço do lab)",
        "message": "texto a enviar",
        "listen_host": "endereço onde escutar (padrão 127.0.0.1, só esta máquina)",
        "lang": "idioma das mensagens: en ou pt (padrão: conforme LANG)",
        "bad_port": "a porta deve estar entre 0 e 65535, não {port}",
        "refusing": "{prog}: recusando {host}: {host} não é esta máquina (127.0.0.0/8, ::1) "
                    "nem um endereço do lab (198.18/15)",
        "cannot": "{prog}: não foi possível falar com {host}:{port}: {error}",
        "exposed": "{prog}: aviso: ouvindo em {host}, que não é loopback: outras máquinas alcançam "
                   "este servidor",
        "in_use": "{prog}: não foi possível ouvir em {host}:{port}: a porta já está em uso "
                  "(escolha outra --port)",
        "cannot_listen": "{prog}: não foi possível ouvir em {host}:{port}: {error}",
        "stopped": "servidor parado",
    },
}

Server = TypeVar("Server", socket.socket, socketserver.BaseServer)


# --- EN/PT: language / idioma

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


def messages(own: Mapping[str, Mapping[str, str]], argv: list[str]) -> dict[str, str]:
    """EN: The messages in the language pick_language(argv) chose (English if we have no such
    language): the shared ones above plus the lesson's `own`.

    PT: As mensagens no idioma que pick_language(argv) escolheu (inglês se não temos esse idioma):
    as comuns acima mais as `own` da lição.
    """
    lang = pick_language(argv)
    return {**MESSAGES.get(lang, MESSAGES["en"]), **own.get(lang, own["en"])}


# --- EN/PT: the command line / a linha de comando

def client_parser(prog: str, text: Mapping[str, str]) -> argparse.ArgumentParser:
    """EN: The clients' command line: HOST PORT MESSAGE (the lesson may add options).

    PT: A linha de comando dos clientes: HOST PORT MESSAGE (a lição pode somar opções).
    """
    parser = argparse.ArgumentParser(prog=f"python -m lab.lessons.{prog}", description=text["description"],
                                     allow_abbrev=False)
    parser.add_argument("host", help=text["host"])
    parser.add_argument("port", type=int, help=text["port"])
    parser.add_argument("message", help=text["message"])
    return parser


def server_parser(prog: str, text: Mapping[str, str]) -> argparse.ArgumentParser:
    """EN: The servers' command line: --port N, and --host H (default 127.0.0.1, this machine only).

    PT: A linha de comando dos servidores: --port N, e --host H (padrão 127.0.0.1, só esta máquina).
    """
    parser = argparse.ArgumentParser(prog=f"python -m lab.lessons.{prog}", description=text["description"],
                                     allow_abbrev=False)
    parser.add_argument("--host", default="127.0.0.1", help=text["listen_host"])
    parser.add_argument("--port", type=int, required=True, help=text["port"])
    return parser


def parse_args(parser: argparse.ArgumentParser, text: Mapping[str, str],
                    argv: list[str]) -> argparse.Namespace:
    """EN: Add --lang (last, so --help lists it last), read argv and check the port.
    A bad option, or a PORT that is not a number or not 0..65535: usage message, exit status 2.

    PT: Soma --lang (por último, para o --help a listar por último), lê o argv e confere a porta.
    Uma opção errada, ou uma PORT que não é número ou não está em 0..65535: mensagem de uso,
    código de saída 2.
    """
    parser.add_argument("--lang", choices=["en", "pt"], help=text["lang"])
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        # EN: ports are 16 bits; Python would quietly use 99999 % 65536.
        # PT: portas têm 16 bits; o Python usaria calado 99999 % 65536.
        parser.error(text["bad_port"].format(port=args.port))
    return args


# --- EN/PT: this lab's addresses / os endereços deste lab

def within_lab(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """EN: True for this machine (loopback) or a lab link (198.18.0.0/15); false for the network.

    PT: Verdadeiro para esta máquina (loopback) ou um enlace do lab (198.18.0.0/15); falso para a rede.
    """
    return ip.is_loopback or ip in LAB_NETWORK


def lab_address(host: str) -> str:
    """EN: This lab's rule: talk only to this machine or the lab's namespaces, never the network.

    PT: A regra deste lab: falar só com esta máquina ou com os namespaces do lab, nunca com a rede.
    """
    # EN: a name other than localhost is a ValueError: we look no name up.
    # PT: um nome que não seja localhost dá ValueError: não consultamos nomes (DNS).
    ip = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
    if not within_lab(ip):
        raise ValueError(f"{host} is neither this machine (127.0.0.0/8, ::1) nor a lab address (198.18/15)")
    return str(ip)


# --- EN/PT: what a client prints when it fails / o que um cliente mostra quando falha

def client_failed(prog: str, text: Mapping[str, str], args: argparse.Namespace, exc: Exception) -> int:
    """EN: Say in one line on stderr why the exchange failed; return the exit status.
    ValueError: not an address this lab may talk to, nothing was sent (2). OSError: the system
    said no, e.g. "Connection refused" (1).

    PT: Diz numa linha no stderr por que a troca falhou; devolve o código de saída.
    ValueError: não é um endereço com que este lab pode falar, nada foi enviado (2). OSError: o
    sistema disse não, por exemplo "Connection refused" (1).
    """
    if isinstance(exc, ValueError):
        print(text["refusing"].format(prog=prog, host=args.host), file=sys.stderr)
        return 2
    error = getattr(exc, "strerror", None) or exc
    print(text["cannot"].format(prog=prog, host=args.host, port=args.port, error=error), file=sys.stderr)
    return 1


def print_reply(reply: bytes) -> int:
    """EN: Show the echo as text and return exit status 0. The network carries bytes: bytes that
    are not valid UTF-8 are shown as "\ufffd" instead of stopping us with an error.

    PT: Mostra o eco como texto e devolve o código de saída 0. A rede carrega bytes: bytes que não
    são UTF-8 válido aparecem como "\ufffd" em vez de nos parar com um erro.
    """
    print(reply.decode(errors="replace"))
    return 0


# --- EN/PT: running a server / rodar um servidor

def serve_until_ctrl_c(prog: str, text: Mapping[str, str], args: argparse.Namespace,
                       listen: Callable[[str, int], Server], serve: Callable[[Server], None]) -> int:
    """EN: listen(host, port), say where, serve(server) until Ctrl-C, close; return the exit status.
    A port we cannot have (already in use, say) is one line on stderr and exit status 2; Ctrl-C is
    a normal stop, exit status 0. `listen` returns a listening socket or a socketserver server:
    both close when their `with` block ends.

    PT: listen(host, port), diz onde, serve(server) até o Ctrl-C, fecha; devolve o código de saída.
    Uma porta que não conseguimos (já em uso, por exemplo) é uma linha no stderr e código 2;
    Ctrl-C é uma parada normal, código 0. `listen` devolve um soquete escutando ou um servidor do
    socketserver: os dois fecham quando o bloco `with` termina.
    """
    try:
        server = listen(args.host, args.port)
    except OSError as exc:
        key = "in_use" if exc.errno == errno.EADDRINUSE else "cannot_listen"
        print(text[key].format(prog=prog, host=args.host, port=args.port, error=exc.strerror or exc),
              file=sys.stderr)
        return 2
    with server:
        # EN: port 0 becomes a real port only now: ask the socket. PT: a porta 0 só agora vira uma
        #     porta de verdade: perguntamos ao soquete.
        sock = server.socket if isinstance(server, socketserver.BaseServer) else server
        host, port = sock.getsockname()[:2]
        if not within_lab(ipaddress.ip_address(host)):
            # EN: anyone on the network could use this server (198.18/15 is only the lab's link).
            # PT: qualquer um na rede poderia usar este servidor (198.18/15 é só o enlace do lab).
            print(text["exposed"].format(prog=prog, host=host), file=sys.stderr, flush=True)
        try:
            # EN: from here on, Ctrl-C is a clean stop. PT: daqui em diante, Ctrl-C é uma parada limpa.
            print(text["listening"].format(host=host, port=port), flush=True)
            serve(server)
        except KeyboardInterrupt:
            # EN: Ctrl-C: a normal way to stop a server, not an error. PT: Ctrl-C: jeito normal de parar.
            pass
    print(text["stopped"], flush=True)
    return 0
