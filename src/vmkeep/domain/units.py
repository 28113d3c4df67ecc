"""Human sizes: parsing ``8G``/``256M`` and formatting byte counts. Binary units throughout."""

from __future__ import annotations

import re

from vmkeep.domain.errors import UsageError

_SUFFIXES = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Parse ``"8G"``, ``"256M"``, ``"1.5GiB"``, ``"4096"`` into bytes (binary multiples).

    Raises UsageError for anything else, including zero and negative sizes.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise UsageError(
            f"invalid size {text!r}: use a number with an optional K, M, G or T suffix"
        )
    number, suffix = match.groups()
    value = int(float(number) * _SUFFIXES[suffix.upper()])
    if value <= 0:
        raise UsageError(f"invalid size {text!r}: must be greater than zero")
    return value


def format_size(num_bytes: int | None) -> str:
    """Format a byte count as ``"8.0 GiB"``; ``None`` (unknown) becomes ``"-"``."""
    if num_bytes is None:
        return "-"
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
