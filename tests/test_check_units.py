"""Human units of budget files: sizes, counts, percentages (examples + hypothesis properties)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecompress.check.units import SIZE_UNITS, format_size, parse_count, parse_fraction, parse_size
from edgecompress.errors import ConfigError


@pytest.mark.parametrize(("text", "expected"), [
    ("2 MB", 2_000_000),
    ("2MB", 2_000_000),
    ("2 mb", 2_000_000),
    ("512 KiB", 512 * 1024),
    ("512kib", 512 * 1024),
    ("1.5 MB", 1_500_000),
    ("1.5 MiB", 1_572_864),
    ("0.5 GiB", 2**29),
    ("3 kB", 3000),
    ("3 KB", 3000),
    ("1 GB", 10**9),
    ("7 B", 7),
    ("2048", 2048),
    ("  10  KiB ", 10240),
    (".5 kB", 500),
    ("1e3 B", 1000),
    (2048, 2048),
    (1.5e6, 1_500_000),
    (0, 0),
])
def test_parse_size_examples(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["-1 MB", "-5", -3, "MB", "2 MBs", "2 M B", "two MB", "", "1,5 MB", "1.2.3 kB",
                                 "2 mbit", "nan", "inf MB", True, None, [1], float("nan"), float("inf"),
                                 "1e400 GB"])
def test_parse_size_rejects_garbage_with_config_error(bad: object) -> None:
    with pytest.raises(ConfigError):
        parse_size(bad)


def test_parse_size_error_says_what_was_wrong() -> None:
    with pytest.raises(ConfigError, match="unknown unit 'MBs'"):
        parse_size("2 MBs", what="max_size")
    with pytest.raises(ConfigError, match="max_size must not be negative"):
        parse_size("-1 kB", what="max_size")


@pytest.mark.parametrize(("text", "expected"), [(200000, 200000), ("200k", 200000), ("1.5M", 1_500_000),
                                                ("2 g", 2 * 10**9), ("12", 12)])
def test_parse_count(text: object, expected: int) -> None:
    assert parse_count(text) == expected


@pytest.mark.parametrize("bad", ["200 KiB", "-3", "lots", 1.5e30, False])
def test_parse_count_rejects(bad: object) -> None:
    with pytest.raises(ConfigError):
        parse_count(bad)


@pytest.mark.parametrize(("value", "expected"), [("5%", 0.05), (" 5 % ", 0.05), ("0.5%", 0.005), (0.05, 0.05),
                                                 ("150%", 1.5), (0, 0.0), (1, 1.0)])
def test_parse_fraction(value: object, expected: float) -> None:
    assert parse_fraction(value) == pytest.approx(expected)


@pytest.mark.parametrize(("bad", "message"), [(5, "ambiguous"), ("-5%", "negative"), ("5", "not a percentage"),
                                              ("five%", "not a percentage"), (True, "number")])
def test_parse_fraction_rejects(bad: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_fraction(bad, what="max_growth")


@pytest.mark.parametrize(("n", "binary", "text"), [(0, False, "0 B"), (999, False, "999 B"), (2_000_000, False, "2 MB"),
                                                   (1536, True, "1.5 KiB"), (39307, False, "39.31 kB"),
                                                   (-2048, True, "-2 KiB")])
def test_format_size(n: int, binary: bool, text: str) -> None:
    assert format_size(n, binary=binary) == text


# ------------------------------------------------------------------------------- properties

units = st.sampled_from(sorted(SIZE_UNITS))


def _random_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if f else c.lower() for c, f in zip(text, flips))


@st.composite
def size_texts(draw: st.DrawFn) -> tuple[str, int]:
    """A valid size string in any case and spacing, and the bytes it means."""
    n = draw(st.integers(min_value=0, max_value=10**6))
    unit = draw(units)
    space = draw(st.sampled_from(["", " ", "  "]))
    pad = draw(st.sampled_from(["", " "]))
    return f"{pad}{n}{space}{_random_case(draw, unit)}{pad}", n * SIZE_UNITS[unit]


@given(size_texts())
def test_integer_sizes_in_any_case(case: tuple[str, int]) -> None:
    text, expected = case
    assert parse_size(text) == expected


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=999), units)
def test_decimal_sizes_are_exact(whole: int, millis: int, unit: str) -> None:
    factor = SIZE_UNITS[unit]
    exact_thousandths = (whole * 1000 + millis) * factor
    expected = (exact_thousandths + 500) // 1000  # round half up
    assert parse_size(f"{whole}.{millis:03d} {unit}") == expected


@given(st.integers(min_value=0, max_value=2**53))
def test_bare_numbers_are_bytes(n: int) -> None:
    assert parse_size(n) == n
    assert parse_size(str(n)) == n


@given(st.integers(min_value=1, max_value=10**9), units)
def test_negative_sizes_are_refused(n: int, unit: str) -> None:
    with pytest.raises(ConfigError, match="negative"):
        parse_size(f"-{n} {unit}")


@given(st.text(max_size=20))
def test_any_text_parses_or_raises_config_error(text: str) -> None:
    try:
        value = parse_size(text)
    except ConfigError:
        return
    assert isinstance(value, int) and value >= 0


@given(st.integers(min_value=0, max_value=10**15), st.booleans())
def test_format_then_parse_is_close(n: int, binary: bool) -> None:
    back = parse_size(format_size(n, binary=binary))
    assert abs(back - n) <= max(0.005 * n, 0.5)  # two decimals of the chosen unit
