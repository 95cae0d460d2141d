"""The shape of the code, checked: no import cycles between modules, imports at the top of a
module, and no module of the apps past about 500 lines.

The layers themselves (core < usage < budgets < alerts < web) are import-linter's contract in
pyproject.toml, run by the test command; these are the rules it does not check.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("costmon", "usage", "budgets", "alerts")
MAX_MODULE_LINES = 520

# Imports inside a function, each for a reason a module-level import cannot serve.
LATE_IMPORTS_ALLOWED = {
    # AppConfig.ready: Django's place to connect receivers once every app's models are loaded.
    "costmon/core/apps.py",
    "usage/apps.py",
    "costmon/web/apps.py",
    "budgets/apps.py",
    "alerts/apps.py",
    # The Celery app and gunicorn's hooks are loaded before Django is set up.
    "costmon/celery.py",
    "costmon/gunicorn_conf.py",
    # prometheus_client picks its value class when first imported: the gunicorn master must
    # not import it before the multi-process folder is set.
    "costmon/web/prometheus/multiproc.py",
}


def _sources() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the groups of modules that import each other in a ring."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def test_no_module_imports_itself_through_others() -> None:
    imports = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    modules = {m for m in imports.modules if ".migrations" not in m}
    graph = {
        module: {
            other for other in imports.find_modules_directly_imported_by(module) if other in modules
        }
        for module in modules
    }
    assert _strongly_connected(graph) == []


def test_ring_detection_finds_a_ring() -> None:
    """The check above can fail: a ring of three is found, a chain is not."""
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [
        ["a", "b", "c"]
    ]
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def _late_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    found.append(f"{path.relative_to(ROOT)}:{inner.lineno}")
    return found


def test_imports_are_at_the_top_of_modules() -> None:
    late = [
        place
        for path in _sources()
        if str(path.relative_to(ROOT)) not in LATE_IMPORTS_ALLOWED
        for place in _late_imports(path)
    ]
    assert late == []


def test_modules_stay_readable() -> None:
    too_long = {
        str(path.relative_to(ROOT)): lines
        for path in _sources()
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert too_long == {}
