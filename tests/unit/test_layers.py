"""The query side is one package: `fulfillment.views` is the only reader of tables for
the API, the CLI, the dashboard and the metrics' live gauges (docs/architecture.md).

Checked on the source: no module under `entrypoints/` or `observability/` imports the
tables, opens a read connection or builds a query; jobs by status are counted in one
function and "stuck" is defined once.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[2] / "src" / "fulfillment"
SERVING = sorted(
    path.relative_to(SRC)
    for folder in ("entrypoints", "observability")
    for path in (SRC / folder).rglob("*.py")
)
#: Names a module that serves (and only serves) must not call: the query side's tools.
QUERY_CALLS = frozenset({"select", "read_connection", "text", "queue_depth", "count_by_status"})
#: The job queue's inspection methods: reads, the views' job (`views/jobs.py`).
QUEUE_READS = frozenset({"list", "counts", "for_saga"})


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _violations(path: Path | str, source: str | None = None) -> list[str]:
    if source is None:
        source = (SRC / path).read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [
                f"{where}: imports {a.name}"
                for a in node.names
                if a.name.startswith("fulfillment.adapters.tables")
            ]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.startswith("fulfillment.adapters.tables"):
                found.append(f"{where}: imports from {module}")
            elif module == "fulfillment.adapters" and any(a.name == "tables" for a in node.names):
                found.append(f"{where}: imports fulfillment.adapters.tables")
            found += [
                f"{where}: imports {a.name} from {module}"
                for a in node.names
                if a.name in QUERY_CALLS and module.startswith(("sqlalchemy", "fulfillment"))
            ]
        elif isinstance(node, ast.Call):
            name = _called_name(node)
            if name in QUERY_CALLS:
                found.append(f"{where}: calls {name}(...)")
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr in QUEUE_READS
                and isinstance(func.value, ast.Attribute)
                and func.value.attr == "queue"
            ):
                found.append(f"{where}: reads the job queue (.queue.{func.attr})")
    return found


def test_the_serving_modules_are_found() -> None:
    names = {str(p) for p in SERVING}
    assert {"entrypoints/api.py", "entrypoints/cli_sagas.py", "observability/metrics.py"} <= names


@pytest.mark.parametrize("path", SERVING, ids=str)
def test_only_the_views_read_tables(path: Path) -> None:
    assert _violations(path) == []


def test_the_checker_sees_a_query() -> None:
    source = (
        "from sqlalchemy import select\n"
        "from fulfillment.adapters import tables as t\n"
        "from fulfillment.adapters.db import read_connection\n"
        "def f(app):\n"
        "    with read_connection(app.engine) as conn:\n"
        "        conn.execute(select(t.jobs))\n"
        "    return app.queue.counts()\n"
    )
    found = _violations("entrypoints/probe.py", source)
    assert len(found) == 6, found


def _sources() -> dict[str, str]:
    return {
        str(path.relative_to(SRC)): path.read_text(encoding="utf-8") for path in SRC.rglob("*.py")
    }


def test_jobs_by_status_are_counted_in_one_place() -> None:
    callers = {name for name, text in _sources().items() if "queue_depth(" in text}
    assert callers == {"adapters/job_queue.py", "views/jobs.py"}


def test_stuck_is_defined_once() -> None:
    defining = [name for name, text in _sources().items() if "def _stuck(" in text]
    assert defining == ["views/sagas.py"]
