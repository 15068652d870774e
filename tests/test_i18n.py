"""Issue 11, item 2: the lab in Portuguese — the catalogue is complete, consistent and loads anywhere."""

from __future__ import annotations

import io
import re
import string
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

import lab
from lab import i18n
from lab.errors import ConfigError

PO = Path(i18n.LOCALE_DIR) / "pt" / "LC_MESSAGES" / f"{i18n.DOMAIN}.po"


@pytest.fixture(autouse=True)
def english_after():
    yield
    i18n.set_language("en")


def _catalogue() -> dict[str, str]:
    """msgid -> msgstr; a plural message counts as its singular and its plural form."""
    out: dict[str, str] = {}
    with PO.open("rb") as source:
        for message in read_po(source):
            if not message.id:
                continue
            ids = message.id if isinstance(message.id, tuple) else (message.id,)
            strings = message.string if isinstance(message.string, tuple) else (message.string,)
            for index, msgid in enumerate(ids):
                out[msgid] = strings[min(index, len(strings) - 1)] if strings else ""
    return out


def _marked_in_source() -> set[str]:
    """Every message the code marks with _() or N_() (what `make messages` extracts)."""
    found = extract_from_dir(  # the same mapping as babel.cfg
        Path(lab.__file__).parent,
        method_map=[("**.py", "python"), ("report/templates/**.j2", "jinja2")],
        options_map={"report/templates/**.j2": {"newstyle_gettext": "true"}},
        keywords={"_": None, "N_": None, "ngettext": (1, 2), "gettext": None},
    )
    out: set[str] = set()
    for _, _, message, _, _ in found:
        out.update(message if isinstance(message, tuple) else (message,))
    return out


def test_every_marked_message_has_a_portuguese_translation():
    catalogue = _catalogue()
    missing = sorted(m for m in _marked_in_source() if not catalogue.get(m))
    assert not missing, f"untranslated (run `make messages`, then translate): {missing}"


def test_translations_keep_every_placeholder_and_markup():
    fields = string.Formatter()
    for msgid, msgstr in _catalogue().items():
        if not msgstr:
            continue
        names = sorted(f for _, f, _, _ in fields.parse(msgid) if f is not None)
        assert sorted(f for _, f, _, _ in fields.parse(msgstr) if f is not None) == names, msgid
        assert re.findall(r"\[/?\w[^\]]*\]", msgid) == re.findall(r"\[/?\w[^\]]*\]", msgstr), msgid


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, "en"),
    ({"LANG": "pt_BR.UTF-8"}, "pt"),
    ({"LANG": "en_US.UTF-8", "LC_ALL": "pt_PT.UTF-8"}, "pt"),
    ({"LANGUAGE": "en:pt", "LANG": "pt_BR.UTF-8"}, "en"),  # gettext's order: LANGUAGE first
    ({"LC_MESSAGES": "C"}, "en"),
])
def test_language_from_the_environment(environ, expected):
    assert i18n.language_from_env(environ) == expected


def test_set_language_translates_and_refuses_unknown_languages():
    assert i18n.set_language("pt") == "pt"
    assert i18n._("report: {path}") == "relatório: {path}"
    assert i18n.set_language("en") == "en" and i18n._("report: {path}") == "report: {path}"
    assert i18n.set_language("pt_BR") == "pt"
    with pytest.raises(ConfigError, match="--lang must be one of en, pt"):
        i18n.set_language("fr")


def test_a_checkout_without_compiled_catalogue_compiles_the_po(tmp_path, monkeypatch):
    """The .mo is built by `make`; without it the .po is compiled in memory (same translations)."""
    target = tmp_path / "pt" / "LC_MESSAGES"
    target.mkdir(parents=True)
    (target / PO.name).write_bytes(PO.read_bytes())
    monkeypatch.setattr(i18n, "LOCALE_DIR", tmp_path)
    i18n.set_language("pt")
    assert i18n._("report: {path}") == "relatório: {path}"
    assert read_po(io.BytesIO(PO.read_bytes()))  # and the shipped .po parses


def test_make_compiles_every_catalogue(tmp_path, monkeypatch):
    """`python -m lab.i18n` (what make runs) writes a .mo gettext reads, despite "95% interval"-like text
    that `pybabel compile`'s %-format check rejects."""
    import gettext

    target = tmp_path / "pt" / "LC_MESSAGES"
    target.mkdir(parents=True)
    (target / PO.name).write_bytes(PO.read_bytes())
    (mo,) = i18n.compile_catalogues(tmp_path)
    assert mo == target / f"{i18n.DOMAIN}.mo"
    translations = gettext.translation(i18n.DOMAIN, tmp_path, ["pt"])
    assert translations.gettext("report: {path}") == "relatório: {path}"
