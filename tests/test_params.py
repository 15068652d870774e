"""netem-style value parsing: accepted forms, exact values, and errors that name the key."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from lab.errors import ConfigError
from lab.link.params import (
    format_duration,
    format_percent,
    format_rate,
    parse_count,
    parse_duration,
    parse_percent,
    parse_rate,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5%", 0.05), ("0.5%", 0.005), ("100%", 1.0), ("0%", 0.0), ("0", 0.0), (" 10 % ", 0.10),
     (0.25, 0.25), (0, 0.0), (1, 1.0)],
)
def test_percent_forms(text: str | float, expected: float) -> None:
    assert parse_percent(text, key="loss") == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("150%", "loss must be between 0% and 100%, got 150%"),
        ("-1%", "loss must be between 0% and 100%, got -1%"),
        ("5", "loss must be a percentage such as '5%'"),
        ("five%", "loss must be a number with a unit"),
        ("", "loss must be a number with a unit"),
        (1.5, "loss must be between 0% and 100%"),
        (float("nan"), "loss must be a finite number"),
        (True, "loss must be a string such as '5%' or a number"),
    ],
)
def test_percent_errors_name_the_key(text: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_percent(text, key="loss")  # type: ignore[arg-type]
    assert message in str(info.value)


@given(st.floats(min_value=0, max_value=100, allow_nan=False))
@example(0.0)
@example(100.0)
@example(1e-9)
def test_any_percent_string_in_range_round_trips(value: float) -> None:
    """Property: for any x in [0, 100], parse('x%') == x/100, and format -> parse gives it back."""
    fraction = parse_percent(f"{value!r}%", key="p")
    assert fraction == pytest.approx(value / 100, rel=1e-12, abs=1e-15)
    assert parse_percent(format_percent(fraction), key="p") == pytest.approx(fraction, rel=1e-11, abs=1e-15)


@given(st.floats(min_value=100, max_value=1e6, exclude_min=True, allow_nan=False))
def test_any_percent_over_100_is_refused_with_key(value: float) -> None:
    """Property: every percentage above 100% raises ConfigError naming the key."""
    with pytest.raises(ConfigError, match="^corrupt must be between 0% and 100%"):
        parse_percent(f"{value!r}%", key="corrupt")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20ms", 0.020), ("1.5s", 1.5), ("500us", 0.0005), ("0", 0.0), ("2msec", 0.002), ("100ns", 1e-7),
     ("10 ms", 0.010), ("1S", 1.0), (0.02, 0.02), (3, 3.0)],
)
def test_duration_forms(text: str | float, seconds: float) -> None:
    assert parse_duration(text, key="delay") == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize(
    ("text", "message"),
    [("20", "delay must be a duration with a unit"), ("20 minutes", "delay must be a duration"),
     ("-5ms", "delay must be between 0s and 60s"), ("2h", "delay must be a duration"),
     ("61s", "between 0s and 60s")],
)
def test_duration_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_duration(text, key="delay")


@pytest.mark.parametrize(
    ("text", "bps"),
    [("10mbit", 10e6), ("1gbit", 1e9), ("500kbit", 500e3), ("8000bit", 8e3), ("1mbps", 8e6),
     ("100kbps", 800e3), ("1Mbit", 1e6), ("1mibit", 2**20), (1e6, 1e6), ("1kbit", 1e3), ("1tbit", 1e12)],
)
def test_rate_forms(text: str | float, bps: float) -> None:
    assert parse_rate(text, key="rate") == pytest.approx(bps, rel=1e-12)


@pytest.mark.parametrize(
    ("text", "message"),
    [("10", "rate must be a rate with a tc unit"), ("10mb", "rate must be a rate"),
     ("0mbit", "rate must be between 1kbit and 1tbit"), (0, "rate must be between 1kbit and 1tbit"),
     ("2tbit", "between 1kbit and 1tbit"), ("999bit", "between 1kbit and 1tbit")],
)
def test_rate_errors(text: str | float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_rate(text, key="rate")


@pytest.mark.parametrize(("text", "count"), [("1000", 1000), (" 5 ", 5), (7, 7), (8.0, 8), ("1_000", 1000)])
def test_count_forms(text: str | int, count: int) -> None:
    assert parse_count(text, key="limit") == count


@pytest.mark.parametrize("text", ["0", "-3", "1.5", "ten", 1.5, True, 0, "99999999999"])
def test_count_errors(text: object) -> None:
    with pytest.raises(ConfigError, match="^limit must be"):
        parse_count(text, key="limit")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("formatter", "value", "text"),
    [(format_percent, 0.05, "5%"), (format_percent, 0.005, "0.5%"), (format_duration, 0.02, "20ms"),
     (format_duration, 1.5, "1.5s"), (format_duration, 0.0005, "500us"), (format_duration, 0.0, "0"),
     (format_rate, 10e6, "10mbit"), (format_rate, 1.5e9, "1.5gbit"), (format_rate, 8.0, "8bit")],
)
def test_formatting_is_netem_spelling(formatter: object, value: float, text: str) -> None:
    assert formatter(value) == text  # type: ignore[operator]


@given(st.floats(min_value=1e-9, max_value=60, allow_nan=False))
def test_duration_format_round_trips(seconds: float) -> None:
    """Property: format_duration -> parse_duration returns the value (12 significant digits)."""
    assert parse_duration(format_duration(seconds), key="d") == pytest.approx(seconds, rel=1e-11)


@given(st.floats(min_value=1e3, max_value=1e12, allow_nan=False))
def test_rate_format_round_trips(bps: float) -> None:
    """Property: format_rate -> parse_rate returns the value (12 significant digits)."""
    assert parse_rate(format_rate(bps), key="r") == pytest.approx(bps, rel=1e-11)
