"""Lesson 5 — many clients at once / Lição 5 — vários clientes ao mesmo tempo (select).

EN: The TCP echo server again, now with ONE thread for every client (the course names `select` as
the way to handle many connections at once). Every socket is non-blocking, and select() tells us
which ones can go on without waiting: the listening socket when a client is waiting to be
accepted, a client's socket when it has bytes for us (or has closed), and when it can take more of
its echo. Each client has a small send buffer: what we received and still owe it. A client that
does not read fills its buffer, and then we stop reading from it, so it cannot make us hoard
memory; the others are served all the while.

PT: O servidor TCP de eco de novo, agora com UMA thread para todos os clientes (o curso cita
`select` para lidar com várias conexões ao mesmo tempo). Todo soquete é não bloqueante, e o
select() diz quais podem seguir sem esperar: o soquete que escuta quando há um cliente esperando o
accept(), o soquete de um cliente quando há bytes dele (ou ele fechou), e quando ele aceita mais do
seu eco. Cada cliente tem um pequeno buffer de envio: o que recebemos e ainda devemos a ele. Um
cliente que não lê enche o seu buffer, e então paramos de ler dele, assim ele não nos faz acumular
memória; os outros continuam sendo atendidos.

    python -m lab.lessons.select_server --port 7007 [--lang pt]
    (in another terminal / em outro terminal)  python -m lab.lessons.tcp_client 127.0.0.1 7007 "olá"
"""

import argparse
import errno
import ipaddress
import os
import select
import socket
import sys
import time
from collections.abc import Callable

# EN: bytes read per recv(), and the most we hold for one client before we stop reading from it.
# PT: bytes lidos por recv(), e o máximo que guardamos para um cliente antes de parar de ler dele.
BUFFER_SIZE = 4096
MAX_PENDING = 64 * 1024
# EN: select() only handles file descriptors below 1024 (FD_SETSIZE): we stay well under it.
#     (Bigger servers use poll/epoll, e.g. through the `selectors` module.)
# PT: select() só lida com descritores de arquivo abaixo de 1024 (FD_SETSIZE): ficamos bem abaixo.
#     (Servidores maiores usam poll/epoll, por exemplo pelo módulo `selectors`.)
MAX_CLIENTS = 256
# EN: a client that makes no progress (sends nothing, reads nothing) this long is closed.
# PT: um cliente que não avança (não envia, não lê) por este tempo é fechado.
IDLE_TIMEOUT = 60.0
TICK = 0.2  # EN: longest select() wait, so we check timeouts and stop requests  PT: idem, para timeouts

MESSAGES = {
    "en": {
        "description": "A TCP echo server for many clients at once, in one thread (select).",
        "host": "address to listen on (default 127.0.0.1, this machine only)",
        "port": "TCP port (0 = any free one)",
        "lang": "language of the messages: en or pt (default: from LANG)",
        "bad_port": "port must be 0..65535, got {port}",
        "listening": "select echo server listening on {host}:{port} (Ctrl-C to stop)",
        "exposed": "{prog}: warning: listening on {host}, not loopback: other machines can reach this server",
        "in_use": "{prog}: cannot listen on {host}:{port}: the port is already in use (pick another --port)",
        "cannot_listen": "{prog}: cannot listen on {host}:{port}: {error}",
        "connected": "client {client} connected ({count} now)",
        "closed": "client {client} gone ({count} now)",
        "full": "client {client} refused: already {max} clients",
        "stopped": "server stopped",
    },
    "pt": {
        "description": "Um servidor TCP de eco para vários clientes ao mesmo tempo, numa thread (select).",
        "host": "endereço onde escutar (padrão 127.0.0.1, só esta máquina)",
        "port": "porta TCP (0 = qualquer uma livre)",
        "lang": "idioma das mensagens: en ou pt (padrão: conforme LANG)",
        "bad_port": "a porta deve estar entre 0 e 65535, não {port}",
        "listening": "Servidor de eco com select ouvindo em {host}:{port} (Ctrl-C para parar)",
        "exposed": "{prog}: aviso: ouvindo em {host}, que não é loopback: outras máquinas alcançam "
                   "este servidor",
        "in_use": "{prog}: não foi possível ouvir em {host}:{port}: a porta já está em uso "
                  "(escolha outra --port)",
        "cannot_listen": "{prog}: não foi possível ouvir em {host}:{port}: {error}",
        "connected": "cliente {client} conectado ({count} agora)",
        "closed": "cliente {client} saiu ({count} agora)",
        "full": "cliente {client} recusado: já há {max} clientes",
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


class Client:
    """EN: What we know about one connection. PT: O que sabemos sobre uma conexão."""

    def __init__(self, address: tuple) -> None:
        self.name = "{}:{}".format(*address[:2])
        self.pending = bytearray()  # EN: echo not yet sent  PT: eco ainda não enviado
        self.reading = True  # EN: False once the client closed its side  PT: False quando o cliente fechou
        self.last_progress = time.monotonic()


def make_server(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """EN: A listening TCP socket on host:port (port 0: the system picks a free one).

    PT: Um soquete TCP escutando em host:port (porta 0: o sistema escolhe uma livre).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # EN: restart at once after Ctrl-C (TIME_WAIT connections do not block the port).
        # PT: reinicia na hora após Ctrl-C (conexões em TIME_WAIT não prendem a porta).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen()
        sock.setblocking(False)  # EN: accept() never waits  PT: accept() nunca espera
    except OSError:
        sock.close()
        raise
    return sock


def serve(listener: socket.socket, *, max_clients: int = MAX_CLIENTS, idle_timeout: float = IDLE_TIMEOUT,
          should_stop: Callable[[], bool] = lambda: False, log: Callable[..., None] | None = None) -> None:
    """EN: Echo for every client until should_stop() is true (or Ctrl-C); then close them all.

    PT: Faz o eco para todos os clientes até should_stop() ser verdadeiro (ou Ctrl-C); então fecha todos.
    """
    say = log or (lambda key, **values: None)
    clients: dict[socket.socket, Client] = {}

    def close(sock: socket.socket) -> None:
        client = clients.pop(sock)
        sock.close()
        say("closed", client=client.name, count=len(clients))

    try:
        while not should_stop():
            # EN: read from a client only while its buffer has room: that bounds our memory.
            # PT: lê de um cliente só enquanto o buffer dele tem espaço: isso limita a memória.
            readers = [s for s, c in clients.items() if c.reading and len(c.pending) < MAX_PENDING]
            readers.append(listener)
            writers = [s for s, c in clients.items() if c.pending]
            readable, writable, _ = select.select(readers, writers, [], TICK)
            for sock in readable:
                if sock is listener:
                    accept(listener, clients, max_clients, say)
                    continue
                client = clients[sock]
                try:
                    data = sock.recv(BUFFER_SIZE)
                except BlockingIOError:
                    continue  # EN: nothing after all  PT: afinal não havia nada
                except OSError:
                    close(sock)  # EN: reset by the client  PT: conexão resetada pelo cliente
                    continue
                if data:
                    client.pending += data
                    client.last_progress = time.monotonic()
                else:
                    # EN: b"": the client closed its side; we still send what we owe, then close.
                    # PT: b"": o cliente fechou o lado dele; ainda enviamos o que devemos, e fechamos.
                    client.reading = False
            for sock in writable:
                client = clients.get(sock)
                if client is None:  # EN: closed above  PT: fechado acima
                    continue
                try:
                    # EN: send() on a non-blocking socket sends what fits now, maybe only a part.
                    # PT: send() num soquete não bloqueante envia o que cabe agora, talvez só uma parte.
                    sent = sock.send(client.pending)
                except BlockingIOError:
                    continue
                except OSError:
                    close(sock)  # EN: the client went away  PT: o cliente foi embora
                    continue
                del client.pending[:sent]
                client.last_progress = time.monotonic()
            now = time.monotonic()
            for sock, client in list(clients.items()):
                finished = not client.reading and not client.pending
                if finished or now - client.last_progress > idle_timeout:
                    close(sock)
    finally:
        # EN: stopping (also by Ctrl-C): close every client, so none is left waiting.
        # PT: ao parar (também com Ctrl-C): fecha todos os clientes, para nenhum ficar esperando.
        for sock in list(clients):
            close(sock)


def accept(listener: socket.socket, clients: dict, max_clients: int, say: Callable[..., None]) -> None:
    """EN: Accept one waiting client, non-blocking, unless we already have max_clients.

    PT: Aceita um cliente que espera, sem bloquear, a menos que já haja max_clients.
    """
    try:
        sock, address = listener.accept()
    except OSError as exc:
        # EN: the client gave up before we got to it, or we are out of file descriptors (then wait
        #     a little, instead of trying again at once): either way, keep serving the others.
        # PT: o cliente desistiu antes de chegarmos, ou acabaram os descritores de arquivo (então
        #     esperamos um pouco, em vez de tentar de novo na hora): seguimos atendendo os outros.
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            time.sleep(TICK)
        return
    if len(clients) >= max_clients:
        say("full", client="{}:{}".format(*address[:2]), max=max_clients)
        sock.close()  # EN: the client sees the connection end at once  PT: o cliente vê a conexão acabar
        return
    sock.setblocking(False)
    clients[sock] = Client(address)
    say("connected", client=clients[sock].name, count=len(clients))


def main(argv: list[str]) -> int:
    """EN: `python -m lab.lessons.select_server --port N [--host H] [--lang pt]`: serve until Ctrl-C.

    PT: `python -m lab.lessons.select_server --port N [--host H] [--lang pt]`: serve até o Ctrl-C.
    """
    prog = "select_server"
    lang = pick_language(argv)
    text = MESSAGES.get(lang, MESSAGES["en"])
    parser = argparse.ArgumentParser(prog="python -m lab.lessons.select_server",
                                     description=text["description"], allow_abbrev=False)
    parser.add_argument("--host", default="127.0.0.1", help=text["host"])
    parser.add_argument("--port", type=int, required=True, help=text["port"])
    parser.add_argument("--lang", choices=["en", "pt"], help=text["lang"])
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:  # EN: ports are 16 bits  PT: portas têm 16 bits
        parser.error(text["bad_port"].format(port=args.port))
    try:
        listener = make_server(args.host, args.port)
    except OSError as exc:
        key = "in_use" if exc.errno == errno.EADDRINUSE else "cannot_listen"
        print(text[key].format(prog=prog, host=args.host, port=args.port, error=exc.strerror or exc),
              file=sys.stderr)
        return 2
    host, port = listener.getsockname()[:2]
    ip = ipaddress.ip_address(host)
    if not (ip.is_loopback or ip in ipaddress.ip_network("198.18.0.0/15")):
        # EN: anyone on the network could use this server (198.18/15 is only the lab's link).
        # PT: qualquer um na rede poderia usar este servidor (198.18/15 é só o enlace do lab).
        print(text["exposed"].format(prog=prog, host=host), file=sys.stderr, flush=True)

    def log(key: str, **values: object) -> None:
        print(text[key].format(**values), flush=True)

    try:
        # EN: from here on, Ctrl-C is a clean stop. PT: daqui em diante, Ctrl-C é uma parada limpa.
        print(text["listening"].format(host=host, port=port), flush=True)
        serve(listener, log=log)
    except KeyboardInterrupt:
        # EN: Ctrl-C: a normal way to stop a server, not an error. PT: Ctrl-C: jeito normal de parar.
        pass
    finally:
        listener.close()
    print(text["stopped"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
