"""The anchor table's parts that need no tool and no network: parsing sockperf's and iperf3's output,
targets, the lab's stamping figures, and the printed table (quick; part of `make test`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.benchmarks import anchors
from tests.benchmarks.anchor_rows import (
    ROWS,
    SPECS,
    AnchorTable,
    Target,
    forwarder_rows,
    measured,
    not_measured,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import bench_table  # noqa: E402

SOCKPERF_OUTPUT = """\
sockperf: [Total Run] RunTime=2.001 sec; Warm up time=400 msec; SentMessages=16432; ReceivedMessages=16431
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=1.550 sec; SentMessages=10844; ReceivedMessages=10844
sockperf: \x1b[2;35m====> avg-rtt=142.842 (std-dev=240.564)\x1b[0m
sockperf: ---> percentile 99.990 = 4730.807
sockperf: ---> percentile 99.900 = 2326.341
sockperf: ---> percentile 99.000 =  976.513
sockperf: ---> percentile 90.000 =  374.204
sockperf: ---> percentile 50.000 =   95.707
sockperf: ---> <MIN> observation =   12.813
"""


def test_sockperf_summary_parsed_in_microseconds() -> None:
    latency = anchors.parse_sockperf(SOCKPERF_OUTPUT)
    assert (latency.p50_us, latency.p99_us, latency.samples) == (95.707, 976.513, 10844)
    assert latency.extra["p99.9_us"] == 2326.341


def test_sockperf_without_statistics_is_an_error_showing_its_output() -> None:
    with pytest.raises(RuntimeError, match="No messages were received"):
        anchors.parse_sockperf("sockperf: No messages were received from the server. Is the server down?")


def test_iperf3_goodput_is_what_the_receiver_counted() -> None:
    doc = {"end": {"sum_received": {"bits_per_second": 9e9, "seconds": 2.0, "bytes": 2_250_000_000},
                   "sum_sent": {"bits_per_second": 9.1e9, "retransmits": 3}}}
    goodput = anchors.parse_iperf3(json.dumps(doc))
    assert (goodput.bps, goodput.extra["retransmits"]) == (9e9, 3)
    with pytest.raises(RuntimeError, match="unable to connect"):
        anchors.parse_iperf3(json.dumps({"error": "unable to connect to server"}))


def test_lab_latencies_by_stamping() -> None:
    before = {"received": 10, "rtt_us": {"p50": 80.0, "p99": 120.0}}
    assert "no kernel timestamps" in anchors.lab_latencies(before)["kernel"]
    assert anchors.lab_latencies(before)["user"].p50_us == 80.0
    kernel = dict(before, timestamps="kernel", rtt_user_us={"p50": 90.0, "p99": 150.0})
    figures = anchors.lab_latencies(kernel)
    assert (figures["kernel"].p50_us, figures["user"].p99_us) == (80.0, 150.0)
    fell_back = dict(before, timestamps="user", rtt_user_us=None)
    assert "fell back" in anchors.lab_latencies(fell_back)["kernel"]


def test_targets_and_ratios() -> None:
    assert Target("ratio", "max", 1.4).describe() == "lab/anchor <= 1.4x"
    band = Target("ratio", "range", (0.9, 1.1))
    assert band.met(1.05) and not band.met(0.5)
    row = measured(SPECS["link-added-rtt"], 30.0, 42.0)
    assert (row.difference, row.passed) == (12.0, True)
    row = measured(SPECS["rtt-udp-p50-user"], 20.0, 30.0)
    assert (row.ratio, row.passed) == (1.5, False)
    assert measured(SPECS["echo-tcp-16"], 100.0, 50.0).passed is None  # no target: a figure to read


def test_table_names_every_row_and_says_why_one_was_not_measured(tmp_path: Path, capsys) -> None:
    table = AnchorTable(ROWS)
    table.add(measured(SPECS["rtt-udp-p50-kernel"], 20.0, 19.0))
    table.add(not_measured(SPECS["link-bulk-unimpaired"], anchors.BULK_NOT_LANDED))
    path = tmp_path / "anchors.json"
    table.write(path)
    assert bench_table.main([str(path)]) == 0
    md = (tmp_path / "anchors.md").read_text()
    assert sum(line.startswith("| ") for line in md.splitlines()) == len(ROWS) + 1  # header + rows
    assert "| 0.95x | lab/anchor <= 1x | pass |" in md
    assert f"not measured: {anchors.BULK_NOT_LANDED}" in md
    assert "test_forwarder_bench.py did not run" in md  # the rows this session never reached
    assert "load average" in capsys.readouterr().out


def test_the_link_rows_are_read_from_the_forwarder_benchmark() -> None:
    extra = {"veth_gbit_s": 20.0, "minimal_gbit_s": 15.0, "link_gbit_s": 12.0, "link-delay-10ms_gbit_s": 1.2,
             "veth_rtt_p50_us": 20.0, "minimal_rtt_p50_us": 32.0, "link_rtt_p50_us": 30.5,
             "rtt_probe": "sockperf", "dropped_queue": {"link": 0}}
    rows = {row.id: row for row in forwarder_rows(extra)}
    assert set(rows) == {"link-iperf3-unimpaired", "link-iperf3-vs-minimal", "link-iperf3-delay10ms",
                         "link-added-rtt", "link-rtt-vs-minimal"}
    assert (rows["link-iperf3-unimpaired"].passed, rows["link-iperf3-delay10ms"].passed) == (True, False)
    assert (rows["link-added-rtt"].difference, rows["link-added-rtt"].passed) == (10.5, True)
    assert rows["link-iperf3-vs-minimal"].ratio == 0.8 and rows["link-iperf3-vs-minimal"].passed is None
    assert rows["link-rtt-vs-minimal"].details["probe"] == "sockperf"
    assert rows["link-iperf3-unimpaired"].details["dropped_queue"] == {"link": 0}
    assert forwarder_rows({}) == []
    partial = {row.id for row in forwarder_rows({"veth_gbit_s": 20.0, "link_gbit_s": 12.0})}
    assert partial == {"link-iperf3-unimpaired"}  # the minimal forwarder's rows need its figures


def test_the_footer_says_whether_the_cpus_were_held_awake(tmp_path: Path) -> None:
    with anchors.cpus_held_awake() as what:
        assert "/dev/cpu_dma_latency" in what
    document = AnchorTable(ROWS).document()
    document["machine"]["idle_states"] = what
    assert what in bench_table.machine_line(document)


@pytest.mark.privileged
def test_veth_pair_is_recorded_while_it_lives_and_gone_after() -> None:
    """A concurrent `lab cleanup` must see an owner alive (the state file), and nothing outlives it."""
    import os

    from lab.link.netns import NETNS_DIR, STATE_DIR

    with anchors.veth_pair() as pair:
        name = pair.client_ns.removesuffix("-client")
        state = json.loads((STATE_DIR / f"{name}.json").read_text())
        assert state["owner_pid"] == os.getpid()
        port = anchors.free_port(pair.server)
        listen = "import socket, sys; socket.create_server((sys.argv[1], int(sys.argv[2]))).accept()"
        argv = [sys.executable, "-c", listen, pair.server_address, str(port)]
        with anchors.serving(pair.server, argv, port, ["tcp"]):  # listening in the server namespace
            check = (f"import socket; socket.create_connection(({pair.server_address!r}, {port}), timeout=5)")
            assert pair.client.run([sys.executable, "-c", check]).returncode == 0  # reached over the veth
    assert not (STATE_DIR / f"{name}.json").exists()
    assert not (NETNS_DIR / pair.client_ns).exists() and not (NETNS_DIR / pair.server_ns).exists()


@pytest.mark.privileged
def test_minimal_forwarder_carries_tcp_and_leaves_nothing_behind() -> None:
    """The anchor is a real forwarder between the lab's TUN devices: a TCP connection crosses it; its
    two processes and namespaces are gone after."""
    import os

    from lab.link.netns import NETNS_DIR

    with anchors.minimal_forwarder() as ends:
        parent = os.getpid()
        children = [int(pid) for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
        port = anchors.free_port(ends.server)
        listen = "import socket, sys; socket.create_server((sys.argv[1], int(sys.argv[2]))).accept()"
        argv = [sys.executable, "-c", listen, ends.server_address, str(port)]
        with anchors.serving(ends.server, argv, port, ["tcp"]):
            check = f"import socket; socket.create_connection(({ends.server_address!r}, {port}), timeout=5)"
            assert ends.client.run([sys.executable, "-c", check]).returncode == 0
    assert len(children) >= 2
    assert not any(Path(f"/proc/{pid}").exists() for pid in children)
    assert not (NETNS_DIR / ends.client_ns).exists() and not (NETNS_DIR / ends.server_ns).exists()
