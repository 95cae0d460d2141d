"""A migration operation that rewrites a table its own way on PostgreSQL and runs plain schema
steps elsewhere (SQLite), with the same model state on both."""

from __future__ import annotations

from typing import Any

from django.db.migrations.operations.base import Operation


class PostgresRewrite(Operation):
    """Subclasses set `steps` (the schema operations: the model state on every database, and
    what SQLite runs) and implement `postgresql_forwards` / `postgresql_backwards`, which do the
    PostgreSQL side by hand (a rebuild into partitions, say)."""

    reversible = True
    steps: list[Operation]

    def postgresql_forwards(self, schema_editor: Any) -> None:
        raise NotImplementedError

    def postgresql_backwards(self, schema_editor: Any) -> None:
        raise NotImplementedError

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        return (self.__class__.__qualname__, [], {})

    def state_forwards(self, app_label: str, state: Any) -> None:
        for step in self.steps:
            step.state_forwards(app_label, state)

    def _states(self, app_label: str, start: Any) -> list[Any]:
        states = [start]
        for step in self.steps:
            state = states[-1].clone()
            step.state_forwards(app_label, state)
            states.append(state)
        return states

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor == "postgresql":
            self.postgresql_forwards(schema_editor)
            return
        states = self._states(app_label, from_state)
        for i, step in enumerate(self.steps):
            step.database_forwards(app_label, schema_editor, states[i], states[i + 1])

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        if schema_editor.connection.vendor == "postgresql":
            self.postgresql_backwards(schema_editor)
            return
        states = self._states(app_label, to_state)
        for i in reversed(range(len(self.steps))):
            self.steps[i].database_backwards(app_label, schema_editor, states[i + 1], states[i])
