"""The forwarder with the kernel's offloads, through real links: real TCP, real GSO batches.

docs/architecture.md#the-forwarder: batches are taken whole where that decides nothing per packet
(no impairment, a plain delay) and counted as the packets they are on the wire; per-packet
impairments switch the offloads off and see each packet; a delay-only queue counts a batch as one
packet against its limit, as netem counts an skb.
"""

from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from lab.kernel import read_counters
from lab.link.models import DirectionModel
from lab.link.netns import DEVICE, in_netns_thread

pytestmark = pytest.mark.privileged

MSS = 1448  # 1500 - 20 (IP) - 20 (TCP) - 12 (timestamps)


def _payload(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def _send(host: str, port: int, size: int) -> None:
    """(In the client namespace) send _payload(size) over one TCP connection; return once delivered."""
    data = _payload(size)
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # b"" once the sink has read everything


@contextmanager
def _sink(link) -> Iterator[tuple[int, dict]]:
    """A TCP sink in the server namespace hashing one connection; (port, result)."""
    server = in_netns_thread(link.server_ns, lambda: socket.socket())
    server.bind((link.server_address, 0))
    server.listen()
    server.settimeout(60)
    result: dict = {}

    def serve() -> None:
        try:
            conn, _ = server.accept()
            with conn:
                digest, total = hashlib.sha256(), 0
                while chunk := conn.recv(1 << 20):
                    digest.update(chunk)
                    total += len(chunk)
                result.update(sha256=digest.hexdigest(), bytes=total)
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], result
    finally:
        server.close()
        thread.join(timeout=10)


def _transfer(link, size: int) -> None:
    """Send `size` bytes client -> server through the link; assert they arrived intact."""
    with _sink(link) as (port, result):
        link.client.call(_send, link.server_address, port, size)
    assert result.get("bytes") == size, result
    assert result["sha256"] == hashlib.sha256(_payload(size)).hexdigest()


def _rx_packets(ns: str) -> int:
    """Frames the link's device in `ns` took from the forwarder (a GSO batch is one)."""
    from pyroute2 import NetNS

    with NetNS(ns) as inside:
        device = inside.get_links(inside.link_lookup(ifname=DEVICE)[0])[0]
        return device.get_attr("IFLA_STATS64")["rx_packets"]


def _balanced(counters: dict) -> bool:
    """packets_in + duplicated = forwarded + dropped_loss + dropped_queue + queued + write_errors."""
    c = counters
    queued = c.get("queued", c.get("queued_at_close", 0))
    out = c["forwarded"] + c["dropped_loss"] + c["dropped_queue"] + queued + c["write_errors"]
    return c["packets_in"] + c["duplicated"] == out


def test_a_gso_batch_through_a_delay_only_link_arrives_whole_and_counts_as_its_segments(impaired_link):
    link = impaired_link(delay="2ms", limit="100000")
    size = 8 * 2**20
    before = _rx_packets(link.server_ns)
    _transfer(link, size)
    forward = link.counters()["forward"]
    frames = _rx_packets(link.server_ns) - before
    assert forward["packets_in"] >= size // MSS and forward["forwarded"] == forward["packets_in"], forward
    assert forward["delayed"] == forward["packets_in"] and forward["dropped_queue"] == 0, forward
    # bytes as on the wire: every segment's payload plus its own 52 bytes of headers
    assert forward["bytes_in"] >= size + forward["packets_in"] * 40, forward
    assert frames * 4 < forward["forwarded"], (frames, forward)  # batches, not segments, were written


def test_the_unimpaired_link_counts_segments_too(impaired_link):
    link = impaired_link()
    size = 4 * 2**20
    _transfer(link, size)
    forward = link.counters()["forward"]
    assert forward["packets_in"] >= size // MSS and forward["forwarded"] == forward["packets_in"], forward
    assert _balanced(forward)


def test_loss_decides_per_packet_as_the_seeded_model_does(impaired_link, lab_seed):
    """Offloads off under loss: the drops are exactly those the seeded model makes for that many
    packets (a batch decided as one would need fewer draws, and the replay would differ)."""
    link = impaired_link(loss="3%")
    size = 2 * 2**20
    _transfer(link, size)
    counters = link.counters()
    assert counters["forward"]["packets_in"] >= size // MSS, counters
    for name, impairment, seed in (("forward", link.config.forward, link.config.forward_seed),
                                   ("reverse", link.config.reverse, link.config.reverse_seed)):
        model = DirectionModel(impairment, seed)
        for _ in range(counters[name]["packets_in"]):
            model.decide(b"\x45" + bytes(59), 0.0)
        assert model.counters["dropped_loss"] == counters[name]["dropped_loss"] > 0, (name, counters)
        assert _balanced(counters[name])


def test_corrupt_makes_the_receiving_kernel_drop_damaged_tcp_segments(impaired_link):
    link = impaired_link(corrupt="3%")
    before = link.server.call(read_counters)
    _transfer(link, 2 * 2**20)
    after = link.server.call(read_counters)
    forward = link.counters()["forward"]
    assert forward["corrupted"] > 0, forward
    assert after.get("TcpInCsumErrors", 0) > before.get("TcpInCsumErrors", 0), (before, after)


def test_a_delay_only_queue_counts_batches_as_netem_counts_skbs(impaired_link):
    """limit 5 with a delay: at most 5 batches held (more than 5 segments, never more than 5 batches of
    up to 45 segments), the overflow dropped a batch at a time and counted as its segments; TCP
    recovers and every byte arrives."""
    link = impaired_link(delay="5ms", limit="5")
    held: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            held.append(link.counters()["forward"]["queued"])
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        _transfer(link, 4 * 2**20)
    finally:
        done.set()
        watcher.join(timeout=10)
    forward = link.counters()["forward"]
    # `queued` may also count a batch already due that the forwarder is about to write (the limit
    # applies when a packet arrives, as in netem): one batch more at most
    assert 5 < max(held) <= 6 * 45, max(held)
    assert forward["dropped_queue"] > 5 and _balanced(forward), forward


def test_switching_between_batch_and_per_packet_impairments_under_load(impaired_link):
    """set() at run time, both ways, with batches held and TCP running: every byte arrives intact
    and the counters still balance."""
    link = impaired_link(delay="3ms", limit="100000")
    size = 24 * 2**20
    with _sink(link) as (port, result):
        sender = threading.Thread(target=link.client.call, args=(_send, link.server_address, port, size))
        sender.start()
        try:
            for options in ({"loss": "1%"}, {"loss": None}, {"delay": None},
                            {"delay": "3ms", "corrupt": "1%"}, {"corrupt": None}):
                time.sleep(0.15)
                link.set(**options)
        finally:
            sender.join(timeout=60)
    assert result.get("bytes") == size, result
    assert result["sha256"] == hashlib.sha256(_payload(size)).hexdigest()
    counters = link.counters()
    assert all(_balanced(counters[name]) for name in ("forward", "reverse")), counters


def test_batches_cut_in_software_arrive_intact_with_whole_checksums(monkeypatch):
    """If the kernel kept its offloads on under a per-packet impairment (TUNSETOFFLOAD refused, or
    batches already queued at a switch), lab.link.gso cuts each batch: the receiving kernel, which
    verifies every checksum of a packet written without NEEDS_CSUM, takes every segment."""
    from lab.link import forwarder, gso
    from lab.link.models import LinkConfig
    from lab.link.netns import topology
    from lab.link.session import call_in_netns

    with topology() as topo:
        fds = (topo.client_fd, topo.server_fd)
        config = LinkConfig.from_options({"loss": "0.000001%"})  # per packet, practically lossless
        directions = forwarder._directions(config, fds, gso.VNET_HDR_LEN, None)
        assert all(d.mode == forwarder.PER_PACKET for d in directions)
        for fd in fds:
            assert gso.set_offloads(fd, True)  # as if the kernel had refused to switch them off
        batches = []
        segment = gso.segment

        def counted(frame: bytes, **kw: bool) -> list[bytes]:
            batches.append(frame[1])  # gso_type: non-zero for a batch
            return segment(frame, **kw)

        monkeypatch.setattr(gso, "segment", counted)
        threads = [threading.Thread(target=d.run, daemon=True) for d in directions]
        for thread in threads:
            thread.start()
        server = in_netns_thread(topo.server_ns, lambda: socket.socket())
        server.bind(("198.18.0.2", 0))
        server.listen()
        server.settimeout(30)
        size = 4 * 2**20
        before = call_in_netns(topo.server_ns, read_counters, ())
        client = in_netns_thread(topo.client_ns, lambda: socket.create_connection(server.getsockname(), 30))
        conn, _ = server.accept()
        received = bytearray()

        def sink() -> None:
            while chunk := conn.recv(1 << 20):
                received.extend(chunk)

        reader = threading.Thread(target=sink, daemon=True)
        reader.start()
        client.sendall(_payload(size))
        client.close()
        reader.join(timeout=30)
        after = call_in_netns(topo.server_ns, read_counters, ())
        for sock in (conn, server):
            sock.close()
    for thread in threads:  # the devices went with the namespaces: the directions' reads fail
        thread.join(timeout=10)
        assert not thread.is_alive()
    assert bytes(received) == _payload(size)
    assert any(batches), "no GSO batch was cut: the kernel never handed one over"
    assert after.get("TcpInCsumErrors", 0) == before.get("TcpInCsumErrors", 0), (before, after)
    forward = directions[0].counters()
    assert forward["packets_in"] >= size // MSS and _balanced(forward), forward


def test_without_virtio_net_hdr_the_forwarder_moves_plain_packets(monkeypatch):
    """A kernel that refused IFF_VNET_HDR leaves plain TUN devices: the forwarder (which asks with
    TUNGETIFF) moves bare packets, one per read, impairments and all."""
    from lab.link import netns
    from lab.link.session import open_link

    monkeypatch.setattr(netns, "IFF_VNET_HDR", 0)  # what the fallback in _open_tun ends with
    for options in ({}, {"delay": "2ms", "limit": "100000"}, {"loss": "1%"}):
        with open_link(**options) as link:
            _transfer(link, 2 * 2**20)
            forward = link.counters()["forward"]
            assert forward["packets_in"] >= 2 * 2**20 // MSS and _balanced(forward), (options, forward)


def test_a_capture_holds_tcp_as_wire_packets_with_whole_checksums(tmp_path):
    """With a capture the offloads are off: a bulk TCP transfer is captured as packets of at most
    the MTU, each with its own valid checksums (never a 64 KB batch or a partial checksum).
    (tests/test_link.py reads a capture with tshark too.)"""
    from scapy.layers.inet import IP, TCP
    from scapy.utils import rdpcap

    from lab.link.session import open_link

    path = tmp_path / "bulk.pcapng"
    size = 256 * 2**10
    with open_link(capture=path) as link:
        _transfer(link, size)
    packets = [p for p in rdpcap(str(path)) if p.haslayer(TCP)]
    assert len(packets) > size // MSS and max(len(p) for p in packets) <= 1500
    for packet in packets[:: max(1, len(packets) // 20)]:  # a sample: scapy's sums are slow
        rebuilt = IP(bytes(packet))
        del rebuilt.chksum, rebuilt[TCP].chksum
        rebuilt = IP(rebuilt.build())
        assert (packet[IP].chksum, packet[TCP].chksum) == (rebuilt.chksum, rebuilt[TCP].chksum)
