from __future__ import annotations

from typing import Any

from django.core.checks import Warning, register
from django.db import connection


@register("database", deploy=True)
def check_rls_role(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """Row-level security does not apply to superusers; say so where deploy checks are read."""
    if connection.vendor != "postgresql":
        return []
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        row = cursor.fetchone()
    if row and row[0]:
        return [
            Warning(
                "costmon acts as a PostgreSQL superuser, so row-level security is bypassed.",
                hint="Connect as an ordinary role that owns the tables, or set DATABASE_ROLE.",
                id="costmon.W001",
            )
        ]
    return []
