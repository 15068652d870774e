"""`lab probe` and `run_atlas`: check the target, run the selected cases in the sandbox, show them.

The order matters for safety: the target is checked (and refused) before the catalogue is even
selected, and packets are only ever built inside the sandbox's private namespace.
"""

from __future__ import annotations

import json
import time
from typing import Any

from lab.privileges import CAP_NET_ADMIN, CAP_NET_RAW, require
from lab.probes.catalogue import Case, select
from lab.probes.targets import plan_target

ATLAS_SEED = 1  # the sandbox's own random.Random: IP ids, ports, sequence numbers


def run_atlas(cases: list[str] | None = None, layer: str | None = None, *,
              target: str | None = None) -> list[dict[str, Any]]:
    """Run catalogue cases in a fresh private sandbox; one JSON-able dict per case, in order.

    Each dict has name, layer, defect, expected_verdict, verdict, verdict_detail,
    matches_expected, reply, replies, counters, app_saw_data, connection, server_alive, note,
    error, target (where its packets went), path (TUN or real socket); the servers are also checked
    after all cases (`alive_after_all` on every entry). Raises TargetRefusedError, ConfigError,
    PrivilegeError, EndpointError.
    """
    addresses = plan_target(target)  # refuses a foreign target before anything else happens
    chosen = select(cases, layer)
    require(CAP_NET_ADMIN, CAP_NET_RAW)
    from lab.probes.sandbox import Sandbox

    results: list[dict[str, Any]] = []
    if not chosen:
        return results
    with Sandbox(addresses, seed=ATLAS_SEED) as sandbox:
        for case in chosen:
            started = time.monotonic()
            result = sandbox.run_case(case.name)
            result["duration_s"] = round(time.monotonic() - started, 3)
            result.setdefault("target", addresses.address)
            result["kernel"] = sandbox.info.get("kernel", "")
            results.append(result)
        after_all = sandbox.inject([])["server_alive"] if chosen else True
    for result in results:
        result["alive_after_all"] = after_all
    return results


def _list_table(cases: list[Case]) -> Any:
    from rich.table import Table

    table = Table(title=f"malformed-packet atlas: {len(cases)} cases", title_justify="left")
    for column in ("case", "layer", "what is wrong", "expected", "why"):
        table.add_column(column, overflow="fold")
    for case in cases:
        table.add_row(case.name, case.layer, case.defect, " | ".join(case.expected), case.note)
    return table


def _results_table(results: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="malformed-packet atlas", title_justify="left")
    for column in ("case", "what was wrong", "the kernel's verdict", "reply", "server alive", ""):
        table.add_column(column, overflow="fold")
    for r in results:
        expected = " | ".join(r["expected_verdict"])
        mark = "[green]✓[/]" if r["matches_expected"] else f"[red]✗[/] expected {expected}"
        table.add_row(r["name"], r["defect"], r["verdict_detail"], r["reply"],
                      "yes" if r["server_alive"] else "[red]NO[/]", mark)
    return table


def probe_command(as_json: bool, cases: list[str], layer: str | None, target: str | None,
                  list_cases: bool) -> int:
    """`lab probe`: run (or list) the atlas; 0 if every verdict matched and the server survived, else 1."""
    plan_target(target)  # a refused target fails here, before any listing, selection or packet
    if list_cases:
        chosen = select(cases or None, layer)
        if as_json:
            print(json.dumps([{"name": c.name, "layer": c.layer, "defect": c.defect,
                               "expected_verdict": list(c.expected), "mode": c.mode, "note": c.note}
                              for c in chosen], indent=2))
        else:
            from rich.console import Console

            Console().print(_list_table(chosen))
        return 0
    addresses = plan_target(target)
    started = time.monotonic()
    results = run_atlas(cases or None, layer, target=target)
    elapsed = time.monotonic() - started
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        from rich.console import Console
        from rich.markup import escape

        console = Console()
        kernel = results[0].get("kernel", "") if results else ""
        console.print(f"In a private network namespace made for this run (kernel {kernel}): "
                      f"{escape(addresses.describe())}.", highlight=False)
        console.print(_results_table(results))
        for r in results:
            if not r["matches_expected"]:
                why = f" — {r['note']}" if r["note"] else ""
                console.print(f"[red]✗[/] {r['name']}: observed {escape(r['verdict_detail'])}; expected "
                              f"{escape(' | '.join(r['expected_verdict']))}{escape(why)}", highlight=False)
        matched = sum(r["matches_expected"] for r in results)
        alive = all(r["server_alive"] for r in results) and all(r["alive_after_all"] for r in results)
        console.print(f"{matched}/{len(results)} verdicts as expected; server alive after every case: "
                      f"{'yes' if alive else 'NO'}; {elapsed:.1f} s")
    ok = all(r["matches_expected"] and r["server_alive"] and r["alive_after_all"] for r in results)
    return 0 if ok else 1
