"""Parse and format netem-style values ("5%", "20ms", "10mbit", "1000"); pure, stdlib only.

Shared by the CLI, scenario files and the Python API, so a bad value gets the same message
everywhere: it names the key, the accepted range or units, and what was given.

Numbers given as numbers (from TOML or Python) are taken in base units: a fraction 0..1 for
percentages, seconds for durations, bits/s for rates, bytes for sizes. Strings must carry their
unit: netem itself reads a bare "5" as 5 % for loss, as microseconds for delay and as bytes/s for
rate, so a bare string is ambiguous and refused (except "0"). Sizes are the exception: tc reads a
bare size as bytes everywhere, so "65536" is 65536 bytes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from lab.errors import ConfigError

# Upper bounds that keep a typo from turning into an hour-long run or a link that holds gigabytes.
MAX_DURATION_S = 60.0
# 1 kbit/s: one 1500-byte packet already takes 12 s to serialise; slower rates only hold packets
# for minutes to hours (and 1e-8bit made the forwarder's wait overflow time_t).
MIN_RATE_BPS = 1e3
MAX_RATE_BPS = 1e12  # 1 tbit/s, far above anything a user-space forwarder moves
MAX_COUNT = 10_000_000

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_VALUE_UNIT = re.compile(rf"\s*({_NUMBER})\s*([A-Za-z%]*)\s*")

# tc(8) "TIME" units.
_TIME_UNITS = {
    "s": 1.0, "sec": 1.0, "secs": 1.0,
    "ms": 1e-3, "msec": 1e-3, "msecs": 1e-3,
    "us": 1e-6, "usec": 1e-6, "usecs": 1e-6,
    "ns": 1e-9, "nsec": 1e-9, "nsecs": 1e-9,
}
# tc(8) "RATES": *bit are bits/s, *bps are BYTES/s (so x8), IEC prefixes are powers of 1024.
_RATE_UNITS = {
    "bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
    "kibit": 2.0**10, "mibit": 2.0**20, "gibit": 2.0**30, "tibit": 2.0**40,
    "bps": 8.0, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9, "tbps": 8e12,
    "kibps": 8 * 2.0**10, "mibps": 8 * 2.0**20, "gibps": 8 * 2.0**30, "tibps": 8 * 2.0**40,
}
# tc(8) "SIZES": b (or a bare number) = bytes; k/kb, m/mb, g/gb are powers of 1024 (kib... too).
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 2**10, "kb": 2**10, "kib": 2**10,
    "m": 2**20, "mb": 2**20, "mib": 2**20,
    "g": 2**30, "gb": 2**30, "gib": 2**30,
}


def _bad(key: str, message: str) -> ConfigError:
    """A ConfigError about option `key` (`.key` is its first word: `loss gemodel p` is about `loss`)."""
    return ConfigError(message, key=key.split()[0] if key.strip() else None)


def _split(text: str, *, key: str, example: str) -> tuple[float, str]:
    """Split '20ms' into (20.0, 'ms'); raise ConfigError naming `key` if it is not number+unit."""
    match = _VALUE_UNIT.fullmatch(text)
    if match is None:
        raise _bad(key, f"{key} must be a number with a unit such as {example!r}, got {text!r}")
    value = float(match.group(1))
    if not math.isfinite(value):
        raise _bad(key, f"{key} must be a finite number, got {text!r}")
    return value, match.group(2).lower()


def _number(value: object, *, key: str) -> float:
    """A real number given as a number (not bool, not NaN/inf), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(key, f"{key} must be a string such as '5%' or a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise _bad(key, f"{key} must be a finite number, got {value!r}")
    return number


def parse_percent(text: str | float, *, key: str) -> float:
    """'5%' -> 0.05 (a number is taken as a fraction 0..1); ConfigError outside 0%..100%."""
    if isinstance(text, str):
        value, unit = _split(text, key=key, example="5%")
        if unit != "%":
            if value == 0 and unit == "":
                return 0.0
            raise _bad(key,
                f"{key} must be a percentage such as '5%' or '0.5%', got {text!r} "
                "(a bare number is ambiguous: netem reads '5' as 5%)"
            )
        if not 0.0 <= value <= 100.0:
            raise _bad(key, f"{key} must be between 0% and 100%, got {text.strip()}")
        return value / 100.0
    fraction = _number(text, key=key)
    if not 0.0 <= fraction <= 1.0:
        raise _bad(key, f"{key} must be between 0% and 100% (a fraction 0..1), got {text!r}")
    return fraction


def parse_duration(text: str | float, *, key: str) -> float:
    """'20ms' / '1.5s' / '500us' / '0' -> seconds (a number is taken as seconds)."""
    if isinstance(text, str):
        value, unit = _split(text, key=key, example="20ms")
        if unit == "" and value == 0:
            seconds = 0.0
        elif unit in _TIME_UNITS:
            seconds = value * _TIME_UNITS[unit]
        else:
            raise _bad(key,
                f"{key} must be a duration with a unit (s, ms, us, ns) such as '20ms', got {text!r}"
            )
    else:
        seconds = _number(text, key=key)
    if not 0.0 <= seconds <= MAX_DURATION_S:
        raise _bad(key, f"{key} must be between 0s and {MAX_DURATION_S:g}s, got {text!r}")
    return seconds


def parse_rate(text: str | float, *, key: str) -> float:
    """'10mbit' / '1gbit' / '500kbit' / '8bit' / '1mbps' (bytes/s, as tc) -> bits/s."""
    if isinstance(text, str):
        value, unit = _split(text, key=key, example="10mbit")
        if unit not in _RATE_UNITS:
            raise _bad(key,
                f"{key} must be a rate with a tc unit (bit, kbit, mbit, gbit; kbps, mbps = bytes/s) "
                f"such as '10mbit', got {text!r}"
            )
        bps = value * _RATE_UNITS[unit]
    else:
        bps = _number(text, key=key)
    check_rate(bps, key=key, given=text)
    return bps


def check_rate(bps: float, *, key: str = "rate", given: object = None) -> None:
    """ConfigError unless MIN_RATE_BPS <= bps <= MAX_RATE_BPS (also for rates built in Python)."""
    if not MIN_RATE_BPS <= bps <= MAX_RATE_BPS:  # also False for NaN
        raise _bad(key,
            f"{key} must be between {format_rate(MIN_RATE_BPS)} and {format_rate(MAX_RATE_BPS)}, "
            f"got {given if given is not None else bps!r}"
        )


def parse_size(text: str | int, *, key: str, minimum: int, maximum: int) -> int:
    """'32mb' / '64kb' / '65536' / 65536 -> bytes (tc units, powers of 1024), within [minimum, maximum]."""
    if isinstance(text, str):
        value, unit = _split(text, key=key, example="32mb")
        if unit not in _SIZE_UNITS:
            raise _bad(key,
                f"{key} must be a size in bytes with a tc unit (b, kb, mb, gb; powers of 1024) "
                f"such as '32mb', got {text!r}"
            )
        size = value * _SIZE_UNITS[unit]
    else:
        size = _number(text, key=key)
    if not size.is_integer() or not minimum <= size <= maximum:
        raise _bad(key,
            f"{key} must be a whole number of bytes between {format_size(minimum)} and "
            f"{format_size(maximum)}, got {text!r}"
        )
    return int(size)


def parse_count(text: str | int, *, key: str, maximum: int = MAX_COUNT) -> int:
    """'1000' -> 1000: a whole number from 1 to `maximum` (default MAX_COUNT)."""
    if isinstance(text, str):
        stripped = text.strip().replace("_", "")
        if not stripped.isdigit():
            raise _bad(key, f"{key} must be a whole number such as '1000', got {text!r}")
        count = int(stripped)
    else:
        is_whole = isinstance(text, int) or (isinstance(text, float) and text.is_integer())
        if isinstance(text, bool) or not is_whole:
            raise _bad(key, f"{key} must be a whole number such as 1000, got {text!r}")
        count = int(text)
    if not 1 <= count <= maximum:
        raise _bad(key, f"{key} must be between 1 and {maximum}, got {text!r}")
    return count


def format_percent(fraction: float) -> str:
    """0.05 -> '5%' (readable; parse_percent gives back the value to ~12 significant digits)."""
    return f"{fraction * 100:.12g}%"


def format_duration(seconds: float) -> str:
    """0.02 -> '20ms', 1.5 -> '1.5s', 0.0005 -> '500us', 0 -> '0'."""
    if seconds == 0:
        return "0"
    if seconds >= 1:
        return f"{seconds:.12g}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.12g}ms"
    return f"{seconds * 1e6:.12g}us"


def format_rate(bps: float) -> str:
    """10e6 -> '10mbit' (decimal prefixes, bits/s, as tc prints them)."""
    for unit, scale in (("tbit", 1e12), ("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bps >= scale:
            return f"{bps / scale:.12g}{unit}"
    return f"{bps:.12g}bit"


def format_size(size: int) -> str:
    """33554432 -> '32mb', 65536 -> '64kb', 1500 -> '1500b' (tc units, powers of 1024)."""
    for unit, scale in (("gb", 2**30), ("mb", 2**20), ("kb", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size}b"


# --- netem's words: `tc qdisc ... netem delay 10ms 2ms loss 5%` -------------------------------------
# Each word -> the option key(s) its values fill, in order (keys are lab.link.models.OPTION_KEYS;
# tests/test_asymmetric.py keeps every key reachable). Values stay strings: they are parsed, and their
# ranges checked, with the options themselves (LinkConfig.from_options), so a bad value gets the
# same message as the same value given as an option.
NETEM_WORDS: dict[str, tuple[str, ...]] = {
    "delay": ("delay", "jitter", "delay_correlation"),  # netem: delay TIME [JITTER [CORRELATION]]
    "jitter": ("jitter",),
    "delay_correlation": ("delay_correlation",),
    "distribution": ("distribution",),
    "loss": ("loss",),  # loss PERCENT | loss random PERCENT | loss gemodel P [R [1-H [1-K]]]
    "duplicate": ("duplicate",),
    "corrupt": ("corrupt",),
    "reorder": ("reorder",),
    "rate": ("rate",),
    "limit": ("limit",),
    "limit_bytes": ("limit_bytes",),
}
# netem words the lab's link does not model: refused with the reason, not as an unknown word.
_NETEM_UNSUPPORTED = {
    "ecn": "the link does not mark ECN",
    "slot": "the link does not model slotted (Wi-Fi-like) delivery",
    "gap": "reorder's gap is not modelled (reorder sends a share of packets without the delay)",
    "state": "loss state (the 4-state Markov model) is not modelled; use 'loss gemodel P R 1-H 1-K'",
    "seed": "the seed is given apart (--seed, [scenario] seed, seed=)",
}
_GEMODEL_VALUES = 4  # gemodel P [R [1-H [1-K]]]
# What an error shows: a word's example, and why it takes no more values.
_NETEM_EXAMPLES = {"delay": "delay 10ms", "jitter": "jitter 2ms", "distribution": "distribution normal",
                   "rate": "rate 10mbit", "limit": "limit 100", "limit_bytes": "limit_bytes 8mb"}
_NETEM_TOO_MANY = {
    "delay": "delay takes at most TIME JITTER CORRELATION",
    "rate": "rate takes one value: the packet overhead and cell sizes are not modelled",
    "loss": "loss takes one percentage: loss correlation is not modelled (use 'loss gemodel P R' for bursts)",
    **{word: f"{word} takes one value" for word in ("jitter", "limit", "limit_bytes", "delay_correlation")},
}


def _is_value(word: str) -> bool:
    """A value starts like a number ('10ms', '.5%', '-1'); a word does not."""
    return bool(re.match(r"[+-]?\.?\d", word))


def parse_netem(text: str, *, key: str = "netem") -> dict[str, str]:
    """netem's words -> option keys with their values as given: 'delay 10ms 2ms loss 5%' ->
    {'delay': '10ms', 'jitter': '2ms', 'loss': '5%'}. Words as tc takes them (NETEM_WORDS, plus
    the lab's own keys as words: 'jitter 2ms', 'limit_bytes 8mb'); `key` (e.g. `forward`) names
    the text in errors. ConfigError for an unknown word, a missing value, a key given twice, or a
    netem feature the lab does not model (loss/duplicate/corrupt/reorder correlation, rate overheads).
    """
    if not isinstance(text, str):
        raise ConfigError(f"{key} must be netem's words such as 'delay 10ms loss 5%', got {text!r}", key=key)
    words = text.split()
    shown = " ".join(words)
    out: dict[str, str] = {}
    at = 0

    def bad(message: str, option: str | None = None) -> ConfigError:
        return ConfigError(f"{key} {shown!r}: {message}", key=f"{key}.{option}" if option else key)

    def values() -> list[str]:
        nonlocal at
        taken = []
        while at < len(words) and _is_value(words[at]):
            taken.append(words[at])
            at += 1
        return taken

    while at < len(words):
        given = words[at]
        word = given.lower().replace("-", "_")
        at += 1
        if word in _NETEM_UNSUPPORTED:
            raise bad(f"{word!r} is not supported: {_NETEM_UNSUPPORTED[word]}")
        if word not in NETEM_WORDS:
            what = "a value without its word" if _is_value(word) else "unknown word"
            raise bad(f"{what} {given!r}; netem's words here: {', '.join(NETEM_WORDS)}")
        fills = NETEM_WORDS[word]
        taken = values()
        model = words[at].lower() if word == "loss" and not taken and at < len(words) else ""
        if model in ("random", "gemodel", "state"):  # loss random P | loss gemodel P [R [1-H [1-K]]]
            if model in _NETEM_UNSUPPORTED:
                raise bad(f"'loss {model}' is not supported: {_NETEM_UNSUPPORTED[model]}", "loss")
            at += 1
            taken = values()
            if model == "gemodel":
                if not 1 <= len(taken) <= _GEMODEL_VALUES:
                    raise bad("loss gemodel takes 1 to 4 percentages: P [R [1-H [1-K]]], "
                              "e.g. 'loss gemodel 1% 30%'", "loss")
                taken = ["gemodel " + " ".join(taken)]
        if word == "distribution" and not taken and at < len(words):
            taken = [words[at]]  # a name, checked with the option (uniform or normal)
            at += 1
        if not taken:
            raise bad(f"{word} needs a value, e.g. {_NETEM_EXAMPLES.get(word, word + ' 5%')!r}", fills[0])
        if len(taken) > len(fills):
            why = _NETEM_TOO_MANY.get(word, f"{word} takes one percentage: its correlation is not modelled")
            raise bad(f"{why}; got {' '.join(taken)!r}", fills[0])
        for option, value in zip(fills, taken, strict=False):
            if option in out:
                raise bad(f"{option} is given twice", option)
            out[option] = value
    return out


def format_netem(options: Mapping[str, object]) -> str:
    """{'delay': '10ms', 'loss': '5%'} -> 'delay 10ms loss 5%': option keys back as netem's words
    (`parse_netem` reads it back to the same mapping)."""
    return " ".join(f"{key} {value}" for key, value in options.items())
