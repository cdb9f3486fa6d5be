"""What `fulfillment demo` sells and orders: a small pharmacy catalogue and a mix of orders.

`plan_orders` turns a seed into the same orders every time: mostly regular ones, with a
share of each other path (expired prescription, more than in stock, a destination the
carrier does not serve, a carrier outage, a controlled substance a pharmacist approves
or rejects, a customer who cancels), so one run shows every way a saga can end.
`seed_lots` is each product's stock as lots with expiry dates: a short-dated lot that
first-expiry-first-out must skip, then the lot it draws first, then a later one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum

from fulfillment.domain.values import OrderLine, PrescriptionDetails, ShippingAddress
from fulfillment.service_layer.commands import CreateOrder


@dataclass(frozen=True)
class Product:
    """A SKU of the catalogue, the usable stock the demo seeds it with (its short-dated
    lot comes on top), and its DEA schedule (None: not a controlled substance)."""

    sku: str
    name: str
    stock: int
    popularity: float = 1.0
    dea_schedule: str | None = None


CATALOGUE: tuple[Product, ...] = (
    Product("AMOX-500-21", "Amoxicillin 500 mg capsules (21)", 400),
    Product("ATOR-20-28", "Atorvastatin 20 mg tablets (28)", 350),
    Product("METF-850-56", "Metformin 850 mg tablets (56)", 320),
    Product("LISI-10-28", "Lisinopril 10 mg tablets (28)", 300),
    Product("LEVO-50-28", "Levothyroxine 50 mcg tablets (28)", 280),
    Product("OMEP-20-28", "Omeprazole 20 mg capsules (28)", 300),
    Product("SERT-50-28", "Sertraline 50 mg tablets (28)", 260),
    Product("AMLO-5-28", "Amlodipine 5 mg tablets (28)", 240),
    Product("SALB-100-200", "Salbutamol 100 mcg inhaler (200 doses)", 180),
    Product("PRED-5-28", "Prednisolone 5 mg tablets (28)", 150),
    # Scarce: a few orders empty the shelf and the next ones run out of stock.
    Product("INSG-100-5", "Insulin glargine 100 U/ml pens (5)", 6, popularity=0.25),
    Product("ADRE-300-2", "Adrenaline 300 mcg auto-injectors (2)", 4, popularity=0.25),
    # Controlled: a pharmacist verifies every order with one (policy `controlled`).
    Product("OXYC-5-28", "Oxycodone 5 mg tablets (28)", 120, dea_schedule="II"),
    Product("DIAZ-5-28", "Diazepam 5 mg tablets (28)", 100, dea_schedule="IV"),
)

#: Days to expiry of each product's lots: the first is inside the minimum shelf life
#: (FULFILLMENT_MIN_SHELF_LIFE_DAYS, 30 by default) and must never be used; FEFO draws
#: the second first, and the third once the second runs out.
LOT_DAYS = (10, 200, 400)


@dataclass(frozen=True)
class SeededLot:
    """A lot the demo seeds: its name, units and expiry, and its days to expiry."""

    sku: str
    lot: str
    on_hand: int
    expires_on: date
    days: int


def seed_lots(product: Product, today: date) -> tuple[SeededLot, ...]:
    """The product's stock in lots, first expiry first: a short-dated lot on top of
    `product.stock`, which is split into a small first usable lot and a large later one
    (so the busier products run through the first and go on to the second)."""
    short = max(2, product.stock // 10)
    first = max(1, round(product.stock * 0.15))
    units = (short, first, product.stock - first)
    prefix = product.sku.split("-", 1)[0]
    lots = []
    for days, on_hand in zip(LOT_DAYS, units, strict=True):
        expires = today + timedelta(days=days)
        lots.append(SeededLot(product.sku, f"{prefix}-{expires:%y%m%d}", on_hand, expires, days))
    return tuple(lots)


CITIES = {
    "US": ("Springfield", "62701"),
    "CA": ("Toronto", "M5V 2T6"),
    "GB": ("Manchester", "M1 1AE"),
    "DE": ("Berlin", "10115"),
    "FR": ("Lyon", "69001"),
    "NL": ("Utrecht", "3511 AA"),
    "BR": ("Sao Paulo", "01310-100"),
    "JP": ("Osaka", "530-0001"),
    "AU": ("Perth", "6000"),
    "MX": ("Guadalajara", "44100"),
}
NAMES = (
    "Ada Lovelace", "Grace Hopper", "Alan Turing", "Katherine Johnson", "Edsger Dijkstra",
    "Barbara Liskov", "Donald Knuth", "Margaret Hamilton", "Tony Hoare", "Frances Allen",
    "John Backus", "Radia Perlman", "Ken Thompson", "Hedy Lamarr", "Niklaus Wirth",
)  # fmt: skip


class Scenario(StrEnum):
    """What a placed order is meant to exercise."""

    REGULAR = "regular"
    EXPIRED_PRESCRIPTION = "expired prescription"
    OVER_STOCK = "more than in stock"
    UNSUPPORTED_DESTINATION = "unsupported destination"
    CARRIER_OUTAGE = "carrier outage"
    CONTROLLED = "controlled substance"
    PHARMACIST_REJECTS = "pharmacist rejects"
    CUSTOMER_CANCELS = "customer cancels"


#: Share of each other scenario in the mix; the rest are regular orders.
MIX = {
    Scenario.EXPIRED_PRESCRIPTION: 0.07,
    Scenario.OVER_STOCK: 0.06,
    Scenario.UNSUPPORTED_DESTINATION: 0.07,
    Scenario.CARRIER_OUTAGE: 0.03,
    Scenario.CONTROLLED: 0.07,
    Scenario.PHARMACIST_REJECTS: 0.03,
    Scenario.CUSTOMER_CANCELS: 0.05,
}
#: The orders with a controlled substance: a pharmacist decides each.
VERIFIED = frozenset({Scenario.CONTROLLED, Scenario.PHARMACIST_REJECTS})
#: At most this many seconds between placing an order and its customer's cancellation.
MAX_CANCEL_DELAY = 0.6


@dataclass(frozen=True)
class PlannedOrder:
    """An order to place, the scenario it exercises, and (a customer who cancels) how
    many seconds after placing it its customer asks to cancel it."""

    scenario: Scenario
    command: CreateOrder
    cancel_after: float | None = None


def plan_orders(
    count: int, seed: int, supported: tuple[str, ...], today: date, run_tag: str
) -> list[PlannedOrder]:
    """A deterministic mix for `seed`: mostly regular orders, with every other path."""
    rng = random.Random(seed)
    scenarios: list[Scenario] = []
    for scenario, share in MIX.items():
        scenarios += [scenario] * (max(1, round(count * share)) if count >= 10 else 0)
    scenarios = scenarios[:count] + [Scenario.REGULAR] * max(0, count - len(scenarios))
    rng.shuffle(scenarios)
    unsupported = [c for c in CITIES if c not in supported][:2] or ["AQ"]
    uncontrolled = [p for p in CATALOGUE if p.dea_schedule is None]
    plentiful = [p for p in uncontrolled if p.popularity >= 1.0]
    controlled = [p for p in CATALOGUE if p.dea_schedule is not None]
    plans = []
    cancels = 0
    for i, scenario in enumerate(scenarios):
        # Other orders stick to plentiful products, so each ends for its own reason.
        shelf = uncontrolled if scenario is Scenario.REGULAR else plentiful
        products = rng.choices(shelf, [p.popularity for p in shelf], k=rng.randint(1, 3))
        if scenario in VERIFIED:
            products = [rng.choice(controlled), *products[: rng.randint(0, 1)]]
        lines = {p.sku: rng.randint(1, 3) for p in products}
        if scenario is Scenario.OVER_STOCK:
            product = rng.choice(plentiful)
            lines = {product.sku: product.stock + rng.randint(1, 200)}
        country = rng.choice(supported) if supported else unsupported[0]
        if scenario is Scenario.UNSUPPORTED_DESTINATION:
            country = rng.choice(unsupported)
        expires = today + timedelta(days=rng.randint(30, 365))
        if scenario is Scenario.EXPIRED_PRESCRIPTION:
            expires = today - timedelta(days=rng.randint(1, 90))
        cancel_after = None
        if scenario is Scenario.CUSTOMER_CANCELS:
            # The first customer changes their mind at once; the others a little later,
            # when the parcel may already be on its way (too late to cancel).
            cancel_after = round(rng.uniform(0.0, MAX_CANCEL_DELAY), 3) if cancels else 0.0
            cancels += 1
        name = rng.choice(NAMES)
        city, postal_code = CITIES.get(country, ("Capital City", "00000"))
        command = CreateOrder(
            order_id=f"ord-{run_tag}-{i + 1:04d}",
            customer_id=f"cust-{rng.randint(1000, 9999)}",
            items=tuple(OrderLine(sku, qty) for sku, qty in lines.items()),
            prescription=PrescriptionDetails(f"GMC-{rng.randint(1000000, 9999999)}", name, expires),
            shipping_address=ShippingAddress(
                name, f"{rng.randint(1, 250)} High Street", city, postal_code, country
            ),
        )
        plans.append(PlannedOrder(scenario, command, cancel_after))
    return plans
