"""Group commit (adapters/group_commit.py): steps of several job threads share one
transaction; each keeps rule 1 (docs/architecture.md) on its own, and none is acted on
before COMMIT."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from saga_testkit import place_order, run_jobs, wait_until
from sqlalchemy import Connection, func, insert, select

from fulfillment.adapters import tables as t
from fulfillment.adapters.group_commit import GroupCommitter
from fulfillment.bootstrap import App
from fulfillment.entrypoints.worker import Worker
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.messagebus import RetryableDatabaseError

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def _stock(conn: Connection, sku: str) -> None:
    conn.execute(insert(t.inventory).values(sku=sku, on_hand=1, reserved=0, updated_at=NOW))


def _stocking(sku: str, rows: list | None = None) -> Callable[[Connection], list]:
    """A step that stocks `sku` and hands the group `rows` as its events."""

    def work(conn: Connection) -> list:
        _stock(conn, sku)
        return rows or []

    return work


def _skus(app: App) -> set[str]:
    with app.engine.connect() as conn:
        return set(conn.execute(select(t.inventory.c.sku)).scalars())


def _committer(app: App) -> GroupCommitter:
    assert app.group is not None, "group commit is on by default"
    return app.group


def _queued(group: GroupCommitter, n: int) -> None:
    wait_until(lambda: group._queued >= n, 10, "the second step queued", poll=0.001)


def _two_steps(
    app: App,
    first: Callable[[Connection], list | None],
    second: Callable[[Connection], list | None],
) -> list[object]:
    """Step 1 holds the turn until step 2 is queued, so both land in one group."""
    group = _committer(app)
    results: list[object] = [None, None]

    def run(i: int, work: Callable[[Connection], list | None], hold: bool) -> None:
        conn = group.enter()
        if hold:
            _queued(group, 1)
        rows = work(conn)
        found = group.keep(rows) if rows is not None else group.drop()
        try:
            if found is not None:
                found.wait()
            results[i] = "committed" if found is not None else "rolled back"
        except RetryableDatabaseError as exc:
            results[i] = exc

    one = threading.Thread(target=run, args=(0, first, True))
    one.start()
    wait_until(group._turn.locked, 10, "the first step holds the turn", poll=0.001)
    two = threading.Thread(target=run, args=(1, second, False))
    two.start()
    one.join(10)
    two.join(10)
    return results


def test_steps_queued_behind_each_other_commit_once_together(app: App) -> None:
    group = _committer(app)
    before = group.commits

    assert _two_steps(app, _stocking("GC-1"), _stocking("GC-2")) == ["committed", "committed"]
    assert {"GC-1", "GC-2"} <= _skus(app)
    assert group.commits == before + 1


def test_a_step_that_fails_rolls_back_its_own_savepoint_only(app: App) -> None:
    def failed(conn: Connection) -> None:
        _stock(conn, "GC-GONE")
        return None  # the step raised: its unit of work rolls back

    assert _two_steps(app, _stocking("GC-KEPT"), failed) == ["committed", "rolled back"]
    skus = _skus(app)
    assert "GC-KEPT" in skus and "GC-GONE" not in skus


def test_when_the_group_fails_no_step_commits_and_every_step_is_told(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = _committer(app)

    def fail(conn: Connection, rows: list) -> None:
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(group, "insert_events", fail)
    row = [{"an": "event row"}]

    results = _two_steps(app, _stocking("GC-A", row), _stocking("GC-B", row))
    assert all(isinstance(r, RetryableDatabaseError) for r in results), results
    assert not {"GC-A", "GC-B"} & _skus(app)
    # The committer goes on with a fresh transaction.
    monkeypatch.undo()
    assert _two_steps(app, _stocking("GC-C"), _stocking("GC-D")) == ["committed", "committed"]
    assert {"GC-C", "GC-D"} <= _skus(app)


SKUS = [f"GC-SKU-{n}" for n in range(4)]


def _place(app: App, orders: list[str]) -> None:
    """Orders of 2 units each, over a few hot SKUs."""
    for sku in SKUS:
        app.bus.handle(c.SetInventory(sku=sku, on_hand=200))
    for i, order_id in enumerate(orders):
        place_order(app, order_id, {SKUS[i % len(SKUS)]: 2})


def _assert_fulfilled(app: App, orders: list[str]) -> None:
    with app.engine.connect() as conn:
        shipments = conn.execute(select(t.shipments.c.order_id)).scalars().all()
        stock = conn.execute(
            select(func.sum(t.inventory.c.on_hand), func.sum(t.inventory.c.reserved)).where(
                t.inventory.c.sku.in_(SKUS)
            )
        ).one()
    assert sorted(shipments) == sorted(orders)
    assert tuple(stock) == (200 * len(SKUS) - 2 * len(orders), 0)
    # Within every stream, positions follow versions: a follower of the feed sees each
    # saga's events in the order they happened (two groups, one transaction id each).
    with app.engine.connect() as conn:
        rows = conn.execute(
            select(t.events.c.stream_id, t.events.c.version).order_by(t.events.c.position)
        ).all()
    last: dict[str, int] = {}
    for stream, version in rows:
        assert version == last.get(stream, 0) + 1, f"{stream} #{version} after #{last.get(stream)}"
        last[stream] = version


def test_a_worker_with_many_threads_fulfils_every_order_exactly_once(app: App) -> None:
    orders = [f"gc-{i}" for i in range(30)]
    _place(app, orders)
    group = _committer(app)
    before = group.committed_steps

    run_jobs(app, 12, timeout=120)

    _assert_fulfilled(app, orders)
    # Every step of every order (4 each) went through a shared transaction (on SQLite
    # the queue's claims and heartbeats join it too); where several processes write at
    # once, the two that write stock (reserve, complete) went through the stock group.
    joined = group.committed_steps - before
    if app.queue.group is not None:
        assert joined > 4 * len(orders)
    elif app.stock_group is None:
        assert joined == 4 * len(orders)
    else:
        assert (joined, app.stock_group.committed_steps) == (2 * len(orders), 2 * len(orders))


@pytest.mark.parametrize("stock_commit", ["group", "step"])
def test_the_groups_of_two_workers_on_one_database_do_not_deadlock(
    make_app: Callable[..., App], stock_commit: str
) -> None:
    """Each group holds row locks (inventory, jobs) until its COMMIT; two workers' groups
    touching the same hot rows once waited on each other for good on PostgreSQL. With
    FULFILLMENT_STOCK_COMMIT=step the stock steps of both workers lock the same few SKU
    rows, each in a transaction of its own, beside both main groups."""
    apps = [make_app(stock_commit=stock_commit), make_app(stock_commit=stock_commit)]
    orders = [f"gc2-{i}" for i in range(120)]
    _place(apps[0], orders)
    workers = [Worker(app, concurrency=16) for app in apps]
    threads = [
        threading.Thread(target=w.run, kwargs={"until_idle": True, "timeout": 50}) for w in workers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    _assert_fulfilled(apps[0], orders)


def test_with_group_commit_off_each_step_commits_on_its_own(
    make_app: Callable[..., App],
) -> None:
    app = make_app(group_commit_max_steps=1)
    assert app.group is None
    orders = [f"solo-{i}" for i in range(12)]
    _place(app, orders)

    run_jobs(app, 6, timeout=120)

    _assert_fulfilled(app, orders)


def test_with_stock_commit_step_each_stock_step_commits_alone(
    make_app: Callable[..., App],
) -> None:
    """FULFILLMENT_STOCK_COMMIT=step: where several processes write at once, the steps
    that write stock (reserve, complete) commit on their own, not in a group; the others
    still share the main group. SQLite has one writer and one group for every step."""
    app = make_app(stock_commit="step")
    orders = [f"alone-{i}" for i in range(20)]
    _place(app, orders)
    group = _committer(app)
    before = group.committed_steps

    run_jobs(app, 8, timeout=120)

    _assert_fulfilled(app, orders)
    assert app.stock_group is None
    joined = group.committed_steps - before
    if app.engine.dialect.name == "sqlite":
        assert not app.stock_alone
        assert joined > 4 * len(orders)  # the queue's claims join the group too
    else:
        assert app.stock_alone
        assert joined == 2 * len(orders)
