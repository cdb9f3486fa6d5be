"""What the peers share: the service tables, the stock, the carrier, the command line.

The peers keep the same service-table semantics as our product by using its own
service adapters (`fulfillment.adapters.services`) on the same tables: one prescription
row per order, a conditional all-or-nothing inventory reservation, one shipment row per
order, and completion that consumes the reservation and dispenses the prescription.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from benchmarks.common import MIXES, SKUS, STOCK_ON_HAND, OrderSpec, RunMetrics, workload
from fulfillment.adapters import tables as t
from fulfillment.adapters.db import create_db_engine
from fulfillment.adapters.services import SqlAlchemyInventoryService

SERVICE_TABLES = (
    t.prescriptions,
    t.inventory,
    t.inventory_lots,
    t.inventory_reservations,
    t.reservation_lots,
    t.shipments,
)
CARRIER_COUNTRIES = frozenset({"US", "CA", "GB", "DE", "FR", "NL"})


class UnsupportedDestination(Exception):
    """The simulated carrier does not ship there (a business failure: never retried)."""


def carrier_book(country: str, latency_ms: float) -> str:
    """The product's SimulatedCarrier: refuses unsupported countries, then waits `latency_ms`."""
    if country not in CARRIER_COUNTRIES:
        raise UnsupportedDestination(f"carrier does not ship to {country}")
    if latency_ms:
        time.sleep(latency_ms / 1000.0)
    return "SP" + str(int(time.time() * 1e6))[-12:]


def service_engine(url: str, pool_size: int) -> Engine:
    """The product's engine factory: WAL + the product's synchronous mode on SQLite,
    BEGIN IMMEDIATE writers, READ COMMITTED on MariaDB."""
    import os

    return create_db_engine(
        url,
        pool_size=pool_size,
        sqlite_synchronous=os.environ.get("FULFILLMENT_SQLITE_SYNCHRONOUS", "FULL").upper(),
    )


def create_service_tables(engine: Engine) -> None:
    """The product's service tables, and enough stock for any run."""
    t.metadata.create_all(engine, tables=list(SERVICE_TABLES))
    with engine.begin() as conn:
        inventory = SqlAlchemyInventoryService(conn)
        for sku in SKUS:
            inventory.set_on_hand(sku, STOCK_ON_HAND)


def backend_of_url(url: str) -> str:
    name = make_url(url).get_backend_name()
    return "mysql" if name in ("mysql", "mariadb") else name


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--url", required=True, help="database URL (sqlite:///..., postgresql://...)")
    p.add_argument("--orders", type=int, default=1000)
    p.add_argument("--mix", default="success", choices=sorted(MIXES))
    p.add_argument("--carrier-latency-ms", type=float, default=0.0)
    p.add_argument("--rate", type=float, default=0.0, help="offered load (orders/s); 0: backlog")
    p.add_argument("--json", type=Path, help="write the result here")
    p.add_argument("--prefix", default="", help="order id prefix (the harness shares the workload)")
    return p


def specs_for(args: argparse.Namespace) -> list[OrderSpec]:
    return workload(args.orders, args.mix, args.prefix)


def utc_from_ms(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, UTC)


def emit(result: RunMetrics, path: Path | None, extra: dict[str, Any] | None = None) -> None:
    payload = result.as_dict() | (extra or {})
    text = json.dumps(payload, indent=2)
    if path is not None:
        path.write_text(text)
    print(text)


def window(starts: Sequence[float], ends: Sequence[float]) -> float:
    """Seconds from the first start to the last end (epoch seconds in, seconds out)."""
    if not starts or not ends:
        return 0.0
    return max(1e-9, max(ends) - min(starts))
