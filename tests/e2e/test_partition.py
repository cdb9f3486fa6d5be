"""A worker cut off from the database while it holds a transaction (docs/architecture.md, rule 11).

The worker runs in a network namespace of its own (`benchmarks/netns.py`), reaching
the database through a relay on its veth link. Once the database shows the worker's
session holding a write transaction, the link is cut (every packet dropped, both ways)
for three leases, while an API and two more workers go on. Then:

* the cut-off worker's locks are freed within the documented bound (the server's
  idle-in-transaction timeout, `FULFILLMENT_DB_IDLE_IN_TRANSACTION_SECONDS`);
* the others keep finishing orders, at least half as fast as before the cut;
* when the link returns, the worker's stale work is rejected (its claims were taken
  over), and nothing is lost, duplicated or oversold: no saga has an event twice, and
  every accepted order ends.

SQLite is a file on this machine: a process cannot be cut off from it by a network.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from conftest import IN_CI
from saga_testkit import seconds_until
from sqlalchemy.engine import make_url

from benchmarks import netns
from benchmarks.pause import (
    SERVER_PORTS,
    CommitWatch,
    Load,
    PauseConfig,
    Process,
    _environment,
    check_invariants,
    product,
    write_transaction_ports,
)
from fulfillment.adapters.db import create_nullpool_engine
from fulfillment.config import Settings

pytestmark = pytest.mark.slow

LEASE = 2.0


@pytest.fixture
def namespace() -> netns.Namespace:
    why = netns.unavailable()
    if why:
        if IN_CI:
            pytest.fail(f"CI=true requires the partition test: {why}", pytrace=False)
        pytest.skip(why)
    ns = netns.Namespace.create(index=random.randrange(1, 250))
    yield ns  # type: ignore[misc]
    ns.close()


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_a_cut_off_worker_frees_its_locks_in_time_and_its_stale_work_is_rejected(
    database_url: str, tmp_path: Path, namespace: netns.Namespace, backend: str
) -> None:
    config = PauseConfig(workers=2, lease_seconds=LEASE, carrier_latency_ms=20)
    bound = Settings(job_lease_seconds=LEASE).db_bounds.idle_in_transaction
    relay = namespace.relay(SERVER_PORTS[backend])
    through_link = (
        make_url(database_url)
        .set(host=namespace.host_ip, port=relay.port)
        .render_as_string(hide_password=False)
    )
    in_transaction, close_ports = write_transaction_ports(database_url, append_lock=False)
    engine = create_nullpool_engine(database_url)
    try:
        with product(database_url, config, tmp_path) as (_apis, urls, _workers):
            env = {**_environment(through_link, config), "PATH": os.environ["PATH"]}
            cut_off = Process(
                "worker-cut-off",
                ["worker", "--concurrency", "8", "--no-migrate"],
                env,
                tmp_path,
                wrap=namespace.command,
            )
            try:
                started = time.monotonic()
                watch = CommitWatch(database_url, started)
                load = Load(urls, config.rate, started)
                watch.start()
                load.start()
                assert seconds_until(lambda: watch.finished_at(float("inf")) >= 5, 60) is not None
                assert seconds_until(relay.upstream_ports, 30) is not None, (
                    cut_off.log_path.read_text()
                )
                warm = time.monotonic() - started
                time.sleep(2.5)

                # Cut the link at a moment the worker holds a write transaction.
                for _ in range(200):
                    namespace.cut()
                    time.sleep(0.02)
                    if relay.upstream_ports() & in_transaction():
                        break
                    namespace.restore()
                    time.sleep(random.uniform(0.2, 0.6))  # TCP resends what the cut dropped
                else:
                    pytest.fail("the worker was never cut off inside a transaction")
                cut_at = time.monotonic() - started

                freed = seconds_until(
                    lambda: not (relay.upstream_ports() & in_transaction()), 3 * LEASE
                )
                assert freed is not None, "the cut-off worker's locks were never freed"
                assert freed <= bound + 1.0, (freed, bound)

                time.sleep(max(0.0, 3 * LEASE - (time.monotonic() - started - cut_at)))
                restored_at = time.monotonic() - started
                namespace.restore()
                time.sleep(2.0)
                load.stop()
                drained = seconds_until(
                    lambda: watch.finished_at(float("inf")) >= len(load.accepted), 120
                )
                watch.stop()
            finally:
                cut_off.stop()
        summary = {
            "before": watch.rate(warm, cut_at),
            "during": watch.rate(cut_at, restored_at),
            "freed_after_s": freed,
            "longest_stall_s": watch.longest_stall(cut_at, restored_at),
        }
        assert drained is not None, (summary, check_invariants(engine, load.accepted))
        assert summary["during"] >= 0.5 * summary["before"], summary
        assert check_invariants(engine, load.accepted) == []
        live = [a for a in load.answers if cut_at <= a.at <= restored_at]
        assert live and all(a.status in (202, 503) and a.seconds < 2.0 for a in live)
    finally:
        close_ports()
        engine.dispose()
