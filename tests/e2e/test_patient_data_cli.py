"""Patient data from the command line, as an operator runs it (`fulfillment ...` in a
subprocess): no server process starts on PostgreSQL or MariaDB without a master key,
SQLite keeps its own key file, `keys generate|rotate`, `customers forget` and
`phi encrypt-existing` do what docs/operator-cli.md says, and a database of the previous
release (plain patient data, schema 0010) is sealed after its upgrade.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import saga_testkit
from alembic import command
from conftest import TEST_MASTER_KEY, settings_for
from sqlalchemy import select

from fulfillment import views
from fulfillment.adapters import tables as t
from fulfillment.adapters.db import read_connection
from fulfillment.adapters.migrate import alembic_config
from fulfillment.adapters.patient_data import KEY_CACHE_SECONDS
from fulfillment.adapters.phi_crypto import MasterKeys
from fulfillment.bootstrap import App, bootstrap

SCRIPT = Path(sys.executable).with_name("fulfillment")
CANARY = "Canary Quillfeather"


def run(
    *args: str, env: dict[str, str], cwd: Path, expect: int = 0, stdin: str | None = None
) -> str:
    line = [str(SCRIPT), *args] if SCRIPT.exists() else [sys.executable, "-m", "fulfillment", *args]
    done = subprocess.run(
        line, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, input=stdin
    )
    assert done.returncode == expect, (done.returncode, done.stdout, done.stderr)
    return done.stdout + done.stderr


def environment(url: str, **more: str) -> dict[str, str]:
    """The caller's environment without any FULFILLMENT_ setting, then `url` and `more`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FULFILLMENT_")}
    env.update(
        FULFILLMENT_DATABASE_URL=url,
        COLUMNS="200",
        NO_COLOR="1",
        PYTHONIOENCODING="utf-8",
        **more,
    )
    return env


def opened_names(app: App, order_id: str) -> list[str]:
    events = views.order_events(app, order_id) or []
    return [
        e["data"]["prescription"]["patient_name"] for e in events if "prescription" in e["data"]
    ]


# --- no key, no server process -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
@pytest.mark.parametrize("args", [("migrate",), ("worker",), ("serve", "--port", "1")])
def test_a_server_database_without_a_master_key_is_refused_in_one_line(
    database_url: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    out = run(*args, env=environment(database_url), cwd=tmp_path, expect=2)
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    assert "FULFILLMENT_MASTER_KEY is not set" in lines[0]
    assert "fulfillment keys generate" in lines[0]
    assert "Traceback" not in out


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
def test_encryption_switched_off_on_purpose_starts_with_a_warning(
    database_url: str, tmp_path: Path
) -> None:
    env = environment(database_url, FULFILLMENT_PHI_ENCRYPTION="off")
    out = run("migrate", env=env, cwd=tmp_path)
    assert "schema at revision" in out
    assert "FULFILLMENT_PHI_ENCRYPTION=off" in out and "plain text" in out


def test_sqlite_generates_its_key_file_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    env = environment(url)
    run("migrate", env=env, cwd=tmp_path)
    first = run("inventory", "set", "ASPIRIN", "5", env=env, cwd=tmp_path)
    key_file = tmp_path / "shop.db.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "generated a master key" in first
    setting = key_file.read_text().strip()
    MasterKeys.parse(setting)  # a valid setting
    again = run("inventory", "show", "ASPIRIN", env=env, cwd=tmp_path)
    assert "generated a master key" not in again
    assert key_file.read_text().strip() == setting
    assert setting not in first + again  # never printed


# --- the operator commands ---------------------------------------------------------------


@pytest.fixture
def shop(database_url: str, tmp_path: Path) -> Iterator[tuple[App, dict[str, str]]]:
    app = bootstrap(settings_for(database_url))
    yield app, environment(database_url, FULFILLMENT_MASTER_KEY=TEST_MASTER_KEY)
    app.close()


def test_customers_forget_erases_and_asks_first(
    shop: tuple[App, dict[str, str]], tmp_path: Path
) -> None:
    app, env = shop
    saga_testkit.place_order(app, "o-1", customer_id="cust-9", patient_name=CANARY, stock=5)
    saga_testkit.run_jobs(app)

    refused = run("customers", "forget", "cust-9", env=env, cwd=tmp_path, expect=2)
    assert "--yes" in refused
    assert opened_names(app, "o-1") == [CANARY, CANARY]

    out = run("customers", "forget", "cust-9", "--yes", env=env, cwd=tmp_path)
    assert "customer cust-9: personal data erased (1 orders)" in out
    # This process trusts the key it read for KEY_CACHE_SECONDS (adapters/patient_data.py).
    saga_testkit.wait_until(
        lambda: opened_names(app, "o-1") == ["[erased]", "[erased]"],
        timeout=KEY_CACHE_SECONDS + 2,
        what="the erasure seen by another process",
    )
    assert "erased (1 orders)" in run("customers", "forget", "-y", "cust-9", env=env, cwd=tmp_path)
    wide = {**env, "COLUMNS": "1000"}  # the whole payload, uncut
    shown = run("events", "tail", "--after", "0", "-n", "2", env=wide, cwd=tmp_path)
    assert '"patient_name":"[erased]"' in shown.replace(" ", "")  # not eaten as markup
    assert CANARY not in shown


def test_keys_generate_then_rotate_lets_the_old_key_go(database_url: str, tmp_path: Path) -> None:
    old = run("keys", "generate", "--id", "old", env=environment(database_url), cwd=tmp_path)
    old = old.strip()
    assert old.startswith("old:")
    new = run("keys", "generate", "--id", "new", env=environment(database_url), cwd=tmp_path)
    new = new.strip()
    writer = bootstrap(settings_for(database_url, master_key=old))
    try:
        saga_testkit.place_order(writer, "o-1", customer_id="cust-1", patient_name=CANARY)
        saga_testkit.place_order(writer, "o-2", customer_id="cust-2", patient_name=CANARY)
    finally:
        writer.close()

    both = environment(database_url, FULFILLMENT_MASTER_KEY=f"{new},{old}")
    out = run("keys", "rotate", env=both, cwd=tmp_path)
    assert "re-wrapped 2 data keys under master key 'new'" in out
    assert "'old' may now be removed" in out
    assert old.split(":")[1] not in out and new.split(":")[1] not in out

    reader = bootstrap(settings_for(database_url, master_key=new))
    try:
        assert opened_names(reader, "o-1") == [CANARY, CANARY]
    finally:
        reader.close()
    bad = run(
        "keys",
        "generate",
        "--id",
        "no spaces",
        env=environment(database_url),
        cwd=tmp_path,
        expect=2,
    )
    assert "id" in bad


def test_a_database_of_the_previous_release_is_sealed_after_its_upgrade(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """Schema 0010 and plain patient data (what the release before this one wrote), then
    `fulfillment migrate` and `fulfillment phi encrypt-existing`."""
    command.upgrade(alembic_config(fresh_database_url), "0010")
    old: Any = bootstrap(settings_for(fresh_database_url, phi_encryption=False))
    try:
        for n in range(3):
            saga_testkit.place_order(old, f"o-{n}", customer_id=f"cust-{n}", patient_name=CANARY)
        with old.engine.begin() as conn:  # what its saga's first step wrote
            conn.execute(
                t.prescriptions.insert().values(
                    id="rx-0",
                    order_id="o-0",
                    prescriber_id="dr-who",
                    patient_name=CANARY,
                    expires_on=datetime.now(UTC).date(),
                    status="active",
                    created_at=datetime.now(UTC),
                    updated_at=datetime.now(UTC),
                )
            )
    finally:
        old.close()

    env = environment(fresh_database_url, FULFILLMENT_MASTER_KEY=TEST_MASTER_KEY)
    run("migrate", env=env, cwd=tmp_path)
    out = run("phi", "encrypt-existing", "--batch", "2", env=env, cwd=tmp_path)
    # Each order's OrderCreated and OrderFulfillmentSagaStarted; the one prescription.
    assert "sealed the patient data of 6 events and 1 prescriptions" in out
    again = run("phi", "encrypt-existing", env=env, cwd=tmp_path)
    assert "sealed the patient data of 0 events and 0 prescriptions" in again

    app = bootstrap(settings_for(fresh_database_url))
    try:
        with read_connection(app.engine) as conn:
            raw = repr(conn.execute(select(t.events.c.data)).all())
            raw += repr(conn.execute(select(t.prescriptions)).all())
        assert CANARY not in raw
        assert opened_names(app, "o-2") == [CANARY, CANARY]
        with app.engine.begin() as conn:
            conn.execute(t.prescriptions.delete())  # o-0's step did not really run
        saga_testkit.run_jobs(app)  # the sagas go on, on sealed data
        # Past their prescriptions (made from the sealed data) to the stock none has.
        orders = [views.get_order(app, f"o-{n}") or {} for n in range(3)]
        assert [o.get("reason") for o in orders] == ["insufficient_stock"] * 3
    finally:
        app.close()
