"""Money: integer nano-dollars (10^-9 USD) in storage and sums, Decimal at the edges, never
float. The one home of converting and formatting amounts.

- `format_usd` is the API's figure: an exact decimal string ("0.00135"), what clients parse.
- `format_money` is the figure people read (dashboard, admin, emails, Slack): "$" and the
  display rule (cents from a dollar, three significant digits below), or the exact amount when
  `exact=True` (tooltips, tables that must add up). CSV exports carry `format_usd`.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

NANOS_PER_USD = 1_000_000_000
_NANOS = Decimal(NANOS_PER_USD)
_NANO = Decimal("0.000000001")
_CENT = Decimal("0.01")


def usd_to_nanos(usd: Decimal) -> int:
    """Dollars to nano-dollars, rounded half-up once."""
    return int((usd * _NANOS).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def nanos_to_usd(nanos: int) -> Decimal:
    return (Decimal(nanos) / _NANOS).quantize(_NANO)


def format_usd(nanos: int | Decimal) -> str:
    """A decimal string without exponent or trailing zeros: 1350000 -> "0.00135" (a Decimal
    of nano-dollars keeps its fraction: a cost line before the one rounding)."""
    if type(nanos) is int:  # the common case (every event of an ingest reply): no Decimal
        whole, fraction = divmod(-nanos if nanos < 0 else nanos, NANOS_PER_USD)
        sign = "-" if nanos < 0 else ""
        if not fraction:
            return f"{sign}{whole}"
        return f"{sign}{whole}.{fraction:09d}".rstrip("0")
    return format((Decimal(nanos) / _NANOS).normalize(), "f")


def format_money(nanos: int, *, exact: bool = False) -> str:
    """An amount for people: to the cent from a dollar on ("$1,234.57"), three significant
    digits below a dollar ("$0.0985", "$0.00669", "$0.50"), half up; `exact=True` shows every
    digit ("$0.006694667"), for tooltips and tables that must add up. "$0" is zero."""
    sign = "-" if nanos < 0 else ""
    amount = Decimal(abs(nanos)) / _NANOS
    if exact or not nanos:
        return f"{sign}${format_usd(abs(nanos))}"
    if amount >= 1:
        return f"{sign}${amount.quantize(_CENT, rounding=ROUND_HALF_UP):,}"
    # Three significant digits: the exponent of the third one, from the first one's.
    third = Decimal(1).scaleb(amount.adjusted() - 2)
    rounded = amount.quantize(third, rounding=ROUND_HALF_UP)
    if rounded >= 1:  # $0.9995 rounds up to a dollar
        return f"{sign}$1.00"
    text = format(rounded.normalize(), "f")
    # At least the cents: "$0.50", not "$0.5".
    if len(text.partition(".")[2]) < 2:
        text = f"{rounded:.2f}"
    return f"{sign}${text}"


def money_title(nanos: int) -> str:
    """The exact amount for a tooltip (`title`), or "" when the shown figure is already exact."""
    shown = Decimal(format_money(nanos).replace("$", "").replace(",", ""))
    return "" if shown == Decimal(nanos) / _NANOS else format_money(nanos, exact=True)
