"""Issue 9, item 4: typed results. A Result's notes, observations, head-of-line figures and timeline are
fields of their own (result.json "wirelab-result/2"); `lab report` still reads "wirelab-result/1" files,
whose free-form `extras` and `tcp_info` are converted on load. Pure: no network."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.metrics import compute_result
from lab.records import (
    Arrival,
    RunNotes,
    RunRecord,
    Send,
    TrafficPlan,
    hol_of,
    notes_of,
    observations_of,
    result_from_v1,
    timeline_of,
    was_interrupted,
)
from lab.records import Result as ResultObject
from lab.report import FORMAT, FORMAT_V1, load_result, render_command, upgrade
from lab.report.summary import retransmits

DATA = Path(__file__).resolve().parent / "data"
V1 = DATA / "sample-run-v1"


def v1_document() -> dict:
    return json.loads((V1 / "result.json").read_text(encoding="utf-8"))


def run_folder(tmp_path: Path, document: dict) -> Path:
    folder = tmp_path / "run"
    folder.mkdir(exist_ok=True)
    (folder / "result.json").write_text(json.dumps(document), encoding="utf-8")
    return folder


def test_a_v1_file_is_converted_on_load():
    raw = v1_document()
    assert raw["format"] == FORMAT_V1 == "wirelab-result/1" and FORMAT == "wirelab-result/2"
    payload = load_result(V1)
    assert payload["format"] == FORMAT
    old_tcp, tcp = raw["points"][1]["results"][0], payload["points"][1]["results"][0]
    assert "extras" not in tcp and "tcp_info" not in tcp
    assert tcp["timeline"] == timeline_of(tcp) == old_tcp["extras"]["timeline"]
    assert observations_of(tcp, "tcp")["tcp_info"] == old_tcp["tcp_info"]
    server = ((old_tcp.get("kernel") or {}).get("server") or {}).get("TcpRetransSegs", 0)
    assert retransmits(tcp) == old_tcp["tcp_info"]["total_retrans"] + server == 57
    assert tcp["notes"] == RunNotes().to_dict() and tcp["hol"] is None
    udp = payload["points"][1]["results"][1]
    assert udp["observations"] == {}  # UDP wrote no tcp_info (null in v1)


def test_a_v1_file_renders_the_same_report_as_its_conversion(tmp_path):
    old = tmp_path / "v1"
    shutil.copytree(V1, old)
    new = run_folder(tmp_path, upgrade(v1_document()))
    assert render_command(old) == 0 and render_command(new) == 0
    for name in ("report.md", "report.html"):
        assert (old / name).read_text(encoding="utf-8") == (new / name).read_text(encoding="utf-8"), name


def test_v1_extras_become_notes_observations_hol_and_timeline():
    old = {
        "protocol": "tcp", "sent": 3, "received": 2, "lost": 1, "loss_ratio": 1 / 3,
        "tcp_info": {"total_retrans": 2},
        "extras": {
            "timeline": [[0, 0.0, 1.0, 0]], "hol": {"streams": 2, "blocked": 1},
            "interrupted": True, "undecided": 1, "unknown_seq": 0, "deadline_hit": True,
            "connection_ended": "the echo server closed the connection", "tcp_nodelay": True,
            "something_else": 5,
        },
    }
    new = result_from_v1(old)
    assert set(new) - set(old) == {"notes", "observations", "hol", "timeline"}
    assert "extras" not in new and "tcp_info" not in new
    assert new["observations"] == {"tcp": {"tcp_info": {"total_retrans": 2}, "tcp_nodelay": True}}
    assert hol_of(new) == {"streams": 2, "blocked": 1} and timeline_of(new) == [[0, 0.0, 1.0, 0]]
    notes = notes_of(new)
    assert notes == RunNotes(interrupted=True, undecided=1, deadline_hit=True,
                             connection_ended="the echo server closed the connection")
    assert was_interrupted(new) and ResultObject.from_dict({**_full(), **new}).notes == notes


def _full() -> dict:
    record = RunRecord(protocol="udp", plan=TrafficPlan(count=1), started_ns=0, ended_ns=1)
    return compute_result(record).to_dict()


def test_a_v1_file_is_checked_as_what_it_is(tmp_path):
    """A hand-edited v1 file's error names the place it has (extras.timeline), not its converted one."""
    document = v1_document()
    document["points"][0]["results"][0]["extras"]["timeline"][2] = [1]
    with pytest.raises(LabError) as info:
        load_result(run_folder(tmp_path, document))
    message = "points[0].results[0].extras.timeline[2]: expected a list of 3 or 4 items, got 1"
    assert message in str(info.value)


def test_v2_notes_and_observations_are_checked(tmp_path):
    document = json.loads((DATA / "sample-run" / "result.json").read_text(encoding="utf-8"))
    bad = copy.deepcopy(document)
    bad["points"][0]["results"][1]["notes"]["interrupted"] = "yes"
    with pytest.raises(LabError) as info:
        load_result(run_folder(tmp_path, bad))
    assert "points[0].results[1].notes.interrupted: expected true or false, got 'yes'" in str(info.value)
    bad = copy.deepcopy(document)
    bad["points"][0]["results"][0]["observations"]["tcp"]["tcp_info"]["total_retrans"] = -1
    with pytest.raises(LabError) as info:
        load_result(run_folder(tmp_path, bad))
    assert "observations.tcp.tcp_info.total_retrans: expected an integer" in str(info.value)
    bad = copy.deepcopy(document)
    bad["points"][0]["results"][0]["observations"]["quic"] = 3
    with pytest.raises(LabError) as info:
        load_result(run_folder(tmp_path, bad))
    assert "observations.quic: expected an object, got 3" in str(info.value)


def test_records_and_results_round_trip_with_their_typed_parts():
    record = RunRecord(
        protocol="tcp", plan=TrafficPlan(count=2, streams=2), started_ns=0, ended_ns=3_000_000,
        sends=[Send(seq=0, intended_ns=0, sent_ns=0, size=64), Send(seq=1, intended_ns=1, sent_ns=1, size=64,
                                                                     stream=1)],
        arrivals=[Arrival(seq=0, recv_ns=1_000_000), Arrival(seq=7, recv_ns=2_000_000)],
        notes=RunNotes(deadline_hit=True), observations={"tcp": {"tcp_info": {"total_retrans": 1}}},
    )
    assert RunRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    result = compute_result(record)
    assert result.notes == RunNotes(deadline_hit=True, unknown_seq=1)
    assert result.observations == record.observations and (result.hol or {}).get("streams") == 2
    again = ResultObject.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result and isinstance(again.notes, RunNotes)
    newer = {**result.to_dict(), "notes": {"interrupted": True, "newer_note": 1}}
    assert ResultObject.from_dict(newer).notes == RunNotes(interrupted=True)
