"""Dashboard pages: parse the query string, call the dashboard selectors, build figures, render.

Every page resolves its tenant from the user's own tenants (another slug is a 404, so an outsider
learns nothing) and reads inside that tenant's context. Filters live in the query string so a
view can be shared; a bad value is shown on the page and the default used instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.utils import timezone

from costmon.core.exceptions import DomainError
from costmon.core.models import Tenant
from costmon.core.money import format_money, money_title
from costmon.core.periods import TimeRange, custom_range, recent_range, tenant_zone
from costmon.core.scoping import tenants_for_user
from costmon.core.tenancy import tenant_context
from costmon.web.dashboard import charts
from costmon.web.dashboard import pages as dashboard
from costmon.web.dashboard.alerts import open_alerts
from costmon.web.dashboard.anomalies import hourly_band
from costmon.web.dashboard.statements import statement_link
from costmon.web.dashboard.tables import (
    DASH,
    Table,
    alerts_table,
    breakdown_table,
    budget_days_table,
    budgets_table,
    csv_response,
)
from usage.links import (
    NAME_PARAM,
    budget_url,
    drilldown_url,
    hidden_input_value,
    shown,
    tenant_url,
)
from usage.recommendations import recommendations
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


# --- tenant ----------------------------------------------------------------------------------


def _tenant_or_404(request: HttpRequest, slug: str) -> tuple[Tenant, list[Tenant]]:
    allowed = tenants_for_user(request.user)
    for tenant in allowed:
        if tenant.slug == slug:
            return tenant, allowed
    # 404, not 403: an outsider learns nothing about which tenants exist.
    raise Http404("No such tenant among yours.")


def dashboard_home(request: HttpRequest) -> HttpResponse:
    """`/`: the first tenant's overview, the login page, or what to do without a tenant."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    allowed = tenants_for_user(request.user)
    if allowed:
        return HttpResponseRedirect(tenant_url(allowed[0].slug))
    return render(request, "dashboard/no_tenant.html", {"tenants": []}, status=200)


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


# --- pages -----------------------------------------------------------------------------------


def _export(request: HttpRequest, tenant: Tenant, tables: list[Table]) -> HttpResponse | None:
    wanted = request.GET.get("export")
    if wanted is None:
        return None
    for table in tables:
        if table.name == wanted:
            return csv_response(tenant, table)
    names = ", ".join(t.name for t in tables) or "none"
    return HttpResponse(
        f"No table {wanted!r} on this page; export one of: {names}.\n",
        status=400,
        content_type="text/plain; charset=utf-8",
    )


def _with_export_links(request: HttpRequest, tables: list[Table]) -> list[Table]:
    for table in tables:
        query = request.GET.copy()
        query["export"] = table.name
        table.export_url = f"?{query.urlencode()}"
    return tables


def _switcher(
    request: HttpRequest, allowed: list[Tenant], tenant: Tenant, url_for: Callable[[Tenant], str]
) -> list[dict[str, Any]]:
    """The same page in each of the user's tenants, with the same filters."""
    query = request.GET.copy()
    for name in ("export", NAME_PARAM):  # url_for carries the page's own name
        query.pop(name, None)
    extra = query.urlencode()

    def url(t: Tenant) -> str:
        base = url_for(t)
        return f"{base}{'&' if '?' in base else '?'}{extra}" if extra else base

    return [
        {"slug": t.slug, "name": t.name, "url": url(t), "current": t.pk == tenant.pk}
        for t in allowed
    ]


def _money(nanos: int) -> dict[str, str]:
    """A card's figure by the one money rule, the exact amount in its tooltip."""
    return {"value": format_money(nanos), "title": money_title(nanos)}


COMPARED_WITH = {
    "today": "same time yesterday",
    "month": "same days last month",
    "48h": "previous 48 hours",
    "7d": "previous 7 days",
    "30d": "previous 30 days",
}


def _compared_with(q: PageQuery) -> str:
    if q.period in COMPARED_WITH:
        return COMPARED_WITH[q.period]
    span = q.time_range.end - q.time_range.start
    if span % timedelta(days=1):
        hours = span // timedelta(hours=1)
        return f"previous {hours} hour{'s' if hours != 1 else ''}"
    days = span.days
    return f"previous {days} day{'s' if days != 1 else ''}"


def _change(
    current: int, previous: int, against: str, shown: Callable[[int], str]
) -> dict[str, str]:
    """ "+12% vs previous 30 days ($116.20)": the change in whole percent, half up, exactly."""
    then = f"vs {against} ({shown(previous)})"
    if current == previous:
        return {"change": f"no change {then}", "change_dir": ""}
    if previous == 0:
        return {"change": f"new {then}", "change_dir": "up"}
    percent = (Decimal(current - previous) * 100 / previous).quantize(
        Decimal(1), rounding=ROUND_HALF_UP
    )
    return {
        "change": f"{'+' if percent > 0 else ''}{percent}% {then}",
        "change_dir": "up" if current > previous else "down",
    }


def _rate_change(c: dashboard.Cards, before: dict[str, int], against: str) -> dict[str, str]:
    """The cache hit rate's change in percentage points."""
    if not c.calls or not before["calls"]:
        return {}
    rate = Decimal(c.cache_hits) * 100 / c.calls
    then = Decimal(before["cache_hits"]) * 100 / before["calls"]
    points = (rate - then).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
    shown = f"{then.quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)}%"
    if not points:
        return {"change": f"no change vs {against} ({shown})", "change_dir": ""}
    return {
        "change": f"{'+' if points > 0 else ''}{points} pts vs {against} ({shown})",
        "change_dir": "up" if points > 0 else "down",
    }


def _count(n: int) -> str:
    return f"{n:,}"


def _cards(c: dashboard.Cards, q: PageQuery) -> list[dict[str, str]]:
    projection = "No monthly budget on the whole tenant."
    if c.budget_limit_nanos is not None and c.outlook is not None:
        projection = f"{c.outlook} against the {format_money(c.budget_limit_nanos)} monthly budget"
    elif not q.filters.is_empty():
        projection = "At the month-to-date pace, for these filters."
    before = c.previous or {}
    against = _compared_with(q)
    prev_avg = before["cost_nanos"] // before["calls"] if before.get("calls") else None

    def versus(current: int, key: str, shown: Callable[[int], str]) -> dict[str, str]:
        return _change(current, before[key], against, shown) if before else {}

    cards = [
        {
            "id": "today",
            "label": "Spend today",
            **_money(c.today_nanos),
            "note": "",
            **_change(c.today_nanos, c.previous_today_nanos, COMPARED_WITH["today"], format_money),
        },
        {
            "id": "month",
            "label": "Month to date",
            **_money(c.month_nanos),
            "note": "",
            **_change(c.month_nanos, c.previous_month_nanos, COMPARED_WITH["month"], format_money),
        },
        {
            "id": "projected",
            "label": "Projected month end",
            **_money(c.projected_nanos),
            "note": projection,
            "status": (c.outlook or "").replace(" ", "-"),
            **_change(c.projected_nanos, c.last_month_nanos, "last month", format_money),
        },
        {
            "id": "period",
            "label": f"Spend, {q.period_label.lower()}",
            **_money(c.period_nanos),
            "note": "",
            **versus(c.period_nanos, "cost_nanos", format_money),
        },
        {
            "id": "calls",
            "label": "Calls",
            "value": f"{c.calls:,}",
            "note": f"{c.errors:,} errors" if c.errors else "",
            **versus(c.calls, "calls", _count),
        },
        {
            "id": "avg",
            "label": "Average cost per call",
            **(_money(c.avg_cost_nanos) if c.avg_cost_nanos is not None else {"value": DASH}),
            "note": "",
            **(
                _change(c.avg_cost_nanos, prev_avg, against, format_money)
                if c.avg_cost_nanos is not None and prev_avg is not None
                else {}
            ),
        },
        {
            "id": "cache",
            "label": "Cache hit rate",
            "value": f"{c.cache_hit_percent}%" if c.cache_hit_percent is not None else DASH,
            "note": f"{c.cache_hits:,} of {c.calls:,} calls" if c.calls else "",
            **(_rate_change(c, before, against) if before else {}),
        },
        {
            "id": "unpriced",
            "label": "Unpriced events",
            "value": f"{c.unpriced_calls:,}",
            "note": "Add their prices in the admin (Model prices), then re-price."
            if c.unpriced_calls
            else "",
            "status": "at-risk" if c.unpriced_calls else "",
            **versus(c.unpriced_calls, "unpriced_calls", _count),
        },
    ]
    stop = c.emergency_stop
    cards.append(
        {
            "id": "stop",
            "label": "Emergency stop",
            "value": "ACTIVE" if stop else "off",
            "note": f"{stop.reason} (until {stop.expires_at:%Y-%m-%d %H:%M} UTC)" if stop else "",
            "status": "over" if stop else "",
        }
    )
    return cards


def _base_context(
    request: HttpRequest,
    tenant: Tenant,
    allowed: list[Tenant],
    url_for: Callable[[Tenant], str],
) -> dict[str, Any]:
    return {
        "tenant": tenant,
        "tenants": _switcher(request, allowed, tenant, url_for),
        "site_url": settings.SITE_URL,
        "overview_url": tenant_url(tenant.slug),
    }


def _filter_form(q: PageQuery, fixed: dict[str, str], request: HttpRequest) -> dict[str, Any]:
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


def _group_label(group_by: str) -> str:
    """ "end user", or "tag team" for `tag:team`."""
    if group_by.startswith(dashboard.TAG_PREFIX):
        return f"tag {shown(group_by[len(dashboard.TAG_PREFIX) :])}"
    return group_by.replace("_", " ")


def _group_links(
    request: HttpRequest, q: PageQuery, choices: Sequence[str]
) -> list[dict[str, Any]]:
    out = []
    for choice in choices:
        query = request.GET.copy()
        query.pop("export", None)
        query["by"] = choice
        out.append(
            {
                "label": _group_label(choice),
                "url": f"?{query.urlencode()}",
                "current": choice == q.group_by,
            }
        )
    return out


def _toggle(
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


def _usage_page(
    request: HttpRequest,
    tenant: Tenant,
    allowed: list[Tenant],
    *,
    fixed: dict[str, str],
    url_for: Callable[[Tenant], str],
    heading: str,
    kind: str,
) -> HttpResponse:
    """The overview (no fixed filter) and the model and end-user drill-downs."""
    q = parse_query(request, tenant, fixed=fixed)
    if kind == "model" and "by" not in request.GET:
        q.group_by = "operation"
    elif kind == "end_user" and ("by" not in request.GET or q.group_by == "end_user"):
        q.group_by = "model"  # one end user's page has nothing to stack by end user
    context = _base_context(request, tenant, allowed, url_for)
    context.update(
        heading=heading,
        kind=kind,
        query=q,
        form=_filter_form(q, fixed, request),
        problems=q.errors,
        clear_url=url_for(tenant),
    )
    # Chargeback statements: the end user's or the tag value's, or the statement page.
    if kind in ("overview", "end_user"):
        context["statement_link"] = statement_link(
            tenant.slug, end_user=fixed.get("end_user"), tag=q.filters.tag
        )
    tr, flt = q.time_range, q.filters
    families = not q.split_snapshots
    carry = {n: request.GET[n] for n in PERIOD_PARAMS if request.GET.get(n)}

    def model_url(name: str) -> str:
        return drilldown_url(tenant.slug, "model", name, carry)

    def user_url(name: str) -> str:
        return drilldown_url(tenant.slug, "end_user", name, carry)

    users = dashboard.breakdown(
        tenant=tenant,
        time_range=tr,
        filters=flt,
        dimension="end_user",
        limit=TABLE_ROWS,
        families=families,
    )
    operations = dashboard.breakdown(
        tenant=tenant,
        time_range=tr,
        filters=flt,
        dimension="operation",
        limit=TABLE_ROWS,
        families=families,
    )
    models = dashboard.breakdown(
        tenant=tenant,
        time_range=tr,
        filters=flt,
        dimension="model",
        limit=TABLE_ROWS,
        families=families,
    )
    tables = [
        breakdown_table("models", "Spend by model", "Model", models, model_url),
        breakdown_table("operations", "Spend by operation", "Operation", operations),
    ]
    if kind != "end_user":
        tables.insert(0, breakdown_table("end_users", "Top end users", "End user", users, user_url))
    if q.group_by.startswith(dashboard.TAG_PREFIX):
        tag = q.group_by[len(dashboard.TAG_PREFIX) :]
        by_tag = dashboard.tag_breakdown(
            tenant=tenant,
            time_range=tr,
            filters=flt,
            name=tag,
            limit=TABLE_ROWS,
            families=families,
        )
        tables.append(breakdown_table("tag", f"Spend by tag {shown(tag)}", shown(tag), by_tag))
    views = []
    if kind == "overview":
        views = dashboard.dashboard_budgets(tenant=tenant)
        tables.append(budgets_table(views, lambda pk: budget_url(tenant.slug, pk)))
        tables.append(alerts_table(dashboard.recent_alerts(tenant=tenant), tr.tz))
    if (response := _export(request, tenant, tables)) is not None:
        return response
    if not dashboard.has_usage(tenant=tenant):
        context["empty"] = True
        return render(request, "dashboard/overview.html", context)

    cards = dashboard.dashboard_cards(
        tenant=tenant, time_range=tr, filters=flt, now=q.now, families=families
    )
    buckets, cells, interval = dashboard.spend_series(
        tenant=tenant,
        time_range=tr,
        filters=flt,
        group_by=q.group_by,
        families=families,
        # The end users table's top rows: the series need not rank every end user again.
        top=[r["key"] for r in users] if q.group_by == "end_user" else None,
    )
    totals = cards.calls, cards.cache_hits
    previous = None
    if q.compare_previous:
        previous = dashboard.spend_per_bucket(
            tenant=tenant,
            time_range=tr.previous(),
            filters=flt,
            interval=interval,
            families=families,
        )
    figures = [
        (
            "chart-spend",
            charts.spend_by_day(
                cells,
                buckets=buckets,
                interval=interval,
                group_label=_group_label(q.group_by),
                previous=previous,
            ),
        ),
    ]
    if interval == "hour":  # the usual range of each hour of the week, and what left it
        charts.add_anomaly_band(
            figures[0][1], hourly_band(tenant=tenant, time_range=tr, filters=flt)
        )
    if kind != "end_user":
        figures.append(("chart-end-users", charts.top_end_users(users[:CHART_ROWS])))
    else:
        figures.append(("chart-models", charts.spend_by_model(models[:CHART_ROWS])))
    figures.append(("chart-operations", charts.spend_by_operation(operations[:CHART_ROWS])))
    figures.append(("chart-cache", charts.cache_hits(totals[1], totals[0] - totals[1])))
    figures.append(
        (
            "chart-heatmap",
            charts.heatmap(
                dashboard.spend_heatmap(
                    tenant=tenant, time_range=tr, filters=flt, families=families
                )
            ),
        )
    )
    burndowns = []
    for view in views:
        if not view.budget.is_active:
            continue
        burn = dashboard.budget_daily_spend(tenant=tenant, view=view)
        fig = charts.budget_burndown(
            name=view.budget.name,
            limit_nanos=view.state.spec.limit_nanos,
            days=burn.days,
            daily_nanos=burn.daily_nanos,
            period_end=burn.period_end,
            projected_nanos=view.projected_nanos,
        )
        burndowns.append(charts.to_div(fig, f"chart-budget-{view.budget.pk}"))
    context.update(
        cards=_cards(cards, q),
        charts=[charts.to_div(fig, div_id) for div_id, fig in figures],
        burndowns=burndowns,
        tables=_with_export_links(request, tables),
        groups=_group_links(
            request,
            q,
            [g for g in GROUPS if not (kind == "end_user" and g == "end_user")]
            + [
                f"{dashboard.TAG_PREFIX}{name}"
                for name in dashboard.tag_names(tenant=tenant, time_range=tr)
            ],
        ),
        snapshots=_toggle(
            request, SNAPSHOTS_PARAM, "split", ("grouped", "split"), q.split_snapshots
        ),
        compare=_toggle(
            request, COMPARE_PARAM, "previous", ("off", "previous period"), q.compare_previous
        ),
        no_data=cards.calls == 0,
    )
    if kind == "overview":
        context["open_alerts"] = open_alerts(request, tenant)
        # Always the last 30 days, whatever the filters (a saving is per month), and the same
        # 30 days as the page's "last 30 days": one window, one set of figures.
        last_30 = recent_range(tenant=tenant, period="30d", now=q.now)
        context["recommendations"] = [
            {
                "title": r.title,
                "text": r.text,
                "saving": _money(r.saving_nanos) if r.saving_nanos is not None else None,
            }
            for r in recommendations(tenant=tenant, now=q.now, time_range=last_30)
        ]
    return render(request, "dashboard/overview.html", context)


@login_required
def overview(request: HttpRequest, slug: str) -> HttpResponse:
    tenant, allowed = _tenant_or_404(request, slug)
    with tenant_context(tenant):
        return _usage_page(
            request,
            tenant,
            allowed,
            fixed={},
            url_for=lambda t: tenant_url(t.slug),
            heading="Overview",
            kind="overview",
        )


def _drilldown(request: HttpRequest, slug: str, kind: str, name: str | None) -> HttpResponse:
    """The page of one model or end user, named in the path or (`name=`) the query string."""
    tenant, allowed = _tenant_or_404(request, slug)
    if name is None:
        raise Http404("Name the model or end user: add ?name=<name>.")
    if NUL in name:
        return HttpResponse(
            "No name holds a NUL character (%00).\n",
            status=400,
            content_type="text/plain; charset=utf-8",
        )
    label = "Model" if kind == "model" else "End user"
    with tenant_context(tenant):
        return _usage_page(
            request,
            tenant,
            allowed,
            fixed={kind: name},
            url_for=lambda t: drilldown_url(t.slug, kind, name),
            heading=f"{label} {shown(name)}",
            kind=kind,
        )


@login_required
def model_detail(request: HttpRequest, slug: str, name: str | None = None) -> HttpResponse:
    return _drilldown(request, slug, "model", name or request.GET.get(NAME_PARAM))


@login_required
def end_user_detail(request: HttpRequest, slug: str, end_user: str | None = None) -> HttpResponse:
    return _drilldown(request, slug, "end_user", end_user or request.GET.get(NAME_PARAM))


_SCOPE_PAGES = {"model": "model", "end_user": "end_user"}


@login_required
def budget_detail(request: HttpRequest, slug: str, budget_id: int) -> HttpResponse:
    tenant, allowed = _tenant_or_404(request, slug)
    with tenant_context(tenant):
        views = dashboard.dashboard_budgets(tenant=tenant, budget_id=budget_id)
        if not views:
            raise Http404("No such budget in this tenant.")
        view = views[0]
        burn = dashboard.budget_daily_spend(tenant=tenant, view=view)
        state, spec = view.state, view.state.spec
        table = budget_days_table(burn, spec.limit_nanos)
        if (response := _export(request, tenant, [table])) is not None:
            return response
        fig = charts.budget_burndown(
            name=view.budget.name,
            limit_nanos=spec.limit_nanos,
            days=burn.days,
            daily_nanos=burn.daily_nanos,
            period_end=burn.period_end,
            projected_nanos=view.projected_nanos,
        )
        scope_link = None
        page = _SCOPE_PAGES.get(spec.scope)
        if page and spec.value:
            scope_link = drilldown_url(tenant.slug, page, spec.value)
        elif spec.scope == "every_end_user" and state.end_user:
            scope_link = drilldown_url(tenant.slug, "end_user", state.end_user)
        projected = view.projected_nanos
        # Another tenant has no such budget: the switcher leads to its overview.
        context = _base_context(request, tenant, allowed, lambda t: tenant_url(t.slug))
        for entry in context["tenants"]:
            if entry["current"]:
                entry["url"] = request.path
        context.update(
            heading=f"Budget {view.budget.name}",
            kind="budget",
            budget=view.budget,
            scope_link=scope_link,
            cards=[
                {"id": "spent", "label": "Spent this period", **_money(state.spent)},
                {"id": "limit", "label": "Limit", **_money(spec.limit_nanos)},
                {
                    "id": "used",
                    "label": "Used",
                    "value": f"{state.percent}%",
                    "status": {"ok": "on-track", "warning": "at-risk"}.get(state.status, "over"),
                    "note": state.status,
                },
                {
                    "id": "projected",
                    "label": "Projected at period end",
                    **(_money(projected) if projected is not None else {"value": DASH}),
                    "note": "" if projected is not None else "A rolling window has no end.",
                },
                {
                    "id": "resets",
                    "label": "Resets",
                    "value": f"{state.window.end.astimezone(tenant_zone(tenant)):%Y-%m-%d %H:%M}",
                    "note": str(tenant_zone(tenant)),
                },
            ],
            charts=[charts.to_div(fig, "chart-burndown")],
            tables=_with_export_links(request, [table]),
        )
        return render(request, "dashboard/budget.html", context)
