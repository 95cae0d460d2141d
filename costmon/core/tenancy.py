"""Tenant scoping: the first wall (querysets that fail closed) and the second (PostgreSQL RLS).

A request, task or command runs either in one tenant's context (`tenant_context(tenant)`) or,
for staff code and cross-tenant jobs, explicitly unscoped (`unscoped()`). Outside both, tenant
querysets are empty and PostgreSQL's row-level security policies return no rows.

On PostgreSQL every query passes through `rls_execute_wrapper`, which keeps the connection's
`costmon.tenant_id` / `costmon.rls_bypass` settings equal to the current context before the
query runs, so the policies see what the Python code sees. It costs one extra statement only when
the context changed since the connection's last query.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import psycopg
from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper

if TYPE_CHECKING:
    from costmon.core.models import Tenant

_tenant_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("tenant_id", default=None)
_bypass: contextvars.ContextVar[bool] = contextvars.ContextVar("rls_bypass", default=False)


def current_tenant_id() -> int | None:
    return _tenant_id.get()


def is_unscoped() -> bool:
    return _bypass.get()


@contextlib.contextmanager
def _context(tenant_id: int | None, bypass: bool) -> Iterator[None]:
    t1 = _tenant_id.set(tenant_id)
    t2 = _bypass.set(bypass)
    try:
        yield
    finally:
        _bypass.reset(t2)
        _tenant_id.reset(t1)


def tenant_context(tenant: Tenant | int) -> contextlib.AbstractContextManager[None]:
    """Run the block as `tenant`: scoped querysets and RLS see only its rows."""
    return _context(tenant if isinstance(tenant, int) else tenant.pk, False)


def unscoped() -> contextlib.AbstractContextManager[None]:
    """Read and write across tenants. For staff code, tasks and commands only."""
    return _context(None, True)


def no_tenant() -> contextlib.AbstractContextManager[None]:
    """Drop any context: nothing tenant-owned is visible (the state every request starts in)."""
    return _context(None, False)


def activate(tenant_id: int) -> None:
    """Put a tenant in context for the rest of the current request.

    Only for code running inside `TenantContextMiddleware`, which restores the empty context when
    the response is done; everywhere else use `tenant_context()`.
    """
    _tenant_id.set(tenant_id)
    _bypass.set(False)


# --- the first wall: querysets ---------------------------------------------------------------

M = TypeVar("M", bound=models.Model)


class TenantScopedManager(models.Manager[M], Generic[M]):
    """Default manager of tenant-owned models.

    `objects.all()` holds the current tenant's rows, or none at all outside a tenant context (or
    every row inside `unscoped()`). `for_tenant(t)` is the explicit form selectors use;
    `unscoped()` names a deliberate cross-tenant read.
    """

    def get_queryset(self) -> models.QuerySet[M]:
        qs = super().get_queryset()
        if _bypass.get():
            return qs
        tenant_id = _tenant_id.get()
        if tenant_id is None:
            return qs.none()
        return qs.filter(tenant_id=tenant_id)

    def for_tenant(self, tenant: Tenant | int) -> models.QuerySet[M]:
        tenant_id = tenant if isinstance(tenant, int) else tenant.pk
        if tenant_id is None:
            return super().get_queryset().none()
        return super().get_queryset().filter(tenant_id=tenant_id)

    def unscoped(self) -> models.QuerySet[M]:
        return super().get_queryset()


# --- the second wall: row-level security on PostgreSQL ------------------------------------------

_STATE_ATTR = "_costmon_rls_state"
# psycopg.pq.TransactionStatus: in a transaction between statements; in a failed one.
_INTRANS, _INERROR = 2, 3


def _in_force(connection: BaseDatabaseWrapper, raw: Any, where: tuple[str, ...] | None) -> bool:
    """Whether settings made at `where` still hold. Set in autocommit mode (None) they last for
    the session; set inside a transaction (or savepoint) they are undone if it rolls back, so
    they are trusted only while that transaction and savepoint are still open."""
    if where is None:
        return True
    return (
        raw.info.transaction_status == _INTRANS
        and tuple(connection.savepoint_ids[: len(where)]) == where
    )


def _sync(connection: BaseDatabaseWrapper, cursor: Any) -> None:
    raw = connection.connection
    if raw.info.transaction_status == _INERROR:
        return  # only its rollback can run now; the next statement after it syncs
    wanted = ("on" if _bypass.get() else "off", str(_tenant_id.get() or ""))
    state = getattr(raw, _STATE_ATTR, None)
    if state is not None and state[0] == wanted and _in_force(connection, raw, state[1]):
        return
    if isinstance(cursor, psycopg.ServerCursor):
        # A named cursor (the ORM's `iterator()`) would DECLARE the settings' SELECT, and
        # takes no `prepare`: the settings go by a cursor of their own.
        cursor = psycopg.Cursor(raw)
    cursor.execute(
        "SELECT set_config('costmon.rls_bypass', %s, false), "
        "set_config('costmon.tenant_id', %s, false)",
        wanted,
        prepare=True,  # sent on each switch of tenant: parsed once per connection
    )
    in_transaction = raw.info.transaction_status == _INTRANS
    setattr(raw, _STATE_ATTR, (wanted, tuple(connection.savepoint_ids) if in_transaction else None))


def rls_execute_wrapper(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    # The raw cursor, so the settings statement does not pass through the wrappers again.
    _sync(context["connection"], context["cursor"].cursor)
    return execute(sql, params, many, context)


def raw_cursor(connection: BaseDatabaseWrapper) -> Any:
    """A psycopg cursor with server-side binding, for bulk statements that send whole arrays
    as parameters; the RLS settings are brought in line first, as for every ORM query."""
    connection.ensure_connection()
    cursor = psycopg.Cursor(connection.connection)
    _sync(connection, cursor)
    return cursor


def install_rls_wrapper(connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """`connection_created` receiver: every PostgreSQL connection carries the wrapper."""
    if connection.vendor != "postgresql":
        return
    if rls_execute_wrapper not in connection.execute_wrappers:
        connection.execute_wrappers.append(rls_execute_wrapper)


def forget_rls_state(connection: BaseDatabaseWrapper) -> None:
    """A rolled-back transaction also rolls back set_config; make the next query set it again."""
    raw = getattr(connection, "connection", None)
    if raw is not None and hasattr(raw, _STATE_ATTR):
        delattr(raw, _STATE_ATTR)
