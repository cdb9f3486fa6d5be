"""Read commands on a database without the schema say so, and create nothing; the README's
next step after `make demo` is the command the demo prints, and it reads the demo's data.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from .test_create_database import README
from .test_startup import environment, one_error_line, run

NO_SCHEMA = "error: database: this database has no schema: run `fulfillment migrate`"
READ_COMMANDS = [
    ("orders", "list"),
    ("orders", "show", "ord-1"),
    ("sagas", "list"),
    ("jobs", "list"),
    ("events", "tail"),
    ("inventory", "show", "AMOX-500"),
    ("inventory", "set", "AMOX-500", "3"),
    ("projections", "status"),
    ("audit", "list"),
]


@pytest.mark.parametrize("args", READ_COMMANDS, ids=" ".join)
def test_a_command_on_a_missing_sqlite_file_creates_nothing(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    env = environment("sqlite:///./fulfillment.db")  # the default, relative to the directory
    del env["FULFILLMENT_DATABASE_URL"]
    del env["FULFILLMENT_MASTER_KEY"]  # else SQLite would make a key file beside it
    line = one_error_line(run(*args, env=env, cwd=tmp_path, expect=1))
    assert line.startswith(NO_SCHEMA), line
    assert "fulfillment.db does not exist" in line
    assert list(tmp_path.iterdir()) == [], "neither the database nor its key file"


def test_a_command_on_an_sqlite_file_without_the_schema_says_so(tmp_path: Path) -> None:
    database = tmp_path / "empty.db"
    sqlite3.connect(database).close()  # an empty database
    env = environment(f"sqlite:///{database}")
    del env["FULFILLMENT_MASTER_KEY"]
    line = one_error_line(run("orders", "list", env=env, cwd=tmp_path, expect=1))
    assert line.startswith(NO_SCHEMA), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"], "no key file"


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
@pytest.mark.parametrize("args", [("orders", "list"), ("events", "tail")], ids=" ".join)
def test_a_command_on_a_server_database_without_the_schema_says_so(
    fresh_database_url: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    line = one_error_line(run(*args, env=environment(fresh_database_url), cwd=tmp_path, expect=1))
    assert line.startswith(NO_SCHEMA), line


def test_the_readme_next_step_after_the_demo_is_what_the_demo_prints(tmp_path: Path) -> None:
    env = environment("unused")
    for name in ("FULFILLMENT_DATABASE_URL", "FULFILLMENT_MASTER_KEY"):
        del env[name]  # as `make demo` runs: the user's shell, nothing set
    out = run("demo", "--orders", "6", env=env, cwd=tmp_path)
    tail = out[out.index("Look at the demo's orders and lots with:") :]
    commands = re.findall(r"^\s+(FULFILLMENT_DATABASE_URL=\S+ fulfillment .+)$", tail, re.M)
    assert commands, tail
    readme = README.read_text()
    assert commands[0] in readme, f"the README's next step is not {commands[0]!r}"
    variable, command = commands[0].split(" ", 1)
    env["FULFILLMENT_DATABASE_URL"] = variable.split("=", 1)[1]
    listed = run(*command.split()[1:], env=env, cwd=tmp_path)
    assert len(re.findall(r"^│ ord-\S+ ", listed, re.M)) == 6, listed
    assert not (tmp_path / "fulfillment.db").exists(), "the default database was never made"
