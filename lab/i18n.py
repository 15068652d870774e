"""The lab in the class's language: English by default, Portuguese with `--lang pt` or LANG=pt_*.

Messages are gettext catalogues under lab/locale (`wirelab.po`, extracted with Babel: `make
messages`); `make` compiles them to `.mo` when it installs (`python -m lab.i18n`), and a checkout without the
compiled file still works (the `.po` is compiled in memory with Babel). Code marks text with `_()`
(translated when called) or `N_()` (marked for extraction only: help texts declared at import
time, translated when the CLI is built).
"""

from __future__ import annotations

import gettext
import io
import os
from collections.abc import Mapping
from pathlib import Path

from lab.errors import ConfigError

DOMAIN = "wirelab"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
LANGUAGES = ("en", "pt")
ENV_VARIABLES = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")  # gettext's order of precedence

_translations: gettext.NullTranslations = gettext.NullTranslations()
_language = "en"


def language_from_env(environ: Mapping[str, str] | None = None) -> str:
    """'pt' when the first locale variable set (as gettext reads them) asks for Portuguese."""
    environ = os.environ if environ is None else environ
    for name in ENV_VARIABLES:
        value = environ.get(name, "")
        if value:
            first = value.split(":")[0].strip().lower()
            return "pt" if first.startswith("pt") else "en"
    return "en"


def set_language(lang: str | None = None) -> str:
    """Use `lang` ('en' or 'pt'; None: from the environment) from now on; return it."""
    global _translations, _language
    chosen = (lang or language_from_env()).strip().lower().replace("-", "_").split("_")[0]
    if chosen not in LANGUAGES:
        raise ConfigError(f"--lang must be one of {', '.join(LANGUAGES)}, got {lang!r}")
    _translations = gettext.NullTranslations() if chosen == "en" else _load(chosen)
    _language = chosen
    return chosen


def language() -> str:
    """The language in use: 'en' or 'pt'."""
    return _language


def _(message: str) -> str:
    """`message` in the language in use (itself if it has no translation)."""
    return _translations.gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    """The singular or plural form for `n`, translated."""
    return _translations.ngettext(singular, plural, n)


def N_(message: str) -> str:  # noqa: N802 - the conventional gettext marker name
    """Mark `message` for extraction only; `_()` translates it where it is used."""
    return message


def _load(lang: str) -> gettext.NullTranslations:
    folder = LOCALE_DIR / lang / "LC_MESSAGES"
    po, mo = folder / f"{DOMAIN}.po", folder / f"{DOMAIN}.mo"
    # A checkout whose .po changed after `make` compiled it (or that was never built) reads the .po.
    if po.is_file() and (not mo.is_file() or po.stat().st_mtime > mo.stat().st_mtime):
        return gettext.GNUTranslations(io.BytesIO(compile_po(po)))
    try:
        return gettext.translation(DOMAIN, LOCALE_DIR, [lang])
    except FileNotFoundError:
        raise ConfigError(f"no {lang} messages installed ({po} is missing)") from None


def compile_po(po: Path) -> bytes:
    """A `.po` catalogue compiled to `.mo` bytes (Babel), for a checkout whose `.mo` was not built."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with po.open("rb") as source:
        catalog = read_po(source)
    out = io.BytesIO()
    write_mo(out, catalog)
    return out.getvalue()


# typer's own words in every --help page (see lab.cli._translated), marked here for extraction.
HELP_WORDS = (N_("Options"), N_("Arguments"), N_("Commands"), N_("default: {default}"), N_("required"))


def compile_catalogues(locale_dir: Path = LOCALE_DIR) -> list[Path]:
    """Compile every `.po` under `locale_dir` to its `.mo` (what `make` does when it installs).

    Not `pybabel compile`: its %-format check misreads plain text such as "95% interval" (the lab's
    messages use str.format placeholders, which the catalogue test checks instead).
    """
    written = []
    for po in sorted(locale_dir.glob(f"*/LC_MESSAGES/{DOMAIN}.po")):
        mo = po.with_suffix(".mo")
        mo.write_bytes(compile_po(po))
        written.append(mo)
    return written


if __name__ == "__main__":
    for path in compile_catalogues():
        print(f"compiled {path}")
