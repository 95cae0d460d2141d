"""Dashboard pages: parse the query string, call the dashboard selectors, build figures, render.

Every page resolves its tenant from the user's own tenants (another slug is a 404, so an outsider
learns nothing) and reads inside that tenant's context. Filters live in the query string so a
view can be shared; a bad value is shown on the page and the default used instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render

from costmon.core.models import Tenant
from costmon.core.periods import recent_range, tenant_zone
from costmon.core.scoping import tenants_for_user
from costmon.core.tenancy import tenant_context
from costmon.web.dashboard import burndown, charts, warmup
from costmon.web.dashboard import pages as dashboard
from costmon.web.dashboard.alerts import open_alerts, recent_alerts
from costmon.web.dashboard.anomalies import hourly_band
from costmon.web.dashboard.cards import money_figure, overview_cards
from costmon.web.dashboard.query import (
    CHART_ROWS,
    COMPARE_PARAM,
    GROUPS,
    NUL,
    PERIOD_PARAMS,
    SNAPSHOTS_PARAM,
    filter_form,
    group_label,
    group_links,
    parse_query,
    toggle,
)
from costmon.web.dashboard.reads import chart_reads, table_reads
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
    shown,
    tenant_url,
)
from usage.recommendations import recommendations

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
        form=filter_form(q, fixed, request),
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

    reads = table_reads(tenant=tenant, q=q)
    users, operations, models = reads.users, reads.operations, reads.models
    tables = [
        breakdown_table("models", "Spend by model", "Model", models, model_url),
        breakdown_table("operations", "Spend by operation", "Operation", operations),
    ]
    if kind != "end_user":
        tables.insert(0, breakdown_table("end_users", "Top end users", "End user", users, user_url))
    if reads.by_tag is not None:
        tag = q.group_by[len(dashboard.TAG_PREFIX) :]
        tables.append(
            breakdown_table("tag", f"Spend by tag {shown(tag)}", shown(tag), reads.by_tag)
        )
    views = []
    if kind == "overview":
        views = burndown.dashboard_budgets(tenant=tenant)
        tables.append(budgets_table(views, lambda pk: budget_url(tenant.slug, pk)))
        tables.append(alerts_table(recent_alerts(tenant=tenant), tr.tz))
    if (response := _export(request, tenant, tables)) is not None:
        return response
    if not dashboard.has_usage(tenant=tenant):
        context["empty"] = True
        return render(request, "dashboard/overview.html", context)

    found = chart_reads(tenant=tenant, q=q, tables=reads)
    cards, buckets, cells, interval = found.cards, found.buckets, found.cells, found.interval
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
                group_label=group_label(q.group_by),
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
    figures.append(("chart-heatmap", charts.heatmap(found.heatmap)))
    burndowns = []
    for view in views:
        if not view.budget.is_active:
            continue
        burn = burndown.budget_daily_spend(tenant=tenant, view=view)
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
        cards=overview_cards(cards, q),
        charts=[charts.to_div(fig, div_id) for div_id, fig in figures],
        burndowns=burndowns,
        tables=_with_export_links(request, tables),
        groups=group_links(
            request,
            q,
            [g for g in GROUPS if not (kind == "end_user" and g == "end_user")]
            + [f"{dashboard.TAG_PREFIX}{name}" for name in found.tag_names],
        ),
        snapshots=toggle(
            request, SNAPSHOTS_PARAM, "split", ("grouped", "split"), q.split_snapshots
        ),
        compare=toggle(
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
                "saving": money_figure(r.saving_nanos) if r.saving_nanos is not None else None,
            }
            for r in recommendations(tenant=tenant, now=q.now, time_range=last_30)
        ]
    return render(request, "dashboard/overview.html", context)


@login_required
def overview(request: HttpRequest, slug: str) -> HttpResponse:
    tenant, allowed = _tenant_or_404(request, slug)
    warmup.overview_viewed(tenant.pk)
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
        views = burndown.dashboard_budgets(tenant=tenant, budget_id=budget_id)
        if not views:
            raise Http404("No such budget in this tenant.")
        view = views[0]
        burn = burndown.budget_daily_spend(tenant=tenant, view=view)
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
                {"id": "spent", "label": "Spent this period", **money_figure(state.spent)},
                {"id": "limit", "label": "Limit", **money_figure(spec.limit_nanos)},
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
                    **(money_figure(projected) if projected is not None else {"value": DASH}),
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
