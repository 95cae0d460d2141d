"""Path converters of the API's URLs."""

from __future__ import annotations

from django.urls import register_converter
from django.urls.converters import get_converters


class IdConverter:
    """An object id: 1 to 18 digits, so every id in a path fits a bigint (a longer one is an
    unknown URL, 404, instead of an overflow in the database)."""

    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


def register() -> None:
    """Make `<id:...>` available in URL patterns (once, whichever urls module asks first)."""
    if "id" not in get_converters():
        register_converter(IdConverter, "id")
