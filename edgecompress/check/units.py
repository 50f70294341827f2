"""Human units in budget files: sizes ("2 MB", "512 KiB"), counts ("200k"), fractions ("5%").

Every parser raises :class:`~edgecompress.errors.ConfigError` (exit code 2) on bad input and
never anything else, so the config loader can add the file and line at fault.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from edgecompress.errors import ConfigError

# Case-insensitive: "kb", "KB" and "kB" are all 1000 bytes; the "i" units are powers of 1024.
SIZE_UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
COUNT_UNITS: dict[str, int] = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
_UNIT_NAMES = {"b": "B", "kb": "kB", "mb": "MB", "gb": "GB", "tb": "TB", "kib": "KiB", "mib": "MiB",
               "gib": "GiB", "tib": "TiB", "k": "k", "m": "M", "g": "G"}

_MAX = Decimal(2**63)  # anything above this is a typo, and int() of 1e999999999 would hang
_NUMBER = re.compile(
    r"^\s*(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*(?P<unit>[A-Za-z]*)\s*$"
)
_PERCENT = re.compile(r"^\s*(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))\s*%\s*$")


def _decimal(value: object, what: str) -> Decimal:
    """A finite Decimal from a TOML int/float (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number or a string, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{what} must be finite, got {value!r}")
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def _scaled(value: object, units: dict[str, int], what: str, example: str) -> int:
    """Parse ``<number> <unit>`` (or a bare number) into a non-negative integer."""
    if isinstance(value, str):
        match = _NUMBER.match(value)
        if match is None:
            raise ConfigError(f"{what} {value!r} is not a number with a unit (e.g. {example})")
        unit = match["unit"].lower()
        if unit not in units:
            known = ", ".join(_UNIT_NAMES.get(u, u) for u in units if u)
            raise ConfigError(f"{what} {value!r} has an unknown unit {match['unit']!r} (known: {known})")
        try:
            amount = Decimal(match["num"])
        except InvalidOperation:  # pragma: no cover - the regex only lets valid numbers through
            raise ConfigError(f"{what} {value!r} is not a number") from None
        amount *= units[unit]
    else:
        amount = _decimal(value, what)
    if amount < 0:
        raise ConfigError(f"{what} must not be negative, got {value!r}")
    if amount > _MAX:
        raise ConfigError(f"{what} {value!r} is too large")
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def parse_size(value: object, *, what: str = "size") -> int:
    """Bytes from "2 MB", "512 KiB", "1.5mb", 2048 or "2048" (bare numbers are bytes).

    kB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB powers of 1024; units are case-insensitive.
    """
    return _scaled(value, SIZE_UNITS, what, '"2 MB" or "512 KiB"')


def parse_count(value: object, *, what: str = "count") -> int:
    """A count from 200000, "200k", "1.5M" or "2G" (powers of 1000, case-insensitive)."""
    return _scaled(value, COUNT_UNITS, what, '200000 or "200k"')


def parse_fraction(value: object, *, what: str = "value", max_fraction: float | None = None) -> float:
    """A non-negative fraction from "5%" or 0.05.

    Bare numbers above 1 are refused (``max_growth = 5`` almost always means 5 %, not 500 %):
    larger values must be written as a percentage ("150%"). ``max_fraction`` caps the result.
    """
    if isinstance(value, str):
        match = _PERCENT.match(value)
        if match is None:
            raise ConfigError(f"{what} {value!r} is not a percentage (e.g. \"5%\") or a fraction (0.05)")
        fraction = float(Decimal(match["num"]) / 100)
    else:
        number = _decimal(value, what)
        if number > 1:
            raise ConfigError(f"{what} {value!r} is ambiguous: write \"{value}%\" for a percentage, "
                              f"or a fraction at most 1 (0.05 = 5%)")
        fraction = float(number)
    if fraction < 0:
        raise ConfigError(f"{what} must not be negative, got {value!r}")
    if max_fraction is not None and fraction > max_fraction:
        raise ConfigError(f"{what} {value!r} is above {max_fraction:.0%}")
    return fraction


def format_size(n: float, *, binary: bool = False, digits: int = 2) -> str:
    """Human size: ``format_size(2_000_000) == "2 MB"``, ``format_size(1536, binary=True) == "1.5 KiB"``."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    steps = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")) if binary else \
        ((10**12, "TB"), (10**9, "GB"), (10**6, "MB"), (10**3, "kB"))
    for factor, unit in steps:
        if n >= factor:
            text = f"{n / factor:.{digits}f}".rstrip("0").rstrip(".")
            return f"{sign}{text} {unit}"
    return f"{sign}{n:.0f} B"


def format_bytes(n: float) -> str:
    """The one size convention for people (build, bench, report, check): binary units with up to
    two decimals, ``format_bytes(341459) == "333.46 KiB"``. JSON files keep exact byte counts."""
    return format_size(n, binary=True)


def format_count(n: float) -> str:
    """A count with thousands separators: 136202 -> "136,202"."""
    return f"{n:,.0f}"
