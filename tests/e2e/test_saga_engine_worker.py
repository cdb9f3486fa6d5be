"""A saga that is not the order saga (tests/approval_saga.py) runs through real
`fulfillment worker` processes, on every backend.

* Four approval sagas reach their wait; the worker is killed with `kill -9` while they
  wait. Signals arrive while no worker runs (one through `fulfillment sagas signal`).
  A new worker takes over: the approved saga completes, the rejected one compensates
  last in, first out, and the timers of the two that got no decision fire once each
  (one after a comment that kept it waiting), compensating LIFO too. A signal after
  the timer fired is refused and changes nothing.
* Versioning: a saga started under v1 waits; v2 (an extra step) is deployed; the v1
  saga finishes under v1 while a new saga runs v2's extra step.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import approval_saga as appr
import pytest
from conftest import TEST_MASTER_KEY
from saga_testkit import wait_until

from fulfillment.bootstrap import App
from fulfillment.domain.saga import SignalNotExpected
from fulfillment.service_layer import commands as c

from .processes import WorkerProcess, fulfillment_command, worker_processes

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parents[1]
# The wait's timeout in the workers (APPROVAL_TIMEOUT_SECONDS): long enough for four sagas
# to reach it and their worker to be killed before any fires, even on a slow machine.
TIMEOUT = 6.0


def saga_env(*, v2: bool = False, timeout: float = TIMEOUT) -> dict[str, str]:
    """What a process needs to run the approval saga: the module on its path, registered."""
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        "PYTHONPATH": path,
        "FULFILLMENT_SAGA_MODULES": "approval_saga",
        "APPROVAL_TIMEOUT_SECONDS": str(timeout),
    }
    if v2:
        env["APPROVAL_SAGA_V2"] = "1"
    return env


@pytest.fixture
def workers(tmp_path: Path, database_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    with worker_processes(tmp_path, database_url) as start:
        yield start


def start_worker(
    start: Callable[..., WorkerProcess], *, v2: bool = False, timeout: float = TIMEOUT
) -> WorkerProcess:
    env = saga_env(v2=v2, timeout=timeout)
    return start(2, extra_env=env, job_lease_seconds=2, retry_backoff_seconds=0.01)


def start_saga(app: App, saga_id: str, amount: int = 100, version: int | None = 1) -> None:
    app.bus.handle(c.StartSaga(saga_id, appr.NAME, {"amount": amount, "room": "b-7"}, version))


def types(app: App, saga_id: str) -> list[str]:
    with app.uow() as uow:
        return [e.type for e in uow.events.read_stream(f"saga-{saga_id}")]


def waiting(app: App, *saga_ids: str) -> Callable[[], bool]:
    return lambda: all("SagaWaitStarted" in types(app, s) for s in saga_ids)


def ended(app: App, *saga_ids: str) -> Callable[[], bool]:
    def check() -> bool:
        with app.uow() as uow:
            sagas = [uow.sagas.get(s) for s in saga_ids]
        return all(s is not None and s.status is not None and s.status.is_terminal for s in sagas)

    return check


def signal(app: App, saga_id: str, name: str, payload: dict[str, str]) -> None:
    app.bus.handle(c.SignalSaga(saga_id, name, payload, "test"))


def cli_signal(database_url: str, saga_id: str, name: str, data: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FULFILLMENT_")}
    env.update(
        saga_env(),
        FULFILLMENT_DATABASE_URL=database_url,
        FULFILLMENT_MASTER_KEY=TEST_MASTER_KEY,
        COLUMNS="200",
    )
    done = subprocess.run(
        [*fulfillment_command(), "sagas", "signal", saga_id, name, "--data", data],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_timers_and_compensations_survive_a_worker_killed_while_sagas_wait(
    app: App, database_url: str, workers: Callable[..., WorkerProcess]
) -> None:
    sagas = ("a-approve", "a-reject", "a-timeout", "a-comment")
    for saga_id in sagas:
        start_saga(app, saga_id)
    first = start_worker(workers)
    wait_until(waiting(app, *sagas), 60, f"the sagas wait\n{first.output()}")

    first.kill()  # kill -9 while every saga waits, its timer job in the queue
    out = cli_signal(database_url, "a-approve", "approve", '{"approver": "ann"}')
    assert "signal approve delivered" in out and "moves on" in out
    signal(app, "a-reject", "reject", {"reason": "too dear"})
    signal(app, "a-comment", "comment", {"text": "which room?"})
    second = start_worker(workers)
    wait_until(ended(app, *sagas), 60, f"every saga ends\n{second.output()}")

    assert types(app, "a-approve")[-2:] == ["SagaSignalReceived", "FundsCaptured"]
    undo = ["SagaCompensationStarted", "RoomCancelled", "FundsReleased"]
    assert types(app, "a-reject")[-4:] == ["SagaSignalReceived", *undo]
    for saga_id in ("a-timeout", "a-comment"):
        history = types(app, saga_id)
        assert history.count("SagaWaitTimedOut") == 1, history
        assert history[-4:] == ["SagaWaitTimedOut", *undo]
    assert "SagaSignalReceived" in types(app, "a-comment")  # the comment kept it waiting
    with app.uow() as uow:
        timed_out = uow.sagas.get("a-timeout")
    assert timed_out is not None and timed_out.failure_reason == "approval_timeout"

    before = types(app, "a-timeout")
    with pytest.raises(SignalNotExpected):
        signal(app, "a-timeout", "approve", {"approver": "late"})
    assert types(app, "a-timeout") == before
    assert second.alive()


def test_sagas_started_under_v1_finish_under_v1_after_v2_is_deployed(
    app: App, workers: Callable[..., WorkerProcess]
) -> None:
    start_saga(app, "v-old", version=1)
    old_worker = start_worker(workers, timeout=3600)  # no timer fires in this test
    wait_until(waiting(app, "v-old"), 60, f"the v1 saga waits\n{old_worker.output()}")
    old_worker.terminate()
    old_worker.wait(30)

    appr.register_v2()  # the deployment: this process and the new worker know v2
    start_saga(app, "v-new", version=None)  # the newest: v2
    new_worker = start_worker(workers, v2=True, timeout=3600)
    wait_until(waiting(app, "v-new"), 60, f"the v2 saga waits\n{new_worker.output()}")
    signal(app, "v-old", "approve", {"approver": "ann"})
    signal(app, "v-new", "approve", {"approver": "ann"})
    wait_until(ended(app, "v-old", "v-new"), 60, f"both end\n{new_worker.output()}")

    with app.uow() as uow:
        old, new = uow.sagas.get("v-old"), uow.sagas.get("v-new")
    assert old is not None and new is not None
    assert (old.spec.version, new.spec.version) == (1, 2)
    assert "Screened" not in types(app, "v-old")
    assert types(app, "v-new")[:4] == ["ApprovalRequested", "FundsHeld", "RoomBooked", "Screened"]
    assert types(app, "v-old")[-1] == types(app, "v-new")[-1] == "FundsCaptured"
