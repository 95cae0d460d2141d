"""Serializer fields that take JSON as its types say: DRF's own turn `123` into `"123"`, `1`
and `"yes"` into true and `"5"` into 5, so a client's mistake passes unseen and the schema
cannot say what is accepted. A decimal amount is the one field that takes a string or a
number (`"10.50"` or `10.5`), as the schema says."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from django.db import models
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from costmon.core.inputs import text_problem


class StrictCharField(serializers.CharField):
    """A name (costmon.core.inputs: no control characters), or with `multiline=True` free text that
    may also hold tabs and line breaks."""

    default_error_messages = {"invalid": "Must be a string."}

    def __init__(self, *, multiline: bool = False, **kwargs: Any) -> None:
        self.multiline = multiline
        super().__init__(**kwargs)

    def run_validation(self, data: Any = serializers.empty) -> Any:
        if data is not serializers.empty and data is not None:
            if not isinstance(data, str):
                self.fail("invalid")
            if (problem := text_problem(data, multiline=self.multiline)) is not None:
                raise serializers.ValidationError(problem, code="characters")
            # The length of what was sent, before surrounding spaces are trimmed.
            if self.max_length is not None and len(data) > self.max_length:
                self.fail("max_length", max_length=self.max_length)
        return super().run_validation(data)


class StrictChoiceField(serializers.ChoiceField):
    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("invalid_choice", input=data)
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class StrictIntegerField(serializers.IntegerField):
    """A JSON whole number (not a string, not a boolean), within a 64-bit integer unless told
    otherwise: a larger one is refused here (a 400 naming the field) instead of reaching the
    database, where SQLite cannot hold it."""

    default_error_messages = {"invalid": "Must be a whole number."}

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", -(2**63))
        kwargs.setdefault("max_value", 2**63 - 1)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int | Decimal):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?$"},
            {"type": "number"},
        ],
        "description": 'A decimal amount, as a string ("10.50") or a number.',
    }
)
class StrictDecimalField(serializers.DecimalField):
    default_error_messages = {"invalid": 'Must be a decimal number, e.g. "10.50".'}

    def to_internal_value(self, data: Any) -> Decimal:
        if isinstance(data, bool) or not isinstance(data, str | int | Decimal):
            self.fail("invalid")
        if isinstance(data, str) and not _DECIMAL.fullmatch(data):
            self.fail("invalid")
        return super().to_internal_value(data)


_DECIMAL = re.compile(r"-?[0-9]+(\.[0-9]+)?")


class StrictModelSerializer(serializers.ModelSerializer):
    """A ModelSerializer whose fields take JSON types as they are."""

    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.CharField: StrictCharField,
        models.TextField: StrictCharField,
        models.BooleanField: StrictBooleanField,
        models.IntegerField: StrictIntegerField,
        models.PositiveIntegerField: StrictIntegerField,
        models.PositiveSmallIntegerField: StrictIntegerField,
        models.SmallIntegerField: StrictIntegerField,
        models.BigIntegerField: StrictIntegerField,
        models.DecimalField: StrictDecimalField,
    }
    serializer_choice_field = StrictChoiceField
