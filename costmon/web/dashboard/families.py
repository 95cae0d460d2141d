"""Model families: a model's name without its snapshot date, so `gpt-4o-2024-08-06` is
shown and filtered with `gpt-4o` (the overview's "group snapshots" choice)."""

from __future__ import annotations

import re

from costmon.core.models import Tenant
from usage.models import Dimension

# A dated snapshot's suffix: -2024-08-06 (OpenAI), -20241022 (Anthropic), -2411 or -0613.
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")


def family_of(model: str) -> str:
    """The model's name without its snapshot date: `gpt-4o-2024-08-06` -> `gpt-4o`."""
    family = _SNAPSHOT.sub("", model)
    return family or model


def family_ids(tenant: Tenant, family: str) -> list[int]:
    """The dictionary ids of the tenant's model names in `family` (the name itself included)."""
    return [
        pk
        for pk, value in Dimension.objects.for_tenant(tenant)
        .filter(kind=Dimension.Kind.MODEL, value__startswith=family)
        .values_list("pk", "value")
        if family_of(value) == family or value == family
    ]
