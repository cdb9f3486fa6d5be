"""`fulfillment phi encrypt-existing`: seal the patient data written before it was
encrypted (or while encryption was off), in place, in batches, resumably.

Events keep their stream, version, position and everything else; only the patient-data
fields of their data change, from plain text to the ciphertext the mapper would have
written (bound to the same place, adapters/patient_data.py). Each batch commits on its
own with the position it reached, in `projection_checkpoints` under `CHECKPOINT`, so an
interrupted run goes on where it stopped. Sealed values are never sealed twice, so a run
from the start (`restart`) is safe too. The `prescriptions` table is done the same way,
after the events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, insert, select, update

from fulfillment.adapters import tables as t
from fulfillment.adapters.patient_data import (
    PRESCRIPTION_COLUMNS,
    PatientData,
    is_sealed_event,
    table_place,
)
from fulfillment.adapters.phi_crypto import is_sealed

CHECKPOINT = "phi_encrypt_existing"
BATCH = 500


@dataclass
class Progress:
    events: int = 0
    prescriptions: int = 0
    position: int = 0


def _checkpoint(conn: Connection) -> int:
    cp = t.projection_checkpoints
    found = conn.execute(select(cp.c.position).where(cp.c.name == CHECKPOINT)).scalar()
    return int(found or 0)


def _save_checkpoint(conn: Connection, position: int) -> None:
    cp = t.projection_checkpoints
    if conn.execute(update(cp).where(cp.c.name == CHECKPOINT).values(position=position)).rowcount:
        return
    conn.execute(insert(cp).values(name=CHECKPOINT, position=position))


def encrypt_existing(
    engine: Engine,
    patient_data: PatientData,
    *,
    batch: int = BATCH,
    restart: bool = False,
    on_batch: Callable[[Progress], None] | None = None,
) -> Progress:
    """Seal every plain patient-data field of the events, then of the prescriptions."""
    if not patient_data.encrypts:
        raise ValueError(
            "encryption is off (FULFILLMENT_PHI_ENCRYPTION=off, or no master key): "
            "nothing would be sealed"
        )
    e = t.events
    progress = Progress()
    with engine.begin() as conn:
        progress.position = 0 if restart else _checkpoint(conn)
    while True:
        with engine.begin() as conn:
            rows = conn.execute(
                select(e.c.position, e.c.stream_id, e.c.version, e.c.type, e.c.data)
                .where(e.c.position > progress.position)
                .order_by(e.c.position)
                .limit(batch)
            ).all()
            if not rows:
                break
            for row in rows:
                if is_sealed_event(row.type, row.data):  # or no patient data in it
                    continue
                sealed = patient_data.seal_event(
                    conn, row.type, row.data, row.stream_id, row.version
                )
                conn.execute(update(e).where(e.c.position == row.position).values(data=sealed))
                progress.events += 1
            progress.position = int(rows[-1].position)
            _save_checkpoint(conn, progress.position)
        if on_batch is not None:
            on_batch(progress)
    progress.prescriptions = _encrypt_prescriptions(engine, patient_data, batch)
    return progress


def _customer_of(conn: Connection, order_id: str) -> str | None:
    s = t.order_summaries
    found = conn.execute(select(s.c.customer_id).where(s.c.order_id == order_id)).scalar()
    if found is not None:
        return str(found)
    data = conn.execute(
        select(t.events.c.data).where(
            t.events.c.stream_id == f"order-{order_id}", t.events.c.version == 1
        )
    ).scalar()
    return str(data["customer_id"]) if isinstance(data, dict) else None


def _encrypt_prescriptions(engine: Engine, patient_data: PatientData, batch: int) -> int:
    p = t.prescriptions
    done, after = 0, ""
    while True:
        with engine.begin() as conn:
            rows = conn.execute(
                select(p.c.order_id, *(p.c[c] for c in PRESCRIPTION_COLUMNS))
                .where(p.c.order_id > after)
                .order_by(p.c.order_id)
                .limit(batch)
            ).all()
            if not rows:
                return done
            for row in rows:
                values = {c: row._mapping[c] for c in PRESCRIPTION_COLUMNS}
                customer_id = _customer_of(conn, row.order_id)
                if customer_id is None or all(is_sealed(v) for v in values.values()):
                    continue
                conn.execute(
                    update(p)
                    .where(p.c.order_id == row.order_id)
                    .values(
                        {
                            c: patient_data.seal_value(
                                conn,
                                customer_id,
                                v,
                                table_place("prescriptions", row.order_id, c),
                            )
                            for c, v in values.items()
                        }
                    )
                )
                done += 1
            after = str(rows[-1].order_id)
