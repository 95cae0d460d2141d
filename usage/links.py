"""Dashboard URLs of stored names, built by hand: `reverse()` refuses names its patterns do not
match (a line feed, say), and any name that was ever accepted must link to its page.

A model or end user is a path segment (`/t/acme/models/gpt-4o/`, what alerts link to), percent-
encoded, when a browser and proxies keep it intact; otherwise it travels in the query string
(`/t/acme/models/?name=..`): names with control characters or a backslash, and names that are
not clean path segments (`..`, a leading, trailing or doubled `/`), which browsers rewrite.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote, urlencode

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

SECTIONS = {"model": "models", "end_user": "users"}
NAME_PARAM = "name"
_NOT_IN_PATH = re.compile("[\x00-\x1f\x7f-\x9f\\\\\u2028\u2029]")
# Shown in place of control characters on pages, so two names that differ only there do not
# look the same (the names themselves, in links, filters and CSV, stay exact).
_VISIBLE = {code: chr(0x2400 + code) for code in range(0x20)} | {0x7F: "\u2421"}


def fits_path(name: str) -> bool:
    if not name or _NOT_IN_PATH.search(name):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def tenant_url(slug: str) -> str:
    return f"/t/{quote(slug, safe='')}/"


def budget_url(slug: str, budget_id: int) -> str:
    return f"{tenant_url(slug)}budgets/{int(budget_id)}/"


def drilldown_url(slug: str, kind: str, name: str, params: Mapping[str, str] | None = None) -> str:
    """The page of one model (`kind="model"`) or end user (`"end_user"`), with `params`
    (e.g. the period) in its query string."""
    base = f"{tenant_url(slug)}{SECTIONS[kind]}/"
    query = {k: v for k, v in (params or {}).items() if v and k != NAME_PARAM}
    if fits_path(name):
        base = f"{base}{quote(name, safe='/')}/"
    else:
        query = {NAME_PARAM: name, **query}
    return f"{base}?{urlencode(query)}" if query else base


def shown(name: str) -> str:
    """A name as a page shows it: control characters as visible symbols (U+2400 block)."""
    return name.translate(_VISIBLE)


def hidden_input_value(value: str) -> SafeString:
    """`value` escaped for an HTML attribute, line breaks as character references: HTML turns
    a raw carriage return into a line feed, a reference it keeps."""
    return mark_safe(escape(value).replace("\r", "&#13;").replace("\n", "&#10;"))  # noqa: S308
