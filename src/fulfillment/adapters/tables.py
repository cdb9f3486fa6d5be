"""The schema, in SQLAlchemy Core. Alembic migrations create exactly this."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Double,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Positions are 64-bit; on SQLite only INTEGER PRIMARY KEY is the auto-incrementing rowid.
Position = BigInteger().with_variant(Integer, "sqlite")
# Microsecond timestamps; MySQL/MariaDB DATETIME defaults to whole seconds.
Timestamp = DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
# Long free text (errors); MySQL TEXT is 64 KiB, plenty.
Id = String(64)
# Keys that clients choose (SKUs, idempotency keys) compare byte for byte on every backend;
# MariaDB's default collation would make "abc", "ABC" and "abc " the same key, and even
# utf8mb4_bin ignores trailing spaces (PAD SPACE): hence MariaDB's NO PAD binary collation.
ExactKey = String(200).with_variant(
    mysql.VARCHAR(200, collation="utf8mb4_nopad_bin"), "mysql", "mariadb"
)

events = Table(
    "events",
    metadata,
    Column("position", Position, primary_key=True, autoincrement=True),
    Column("stream_id", String(100), nullable=False),
    Column("version", Integer, nullable=False),
    Column("type", String(100), nullable=False),
    Column("event_version", SmallInteger, nullable=False),
    Column("data", JSON, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("recorded_at", Timestamp, nullable=False),
    UniqueConstraint("stream_id", "version"),
)

# One row: writers lock it before appending, so positions are handed out in commit order
# (MariaDB; PostgreSQL uses an advisory lock, SQLite has a single writer).
event_append_lock = Table(
    "event_append_lock",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Position, primary_key=True, autoincrement=True),
    # Unique: the jobs of one saga are serialized; a saga has at most one job at a time.
    Column("saga_id", Id, nullable=False, unique=True),
    Column("kind", String(40), nullable=False),
    Column("status", String(16), nullable=False),  # ready | running | dead
    # Times on the database clock, as seconds since the epoch: comparable on every backend.
    Column("run_at", Double, nullable=False),
    Column("lease_expires_at", Double, nullable=True),
    Column("claim_token", String(36), nullable=True),
    Column("claimed_by", String(100), nullable=True),
    Column("claims", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
    Column("created_at", Double, nullable=False),
    Index("ix_jobs_status_run_at", "status", "run_at"),
    # Never reuse a deleted job's id on SQLite: ids appear in causation ids.
    sqlite_autoincrement=True,
)

prescriptions = Table(
    "prescriptions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("order_id", Id, nullable=False, unique=True),
    # Sealed (adapters/patient_data.py): a 200-character value takes about 330.
    Column("prescriber_id", String(600), nullable=False),
    Column("patient_name", String(600), nullable=False),
    Column("expires_on", Date, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)

# One row per SKU: its totals over its lots (kept in the transaction that changes a lot,
# adapters/services.py) and its DEA schedule (II..V; NULL: not a controlled substance).
# A transaction that changes a SKU's lots holds this row's lock first.
inventory = Table(
    "inventory",
    metadata,
    Column("sku", ExactKey, primary_key=True),
    Column("on_hand", Integer, nullable=False),
    Column("reserved", Integer, nullable=False, default=0),
    Column("dea_schedule", String(3), nullable=True),
    Column("updated_at", Timestamp, nullable=False),
    CheckConstraint("reserved >= 0 AND reserved <= on_hand", name="reserved_within_on_hand"),
)

# The units of a SKU by lot, with the lot's expiry; lot `default` has none (NULL) and is
# what `PUT /inventory/{sku}` sets. Reservations take the earliest expiry first.
inventory_lots = Table(
    "inventory_lots",
    metadata,
    Column("sku", ExactKey, primary_key=True),
    Column("lot", ExactKey, primary_key=True),
    Column("on_hand", Integer, nullable=False),
    Column("reserved", Integer, nullable=False, default=0),
    Column("expires_on", Date, nullable=True),
    Column("updated_at", Timestamp, nullable=False),
    CheckConstraint("reserved >= 0 AND reserved <= on_hand", name="reserved_within_on_hand"),
)

inventory_reservations = Table(
    "inventory_reservations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("order_id", Id, nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("lines", JSON, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)

# The lots each reservation took units from (a recall finds its orders by (sku, lot));
# `position` keeps the order reserve handed them out in (SKU, then first expiry first).
reservation_lots = Table(
    "reservation_lots",
    metadata,
    Column("order_id", Id, primary_key=True),
    Column("sku", ExactKey, primary_key=True),
    Column("lot", ExactKey, primary_key=True),
    Column("quantity", Integer, nullable=False),
    Column("position", SmallInteger, nullable=False),
    Index("ix_reservation_lots_sku_lot", "sku", "lot"),
)

shipments = Table(
    "shipments",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("order_id", Id, nullable=False, unique=True),
    Column("carrier", String(100), nullable=False),
    Column("tracking_number", String(100), nullable=False),
    Column("country", String(2), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    # Carrier tracking updates find their shipment by its number.
    Index("ix_shipments_tracking_number", "tracking_number"),
)

# Idempotency-Key of POST /orders: written in the transaction that creates the order, so a
# key maps to exactly one order across restarts and API processes. Keys compare byte for
# byte (MariaDB's default collation would make "abc" and "ABC" the same key).
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column(
        "key",
        ExactKey,
        primary_key=True,
    ),
    Column("request_hash", String(64), nullable=False),
    Column("order_id", Id, nullable=False),
    Column("response", JSON, nullable=False),
    Column("created_at", Timestamp, nullable=False),
    # The workers delete expired keys, oldest first, in batches.
    Index("ix_idempotency_keys_created_at", "created_at"),
)

# --- read models (projections), rebuilt from the events at will ------------------------

# One row per order: what GET /orders/{id} and the operator CLI show. Written only by the
# projector (adapters/projections.py), in the transaction that advances its checkpoint.
order_summaries = Table(
    "order_summaries",
    metadata,
    Column("order_id", Id, primary_key=True),
    # Position of OrderCreated: commit order, the stable sort key of the listings.
    Column("created_position", BigInteger, nullable=False, unique=True),
    Column("status", String(32), nullable=False),
    Column("reason", String(100), nullable=True),
    Column("customer_id", String(200), nullable=False, index=True),
    Column("items", JSON, nullable=False),
    Column("saga_status", String(20), nullable=False),
    Column("steps", JSON, nullable=False),
    Column("shipment", JSON(none_as_null=True), nullable=True),
    Column("verification", JSON(none_as_null=True), nullable=True),
    Column("lots", JSON(none_as_null=True), nullable=True),
    Column("placed_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Column("finished_at", Timestamp, nullable=True),
    Column("last_position", BigInteger, nullable=False),
    Index("ix_order_summaries_status_created_position", "status", "created_position"),
    Index("ix_order_summaries_saga_status_created_position", "saga_status", "created_position"),
    # The dashboard's throughput over the last minutes (range scans, polled every 2 s).
    Index("ix_order_summaries_finished_at", "finished_at"),
    Index("ix_order_summaries_placed_at", "placed_at"),
)

# Tracking records: how far each projection has read the event log. An event relay's
# row (`relay:<name>`, adapters/relay.py) is also leased: only `lease_holder` publishes,
# until `lease_expires_at` (database clock, seconds since the epoch); `published` counts
# the events it published with the broker's confirmation (migration 0012).
projection_checkpoints = Table(
    "projection_checkpoints",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("lease_holder", String(100), nullable=True),
    Column("lease_expires_at", Double, nullable=True),
    Column("published", BigInteger, nullable=False, server_default="0"),
)

# Counters of the Prometheus metrics (fulfillment.observability), one row per series:
# `labels` is the series' label set as canonical JSON ("" for none). Written only by the
# projector, in the transaction that advances its checkpoint, so every process that reads
# them reports the same numbers and none is counted twice. Compared byte for byte.
metric_counters = Table(
    "metric_counters",
    metadata,
    Column("name", ExactKey, primary_key=True),
    Column("labels", ExactKey, primary_key=True),
    Column("value", Double, nullable=False),
)

# Patient data's envelope keys (adapters/phi_crypto.py, adapters/data_keys.py): one data
# key per customer, wrapped by the master key. Deleting a customer's row erases every
# field its key sealed (crypto-shredding); a later order of theirs gets a new key.
data_keys = Table(
    "data_keys",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("customer_id", ExactKey, nullable=False, unique=True),
    Column("wrapped", Text, nullable=False),
    Column("master_key_id", String(32), nullable=False),
    Column("created_at", Timestamp, nullable=False),
)

# Who read patient data (adapters/access_log.py): one row per order or customer whose
# patient data a request returned, written in batches off the request path, pruned after
# FULFILLMENT_AUDIT_RETENTION_DAYS.
access_log = Table(
    "access_log",
    metadata,
    Column("id", Position, primary_key=True, autoincrement=True),
    Column("at", Timestamp, nullable=False),
    Column("key_name", String(100), nullable=False),
    Column("route", String(200), nullable=False),
    Column("order_id", Id, nullable=True),
    Column("customer_id", String(200), nullable=True),
    Index("ix_access_log_at", "at"),
    Index("ix_access_log_customer_id_at", "customer_id", "at"),
    Index("ix_access_log_key_name_at", "key_name", "at"),
)
