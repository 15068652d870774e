"""Code cites the repository's own architecture document, never a file outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r"docs/architecture\.md#([a-z0-9-]+)")


def _anchors() -> set[str]:
    """GitHub-style anchors of the document's headings."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}


def _sources() -> list[Path]:
    return [p for d in ("lab", "tests") for p in (ROOT / d).rglob("*.py")]


def test_every_cited_section_exists():
    anchors = _anchors()
    cited = {(p.name, a) for p in _sources() for a in CITATION.findall(p.read_text(encoding="utf-8"))}
    assert cited, "nothing cites docs/architecture.md"
    assert not [c for c in cited if c[1] not in anchors], sorted(c for c in cited if c[1] not in anchors)


def test_no_code_cites_the_design_file_outside_the_repository():
    stale = [str(p.relative_to(ROOT)) for p in _sources()
             if p.name != "test_docs.py" and "DESIGN" in p.read_text(encoding="utf-8")]
    assert not stale, stale
