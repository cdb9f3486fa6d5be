"""`fulfillment migrate` on a brand-new database of each backend, through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import insert, inspect, select

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import create_nullpool_engine
from fulfillment.adapters.migrate import alembic_config, migrate
from fulfillment.adapters.services import SqlAlchemyInventoryService

CLI = Path(sys.executable).with_name("fulfillment")


def run_migrate(url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FULFILLMENT_DATABASE_URL": url}
    return subprocess.run(
        [str(CLI), "migrate"], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def schema_differences(url: str) -> list[Any]:
    engine = create_nullpool_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, t.metadata))
    finally:
        engine.dispose()


def test_migrate_builds_the_schema_of_the_tables_module_and_can_run_again(
    fresh_database_url: str,
) -> None:
    first = run_migrate(fresh_database_url)
    assert first.returncode == 0, first.stdout + first.stderr

    head = ScriptDirectory.from_config(alembic_config(fresh_database_url)).get_current_head()
    assert head is not None and head in first.stdout
    assert schema_differences(fresh_database_url) == []

    second = run_migrate(fresh_database_url)
    assert second.returncode == 0, second.stdout + second.stderr
    assert head in second.stdout
    assert schema_differences(fresh_database_url) == []

    engine = create_nullpool_engine(fresh_database_url)
    try:
        assert set(t.metadata.tables) <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:  # the lock rows exist, exactly once each: the
            # appenders' and (MariaDB) the stock groups' (migration 0013)
            rows = conn.execute(select(t.event_append_lock.c.id).order_by("id")).scalars().all()
            mariadb = engine.dialect.name in ("mysql", "mariadb")
            assert rows == ([1, 2] if mariadb else [1])
    finally:
        engine.dispose()


def test_migrate_at_head_does_not_wait_for_the_write_lock(fresh_database_url: str) -> None:
    """A process starting beside busy writers (a second worker) only reads the version."""
    assert run_migrate(fresh_database_url).returncode == 0
    engine = create_nullpool_engine(fresh_database_url)
    busy = create_nullpool_engine(fresh_database_url)
    try:
        with busy.begin() as writer:  # a writer holds its write lock (and row locks)
            writer.execute(
                t.event_append_lock.update().where(t.event_append_lock.c.id == 1).values(id=1)
            )
            done = threading.Event()
            migrating = threading.Thread(target=lambda: (migrate(engine), done.set()))
            migrating.start()
            migrating.join(10)
            assert done.is_set(), "migrate waited for the writer"
    finally:
        busy.dispose()
        engine.dispose()


def test_upgrading_to_0008_puts_the_stock_in_lot_default_and_its_reservations_with_it(
    fresh_database_url: str,
) -> None:
    """Stock and reservations of a database before lots existed: after the upgrade each
    SKU's units are lot `default`, and the reservations still held release and consume
    from it, by lot and in the SKU's totals."""
    now = datetime(2030, 5, 1, tzinfo=UTC)
    engine = create_nullpool_engine(fresh_database_url)
    try:
        migrate(engine, "0007")
        with engine.begin() as conn:
            for sku, on_hand, reserved in (("A", 10, 5), ("B", 4, 1), ("C", 0, 0)):
                conn.execute(
                    insert(t.inventory).values(
                        sku=sku, on_hand=on_hand, reserved=reserved, updated_at=now
                    )
                )
            for order_id, status, lines in (
                ("o-held", "reserved", [{"sku": "A", "quantity": 3}, {"sku": "B", "quantity": 1}]),
                ("o-done", "consumed", [{"sku": "A", "quantity": 2}]),
                ("o-other", "reserved", [{"sku": "A", "quantity": 2}]),
                ("o-gone", "released", [{"sku": "B", "quantity": 1}]),
            ):
                conn.execute(
                    insert(t.inventory_reservations).values(
                        id=f"r-{order_id}",
                        order_id=order_id,
                        status=status,
                        lines=lines,
                        created_at=now,
                        updated_at=now,
                    )
                )

        migrate(engine)

        assert schema_differences(fresh_database_url) == []
        with engine.connect() as conn:
            lots = conn.execute(
                select(t.inventory_lots.c.sku, t.inventory_lots.c.lot, t.inventory_lots.c.on_hand)
                .add_columns(t.inventory_lots.c.reserved, t.inventory_lots.c.expires_on)
                .order_by(t.inventory_lots.c.sku)
            ).all()
            taken = conn.execute(
                select(t.reservation_lots).order_by(
                    t.reservation_lots.c.order_id, t.reservation_lots.c.position
                )
            ).all()
            schedules = conn.execute(select(t.inventory.c.dea_schedule)).scalars().all()
        assert [tuple(row) for row in lots] == [
            ("A", "default", 10, 5, None),
            ("B", "default", 4, 1, None),
            ("C", "default", 0, 0, None),
        ]
        assert [tuple(row) for row in taken] == [
            ("o-held", "A", "default", 3, 0),
            ("o-held", "B", "default", 1, 1),
            ("o-other", "A", "default", 2, 0),
        ]
        assert schedules == [None, None, None]

        with engine.begin() as conn:
            inventory = SqlAlchemyInventoryService(conn)
            inventory.release("o-held")
            inventory.consume("o-other")
            inventory.release("o-gone")  # released before the upgrade: nothing to do
        with engine.connect() as conn:
            inventory = SqlAlchemyInventoryService(conn)
            a, b = inventory.get("A"), inventory.get("B")
            recall = inventory.lot_orders("A", "default")
        assert a is not None and b is not None
        assert (a.on_hand, a.reserved) == (8, 0)
        assert [(lot.lot, lot.on_hand, lot.reserved) for lot in a.lots] == [("default", 8, 0)]
        assert (b.on_hand, b.reserved) == (4, 0)
        assert [(lot.lot, lot.on_hand, lot.reserved) for lot in b.lots] == [("default", 4, 0)]
        assert recall == [("o-held", 3), ("o-other", 2)]
    finally:
        engine.dispose()
