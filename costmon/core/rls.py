"""Migration operation that puts a tenant-owned table behind PostgreSQL row-level security."""

from __future__ import annotations

from typing import Any

from django.db.migrations.operations.base import Operation

# Each setting is read in a sub-select, so PostgreSQL evaluates it once per query (an InitPlan)
# instead of once per row, and estimates `tenant_id = <one value>` from the column's
# statistics: a month of rollups scans about twice as fast, and is planned for its real size.
_BYPASS = "(SELECT current_setting('costmon.rls_bypass', true) = 'on')"
_TENANT = "tenant_id = (SELECT NULLIF(current_setting('costmon.tenant_id', true), '')::bigint)"


def policy_sql(table: str, *, shared_rows: bool) -> list[str]:
    """Statements that (re)create the tenant isolation policy of a quoted table name."""
    read = f"{_BYPASS} OR {_TENANT}"
    if shared_rows:
        read = f"{read} OR tenant_id IS NULL"
    return [
        f"DROP POLICY IF EXISTS tenant_isolation ON {table}",
        f"CREATE POLICY tenant_isolation ON {table} USING ({read}) "
        f"WITH CHECK ({_BYPASS} OR {_TENANT})",
    ]


class _RowLevelSecurity(Operation):
    """Turns row-level security on (forced) with the policy of `policy_statements`, and off
    again; PostgreSQL only (SQLite has one tenant's worth of trust: the embedded default)."""

    reduces_to_sql = True
    reversible = True
    policy_name = ""
    table: str

    def policy_statements(self, schema_editor: Any, table: str) -> list[str]:
        raise NotImplementedError

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return
        table = schema_editor.quote_name(self.table)
        schema_editor.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        for statement in self.policy_statements(schema_editor, table):
            schema_editor.execute(statement)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return
        table = schema_editor.quote_name(self.table)
        schema_editor.execute(f"DROP POLICY IF EXISTS {self.policy_name} ON {table}")
        schema_editor.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")


class EnableRowLevelSecurity(_RowLevelSecurity):
    """Only rows of the tenant in context are visible or writable, unless code runs unscoped.

    FORCE applies the policy to the table's owner too, so it holds for the role the product
    connects as (superusers bypass RLS always: see DATABASE_ROLE in the README).
    `shared_rows=True` also shows rows whose tenant is NULL (global catalog entries) to everyone,
    while only unscoped code may write them.
    """

    policy_name = "tenant_isolation"

    def __init__(self, table: str, shared_rows: bool = False) -> None:
        self.table = table
        self.shared_rows = shared_rows

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        kwargs: dict[str, Any] = {"table": self.table}
        if self.shared_rows:
            kwargs["shared_rows"] = True
        return (self.__class__.__qualname__, [], kwargs)

    def policy_statements(self, schema_editor: Any, table: str) -> list[str]:
        return policy_sql(table, shared_rows=self.shared_rows)

    def describe(self) -> str:
        return f"Enable row-level security on {self.table}"


def link_policy_sql(table: str, parents: dict[str, str]) -> list[str]:
    """Statements that (re)create the isolation policy of a quoted link table with no tenant
    column of its own (a many-to-many table): a row is visible when its first parent is the
    tenant's, and may be written only when every parent is. `parents` maps each foreign key
    column to its (quoted) table, which has a `tenant_id`. Named apart from `tenant_isolation`,
    which `refresh_policies` rewrites for tables with a tenant column."""

    def owned(column: str, parent: str) -> str:
        # Quoted identifiers from a migration, never input.
        return f"EXISTS (SELECT 1 FROM {parent} p WHERE p.id = {column} AND p.{_TENANT})"  # noqa: S608

    checks = [owned(column, parent) for column, parent in parents.items()]
    return [
        f"DROP POLICY IF EXISTS tenant_isolation_by_parent ON {table}",
        f"CREATE POLICY tenant_isolation_by_parent ON {table} "
        f"USING ({_BYPASS} OR {checks[0]}) "
        f"WITH CHECK ({_BYPASS} OR ({' AND '.join(checks)}))",
    ]


class EnableLinkRowLevelSecurity(_RowLevelSecurity):
    """Row-level security for a link table between tenant-owned tables (see link_policy_sql)."""

    policy_name = "tenant_isolation_by_parent"

    def __init__(self, table: str, parents: dict[str, str]) -> None:
        self.table = table
        self.parents = parents

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (self.__class__.__qualname__, [], {"table": self.table, "parents": self.parents})

    def policy_statements(self, schema_editor: Any, table: str) -> list[str]:
        quote = schema_editor.quote_name
        parents = {quote(column): quote(parent) for column, parent in self.parents.items()}
        return link_policy_sql(table, parents)

    def describe(self) -> str:
        return f"Enable row-level security on {self.table} through its parents"


def refresh_policies(apps: Any, schema_editor: Any) -> None:
    """Data migration: recreate every tenant isolation policy in the current form."""
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename, qual FROM pg_policies "
            "WHERE policyname = 'tenant_isolation' AND schemaname = current_schema()"
        )
        policies = cursor.fetchall()
    for table, qual in policies:
        shared = "tenant_id IS NULL" in qual
        for statement in policy_sql(schema_editor.quote_name(table), shared_rows=shared):
            schema_editor.execute(statement)
