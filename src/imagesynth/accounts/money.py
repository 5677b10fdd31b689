"""Money as integer micro-units (10^-6 of the currency): prices such as 0.183481 stay exact,
and sums over thousands of images never drift the way floats do."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICROS = 1_000_000
# Beyond any price or cap, and small enough that its micro-units fit a 64-bit integer column.
MAX_AMOUNT = Decimal(10) ** 12


def to_micros(amount: float | str | Decimal) -> int:
    """'0.14' -> 140000. Raises ValueError for anything that is not a finite amount in
    [0, MAX_AMOUNT]: compared before scaling, which would overflow Decimal for '1e999999'."""
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise ValueError("not an amount") from None
    if not value.is_finite() or value < 0 or value > MAX_AMOUNT:
        raise ValueError("not an amount in range")
    return int((value * MICROS).to_integral_value())


def from_micros(micros: int) -> Decimal:
    """140000 -> Decimal('0.14'): at least two decimals, no trailing zeros beyond them."""
    value = Decimal(micros) / MICROS
    text = f"{value:.6f}".rstrip("0")
    if len(text.partition(".")[2]) < 2:
        text = f"{value:.2f}"
    return Decimal(text)
