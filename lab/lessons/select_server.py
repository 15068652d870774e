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

import errno
import select
import socket
import sys
import time
from collections.abc import Callable

# EN: what every lesson needs that is not the lesson (language, command line, the lab's addresses):
# PT: o que toda lição precisa e que não é a lição (idioma, linha de comando, os endereços do lab):
from lab.lessons.common import messages, parse_args, serve_until_ctrl_c, server_parser

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
PROG = "select_server"  # EN: our name in error messages  PT: nosso nome nas mensagens de erro
TICK = 0.2  # EN: longest select() wait, so we check timeouts and stop requests  PT: idem, para timeouts

MESSAGES = {
    "en": {
        "description": "A TCP echo server for many clients at once, in one thread (select).",
        "port": "TCP port (0 = any free one)",
        "listening": "select echo server listening on {host}:{port} (Ctrl-C to stop)",
        "connected": "client {client} connected ({count} now)",
        "closed": "client {client} gone ({count} now)",
        "full": "client {client} refused: already {max} clients",
    },
    "pt": {
        "description": "Um servidor TCP de eco para vários clientes ao mesmo tempo, numa thread (select).",
        "port": "porta TCP (0 = qualquer uma livre)",
        "listening": "Servidor de eco com select ouvindo em {host}:{port} (Ctrl-C para parar)",
        "connected": "cliente {client} conectado ({count} agora)",
        "closed": "cliente {client} saiu ({count} agora)",
        "full": "cliente {client} recusado: já há {max} clientes",
    },
}


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
    text = messages(MESSAGES, argv)
    args = parse_args(server_parser(PROG, text), text, argv)

    def log(key: str, **values: object) -> None:
        print(text[key].format(**values), flush=True)

    # EN: make_server(host, port), then serve() every client in this one thread until Ctrl-C.
    # PT: make_server(host, port), depois serve() atende todos os clientes nesta thread até o Ctrl-C.
    return serve_until_ctrl_c(PROG, text, args, make_server, lambda listener: serve(listener, log=log))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
