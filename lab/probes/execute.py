"""Inside the sandbox: write crafted packets into the TUN, read what the stack answers, judge.

Runs in the atlas's child process, in its private namespace. The virtual peer "on the wire" is
the far side of the TUN: what we write into the fd arrives as if received from a link, and what
the stack sends to the peer comes out of the fd — so replies are read, not sniffed.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from lab.kernel import counter_deltas, read_counters
from lab.probes import builders, sysnet
from lab.probes import verdict as V
from lab.probes.catalogue import Case
from lab.probes.targets import SandboxAddresses
from lab.wire import Probe, decode_untrusted_datagram, encode

TUN_NAME = "wlprobe0"
QUIET_S = 0.06  # stop reading replies after this long without one (answers take < 1 ms)
LIVENESS_TIMEOUT_S = 2.0  # an echo round trip here takes < 1 ms; generous for a loaded CI machine
HANDSHAKE_TIMEOUT_S = 1.0
FLOOD_MAX_S = 2.0  # bound on the flood's duration, whatever FLOOD_SYNS says
APP_MAX_S = 5.0  # bound on any application exchange
CLOSE_WAIT_S = 0.5  # for the echo server's FIN after our half-close (it answers at once)
FIRST_SPORT = 40000  # crafted flows use their own source port each, counting up from here


def _family(address: tuple[Any, ...]) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in str(address[0]) else socket.AF_INET


def _close_orderly(sock: socket.socket) -> None:
    """Half-close and wait for the server's FIN, so the teardown's segments are counted now and
    not in the next case's counter window (where they would look like the case's own traffic)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(CLOSE_WAIT_S)
        while sock.recv(4096):
            pass


def tun_rx_packets(name: str = TUN_NAME) -> int:
    """Packets the TUN handed to the stack (its rx counter in /proc/net/dev, this namespace)."""
    with open("/proc/net/dev", encoding="ascii") as table:
        for line in table:
            iface, _, fields = line.partition(":")
            if iface.strip() == name:
                return int(fields.split()[1])
    return 0


def _ip_ids(packets: list[bytes]) -> list[int]:
    """The IPv4 identification fields of crafted packets (bytes 4-5 of the header, RFC 791)."""
    return sorted({int.from_bytes(p[4:6], "big") for p in packets if len(p) >= 6})


def _describe(packet: bytes) -> dict[str, Any] | None:
    """A JSON-able summary of one IPv4 packet the stack sent to the virtual peer."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror

    try:
        ip = IP(packet)
    except Exception:  # noqa: BLE001 - scapy raises many things on odd bytes; we only describe
        return {"kind": "other", "summary": f"unparsed {len(packet)} B"}
    base = {"src": ip.src, "dst": ip.dst, "id": ip.id}
    if ip.frag > 0:
        return {**base, "kind": "frag", "summary": "IP fragment"}
    if ICMP in ip:
        icmp = ip[ICMP]
        # An ICMP error quotes the offending packet's IP header (RFC 792): its id ties it to a case.
        quoted = int(icmp[IPerror].id) if IPerror in icmp else None
        return {**base, "kind": "icmp", "type": int(icmp.type), "code": int(icmp.code),
                "quoted_id": quoted, "summary": f"ICMP {icmp.type}/{icmp.code} {icmp.sprintf('%type%')}"}
    if TCP in ip:
        tcp = ip[TCP]
        flags = str(tcp.flags)
        data = bytes(tcp.payload)
        return {**base, "kind": "tcp", "sport": tcp.sport, "dport": tcp.dport, "flags": flags,
                "seq": tcp.seq, "ack": tcp.ack, "data": data.hex() if len(data) <= 64 else "",
                "len": len(data), "summary": f"TCP [{flags}]" + (f" {len(data)} B" if data else "")}
    if UDP in ip:
        udp = ip[UDP]
        return {**base, "kind": "udp", "sport": udp.sport, "dport": udp.dport, "len": len(udp.payload),
                "summary": "UDP echo" + (" (first fragment)" if ip.flags.MF else "")}
    return {**base, "kind": "other", "summary": f"IP proto {ip.proto}"}


class Env:
    """The sandbox's inside: TUN fd, the echo servers, counters, liveness checks."""

    def __init__(self, addresses: SandboxAddresses, seed: int = 1) -> None:
        self.addresses = addresses
        self.rng = random.Random(seed)
        self._next_sport = FIRST_SPORT
        self._stack = contextlib.ExitStack()
        self.tun_fd = -1
        self.server: Any = None
        self.app_server: Any = None  # the servers application cases use (a loopback target's own)
        self.barrier_cost: dict[str, int] = {}
        self.sysctls: dict[str, bool] = {}
        self.liveness_cost: dict[str, int] = {}

    # --- set-up and teardown (the namespace itself dies with the process) ---------------------------
    def __enter__(self) -> Env:
        from lab.endpoints.server import running_server

        try:
            sysnet.unshare_network()
            self.tun_fd = sysnet.open_tun(TUN_NAME)
            self._stack.callback(os.close, self.tun_fd)
            self.sysctls = sysnet.configure(TUN_NAME, self.addresses.address, self.addresses.prefixlen)
            self.server = self._stack.enter_context(running_server("both", host=self.addresses.address))
            self.app_server = self.server
            if self.addresses.app_address is not None:
                self.app_server = self._stack.enter_context(
                    running_server("both", host=self.addresses.app_address))
            self._calibrate()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def info(self) -> dict[str, Any]:
        """Where things are, for the report."""
        return {"address": self.addresses.address, "peer": self.addresses.peer, "tun": TUN_NAME,
                "tcp_port": self.server.tcp_address[1], "udp_port": self.server.udp_address[1],
                "app_address": self.addresses.app_target, "app_tcp_port": self.app_server.tcp_address[1],
                "app_udp_port": self.app_server.udp_address[1], "where": self.addresses.describe(),
                "kernel": os.uname().release, "sysctls": dict(sysnet.SANDBOX_SYSCTLS),
                "sysctls_applied": self.sysctls}

    def _calibrate(self) -> None:
        """Measure what one liveness check costs in counters, to subtract it from each case."""
        for _ in range(3):  # the first rounds warm up routes and neighbours
            c0, s0 = read_counters(), self.server.stats
            self.udp_alive()
            c1 = read_counters()
            self.tcp_alive()
            self.barrier_cost = counter_deltas(c0, c1)
            self.liveness_cost = counter_deltas(s0, self.server.stats)
        self.drain(quiet=QUIET_S)

    # --- the wire ----------------------------------------------------------------------------------
    def sport(self) -> int:
        """A fresh source port for the next crafted flow."""
        self._next_sport = FIRST_SPORT + (self._next_sport - FIRST_SPORT + 1) % 20000
        return self._next_sport

    def ctx(self, conn: builders.Conn | None = None) -> builders.Ctx:
        """Builder context for the next case."""
        return builders.Ctx(peer=self.addresses.peer, address=self.addresses.address,
                            udp_port=self.server.udp_address[1], tcp_port=self.server.tcp_address[1],
                            sport=conn.sport if conn else self.sport(), rng=self.rng, conn=conn)

    def write(self, packets: list[bytes]) -> list[str]:
        """Write packets into the TUN as if received from the wire; return the errors, if any."""
        errors = []
        for packet in packets:
            try:
                os.write(self.tun_fd, sysnet.frame(packet))
            except OSError as exc:
                errors.append(f"write: {exc.strerror or exc}")
        return errors

    def drain(self, quiet: float = QUIET_S, cap: float = 0.4,
              until: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
        """Read what the stack sends to the peer until `quiet` s of silence, `cap` s, or `until`."""
        out: list[dict[str, Any]] = []
        end = time.monotonic() + cap
        while (now := time.monotonic()) < end:
            ready, _, _ = select.select([self.tun_fd], [], [], min(quiet, end - now))
            if not ready:
                if until is None:
                    break
                continue
            try:
                proto, packet = sysnet.unframe(os.read(self.tun_fd, sysnet.TUN_READ_SIZE))
            except BlockingIOError:
                continue
            if proto != sysnet.ETH_P_IP:
                continue
            described = _describe(packet)
            if described is None or described.get("dst") != self.addresses.peer:
                continue
            out.append(described)
            if until is not None and until(described):
                break
        return out

    # --- liveness: real sockets, from inside the namespace --------------------------------------------
    def udp_alive(self, server: Any = None) -> bool:
        """A real probe echoed by the UDP server (the TUN address's by default), intact."""
        server = server or self.server
        probe = Probe(seq=self.rng.randrange(1 << 32), send_ns=time.monotonic_ns(), payload=b"alive?")
        with socket.socket(_family(server.udp_address), socket.SOCK_DGRAM) as sock:
            sock.settimeout(LIVENESS_TIMEOUT_S)
            try:
                sock.sendto(encode(probe), server.udp_address)
                data, _ = sock.recvfrom(65535)
                return decode_untrusted_datagram(data) == probe
            except (OSError, ValueError, Exception):  # noqa: BLE001 - any failure means "not alive"
                return False

    def servers_alive(self) -> bool:
        """Every server the sandbox runs still echoes, over UDP and TCP."""
        return self.udp_alive() and self.tcp_alive() and self._app_server_alive()

    def _app_server_alive(self) -> bool:
        """The application cases' own servers (a loopback target's) still echo; True if they are
        the main ones (checked already)."""
        return self.app_server is self.server or (
            self.udp_alive(self.app_server) and self.tcp_alive(server=self.app_server))

    def tcp_alive(self, payload: bytes = b"alive?", server: Any = None) -> bool:
        """A real connection whose bytes come back from the TCP server (the TUN address's by default)."""
        server = server or self.server
        try:
            with socket.create_connection(server.tcp_address[:2], timeout=LIVENESS_TIMEOUT_S) as sock:
                sock.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = sock.recv(len(payload) - len(got))
                    if not chunk:
                        break
                    got += chunk
                if got == payload:
                    _close_orderly(sock)
                return got == payload
        except OSError:
            return False

    # --- crafted TCP connections ---------------------------------------------------------------------
    def handshake(self) -> builders.Conn:
        """Open a connection to the TCP server with crafted segments through the TUN."""
        from scapy.layers.inet import IP, TCP

        ctx = self.ctx()
        isn = self.rng.randrange(1 << 32)
        syn = IP(src=ctx.peer, dst=ctx.address) / TCP(sport=ctx.sport, dport=ctx.tcp_port, flags="S",
                                                       seq=isn, window=65535)
        self.write([bytes(syn)])
        got = self.drain(cap=HANDSHAKE_TIMEOUT_S, until=lambda r: r.get("kind") == "tcp"
                         and r.get("dport") == ctx.sport and "S" in r["flags"] and "A" in r["flags"])
        synack = next((r for r in got if r.get("dport") == ctx.sport and "S" in r.get("flags", "")), None)
        if synack is None:
            raise RuntimeError("no SYN-ACK from the echo server for the crafted handshake")
        conn = builders.Conn(sport=ctx.sport, snd_nxt=(isn + 1) % (1 << 32),
                             rcv_nxt=(synack["seq"] + 1) % (1 << 32))
        self.write([self._segment(conn, "A")])
        return conn

    def _segment(self, conn: builders.Conn, flags: str, payload: bytes = b"",
                 seq: int | None = None) -> bytes:
        from scapy.layers.inet import IP, TCP
        from scapy.packet import Raw

        pkt = IP(src=self.addresses.peer, dst=self.addresses.address) / TCP(
            sport=conn.sport, dport=self.server.tcp_address[1], flags=flags,
            seq=conn.snd_nxt if seq is None else seq, ack=conn.rcv_nxt, window=65535)
        return bytes(pkt / Raw(payload) if payload else pkt)

    def connection_state(self, conn: builders.Conn) -> str:
        """Send in-window data on a crafted connection: "alive" if echoed, "reset" if RST."""
        payload = b"still there?"
        self.write([self._segment(conn, "PA", payload)])
        replies = self.drain(cap=LIVENESS_TIMEOUT_S, until=lambda r: r.get("kind") == "tcp" and (
            "R" in r["flags"] or bytes.fromhex(r.get("data", "")) == payload))
        mine = [r for r in replies if r.get("kind") == "tcp" and r.get("dport") == conn.sport]
        if any("R" in r["flags"] for r in mine):
            return "reset"
        if any(bytes.fromhex(r.get("data", "")) == payload for r in mine):
            conn.snd_nxt = (conn.snd_nxt + len(payload)) % (1 << 32)
            return "alive"
        return "no answer"

    def reset(self, conn: builders.Conn) -> None:
        """Tear a crafted connection down with an exact RST."""
        self.write([self._segment(conn, "R")])

    def reset_half_open(self, replies: list[dict[str, Any]]) -> None:
        """RST every SYN-ACK we will never complete, so no half-open connection outlives its case."""
        from scapy.layers.inet import IP, TCP

        self.write([
            bytes(IP(src=r["dst"], dst=r["src"]) / TCP(sport=r["dport"], dport=r["sport"], flags="R",
                                                       seq=r["ack"]))
            for r in replies if r.get("kind") == "tcp" and r.get("flags") == "SA"
        ])

    # --- measuring one case ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def measured(self, obs: V.Observation, server: Any = None) -> Iterator[None]:
        """Counter and server-stat deltas around a case, net of the liveness checks that close it.

        `server` is the one the case aims at (its stats say whether the application saw data);
        every server the sandbox runs must still echo afterwards for the case to count as survived.
        """
        server = server or self.server
        c0, s0, rx0 = read_counters(), server.stats, tun_rx_packets()
        yield
        udp_ok = self.udp_alive()  # also a barrier: the server has read everything sent before it
        obs.replies += self.drain(quiet=0.01, cap=0.2)
        raw = counter_deltas(c0, read_counters())
        obs.wire_in = tun_rx_packets() - rx0
        obs.counters = {k: v for k, v in ((k, raw.get(k, 0) - self.barrier_cost.get(k, 0))
                                          for k in set(raw) | set(self.barrier_cost)) if v}
        tcp_ok = self.tcp_alive()
        app = counter_deltas(s0, server.stats)
        cost = self.liveness_cost if server is self.server else {}
        net = {k: v - cost.get(k, 0) for k, v in app.items()}
        obs.app_saw_data = net.get("datagrams_in", 0) > 0 or net.get("bytes_in", 0) > 0
        self._alive = udp_ok and tcp_ok and self._app_server_alive()

    def run_case(self, case: Case) -> dict[str, Any]:
        """Run one catalogue case and return its JSON-able result."""
        obs = V.Observation(mode=case.mode)
        self._alive = False
        conn: builders.Conn | None = None
        try:
            if case.mode == "conn":
                conn = self.handshake()
                self.drain(quiet=0.02)
            ctx = self.ctx(conn)
            items = getattr(builders, case.build)(ctx)
            if not case.mode.startswith("app"):
                obs.ip_ids = _ip_ids(items)
                obs.sports = [ctx.sport] if case.mode != "flood" else builders.flood_sports(items)
            if conn is not None:
                obs.conn_ack = conn.snd_nxt
            with self.measured(obs, self.app_server if case.mode.startswith("app") else self.server):
                if case.mode.startswith("app"):
                    obs.app = self._app_exchange(case, items)
                elif case.mode == "flood":
                    self._flood(obs, items)
                else:
                    obs.write_errors = self.write(items)
                    obs.replies = self._collect(case, ctx)
            obs.echo_seen = any(r.get("kind") == "udp" and r.get("sport") == ctx.udp_port
                                and r.get("dport") == ctx.sport for r in obs.replies)
            if conn is not None:
                obs.connection = self.connection_state(conn)
                if obs.connection == "alive":
                    self.reset(conn)
            self.reset_half_open(obs.replies)
        except Exception as exc:  # noqa: BLE001 - a case that breaks is reported, not hidden
            obs.error = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                self._alive = self.servers_alive()
        self.drain(quiet=0.01, cap=0.2)  # leave the TUN empty for the next case
        found, evidence = V.derive(obs)
        return {
            "name": case.name, "layer": case.layer, "defect": case.defect,
            "expected_verdict": list(case.expected), "verdict": found,
            "verdict_detail": f"{found} ({evidence})" if evidence else found,
            "matches_expected": found in case.expected, "evidence": evidence,
            "reply": V.summarize_replies(obs.replies), "replies": obs.replies[:8],
            "counters": dict(sorted(obs.counters.items())), "app_saw_data": obs.app_saw_data,
            "connection": obs.connection, "server_alive": self._alive, "note": case.note,
            "error": obs.error, "target": (obs.app or {}).get("peer") or self._target(case),
            "path": self._path(case),
            # Replies the verdict ignored as not this case's (later fragments carry no ports).
            "unrelated_replies": sum(1 for r in obs.replies
                                     if r.get("kind") != "frag" and not V.related(obs, r)),
        }

    def _target(self, case: Case) -> str:
        """The address this case's packets (or connections) went to."""
        return self.addresses.app_target if case.mode.startswith("app") else self.addresses.address

    def _path(self, case: Case) -> str:
        if case.mode.startswith("app"):
            return f"real {case.mode[4:].upper()} socket inside the sandbox"
        return f"crafted packets written into TUN {TUN_NAME}, from peer {self.addresses.peer}"

    def _collect(self, case: Case, ctx: builders.Ctx) -> list[dict[str, Any]]:
        if case.wait_s > 1.0:  # a case whose answer is slow by design (reassembly timeout)
            return self.drain(cap=case.wait_s, until=lambda r: r.get("kind") == "icmp")
        return self.drain(cap=case.wait_s)

    def _flood(self, obs: V.Observation, syns: list[bytes]) -> None:
        """Half the SYNs, a real client connecting, the other half; bounded in count and time."""
        deadline = time.monotonic() + FLOOD_MAX_S
        half = len(syns) // 2
        for i, syn in enumerate(syns):
            if time.monotonic() > deadline:
                break
            if i == half:  # mid-flood, the SYN queue is full: a real client connects and echoes
                obs.real_client_ok = self.tcp_alive(b"a real client during the flood")
                obs.flood_client_after = i
            obs.write_errors += self.write([syn])
        obs.replies = self.drain(quiet=0.1, cap=FLOOD_MAX_S)
        obs.synacks = sum(1 for r in obs.replies if r.get("flags") == "SA" and V.related(obs, r))

    def _app_exchange(self, case: Case, chunks: list[bytes]) -> dict[str, Any]:
        """Send `chunks` with a real socket and read back what the server answers (bounded)."""
        deadline = time.monotonic() + min(case.wait_s, APP_MAX_S)
        sent = sum(len(c) for c in chunks)
        if case.mode == "app-udp":
            return self._app_udp(chunks, sent, deadline)
        return self._app_tcp(chunks, sent, deadline)

    def _app_udp(self, chunks: list[bytes], sent: int, deadline: float) -> dict[str, Any]:
        got = b""
        answered_from = None
        with socket.socket(_family(self.app_server.udp_address), socket.SOCK_DGRAM) as sock:
            for chunk in chunks:
                sock.sendto(chunk, self.app_server.udp_address)
            for _ in chunks:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data, source = sock.recvfrom(65535)
                    got += data
                    answered_from = source[0]
                except OSError:
                    break
        return {"sent": sent, "echoed": len(got), "closed": False, "match": got == b"".join(chunks),
                "peer": answered_from}

    def _app_tcp(self, chunks: list[bytes], sent: int, deadline: float) -> dict[str, Any]:
        data = b"".join(chunks)
        got = bytearray()
        closed = False
        with socket.create_connection(self.app_server.tcp_address[:2], timeout=LIVENESS_TIMEOUT_S) as sock:
            peer = sock.getpeername()[0]
            sock.setblocking(False)
            view = memoryview(data)
            while time.monotonic() < deadline and not closed:
                want_write = len(view) > 0
                readable, writable, _ = select.select([sock], [sock] if want_write else [], [], 0.05)
                if writable:
                    with contextlib.suppress(BlockingIOError):
                        view = view[sock.send(view[:65536]):]
                    if not view:
                        sock.shutdown(socket.SHUT_WR)  # half-close: "that was all"
                if readable:
                    try:
                        chunk = sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        closed = True
                        break
                    if not chunk:
                        closed = True
                    got += chunk
        return {"sent": sent, "echoed": len(got), "closed": closed and len(got) < sent,
                "match": bytes(got) == data, "peer": peer}

    def inject(self, packets: list[bytes]) -> dict[str, Any]:
        """Write arbitrary packets (the fuzzer's) and report errors, replies and liveness."""
        rx0 = tun_rx_packets()
        errors = self.write(packets)
        received = tun_rx_packets() - rx0  # a TUN write hands the packet to the stack synchronously
        replies = self.drain(quiet=0.005, cap=0.2)
        self.reset_half_open(replies)
        alive = self.servers_alive()
        self.drain(quiet=0.002, cap=0.1)
        return {"written": len(packets) - len(errors), "received": received, "errors": errors,
                "reply": V.summarize_replies(replies), "server_alive": alive}
