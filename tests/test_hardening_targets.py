"""Issue 8, defect 1: every target is normalised once, and refused before any socket exists.

No test here sends to a foreign address. Refusals are proven with `socket.socket` (and the other
ways to make or use a socket) replaced by a tripwire, so a refused target that got as far as a
socket fails the test instead of sending; the one end-to-end test runs `lab send` inside a private
network namespace whose default route leads into a veth pair that never leaves the namespace, and
counts the frames that reach it.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lab import targets
from lab.endpoints.client import run_client, send_command
from lab.errors import TargetRefusedError
from lab.records import TrafficPlan
from lab.targets import _lab_route_missing, check_lab_target, ip_in_lab_network, resolve_lab_target

ROUTE_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
DEFAULT_ROUTE = "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"  # via 192.0.2.1
LAB_ROUTE = "wl0\t000012C6\t00000000\t0001\t0\t0\t0\tFCFFFFFF\t0\t0\t0\n"  # 198.18.0.0/30 on-link
LAB_VIA_GATEWAY = "eth1\t000012C6\t050200C0\t0003\t0\t0\t0\t0000FEFF\t0\t0\t0\n"  # 198.18/15 via 192.0.2.5
REJECT_ROUTE = "*\t000012C6\t00000000\t0201\t0\t0\t0\t0000FEFF\t0\t0\t0\n"  # unreachable 198.18/15

# Forms of the two addresses (198.18.0.2, 198.19.0.9) that are NOT those IPv4 addresses.
EMBEDDED_FORMS = [
    ("::198.18.0.2", "IPv4-compatible"),
    ("::c612:2", "IPv4-compatible"),
    ("2002:c612:2::", "6to4"),
    ("2002:c613:9::1", "6to4"),
    ("64:ff9b::c612:2", "NAT64"),
    ("64:ff9b::198.19.0.9", "NAT64"),
    ("64:ff9b:1::c612:2", "NAT64"),
    ("::ffff:0:198.18.0.2", "IPv4-translated"),
    ("2001:0:4136:e378:8000:63bf:39ed:fffd", "Teredo"),
]
SCOPED = ["::1%lo", "fe80::1%eth0", "[fe80::1%1]", "::ffff:198.18.0.2%eth0", "127.0.0.1%lo"]
NOT_ADDRESSES = ["127.1", "0177.0.0.1", "127.000.000.001", "2130706433", "0x7f000001", "198.18.2",
                 "localhost.example.com", "", " ", "[]"]
FOREIGN = ["::ffff:8.8.8.8", "::ffff:0.0.0.0", "::ffff:198.20.0.1", "::", "0.0.0.0", "fe80::1",
           "2001:db8::1", "198.17.255.255"]


@pytest.fixture
def tripwire(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No socket may be made, resolved or connected; /proc/net/route replaced by a crafted table.

    The table holds only a default route (this machine seen from outside any lab link), which
    is where defect 1 sent its traffic. Returns the table's path for tests that rewrite it.
    """
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a socket was made or used for a refused target: {args!r}")

    for name in ("socket", "create_connection", "getaddrinfo", "socketpair", "fromfd"):
        monkeypatch.setattr(socket, name, boom)
    routes = tmp_path / "route"
    routes.write_text(ROUTE_HEADER + DEFAULT_ROUTE)
    monkeypatch.setattr(targets, "ROUTES_PATH", str(routes))
    return routes


# --- normalisation ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("host", "normalised"), [
    ("::ffff:198.18.0.2", "198.18.0.2"),
    ("::FFFF:C612:2", "198.18.0.2"),
    ("[::ffff:198.19.0.9]", "198.19.0.9"),
    ("0:0:0:0:0:ffff:c613:9", "198.19.0.9"),
    ("::ffff:127.0.0.1", "127.0.0.1"),
    ("::ffff:127.9.8.7", "127.9.8.7"),
    (" 198.18.0.2 ", "198.18.0.2"),
    ("0:0:0:0:0:0:0:1", "::1"),
    ("[::1]", "::1"),
    ("localhost.", "127.0.0.1"),
])
def test_defect_1_mapped_and_spelled_out_forms_are_normalised_once(host: str, normalised: str) -> None:
    """Mapped IPv6 is the IPv4 it maps (where the kernel sends it); the result is canonical."""
    assert check_lab_target(host) == normalised
    assert check_lab_target(normalised) == normalised  # idempotent: checking again changes nothing
    assert ip_in_lab_network(host) == ip_in_lab_network(normalised)


@pytest.mark.parametrize(("host", "kind"), EMBEDDED_FORMS)
def test_defect_1_ipv6_forms_embedding_a_lab_address_are_refused(host: str, kind: str) -> None:
    """They are IPv6 destinations (relays, gateways), not the lab address inside them."""
    with pytest.raises(TargetRefusedError, match=kind) as info:
        check_lab_target(host)
    assert "loopback" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("host", SCOPED + NOT_ADDRESSES + FOREIGN)
def test_defect_1_scoped_odd_and_foreign_forms_are_refused(host: str) -> None:
    with pytest.raises(TargetRefusedError, match="loopback"):
        check_lab_target(host)


def test_defect_1_non_text_targets_are_refused() -> None:
    for host in (2130706433, None, b"127.0.0.1"):
        with pytest.raises(TargetRefusedError):
            check_lab_target(host)  # type: ignore[arg-type]


# --- refused before any socket exists ----------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["udp", "tcp"])
@pytest.mark.parametrize("host", ["::ffff:198.18.0.2", "::ffff:198.19.0.9", "[::ffff:c612:2]",
                                  "198.18.0.2", "2002:c612:2::", "64:ff9b::c612:2", "::198.18.0.2",
                                  "fe80::1%eth0"])
def test_defect_1_lab_send_refuses_before_any_socket(tripwire: Path, protocol: str, host: str) -> None:
    """The issue's reproduction: no lab link here (only a default route), so nothing may be sent."""
    with pytest.raises(TargetRefusedError) as info:
        send_command(protocol, host, 7007, TrafficPlan(count=3), True)
    message = str(info.value)
    assert message.startswith("refusing target") and "\n" not in message, message
    if "ffff" in host or host == "198.18.0.2":  # the lab address itself: refused for its route
        assert "default route via eth0" in message, message


@pytest.mark.parametrize("protocol", ["udp", "tcp"])
def test_defect_1_every_client_checks_its_target(tripwire: Path, protocol: str) -> None:
    """run_client (the API the runner and the pytest plugin use) checks too, not only `lab send`."""
    for host in ("::ffff:198.18.0.2", "198.19.0.9", "::ffff:8.8.8.8"):
        with pytest.raises(TargetRefusedError):
            run_client(protocol, (host, 7007), TrafficPlan(count=1))


def test_defect_1_relay_and_probe_use_the_same_normalisation(tripwire: Path) -> None:
    from lab.link.models import LinkConfig
    from lab.link.relay import UdpRelay
    from lab.probes.targets import plan_target

    for upstream in ("::ffff:198.18.0.2", "2002:7f00:1::", "::127.0.0.1", "evil.example"):
        with pytest.raises(TargetRefusedError, match="only works on loopback"):
            UdpRelay(LinkConfig(), (upstream, 7))
    # The relay accepts loopback in any spelling and keeps the normalised form.
    assert UdpRelay(LinkConfig(), ("::ffff:127.0.0.1", 7))._upstream == ("127.0.0.1", 7)
    for target in ("2002:c612:5::", "64:ff9b::c612:5", "::198.18.0.5", "fe80::1%eth0"):
        with pytest.raises(TargetRefusedError):
            plan_target(target)
    assert plan_target("::ffff:198.18.0.5").address == "198.18.0.5"
    assert plan_target("::ffff:127.0.0.1").app_target == "127.0.0.1"


# --- the route check, on crafted tables ----------------------------------------------------------------
def test_defect_1_route_check_reads_mapped_forms_and_fails_closed(tmp_path: Path) -> None:
    routes = tmp_path / "route"
    routes.write_text(ROUTE_HEADER + DEFAULT_ROUTE)
    for host in ("198.18.0.2", "::ffff:198.18.0.2", "::ffff:c612:2"):
        assert "default route via eth0" in (_lab_route_missing(host, str(routes)) or ""), host
    routes.write_text(ROUTE_HEADER + DEFAULT_ROUTE + LAB_ROUTE)  # inside a lab link: on-link /30
    assert _lab_route_missing("::ffff:198.18.0.2", str(routes)) is None
    assert resolve_lab_target("::ffff:198.18.0.2", routes_path=str(routes)) == "198.18.0.2"
    routes.write_text(ROUTE_HEADER + DEFAULT_ROUTE + LAB_VIA_GATEWAY)  # a router, i.e. off the machine
    why = _lab_route_missing("198.19.0.9", str(routes)) or ""
    assert "gateway 192.0.2.5 via eth1" in why, why
    routes.write_text(ROUTE_HEADER + REJECT_ROUTE + DEFAULT_ROUTE)  # unreachable /15 beats default /0
    assert _lab_route_missing("198.18.0.2", str(routes)) is None
    routes.write_text(ROUTE_HEADER)  # no route at all: the kernel refuses to send (ENETUNREACH)
    assert _lab_route_missing("198.18.0.2", str(routes)) is None
    routes.write_text(ROUTE_HEADER + "eth0\tnot-hex\t0\t0\t0\t0\t0\t0\t0\t0\t0\n")
    assert "cannot read the routing table" in (_lab_route_missing("198.18.0.2", str(routes)) or "")
    assert "cannot read the routing table" in (_lab_route_missing("198.18.0.2", str(tmp_path / "no")) or "")
    with pytest.raises(TargetRefusedError, match="cannot read the routing table"):
        resolve_lab_target("198.18.0.2", routes_path=str(tmp_path / "no"))
    assert resolve_lab_target("127.0.0.1", routes_path=str(tmp_path / "no")) == "127.0.0.1"  # not asked


def test_defect_1_route_check_prefers_longest_prefix_then_lowest_metric(tmp_path: Path) -> None:
    routes = tmp_path / "route"
    on_link_worse_metric = "wl0\t000012C6\t00000000\t0001\t0\t0\t50\t0000FEFF\t0\t0\t0\n"
    via_gateway_better_metric = "eth1\t000012C6\t050200C0\t0003\t0\t0\t10\t0000FEFF\t0\t0\t0\n"
    routes.write_text(ROUTE_HEADER + on_link_worse_metric + via_gateway_better_metric)
    assert "gateway" in (_lab_route_missing("198.18.0.2", str(routes)) or "")
    routes.write_text(ROUTE_HEADER + via_gateway_better_metric + LAB_ROUTE)  # /30 beats /15
    assert _lab_route_missing("198.18.0.2", str(routes)) is None


# --- end to end, in a private namespace ----------------------------------------------------------------
NAMESPACE_SCRIPT = textwrap.dedent('''
    import contextlib, io, json, socket, subprocess, sys, time
    from lab.cli import main

    def ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True)

    # A default route (IPv4 and IPv6) into a veth pair whose other end is in this namespace too:
    # whatever "leaves" is captured on wire0 and goes nowhere else.
    ip("link", "set", "lo", "up")
    ip("link", "add", "out0", "type", "veth", "peer", "name", "wire0")
    ip("link", "set", "out0", "up")
    ip("link", "set", "wire0", "up")
    ip("addr", "add", "10.99.0.1/24", "dev", "out0")
    ip("route", "add", "default", "via", "10.99.0.2", "dev", "out0")
    ip("-6", "addr", "add", "fd99::1/64", "dev", "out0", "nodad")
    ip("-6", "route", "add", "default", "via", "fd99::2", "dev", "out0")
    for gw in ("10.99.0.2", "fd99::2"):  # no ARP/ND wait: a leak is on the wire at once
        ip("neigh", "add", gw, "lladdr", "02:00:00:00:00:02", "dev", "out0", "nud", "permanent")
    wire = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    wire.bind(("wire0", 0))
    wire.setblocking(False)
    PORT = 7007

    def leaked():
        count = 0
        time.sleep(0.1)
        while True:
            try:
                frame = wire.recv(65535)
            except BlockingIOError:
                return count
            if frame[12:14] == b"\\x08\\x00":
                proto, l4 = frame[23], frame[14 + (frame[14] & 15) * 4:]
            elif frame[12:14] == b"\\x86\\xdd":
                proto, l4 = frame[20], frame[54:]
            else:
                continue
            count += proto in (6, 17) and int.from_bytes(l4[2:4], "big") == PORT

    out = {}
    for proto, host in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main(["send", proto, host, str(PORT), "--count", "3", "--timeout", "0.2"])
                code = 0
            except SystemExit as exc:
                code = exc.code
        out[f"{proto} {host}"] = {"code": code, "stderr": err.getvalue(), "leaked": leaked()}
    # Control: the capture does see what takes the default route (inside this namespace only).
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"control", ("198.18.0.2", PORT))
    out["control"] = leaked()
    print(json.dumps(out))
''')


@pytest.mark.privileged
@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None,
                    reason="needs unshare(1) and ip(8)")
def test_defect_1_lab_send_in_a_namespace_with_a_default_route_sends_nothing() -> None:
    """`lab send` to the issue's targets where only a default route leads there: exit 2, no frame."""
    cases = [["udp", "::ffff:198.18.0.2"], ["tcp", "::ffff:198.19.0.9"], ["udp", "198.18.0.2"],
             ["udp", "2002:c612:2::"], ["tcp", "64:ff9b::c612:2"], ["udp", "::198.18.0.2"]]
    done = subprocess.run(["unshare", "--net", sys.executable, "-c", NAMESPACE_SCRIPT, json.dumps(cases)],
                          capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out.pop("control") >= 1, "the capture must see a datagram that takes the default route"
    for case, seen in out.items():
        assert seen["leaked"] == 0, (case, seen)
        lines = seen["stderr"].splitlines()
        assert seen["code"] == 2 and len(lines) == 1, (case, seen)
        assert lines[0].startswith("lab: error: refusing target"), (case, seen)
