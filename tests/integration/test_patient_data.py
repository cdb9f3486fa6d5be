"""Patient data at rest (docs/security.md), on every backend, through the real API:
stored only sealed (the raw database, dumped with the server's own tools, holds no
canary), read back as before by the roles that may, erased by crypto-shredding, its
master key rotated, and the plain data of an older release sealed in place.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from conftest import TEST_MASTER_KEY, settings_for
from fastapi.testclient import TestClient
from saga_testkit import run_jobs, saga_of
from sqlalchemy import select
from sqlalchemy.engine import make_url

from fulfillment import views
from fulfillment.adapters import tables as t
from fulfillment.adapters.data_keys import DataKeys
from fulfillment.adapters.db import read_connection, sqlite_file
from fulfillment.adapters.patient_data import PatientData, erase_customer
from fulfillment.adapters.phi_backfill import encrypt_existing
from fulfillment.adapters.phi_crypto import CryptoError, MasterKeys, sealed_by
from fulfillment.adapters.projections import Projector
from fulfillment.bootstrap import App, bootstrap
from fulfillment.domain.status import SagaStatus
from fulfillment.entrypoints.api import create_api

CANARY = "Canary Quillfeather"
STREET = "7 Canary Wharf Lane"
KEYS = ("shop:client:s-client", "rx:pharmacist:s-rx", "root:admin:s-admin", "eye:viewer:s-eye")
CLIENT = {"Authorization": "Bearer s-client"}
PHARMACIST = {"Authorization": "Bearer s-rx"}
ADMIN = {"Authorization": "Bearer s-admin"}
VIEWER = {"Authorization": "Bearer s-eye"}
ERASED = "[erased]"


def order_body(customer_id: str = "cust-canary", patient: str = CANARY) -> dict[str, Any]:
    return {
        "customer_id": customer_id,
        "items": [{"sku": "ASPIRIN", "quantity": 1}],
        "prescription": {
            "prescriber_id": "GMC-7654321",
            "patient_name": patient,
            "expires_on": "2099-12-31",
        },
        "shipping_address": {
            "name": patient,
            "line1": STREET,
            "city": "Canaryville",
            "postal_code": "CN1 1RY",
            "country": "US",
        },
    }


@pytest.fixture
def keyed(make_app: Callable[..., App]) -> App:
    return make_app(api_keys=KEYS)


@pytest.fixture
def http(keyed: App) -> Iterator[TestClient]:
    with TestClient(create_api(keyed)) as client:
        yield client


def stocked(http: TestClient) -> None:
    answer = http.put("/inventory/ASPIRIN", json={"on_hand": 50}, headers=ADMIN)
    assert answer.status_code == 200, answer.text


def place(http: TestClient, **body: Any) -> str:
    """Place an order (with an Idempotency-Key, whose stored answer must hold no PHI)."""
    answer = http.post(
        "/orders", json=order_body(**body), headers={**CLIENT, "Idempotency-Key": uuid4().hex}
    )
    assert answer.status_code in (201, 202), answer.text
    return str(answer.json()["order_id"])


def raw_rows(app: App) -> str:
    """Every stored row of every table, as text (what a database reader sees)."""
    with read_connection(app.engine) as conn:
        return "\n".join(
            repr(tuple(row))
            for table in t.metadata.sorted_tables
            for row in conn.execute(select(table))
        )


def dump(app: App) -> bytes:
    """The raw database as its server's own tools dump it; SQLite: the file and its WAL."""
    url = make_url(str(app.engine.url))
    backend = app.engine.dialect.name
    if backend == "sqlite":
        path = sqlite_file(str(app.engine.url))
        assert path is not None
        return b"".join(
            Path(path + suffix).read_bytes()
            for suffix in ("", "-wal")
            if Path(path + suffix).exists()
        )
    if backend == "postgresql":
        tool = shutil.which("pg_dump")
        assert tool is not None, "pg_dump is needed (the PostgreSQL client)"
        command = [tool, "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432)]
        command += ["-U", url.username or "postgres", "-d", str(url.database)]
    else:
        tool = shutil.which("mariadb-dump") or shutil.which("mysqldump")
        assert tool is not None, "mariadb-dump is needed (the MariaDB client)"
        command = [tool, "-h", url.host or "127.0.0.1", "-P", str(url.port or 3306)]
        command += ["-u", url.username or "root", "--skip-extended-insert", str(url.database)]
        if url.password:
            command.insert(1, f"-p{url.password}")
    done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def assert_no_canary(blob: bytes | str) -> None:
    text = blob if isinstance(blob, str) else blob.decode("utf-8", errors="replace")
    for secret in (CANARY, STREET, "GMC-7654321", "Canaryville", "CN1 1RY"):
        assert secret not in text, f"{secret!r} stored in plain text"


# --- 1. stored sealed, read back as before -----------------------------------------------


def test_a_canary_patient_is_nowhere_in_the_raw_database(keyed: App, http: TestClient) -> None:
    stocked(http)
    o_canary = place(http)
    run_jobs(keyed)
    Projector(keyed.engine, keyed.mapper).catch_up(timeout=30)
    assert saga_of(keyed, o_canary).status is SagaStatus.COMPLETED

    raw = dump(keyed)
    assert o_canary.encode() in raw  # the dump holds the order
    assert_no_canary(raw)
    assert_no_canary(raw_rows(keyed))


def test_roles_that_may_read_patient_data_read_the_same_values_as_before(
    keyed: App, http: TestClient
) -> None:
    stocked(http)
    o_1 = place(http)
    run_jobs(keyed)

    events = http.get(f"/orders/{o_1}/events", headers=PHARMACIST).json()
    created = next(e for e in events if e["type"] == "OrderCreated")
    assert created["data"]["prescription"]["patient_name"] == CANARY
    assert created["data"]["shipping_address"] == order_body()["shipping_address"]
    started = next(e for e in events if e["type"] == "OrderFulfillmentSagaStarted")
    assert started["data"]["prescription"]["prescriber_id"] == "GMC-7654321"
    feed = http.get("/events", headers=ADMIN).text
    assert CANARY in feed and STREET in feed
    fhir = http.get(f"/orders/{o_1}/fhir", headers=PHARMACIST).text
    assert CANARY in fhir and "GMC-7654321" in fhir
    assert CANARY in http.get(f"/api/dashboard/orders/{o_1}/timeline", headers=ADMIN).text
    # A role that may not read patient data sees none, sealed or opened.
    hidden = http.get(f"/api/dashboard/orders/{o_1}/timeline", headers=VIEWER)
    assert hidden.status_code == 200
    assert CANARY not in hidden.text and "phi1:" not in hidden.text
    # The prescription the saga wrote: sealed in its table, under the customer's key.
    with read_connection(keyed.engine) as conn:
        row = conn.execute(select(t.prescriptions)).one()
    assert row.patient_name.startswith("phi1:")


def test_a_ciphertext_moved_to_another_event_does_not_open(keyed: App, http: TestClient) -> None:
    o_1 = place(http)
    o_2 = place(http)
    e = t.events
    with keyed.engine.begin() as conn:
        first, second = (
            conn.execute(
                select(e.c.position, e.c.data).where(
                    e.c.stream_id == f"order-{oid}", e.c.version == 1
                )
            ).one()
            for oid in (o_1, o_2)
        )
        moved = {**second.data, "prescription": first.data["prescription"]}
        conn.execute(e.update().where(e.c.position == second.position).values(data=moved))

    assert CANARY in http.get(f"/orders/{o_1}/events", headers=PHARMACIST).text
    with pytest.raises(CryptoError):  # an integrity failure (a 500), never the data
        http.get(f"/orders/{o_2}/events", headers=PHARMACIST)


# --- 2. erasure --------------------------------------------------------------------------


def test_erasing_a_customer_shreds_their_data_everywhere_and_keeps_the_log(
    keyed: App, http: TestClient
) -> None:
    stocked(http)
    o_done = place(http)
    run_jobs(keyed)
    o_running = place(http)  # its first step is queued, not run: a saga in flight
    o_other = place(http, customer_id="cust-else", patient="Somebody Else")
    before = [
        (e["position"], e["stream_id"], e["version"], e["type"])
        for e in http.get("/events?limit=1000", headers=ADMIN).json()
    ]

    assert (
        http.delete("/customers/cust-canary/personal-data", headers=PHARMACIST).status_code == 403
    )
    answer = http.delete("/customers/cust-canary/personal-data", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"customer_id": "cust-canary", "erased_orders": 2}
    run_jobs(keyed)

    # The running saga was stopped for that reason, and compensated.
    running = saga_of(keyed, o_running)
    assert running.status is SagaStatus.COMPENSATED
    assert views.get_order(keyed, o_running)["reason"] == "personal_data_erased"
    # Every answer now reads erased; the log is the same log, and still replays.
    feed = http.get("/events?limit=1000", headers=ADMIN).json()
    assert [(e["position"], e["stream_id"], e["version"], e["type"]) for e in feed][
        : len(before)
    ] == before
    for order_id in (o_done, o_running):
        events = http.get(f"/orders/{order_id}/events", headers=ADMIN).json()
        created = next(e for e in events if e["type"] == "OrderCreated")["data"]
        assert created["prescription"]["patient_name"] == ERASED
        assert created["prescription"]["prescriber_id"] == ERASED
        assert created["shipping_address"] == {
            "name": ERASED,
            "line1": ERASED,
            "city": ERASED,
            "postal_code": ERASED,
            "country": "US",
        }
        fhir = http.get(f"/orders/{order_id}/fhir", headers=ADMIN)
        assert fhir.status_code == 200 and ERASED in fhir.text
        timeline = http.get(f"/api/dashboard/orders/{order_id}/timeline", headers=ADMIN)
        assert timeline.status_code == 200 and ERASED in timeline.text
    text = http.get("/events?limit=1000", headers=ADMIN).text
    assert CANARY not in text
    assert "Somebody Else" in text  # another customer's data is untouched
    assert saga_of(keyed, o_done).status is SagaStatus.COMPLETED

    # A projection rebuilt after the erasure is the same.
    projector = Projector(keyed.engine, keyed.mapper)
    projector.catch_up(timeout=30)
    summaries = [views.get_order(keyed, o) for o in (o_done, o_running, o_other)]
    projector.rebuild()
    assert [views.get_order(keyed, o) for o in (o_done, o_running, o_other)] == summaries

    # Idempotent; and a later order of the customer gets a new key, and reads.
    again = http.delete("/customers/cust-canary/personal-data", headers=ADMIN)
    assert again.json() == {"customer_id": "cust-canary", "erased_orders": 2}
    o_later = place(http)
    later = http.get(f"/orders/{o_later}/events", headers=ADMIN).text
    assert CANARY in later


def test_a_customer_without_orders_is_erased_with_none(http: TestClient) -> None:
    answer = http.delete("/customers/nobody/personal-data", headers=ADMIN)
    assert answer.status_code == 200
    assert answer.json() == {"customer_id": "nobody", "erased_orders": 0}


# --- 3. rotation, and the data of an older release ---------------------------------------

OLD = MasterKeys.generate("old")
NEW = MasterKeys.generate("new")


def test_after_rotation_the_old_master_key_can_go(database_url: str, make_app: Any) -> None:
    first = bootstrap(settings_for(database_url, master_key=OLD, api_keys=KEYS))
    try:
        with TestClient(create_api(first)) as http:
            o_1 = place(http)
    finally:
        first.close()
    rotating = bootstrap(settings_for(database_url, master_key=f"{NEW},{OLD}"))
    try:
        with rotating.engine.begin() as conn:
            assert DataKeys(conn, rotating.patient_data.masters).rewrap() == 1  # type: ignore[arg-type]
        with rotating.engine.begin() as conn:
            assert DataKeys(conn, rotating.patient_data.masters).rewrap() == 0  # type: ignore[arg-type]
    finally:
        rotating.close()
    after = bootstrap(settings_for(database_url, master_key=NEW, api_keys=KEYS))
    try:
        with TestClient(create_api(after)) as http:
            assert CANARY in http.get(f"/orders/{o_1}/events", headers=ADMIN).text
    finally:
        after.close()


def test_encrypt_existing_seals_plain_data_in_place_and_resumes(database_url: str) -> None:
    plain = bootstrap(settings_for(database_url, phi_encryption=False, api_keys=KEYS))
    try:
        with TestClient(create_api(plain)) as http:
            stocked(http)
            orders = [place(http) for _ in range(5)]
            run_jobs(plain)
        assert CANARY in raw_rows(plain)
        positions = [
            (e["position"], e["stream_id"], e["version"])
            for e in views.events_after(plain, 0, 1000)
        ]
    finally:
        plain.close()

    app = bootstrap(settings_for(database_url, api_keys=KEYS))
    try:
        seen: list[int] = []

        def interrupt(progress: Any) -> None:
            seen.append(progress.events)
            if len(seen) == 2:
                raise KeyboardInterrupt  # stopped after two batches

        with pytest.raises(KeyboardInterrupt):
            encrypt_existing(app.engine, app.patient_data, batch=3, on_batch=interrupt)
        done = encrypt_existing(app.engine, app.patient_data, batch=3)
        # Resumed after the two batches: each of the 10 events with PHI sealed once.
        assert seen[-1] > 0 and seen[-1] + done.events == 10
        assert done.prescriptions == 5
        assert_no_canary(raw_rows(app))
        assert encrypt_existing(app.engine, app.patient_data, restart=True).events == 0
        with TestClient(create_api(app)) as http:
            assert CANARY in http.get(f"/orders/{orders[3]}/events", headers=ADMIN).text
        after = [
            (e["position"], e["stream_id"], e["version"]) for e in views.events_after(app, 0, 1000)
        ]
        assert after == positions
    finally:
        app.close()


# --- without the key ----------------------------------------------------------------------


def test_a_process_without_the_master_key_says_so_and_never_shows_erased(
    database_url: str, backend: str
) -> None:
    sealing = bootstrap(settings_for(database_url, api_keys=KEYS))
    try:
        with TestClient(create_api(sealing)) as http:
            o_1 = place(http)
    finally:
        sealing.close()
    other = MasterKeys.generate("other")
    locked = bootstrap(settings_for(database_url, api_keys=KEYS, master_key=other))
    try:
        with TestClient(create_api(locked)) as http:
            answer = http.get(f"/orders/{o_1}/events", headers=ADMIN)
            assert answer.status_code == 503
            assert answer.json()["error"]["code"] == "patient_data_locked"
            assert ERASED not in answer.text
            assert http.get(f"/orders/{o_1}", headers=ADMIN).status_code == 200  # no PHI in it
    finally:
        locked.close()
    assert TEST_MASTER_KEY  # the fixtures' key opened them all along


# --- the key cache of one process ---------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_a_key_read_is_trusted_for_the_cache_time_and_reading_never_extends_it(
    app: App,
) -> None:
    """Another process's erasure shows after KEY_CACHE_SECONDS at most, however often the
    data is read meanwhile; this process's own erasure shows at once."""
    clock = Clock()
    codec = PatientData(app.patient_data.masters, key_cache_seconds=1.0, clock=clock)
    with app.engine.begin() as conn:
        sealed = codec.seal_value(conn, "cust-1", CANARY, "here", fresh=True)
    with app.engine.begin() as conn:  # another process erases the customer
        DataKeys(conn, app.patient_data.masters).forget("cust-1")  # type: ignore[arg-type]

    for _ in range(9):  # read every 0.1 s: still the cached key, until the second is over
        with read_connection(app.engine) as conn:
            assert codec.open_value(conn, sealed, "here") == CANARY
        clock.now += 0.1
    clock.now += 0.2
    with read_connection(app.engine) as conn:
        assert codec.open_value(conn, sealed, "here") == ERASED

    with app.engine.begin() as conn:  # a new order of theirs: a new key
        again = codec.seal_value(conn, "cust-1", CANARY, "there", fresh=True)
    assert sealed_by(again) != sealed_by(sealed)
    assert erase_customer(app.engine, codec, "cust-1") is True
    with read_connection(app.engine) as conn:  # erased here: at once
        assert codec.open_value(conn, again, "there") == ERASED
    assert erase_customer(app.engine, codec, "cust-1") is False
