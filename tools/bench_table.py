"""Print `make bench`'s anchor table and write it as Markdown beside its JSON.

    python tools/bench_table.py reports/benchmarks/anchors.json

Reads what tests/benchmarks/test_anchors.py measured (rows of tests/benchmarks/anchor_rows.py):
for each row the anchor's figure, the lab's, their ratio, the target and a pass/fail mark; a row
that could not be measured says why. Writes anchors.md next to the JSON file. Exit status 0 even
when a target is missed: targets are for reading, the benchmark run's own status is make's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

MARKS = {True: "pass", False: "FAIL", None: "-"}


def _figure(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def table_rows(document: dict[str, Any]) -> list[list[str]]:
    """One list of cells per row: what, anchor, lab (figure, unit and what it is), ratio, target, verdict."""
    out = []
    for row in document["rows"]:
        target = row["target"] or "-"
        if row["not_measured"]:
            out.append([row["what"], f"- \n{row['anchor_name']}", f"- \n{row['lab_name']}", "-", target,
                        f"not measured: {row['not_measured']}"])
            continue
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        if row["target"] and "lab - anchor" in row["target"]:
            target += f" (is {_figure(row['difference'])} {row['unit']})"
        out.append([row["what"], f"{_figure(row['anchor'])} {row['unit']}\n{row['anchor_name']}",
                    f"{_figure(row['lab'])} {row['unit']}\n{row['lab_name']}", ratio, target,
                    MARKS[row["passed"]]])
    return out


HEADERS = ["row", "anchor", "lab", "lab/anchor", "target", "verdict"]
WIDTH = 150  # when the output is not a terminal (make's log, CI): rich would assume 80 columns


def machine_line(document: dict[str, Any]) -> str:
    m = document["machine"]
    tools = ", ".join(v or f"{k}: missing" for k, v in m["tools"].items())
    return (f"{m['started']['at']}, kernel {m['kernel']}, {m['started']['cores']} cores, load average "
            f"{' '.join(map(str, m['started']['loadavg']))} at the start and "
            f"{' '.join(map(str, m['ended']['loadavg']))} at the end; "
            + (f"{m['idle_states']}; " if m.get("idle_states") else "") + tools)


def markdown(document: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for cells in table_rows(document):
        cells = [c.replace("\n", "<br>").replace("|", "\\|") for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nMeasured {machine_line(document)}.\n"


def show(document: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="wirelab against its anchors (one run; ratios, not timings)", show_lines=True)
    for header in HEADERS:
        table.add_column(header, overflow="fold", justify="right" if header == "lab/anchor" else "left",
                         max_width=44 if header == "verdict" else None)
    styles = {"pass": "green", "FAIL": "bold red", "-": ""}
    for cells in table_rows(document):
        verdict = cells[-1]
        style = styles.get(verdict, "yellow")
        table.add_row(*cells[:-1], f"[{style}]{verdict}[/]" if style else verdict)
    console = Console()
    if not console.is_terminal:
        console = Console(width=WIDTH)
    console.print(table)
    console.print(f"measured {machine_line(document)}", soft_wrap=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    path = Path(argv[0])
    if not path.exists():
        print(f"no {path}: the anchor benchmarks (tests/benchmarks/test_anchors.py) did not run",
              file=sys.stderr)
        return 1
    document = json.loads(path.read_text())
    show(document)
    md = path.with_suffix(".md")
    md.write_text(markdown(document))
    print(f"written: {path} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
