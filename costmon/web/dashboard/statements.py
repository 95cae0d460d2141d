"""The chargeback statement page: `/t/<slug>/statements/?subject=customer=acme-corp&month=2026-11`.

The same statement as a page, as CSV (`&format=csv`) and as a print-ready document
(`&format=print`, a page of its own with a print stylesheet: "Save as PDF" in the browser).
Another tenant's slug is a 404; a bad subject or month is a 400 that says how to write it.
"""

from __future__ import annotations

import io
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.http import urlencode

from costmon.core.exceptions import DomainError
from costmon.core.models import Tenant
from costmon.core.money import format_money
from costmon.core.scoping import tenants_for_user
from costmon.core.tenancy import tenant_context
from usage.links import shown, tenant_url
from usage.selectors import today
from usage.statements import (
    END_USER,
    Statement,
    parse_month,
    parse_subject,
    percent_label,
    statement_for,
    write_csv,
)

FORMATS = ("html", "csv", "print")


def statement_url(slug: str, subject: str = "", month: str = "") -> str:
    """The statement page; with a subject (`end_user=<id>`, `customer=acme`) and a month."""
    query = {k: v for k, v in (("subject", subject), ("month", month)) if v}
    base = f"/t/{slug}/statements/"
    return f"{base}?{urlencode(query)}" if query else base


def end_user_statement_url(slug: str, end_user: str, month: str = "") -> str:
    return statement_url(slug, f"{END_USER}={end_user}", month)


def statement_link(
    slug: str, *, end_user: str | None, tag: tuple[str, str] | None
) -> dict[str, str] | None:
    """The link a usage page offers: an end user's statement for this month on their page, the
    tag value's when the page is filtered by one, else the statement page itself."""
    if end_user is not None:
        return {"url": end_user_statement_url(slug, end_user), "label": "Statement for this month"}
    if tag is not None and tag[0] != END_USER:
        subject = f"{tag[0]}={tag[1]}"
        return {"url": statement_url(slug, subject), "label": f"Statement for {shown(subject)}"}
    return {"url": statement_url(slug), "label": "Statements"}


def member_tenant_or_404(request: HttpRequest, slug: str) -> tuple[Tenant, list[Tenant]]:
    allowed = tenants_for_user(request.user)
    for tenant in allowed:
        if tenant.slug == slug:
            return tenant, allowed
    # 404, not 403: an outsider learns nothing about which tenants exist.
    raise Http404("No such tenant among yours.")


def _plain(message: str, status: int = 400) -> HttpResponse:
    return HttpResponse(f"{message}\n", status=status, content_type="text/plain; charset=utf-8")


def _lines(st: Statement) -> list[dict[str, Any]]:
    rows = [
        {
            "name": shown(f"{line.provider}/{line.model}"),
            "calls": f"{line.calls:,}",
            "input": f"{line.input_tokens:,}",
            "output": f"{line.output_tokens:,}",
            "cached": f"{line.cached_input_tokens:,}",
            "cost": format_money(line.cost_nanos),
            "cost_exact": format_money(line.cost_nanos, exact=True),
            "markup": format_money(line.markup_nanos),
            "markup_exact": format_money(line.markup_nanos, exact=True),
            "total": format_money(line.total_nanos),
            "total_exact": format_money(line.total_nanos, exact=True),
        }
        for line in st.lines
    ]
    return rows


def _totals(st: Statement) -> dict[str, str]:
    return {
        "calls": f"{st.total('calls'):,}",
        "input": f"{st.total('input_tokens'):,}",
        "output": f"{st.total('output_tokens'):,}",
        "cached": f"{st.total('cached_input_tokens'):,}",
        "cost": format_money(st.total("cost_nanos")),
        "cost_exact": format_money(st.total("cost_nanos"), exact=True),
        "markup": format_money(st.total("markup_nanos")),
        "markup_exact": format_money(st.total("markup_nanos"), exact=True),
        "total": format_money(st.total("total_nanos")),
        "total_exact": format_money(st.total("total_nanos"), exact=True),
    }


@login_required
def statement(request: HttpRequest, slug: str) -> HttpResponse:
    tenant, allowed = member_tenant_or_404(request, slug)
    subject_text = request.GET.get("subject", "").strip()
    month_text = request.GET.get("month", "").strip()
    fmt = request.GET.get("format", "html") or "html"
    context: dict[str, Any] = {
        "tenant": tenant,
        "tenants": [
            {
                "slug": t.slug,
                "name": t.name,
                "url": statement_url(t.slug),
                "current": t.pk == tenant.pk,
            }
            for t in allowed
        ],
        "overview_url": tenant_url(tenant.slug),
        "heading": "Statement",
        "form": {"subject": subject_text, "month": month_text},
        "problems": [],
    }
    if fmt not in FORMATS:
        return _plain(f"Unknown format {fmt!r}; use html, csv or print.")
    if not subject_text:
        if fmt != "html":
            return _plain(
                "Name whose statement: add subject=customer=acme-corp (or end_user=<id>)."
            )
        return render(request, "dashboard/statement.html", context)
    try:
        subject = parse_subject(subject_text)
        first = parse_month(month_text) if month_text else today(tenant).replace(day=1)
    except DomainError as exc:
        if fmt != "html":
            return _plain(exc.message)
        context["problems"] = [exc.message]
        return render(request, "dashboard/statement.html", context, status=400)

    with tenant_context(tenant):
        st = statement_for(tenant=tenant, subject=subject, month=first)
    if fmt == "csv":
        buffer = io.StringIO()
        write_csv([st], buffer)
        response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
        name = f"{tenant.slug}-statement-{st.month_label}.csv"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response
    month = st.month_label
    context.update(
        heading=f"Statement for {shown(str(subject))}",
        form={"subject": str(subject), "month": month},
        statement=st,
        subject=shown(str(subject)),
        month_label=f"{st.month:%B %Y}",
        time_zone=str(st.range.tz),
        markup=percent_label(st.markup_percent),
        has_markup=st.markup_percent != 0,
        lines=_lines(st),
        unpriced_warning=st.unpriced_warning,
        totals=_totals(st),
        csv_url=f"{statement_url(tenant.slug, str(subject), month)}&format=csv",
        print_url=f"{statement_url(tenant.slug, str(subject), month)}&format=print",
        page_url=statement_url(tenant.slug, str(subject), month),
    )
    template = "dashboard/statement_print.html" if fmt == "print" else "dashboard/statement.html"
    return render(request, template, context)
