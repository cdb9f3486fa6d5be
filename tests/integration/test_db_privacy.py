"""What the database layer keeps of patient data outside the database: no bound
parameters in errors (hence logs), on every backend; SQLite's files readable by their
owner only."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert
from sqlalchemy.exc import IntegrityError

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import SQLITE_SIDE_FILES, create_db_engine, create_nullpool_engine

CLI = Path(sys.executable).with_name("fulfillment")
PATIENT = "Ada Lovelace of 12 St James's Square"


@pytest.mark.parametrize("make_engine", [create_db_engine, create_nullpool_engine])
def test_a_database_error_never_shows_its_bound_parameters(
    database_url: str, make_engine: Callable[[str], Engine]
) -> None:
    engine = make_engine(database_url)
    row = {
        "key": "key-1",
        "request_hash": "hash",
        "order_id": "o-1",
        "response": {"patient_name": PATIENT},
        "created_at": datetime.now(UTC),
    }
    try:
        with engine.begin() as conn:
            conn.execute(insert(t.idempotency_keys).values(**row))
        with pytest.raises(IntegrityError) as raised, engine.begin() as conn:
            conn.execute(insert(t.idempotency_keys).values(**{**row, "order_id": "o-2"}))
    finally:
        engine.dispose()
    message = str(raised.value)
    assert "INSERT INTO idempotency_keys" in message  # the statement, without its values
    assert "hide_parameters" in message
    assert "Lovelace" not in message and "o-2" not in message
    assert "Lovelace" not in repr(raised.value)


def make_sqlite_file(path: Path) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
    finally:
        conn.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run_migrate(url: str) -> None:
    done = subprocess.run(
        [str(CLI), "migrate"],
        env={**os.environ, "FULFILLMENT_DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        umask=0o022,  # a usual umask: the files would be -rw-r--r-- by default
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_sqlite_database_and_its_side_files_are_the_owners_only(tmp_path: Path) -> None:
    database = tmp_path / "fulfillment.db"
    url = f"sqlite:///{database}"
    run_migrate(url)
    assert mode(database) == 0o600

    previous = os.umask(0o022)
    try:
        engine = create_db_engine(url)
        try:
            with engine.begin() as conn:  # a write: the WAL and its index are in use
                conn.execute(
                    insert(t.idempotency_keys).values(
                        key="k",
                        request_hash="h",
                        order_id="o",
                        response={},
                        created_at=datetime.now(UTC),
                    )
                )
            with engine.connect():  # held open, so the -wal and -shm files stay
                files = [database, *(Path(f"{database}{s}") for s in ("-wal", "-shm"))]
                assert all(f.exists() for f in files), sorted(os.listdir(tmp_path))
                assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
        finally:
            engine.dispose()
    finally:
        os.umask(previous)
    for path in tmp_path.iterdir():
        assert mode(path) == 0o600, path


@pytest.mark.parametrize("make_engine", [create_db_engine, create_nullpool_engine])
def test_files_made_before_with_a_wider_mode_are_tightened_when_opened(
    tmp_path: Path, make_engine: Callable[[str], Engine]
) -> None:
    database = tmp_path / "old.db"
    make_sqlite_file(database)  # by an older version, or by hand
    os.chmod(database, 0o644)
    side_files = [Path(f"{database}{suffix}") for suffix in SQLITE_SIDE_FILES]
    for path in side_files:
        path.touch()  # empty: a journal with nothing to roll back, an empty log
        os.chmod(path, 0o664)

    engine = make_engine(f"sqlite:///{database}")
    try:
        assert {p.name: mode(p) for p in (database, *side_files)} == {
            p.name: 0o600 for p in (database, *side_files)
        }
        with engine.connect() as conn:  # and the database is still fine
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 0
    finally:
        engine.dispose()


def test_a_read_only_file_is_not_made_writable(tmp_path: Path) -> None:
    database = tmp_path / "ro.db"
    make_sqlite_file(database)
    os.chmod(database, 0o444)
    create_nullpool_engine(f"sqlite:///{database}").dispose()
    assert mode(database) == 0o400
