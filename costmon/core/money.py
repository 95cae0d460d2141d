"""Money: integer nano-dollars (10^-9 USD) in storage and sums, Decimal at the edges, never
float. The one home of converting and formatting amounts.

- `format_usd` is the API's figure: an exact decimal string ("0.00135"), what clients parse.
- `format_money` is the figure people read (dashboard, admin, emails, Slack): "$" and the
  display rule, or the exact amount when `exact=True` (CSV-like tables that must add up).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

NANOS_PER_USD = 1_000_000_000
_NANOS = Decimal(NANOS_PER_USD)
_NANO = Decimal("0.000000001")


def usd_to_nanos(usd: Decimal) -> int:
    """Dollars to nano-dollars, rounded half-up once."""
    return int((usd * _NANOS).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def nanos_to_usd(nanos: int) -> Decimal:
    return (Decimal(nanos) / _NANOS).quantize(_NANO)


def format_usd(nanos: int | Decimal) -> str:
    """A decimal string without exponent or trailing zeros: 1350000 -> "0.00135" (a Decimal
    of nano-dollars keeps its fraction: a cost line before the one rounding)."""
    return format((Decimal(nanos) / _NANOS).normalize(), "f")


def format_money(nanos: int, *, exact: bool = False) -> str:
    """An amount for people: to the cent from a dollar on ("$1,234.57"), exact below a dollar
    where the digits matter ("$0.00135"); `exact=True` always shows every digit."""
    if not exact and abs(nanos) >= NANOS_PER_USD:
        return f"${Decimal(nanos) / _NANOS:,.2f}"
    return f"${format_usd(nanos)}"
