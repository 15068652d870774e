"""The README's pytest example is real code: extract it and run it, so the README stays true."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import privileges

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_block(marker: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("```python\n" + marker) + len("```python\n")
    return text[start : text.index("```", start)]


def test_readme_pytest_example_runs(pytester: pytest.Pytester) -> None:
    """The 'Testing your own network code' example passes (its privileged test skips if not root)."""
    pytester.makepyfile(test_readme_example=_python_block("import urllib.request"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    if privileges.explain(privileges.CAP_NET_ADMIN, privileges.CAP_NET_RAW):
        result.assert_outcomes(passed=1, skipped=1)
    else:
        result.assert_outcomes(passed=2)
