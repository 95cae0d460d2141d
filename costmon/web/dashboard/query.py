"""The dashboard's query string: the period, filters, grouping and toggles a page reads,
checked, with a message for each bad value (the page shows it and uses the default)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.http import HttpRequest
from django.utils import timezone

from costmon.core.exceptions import DomainError
from costmon.core.models import Tenant
from costmon.core.periods import TimeRange, custom_range, recent_range
from costmon.web.dashboard import pages as dashboard
from usage.links import NAME_PARAM, hidden_input_value, shown
from usage.selectors import UsageFilters

PERIODS = {
    "today": "Today",
    "48h": "Last 48 hours",
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "month": "This month",
    "custom": "Custom",
}
DEFAULT_PERIOD = "30d"
GROUPS = ("provider", "model", "operation", "end_user")
TEXT_FILTERS = ("provider", "model", "operation", "end_user")
MAX_FILTER_LENGTH = 255
MAX_TAG_NAME = 64  # as ingest accepts tag names
TABLE_ROWS = 25  # a table (and its CSV) lists this many; its chart shows the first ten
CHART_ROWS = 10
NUL = "\x00"
SNAPSHOTS_PARAM = "snapshots"  # "split": each dated snapshot of a model on its own
COMPARE_PARAM = "compare"  # "previous": the previous period over the spend chart

# --- the query string ------------------------------------------------------------------------


@dataclass
class PageQuery:
    period: str
    start: str
    end: str
    time_range: TimeRange
    filters: UsageFilters
    group_by: str
    errors: list[str] = field(default_factory=list)
    # Dated snapshots (gpt-4o-2024-08-06) counted under their family (gpt-4o) unless split.
    split_snapshots: bool = False
    compare_previous: bool = False  # the previous period's line over the spend chart
    # One clock for the whole page: every window on it ends at the same moment.
    now: datetime = field(default_factory=timezone.now)

    @property
    def period_label(self) -> str:
        if self.period == "custom":
            tz = self.time_range.tz
            last = self.time_range.end.astimezone(tz) - timedelta(microseconds=1)
            return f"{self.time_range.start.astimezone(tz):%b %d, %Y} to {last:%b %d, %Y}"
        return PERIODS[self.period]


def parse_query(
    request: HttpRequest, tenant: Tenant, *, fixed: dict[str, str] | None = None
) -> PageQuery:
    """Period, filters and grouping from the query string; `fixed` filters come from the path
    (the model or end user of a drill-down) and win over the query string's."""
    params = request.GET
    errors: list[str] = []
    now = timezone.now()
    period = params.get("period") or DEFAULT_PERIOD
    start, end = params.get("start", "").strip(), params.get("end", "").strip()
    if period not in PERIODS:
        errors.append(f"Unknown period {period!r}; showing {PERIODS[DEFAULT_PERIOD].lower()}.")
        period = DEFAULT_PERIOD
    time_range = None
    if period == "custom":
        try:
            if not start:
                raise DomainError("A custom period needs a start date.")
            time_range = custom_range(tenant=tenant, start=start, end=end or None)
        except DomainError as exc:
            errors.append(f"{exc.message} Showing {PERIODS[DEFAULT_PERIOD].lower()}.")
            period = DEFAULT_PERIOD
    if time_range is None:
        time_range = recent_range(tenant=tenant, period=period, now=now)

    values: dict[str, Any] = {}
    for name in TEXT_FILTERS:
        value = params.get(name, "").strip()
        if len(value) > MAX_FILTER_LENGTH:
            errors.append(f"The {name} filter is longer than {MAX_FILTER_LENGTH} characters.")
        elif NUL in value:
            errors.append(f"The {name} filter holds a NUL character (%00), which no name can hold.")
        elif value:
            values[name] = value
    if tag := params.get("tag", "").strip():
        name, sep, value = tag.partition(":")
        if not sep or not name:
            errors.append("Write the tag filter as name:value, e.g. team:search.")
        elif NUL in tag:
            errors.append("The tag filter holds a NUL character (%00), which no tag can hold.")
        else:
            values["tag"] = (name, value)
    values.update(fixed or {})

    group_by = params.get("by") or "provider"
    if group_by.startswith(dashboard.TAG_PREFIX):
        tag_name = group_by[len(dashboard.TAG_PREFIX) :]
        if NUL in tag_name:
            errors.append("The tag to stack by holds a NUL character (%00), which no tag can hold.")
            group_by = "provider"
        elif not tag_name or len(tag_name) > MAX_TAG_NAME:
            errors.append(
                f"Name the tag to stack by as tag:<name> (1 to {MAX_TAG_NAME} characters)."
            )
            group_by = "provider"
    elif group_by not in GROUPS:
        errors.append(
            f"Unknown grouping {group_by!r}; use one of {', '.join(GROUPS)} or tag:<name>."
        )
        group_by = "provider"
    split = params.get(SNAPSHOTS_PARAM, "") == "split"
    return PageQuery(
        split_snapshots=split,
        compare_previous=params.get(COMPARE_PARAM, "") == "previous",
        period=period,
        start=start,
        end=end,
        time_range=time_range,
        filters=UsageFilters(**values),
        group_by=group_by,
        errors=errors,
        now=now,
    )


PERIOD_PARAMS = ("period", "start", "end", "snapshots")


# --- the forms and links a page builds from its query ----------------------------------------


def filter_form(q: PageQuery, fixed: dict[str, str], request: HttpRequest) -> dict[str, Any]:
    f = q.filters
    name = request.GET.get(NAME_PARAM)
    start, end = q.start, q.end
    if q.period != "custom":
        # A preset shows the days it covers, so the dates never look filled in by mistake.
        tr = q.time_range
        start = f"{tr.start.astimezone(tr.tz):%Y-%m-%d}"
        end = f"{tr.end.astimezone(tr.tz) - timedelta(microseconds=1):%Y-%m-%d}"
    return {
        # A drill-down whose name travels in the query string keeps it when the form is sent.
        "name_param": hidden_input_value(name) if name is not None else None,
        "periods": list(PERIODS.items()),
        "period": q.period,
        "start": start,
        "end": end,
        "by": q.group_by,
        "snapshots": "split" if q.split_snapshots else "",
        "compare": "previous" if q.compare_previous else "",
        "fields": [
            {"name": name, "label": name.replace("_", " "), "value": getattr(f, name) or ""}
            for name in TEXT_FILTERS
            if name not in fixed
        ],
        "tag": f"{f.tag[0]}:{f.tag[1]}" if f.tag else "",
    }


def group_label(group_by: str) -> str:
    """ "end user", or "tag team" for `tag:team`."""
    if group_by.startswith(dashboard.TAG_PREFIX):
        return f"tag {shown(group_by[len(dashboard.TAG_PREFIX) :])}"
    return group_by.replace("_", " ")


def group_links(request: HttpRequest, q: PageQuery, choices: Sequence[str]) -> list[dict[str, Any]]:
    out = []
    for choice in choices:
        query = request.GET.copy()
        query.pop("export", None)
        query["by"] = choice
        out.append(
            {
                "label": group_label(choice),
                "url": f"?{query.urlencode()}",
                "current": choice == q.group_by,
            }
        )
    return out


def toggle(
    request: HttpRequest, param: str, on: str, labels: tuple[str, str], current: bool
) -> list[dict[str, Any]]:
    """Two links that set or clear `param=on`, the rest of the query kept."""
    out = []
    for value, label in (("", labels[0]), (on, labels[1])):
        query = request.GET.copy()
        query.pop("export", None)
        query.pop(param, None)
        if value:
            query[param] = value
        out.append(
            {"label": label, "url": f"?{query.urlencode()}", "current": current == bool(value)}
        )
    return out
