"""Lesson 4 — a TCP echo server / Lição 4 — um servidor TCP de eco (socketserver).

EN: After the course's aulas 4-6 (the course names `socketserver` as the way to write TCP servers).
A TCP server *listens* on a port; each client that connects gets a connection of its own (the
kernel's accept()), a private byte stream in both directions. socketserver does the accept() loop
for us and calls our handler once per connection; ThreadingTCPServer runs each handler in its own
thread, so a slow client does not hold up the others. The handler reads what arrives and writes it
straight back (the echo service of RFC 862) until the client closes its side.

PT: Depois das aulas 4-6 do curso (o curso cita `socketserver` para escrever servidores TCP).
Um servidor TCP *escuta* numa porta; cada cliente que se conecta ganha uma conexão só sua (o
accept() do kernel), um fluxo de bytes privado nos dois sentidos. O socketserver faz o laço de
accept() por nós e chama o nosso handler uma vez por conexão; o ThreadingTCPServer roda cada
handler numa thread própria, então um cliente lento não atrasa os outros. O handler lê o que chega
e devolve na hora (o serviço de eco da RFC 862) até o cliente fechar o lado dele.

    python -m lab.lessons.tcp_server --port 7007 [--lang pt]
    (in another terminal / em outro terminal)  python -m lab.lessons.tcp_client 127.0.0.1 7007 "olá"
"""

import contextlib
import socket
import socketserver
import sys
import threading

# EN: what every lesson needs that is not the lesson (language, command line, the lab's addresses):
# PT: o que toda lição precisa e que não é a lição (idioma, linha de comando, os endereços do lab):
from lab.lessons.common import messages, parse_args, pick_language, serve_until_ctrl_c, server_parser

# EN: the most we hold per client: read 4 KiB, echo it, only then read more.
# PT: o máximo que guardamos por cliente: lê 4 KiB, ecoa, só então lê mais.
BUFFER_SIZE = 4096
# EN: one thread per client, and threads are not free: we cap them.
# PT: uma thread por cliente, e threads custam memória: limitamos.
MAX_CLIENTS = 64
# EN: seconds a client may send nothing, or read nothing, before we close it.
# PT: segundos que um cliente pode ficar sem enviar, ou sem ler, antes de o fecharmos.
IDLE_TIMEOUT = 60.0
PROG = "tcp_server"  # EN: our name in error messages  PT: nosso nome nas mensagens de erro

MESSAGES = {
    "en": {
        "description": "A TCP echo server (socketserver): every client gets its bytes back.",
        "port": "TCP port (0 = any free one)",
        "listening": "TCP echo server listening on {host}:{port} (Ctrl-C to stop)",
        "connected": "client {client} connected",
        "closed": "client {client} gone ({count} bytes echoed)",
        "full": "client {client} refused: already {max} clients",
    },
    "pt": {
        "description": "Um servidor TCP de eco (socketserver): cada cliente recebe seus bytes de volta.",
        "port": "porta TCP (0 = qualquer uma livre)",
        "listening": "Servidor TCP de eco ouvindo em {host}:{port} (Ctrl-C para parar)",
        "connected": "cliente {client} conectado",
        "closed": "cliente {client} saiu ({count} bytes ecoados)",
        "full": "cliente {client} recusado: já há {max} clientes",
    },
}


class EchoHandler(socketserver.StreamRequestHandler):
    """EN: Called once per connection, in its own thread; self.request is the client's socket.

    PT: Chamado uma vez por conexão, na sua própria thread; self.request é o soquete do cliente.
    """

    def setup(self) -> None:
        # EN: StreamRequestHandler puts this timeout on the socket: a client silent too long,
        #     or one that never reads our echo, ends with TimeoutError instead of blocking forever.
        # PT: o StreamRequestHandler põe este timeout no soquete: um cliente calado por muito tempo,
        #     ou que nunca lê o eco, termina com TimeoutError em vez de bloquear para sempre.
        self.timeout = self.server.idle_timeout  # type: ignore[attr-defined]
        super().setup()  # EN: makes self.rfile / self.wfile: the stream as files  PT: o fluxo como arquivos

    def handle(self) -> None:
        """EN: Echo until the client closes its side. PT: Ecoa até o cliente fechar o lado dele."""
        echoed = 0
        self.client = "{}:{}".format(*self.client_address[:2])
        self.server.log("connected", client=self.client)  # type: ignore[attr-defined]
        try:
            while True:
                # EN: read1 returns what has arrived, at most BUFFER_SIZE bytes: a stream has no
                #     messages, so this may be part of what the client sent, or several sends at once.
                # PT: read1 devolve o que já chegou, no máximo BUFFER_SIZE bytes: um fluxo não tem
                #     mensagens, então pode ser parte do que o cliente enviou, ou vários envios juntos.
                data = self.rfile.read1(BUFFER_SIZE)
                if not data:
                    # EN: b"": the client closed (or half-closed) its side: nothing more will come.
                    # PT: b"": o cliente fechou (ou meio-fechou) o lado dele: não virá mais nada.
                    break
                # EN: write() on wfile sends it all (like sendall()); if the client does not read,
                #     this waits (TCP flow control) and we read nothing more: memory stays bounded.
                # PT: write() no wfile envia tudo (como sendall()); se o cliente não lê, isto espera
                #     (controle de fluxo do TCP) e não lemos mais nada: a memória fica limitada.
                self.wfile.write(data)
                echoed += len(data)
        except OSError:
            # EN: reset by the client, timed out, or closed by server_close(): just end this client.
            # PT: conexão resetada pelo cliente, timeout, ou fechada pelo server_close(): só encerra.
            pass
        self.server.log("closed", client=self.client, count=echoed)  # type: ignore[attr-defined]
        # EN: after handle() returns, socketserver closes the connection (our side of it).
        # PT: quando handle() retorna, o socketserver fecha a conexão (o nosso lado dela).


class EchoServer(socketserver.ThreadingTCPServer):
    """EN: The listening socket plus accept() in a loop, one thread per client, at most MAX_CLIENTS.

    PT: O soquete que escuta mais o accept() em laço, uma thread por cliente, no máximo MAX_CLIENTS.
    """

    # EN: restart at once after Ctrl-C (old connections in TIME_WAIT do not block the port);
    #     a port another server is listening on is still refused.
    # PT: reinicia na hora após Ctrl-C (conexões antigas em TIME_WAIT não prendem a porta);
    #     uma porta onde outro servidor escuta continua recusada.
    allow_reuse_address = True
    # EN: how many clients may wait in the kernel for accept() (socketserver's default is only 5:
    #     more at once and the kernel drops their SYNs, so they wait 1 s, 3 s... to connect).
    # PT: quantos clientes podem esperar no kernel pelo accept() (o padrão do socketserver é só 5:
    #     mais que isso ao mesmo tempo e o kernel descarta os SYNs, e eles esperam 1 s, 3 s...).
    request_queue_size = 128
    # EN: server_close() waits for every client thread to end (we close their sockets first).
    # PT: server_close() espera todas as threads de clientes terminarem (fechamos os soquetes antes).
    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple, max_clients: int = MAX_CLIENTS,
                 idle_timeout: float = IDLE_TIMEOUT, lang: str = "en", verbose: bool = False) -> None:
        # EN: IPv6 addresses ("::1") need an IPv6 socket. PT: endereços IPv6 ("::1") pedem um soquete IPv6.
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.max_clients, self.idle_timeout = max_clients, idle_timeout
        self.lang, self.verbose = lang, verbose
        self.clients: set[socket.socket] = set()
        self.lock = threading.Lock()  # EN: threads share self.clients  PT: as threads dividem self.clients
        super().__init__(address, EchoHandler)  # EN: socket(), bind(), listen()  PT: idem

    def log(self, key: str, **values: object) -> None:
        """EN: One line per event, when verbose. PT: Uma linha por evento, se verbose."""
        if self.verbose:
            print(MESSAGES[self.lang][key].format(**values), flush=True)

    def verify_request(self, request, client_address) -> bool:  # type: ignore[no-untyped-def]
        """EN: Called right after accept(): False closes the connection at once (too many clients).

        PT: Chamado logo após o accept(): False fecha a conexão na hora (clientes demais).
        """
        with self.lock:
            if len(self.clients) >= self.max_clients:
                self.log("full", client="{}:{}".format(*client_address[:2]), max=self.max_clients)
                return False
            self.clients.add(request)
            return True

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        """EN: Runs in the client's thread: the handler, then the connection is closed.

        PT: Roda na thread do cliente: o handler, depois a conexão é fechada.
        """
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.clients.discard(request)

    def server_close(self) -> None:
        """EN: Stop listening, end every client's connection, wait for their threads.

        PT: Para de escutar, encerra a conexão de cada cliente, espera as threads deles.
        """
        self.socket.close()
        with self.lock:
            for client in self.clients:
                # EN: wakes a thread blocked in read or write: it sees the end and returns.
                # PT: acorda uma thread bloqueada lendo ou escrevendo: ela vê o fim e retorna.
                with contextlib.suppress(OSError):  # EN/PT: already closed / já fechado
                    client.shutdown(socket.SHUT_RDWR)
        super().server_close()  # EN: joins the client threads  PT: espera (join) as threads dos clientes


def make_server(host: str = "127.0.0.1", port: int = 0, **options: object) -> EchoServer:
    """EN: A server bound to host:port, listening (port 0: the system picks a free one).

    PT: Um servidor ligado (bind) a host:port, escutando (porta 0: o sistema escolhe uma livre).
    """
    return EchoServer((host, port), **options)  # type: ignore[arg-type]


def main(argv: list[str]) -> int:
    """EN: `python -m lab.lessons.tcp_server --port N [--host H] [--lang pt]`: serve until Ctrl-C.

    PT: `python -m lab.lessons.tcp_server --port N [--host H] [--lang pt]`: serve até o Ctrl-C.
    """
    lang = pick_language(argv)
    text = messages(MESSAGES, argv)
    args = parse_args(server_parser(PROG, text), text, argv)

    def listen(host: str, port: int) -> EchoServer:
        return make_server(host, port, lang=lang, verbose=True)

    def serve(server: EchoServer) -> None:
        # EN: socketserver's accept() loop; it checks for a stop every 0.2 s.
        # PT: o laço de accept() do socketserver; ele confere se deve parar a cada 0,2 s.
        server.serve_forever(poll_interval=0.2)

    return serve_until_ctrl_c(PROG, text, args, listen, serve)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
