"""The tag names of a tenant's calls in a range, from the tag rollups: the overview offers to
stack its spend by each."""

from __future__ import annotations

from costmon.core.models import Tenant
from costmon.core.periods import TimeRange
from usage import settled
from usage.models import TagHourlyRollup
from usage.settled import Sums

MAX_TAG_NAMES = 20


def tag_names(*, tenant: Tenant, time_range: TimeRange) -> list[str]:
    """The tag names the tenant's calls carried in the range (from the tag rollups)."""

    def compute(tr: TimeRange) -> Sums:
        return {name: [1] for name in _tag_names_in(tenant, tr)}

    return sorted(settled.summed(tenant, time_range, ("tag names",), compute))[:MAX_TAG_NAMES]


MAX_TAG_PROBES = 50


def _tag_names_in(tenant: Tenant, tr: TimeRange) -> list[str]:
    """The first `MAX_TAG_NAMES` tag names with rows in the range. The rows' index leads with
    the name, so each name the tenant ever used is found by one probe, and whether it has rows
    in the range by another: a day's names without reading every name's rows. A tenant with
    very many names is read in one pass instead."""
    rows = TagHourlyRollup.objects.for_tenant(tenant)
    names: list[str] = []
    last: str | None = None
    for _ in range(MAX_TAG_PROBES):
        after = rows if last is None else rows.filter(tag_name__gt=last)
        last = after.order_by("tag_name").values_list("tag_name", flat=True).first()
        if last is None or len(names) == MAX_TAG_NAMES:
            return names
        if rows.filter(tag_name=last, hour__gte=tr.start, hour__lt=tr.end).exists():
            names.append(last)
    return list(
        rows.filter(hour__gte=tr.start, hour__lt=tr.end)
        .values_list("tag_name", flat=True)
        .distinct()
        .order_by("tag_name")[:MAX_TAG_NAMES]
    )
