"""One home for what a budget's scope means: which calls it covers, which counter field holds
its spend, and which stored rows hold it when the counters cannot be used.

`SCOPES[spec.scope]` is the only place a scope's behaviour is written; the check, the counters,
the PostgreSQL fallback, the configuration and the API read it from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from django.db.models import QuerySet

from costmon.core.models import Tenant
from usage.models import Dimension
from usage.pricing import candidate_names
from usage.selectors import named


class BudgetSpec(Protocol):
    """What a scope reads of a budget (budgets.config.BudgetSpec)."""

    @property
    def scope(self) -> str: ...
    @property
    def value(self) -> str: ...
    @property
    def api_key_id(self) -> int | None: ...


class Call(Protocol):
    """What a budget's scope is compared with: the call being checked."""

    @property
    def end_user(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def operation(self) -> str: ...
    @property
    def tags(self) -> Mapping[str, str]: ...
    @property
    def api_key_id(self) -> int | None: ...


# (the tenant, the budget, the end user for a budget on every end user, the rows) -> the rows
# of the budget's spend.
Narrow = Callable[[Tenant, BudgetSpec, str, QuerySet[Any]], QuerySet[Any]]


@dataclass(frozen=True)
class Scope:
    name: str
    applies: Callable[[BudgetSpec, Call], bool]
    # (the budget's value, the end user for every_end_user, the budget's key) -> the field of
    # the counter hashes (see budgets.counters).
    counter_field: Callable[[str, str, int | None], str]
    narrow: Narrow  # see Narrow; the rows come from `spend_rows`
    spend_rows: str = "rollups"  # rollups | rollups_by_end_user | events
    per_end_user: bool = False  # each end user has their own figures (and reservations)
    lowercase: bool = False  # the value is compared lowercased


def _all(tenant: Tenant, spec: BudgetSpec, end_user: str, rows: QuerySet[Any]) -> QuerySet[Any]:
    return rows


def _dimension(dimension: str) -> Narrow:
    def narrow(tenant: Tenant, spec: BudgetSpec, end_user: str, rows: QuerySet[Any]) -> Any:
        return rows.filter(named(tenant, dimension, end_user or spec.value))

    return narrow


def _by_value(column: str) -> Narrow:
    def narrow(tenant: Tenant, spec: BudgetSpec, end_user: str, rows: QuerySet[Any]) -> Any:
        return rows.filter(**{column: spec.value})

    return narrow


def _by_key(tenant: Tenant, spec: BudgetSpec, end_user: str, rows: QuerySet[Any]) -> Any:
    return rows.filter(api_key_id=spec.api_key_id)


def _by_model(tenant: Tenant, spec: BudgetSpec, end_user: str, rows: QuerySet[Any]) -> Any:
    # A budget on gpt-4o covers gpt-4o-2024-08-06 too: every stored name whose catalog names
    # include the budget's.
    models = [
        pk
        for pk, name in Dimension.objects.for_tenant(tenant)
        .filter(kind=Dimension.Kind.MODEL)
        .values_list("pk", "value")
        if spec.value in candidate_names(name)
    ]
    return rows.filter(model_id__in=models)


def tag_of(spec: BudgetSpec) -> tuple[str, str]:
    """A tag budget's tag: (name, value) of its `name=value`."""
    name, _, value = spec.value.partition("=")
    return name, value


def _tag_applies(spec: BudgetSpec, call: Call) -> bool:
    name, value = tag_of(spec)
    return call.tags.get(name) == value


SCOPES: Mapping[str, Scope] = {
    scope.name: scope
    for scope in (
        Scope(
            "tenant",
            applies=lambda spec, call: True,
            counter_field=lambda value, end_user, key: "t",
            narrow=_all,
        ),
        Scope(
            "end_user",
            applies=lambda spec, call: call.end_user == spec.value,
            counter_field=lambda value, end_user, key: f"u:{value}",
            narrow=_dimension("end_user"),
            spend_rows="rollups_by_end_user",
        ),
        Scope(
            "every_end_user",
            applies=lambda spec, call: bool(call.end_user),
            counter_field=lambda value, end_user, key: f"u:{end_user}",
            narrow=_dimension("end_user"),
            spend_rows="rollups_by_end_user",
            per_end_user=True,
        ),
        Scope(
            "api_key",
            applies=lambda spec, call: (
                call.api_key_id is not None and call.api_key_id == spec.api_key_id
            ),
            counter_field=lambda value, end_user, key: f"k:{key}",
            narrow=_by_key,
            spend_rows="rollups_by_end_user",
        ),
        Scope(
            "provider",
            applies=lambda spec, call: call.provider.lower() == spec.value,
            counter_field=lambda value, end_user, key: f"p:{value.lower()}",
            narrow=_by_value("provider__value"),
            lowercase=True,
        ),
        Scope(
            "model",
            applies=lambda spec, call: spec.value in candidate_names(call.model),
            counter_field=lambda value, end_user, key: f"m:{value.lower()}",
            narrow=_by_model,
            lowercase=True,
        ),
        Scope(
            "operation",
            applies=lambda spec, call: call.operation == spec.value,
            counter_field=lambda value, end_user, key: f"o:{value}",
            narrow=_by_value("operation__value"),
        ),
        Scope(
            "tag",
            applies=_tag_applies,
            counter_field=lambda value, end_user, key: f"g:{value}",
            # Its spend is summed from the events by the event store (`tag_of`), not narrowed.
            narrow=_all,
            spend_rows="events",
        ),
    )
}


def budget_applies(spec: BudgetSpec, call: Call) -> bool:
    scope = SCOPES.get(spec.scope)
    return scope is not None and scope.applies(spec, call)


def end_user_of(spec: BudgetSpec, end_user: str) -> str:
    """The end user a budget's figures are for: `end_user` for a budget on every end user."""
    return end_user if SCOPES[spec.scope].per_end_user else ""


def normalized_value(scope: str, value: str) -> str:
    """A budget's value as checks compare it."""
    value = value.strip()
    return value.lower() if scope in SCOPES and SCOPES[scope].lowercase else value


def tag_name(spec: BudgetSpec) -> str | None:
    """The tag a budget counts (its counters are kept only for such tags)."""
    if spec.scope != "tag" or "=" not in spec.value:
        return None
    return spec.value.split("=", 1)[0]
