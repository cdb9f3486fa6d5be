"""What `fulfillment demo` saw and its summary: outcomes, the pharmacist's and the
customers' part, timings, the inventory check by SKU and by lot.

`EventTally` follows the global event feed (as any reader of the log would) and tallies
how each of the demo's orders ended, what the pharmacist decided, which lots each
reservation took and which parcels were delivered; the `print_*` functions and
`check_inventory` turn that into the tables printed at the end of a run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from rich.console import Console
from rich.table import Table

from fulfillment.bootstrap import App
from fulfillment.domain.events import (
    DomainEvent,
    InventoryReleased,
    InventoryReserved,
    OrderCancellationRequested,
    OrderCancelled,
    OrderCreated,
    OrderFulfilled,
    PrescriptionClarificationRequested,
    PrescriptionRejected,
    PrescriptionVerified,
    SagaStepAttemptFailed,
    ShipmentDelivered,
)
from fulfillment.domain.status import CancellationReason, FailureReason
from fulfillment.domain.values import LotAllocation, OrderLine
from fulfillment.entrypoints.demo_mix import CATALOGUE, SeededLot
from fulfillment.service_layer.order_saga import ORDER_SAGA

FULFILLED = "fulfilled"
DELIVERED = "delivered"
NOT_DELIVERED = "fulfilled, not yet delivered"
STUCK = "stuck (not finished)"
REASONS = (
    FailureReason.PRESCRIPTION_EXPIRED.value,
    FailureReason.INSUFFICIENT_STOCK.value,
    FailureReason.UNSUPPORTED_DESTINATION.value,
    FailureReason.RETRIES_EXHAUSTED.value,
    FailureReason.VERIFICATION_REJECTED.value,
    CancellationReason.CUSTOMER_REQUEST.value,
)

TALLIED = frozenset(
    cls.__name__
    for cls in (
        OrderCreated,
        OrderFulfilled,
        OrderCancelled,
        SagaStepAttemptFailed,
        InventoryReserved,
        InventoryReleased,
        ShipmentDelivered,
        PrescriptionVerified,
        PrescriptionRejected,
        PrescriptionClarificationRequested,
        OrderCancellationRequested,
    )
)


class EventTally:
    """Follows the global event feed and tallies what happened to the demo's orders."""

    def __init__(self, app: App, order_ids: set[str]) -> None:
        self.app = app
        self.order_ids = order_ids
        self.position = 0
        self.created_at: dict[str, datetime] = {}
        self.ended_at: dict[str, datetime] = {}
        self.delivered_at: dict[str, datetime] = {}
        self.outcome: dict[str, str] = {}
        self.items: dict[str, tuple[OrderLine, ...]] = {}
        self.retries: Counter[str] = Counter()
        #: The lots each order's reservation took, and reservations and releases in
        #: commit order (what `fefo_check` replays).
        self.lots: dict[str, tuple[LotAllocation, ...]] = {}
        self.stock_moves: list[tuple[str, str]] = []
        #: The verification of each order that reached it: `policy` (not required),
        #: `approved` or `rejected`; and the orders a clarification was asked for.
        self.verification: dict[str, str] = {}
        self.clarified: set[str] = set()
        self.cancel_requested: set[str] = set()

    def poll(self) -> None:
        """Read every event committed since the last poll."""
        while True:
            with self.app.uow() as uow:
                batch = uow.events.read_all(after=self.position, limit=1000)
            for stored in batch:
                self.position = stored.position
                if stored.type in TALLIED:
                    event = self.app.mapper.to_event(
                        stored.type, stored.event_version, stored.data, stored.recorded_at
                    )
                    self.apply(event)
            if len(batch) < 1000:
                return

    def apply(self, event: DomainEvent) -> None:
        """Tally one event (those of other orders are left out)."""
        order_id = getattr(event, "order_id", None) or getattr(event, "saga_id", None)
        if order_id not in self.order_ids:
            return
        assert isinstance(order_id, str)
        match event:
            case SagaStepAttemptFailed():
                self.retries[order_id] += 1
            case OrderCreated():
                self.created_at[order_id] = event.occurred_at
                self.items[order_id] = event.items
            case OrderFulfilled() | OrderCancelled():
                self.ended_at[order_id] = event.occurred_at
                self.outcome[order_id] = (
                    FULFILLED if isinstance(event, OrderFulfilled) else event.reason
                )
            case ShipmentDelivered():
                self.delivered_at[order_id] = event.occurred_at
            case InventoryReserved():
                self.lots[order_id] = event.lots
                self.stock_moves.append(("reserve", order_id))
            case InventoryReleased():
                self.stock_moves.append(("release", order_id))
            case PrescriptionVerified():
                self.verification[order_id] = "policy" if event.by == "policy" else "approved"
            case PrescriptionRejected():
                self.verification[order_id] = "rejected"
            case PrescriptionClarificationRequested():
                self.clarified.add(order_id)
            case OrderCancellationRequested():
                self.cancel_requested.add(order_id)

    @property
    def finished(self) -> int:
        """How many of the demo's orders have ended, either way."""
        return len(self.outcome)

    def counts(self) -> Counter[str]:
        """Ended orders by outcome: `fulfilled` or the reason of the cancellation."""
        return Counter(self.outcome.values())

    def fulfilled(self) -> list[str]:
        return [o for o, outcome in self.outcome.items() if outcome == FULFILLED]

    @property
    def undelivered(self) -> int:
        """Fulfilled orders whose parcel the carrier has not delivered yet."""
        return sum(1 for o in self.fulfilled() if o not in self.delivered_at)

    def statuses(self) -> Counter[str]:
        """Ended orders by final status: delivered, fulfilled (not yet delivered), or
        the reason of the cancellation."""
        return Counter(
            (DELIVERED if o in self.delivered_at else NOT_DELIVERED)
            if outcome == FULFILLED
            else outcome
            for o, outcome in self.outcome.items()
        )


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def print_outcomes(
    tally: EventTally, total: int, stuck: int, rejected: list[str], console: Console
) -> None:
    """How the orders ended: delivered, fulfilled, cancelled by reason, stuck, rejected."""
    counts = tally.statuses()
    table = Table(title="Outcomes (final order status)", title_justify="left")
    table.add_column("outcome")
    table.add_column("orders", justify="right")
    table.add_column("share", justify="right")
    rows = [(DELIVERED, counts.pop(DELIVERED, 0), "green")]
    rows += [(NOT_DELIVERED, counts.pop(NOT_DELIVERED, 0), "green")]
    rows += [(f"cancelled: {r}", counts.pop(r, 0), "yellow") for r in REASONS]
    rows += [(f"cancelled: {r}", n, "yellow") for r, n in sorted(counts.items())]
    rows += [(STUCK, stuck, "red" if stuck else "green")]
    if rejected:
        rows += [("rejected when placed", len(rejected), "red")]
    for label, n, style in rows:
        table.add_row(label, str(n), f"{100 * n / max(1, total):.1f}%", style=style)
    table.add_row("total", str(total), "", style="bold")
    console.print(table)
    for line in rejected[:5]:
        console.print(f"[red]rejected[/red] {line}", highlight=False)


@dataclass(frozen=True)
class Cancellations:
    """What the demo's customers asked: cancellations sent, refused as too late, and
    the ones that failed otherwise (`order: error`)."""

    requested: int
    too_late: int
    errors: tuple[str, ...] = ()


def print_decisions(tally: EventTally, cancellations: Cancellations, console: Console) -> None:
    """The pharmacist's verifications and the customers' cancellations."""
    decided = Counter(tally.verification.values())
    table = Table(title="Verification and cancellation", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("orders", justify="right")
    table.add_row("verification not required by the policy", str(decided["policy"]))
    table.add_row("approved by the pharmacist", str(decided["approved"]), style="green")
    table.add_row("rejected by the pharmacist", str(decided["rejected"]), style="yellow")
    table.add_row("clarification requested, then decided", str(len(tally.clarified)))
    table.add_row("cancellations requested by customers", str(cancellations.requested))
    cancelled = tally.counts()[CancellationReason.CUSTOMER_REQUEST.value]
    table.add_row("cancelled as the customer asked", str(cancelled), style="yellow")
    table.add_row("too late to cancel", str(cancellations.too_late))
    if cancellations.errors:
        table.add_row("cancellations that failed", str(len(cancellations.errors)), style="red")
    console.print(table)
    for line in cancellations.errors[:5]:
        console.print(f"[red]cancellation failed[/red] {line}", highlight=False)


def print_timings(tally: EventTally, elapsed: float, rate: float, console: Console) -> None:
    """Retries, throughput and latency percentiles (placed -> ended, placed ->
    delivered), wall time."""
    latencies = [
        (tally.ended_at[o] - tally.created_at[o]).total_seconds() * 1000
        for o in tally.ended_at
        if o in tally.created_at
    ]
    deliveries = [
        (tally.delivered_at[o] - tally.created_at[o]).total_seconds() * 1000
        for o in tally.delivered_at
        if o in tally.created_at
    ]
    span = (
        (max(tally.ended_at.values()) - min(tally.created_at.values())).total_seconds()
        if tally.ended_at and tally.created_at
        else 0.0
    )
    table = Table(title="Timings", title_justify="left", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    retried = sum(1 for n in tally.retries.values() if n)
    table.add_row(
        "transient carrier faults retried", f"{tally.retries.total()} in {retried} orders"
    )
    table.add_row(
        "throughput",
        f"{tally.finished / span:.1f} orders/s (placed at {rate:g}/s)" if span > 0 else "n/a",
    )
    for p in (50, 95, 99):
        table.add_row(f"latency p{p} (placed -> ended)", f"{percentile(latencies, p):.0f} ms")
    table.add_row("delivery p50 (placed -> delivered)", f"{percentile(deliveries, 50):.0f} ms")
    table.add_row("wall time", f"{elapsed:.1f} s")
    console.print(table)


def shipped_by_lot(tally: EventTally) -> Counter[tuple[str, str]]:
    """Units that left the shelf, by (sku, lot): the lots of the fulfilled orders."""
    shipped: Counter[tuple[str, str]] = Counter()
    for order_id in tally.fulfilled():
        for allocation in tally.lots.get(order_id, ()):
            shipped[allocation.sku, allocation.lot] += allocation.quantity
    return shipped


def check_inventory(
    app: App,
    tally: EventTally,
    seeded: Mapping[str, tuple[SeededLot, ...]],
    console: Console,
) -> bool:
    """By SKU and by lot: 0 <= reserved <= on_hand; nothing left reserved; on_hand =
    seeded - fulfilled. Prints the SKU table and the lot table."""
    shipped: Counter[str] = Counter()
    for order_id in tally.fulfilled():
        for line in tally.items.get(order_id, ()):
            shipped[line.sku] += line.quantity
    from_lot = shipped_by_lot(tally)
    with app.uow() as uow:
        levels = {p.sku: uow.inventory.get(p.sku) for p in CATALOGUE}
    table = Table(title="Inventory", title_justify="left")
    wide = console.width >= 100  # product names only where they fit
    table.add_column("sku", no_wrap=True)
    if wide:
        table.add_column("product", no_wrap=True, overflow="ellipsis", max_width=40)
    for column in ("seeded", "fulfilled", "on_hand", "reserved", "check"):
        table.add_column(column, justify="right", no_wrap=True)
    lots_table = Table(
        title="Lots: units shipped of seeded, by days to expiry", title_justify="left"
    )
    lots_table.add_column("sku", no_wrap=True)
    for n, days in enumerate(_lot_days(seeded)):
        label = f"{days} d" + (" (too short)" if n == 0 else "")
        lots_table.add_column(label, justify="right", no_wrap=True)
    lots_table.add_column("check", justify="right", no_wrap=True)
    ok = True
    for product in CATALOGUE:
        level = levels[product.sku]
        lots = seeded.get(product.sku, ())
        total = sum(lot.on_hand for lot in lots)
        on_hand, reserved = (level.on_hand, level.reserved) if level else (-1, -1)
        good = 0 <= reserved <= on_hand and reserved == 0
        good = good and on_hand == total - shipped[product.sku]
        table.add_row(
            product.sku,
            *([product.name] if wide else []),
            str(total),
            str(shipped[product.sku]),
            str(on_hand),
            str(reserved),
            _verdict(good),
        )
        actual = {lot.lot: lot for lot in level.lots} if level else {}
        lots_good = len(actual) >= len(lots)
        cells = []
        for lot in lots:
            now = actual.get(lot.lot)
            taken = from_lot[product.sku, lot.lot]
            lots_good = lots_good and (
                now is not None
                and 0 <= now.reserved <= now.on_hand
                and now.reserved == 0
                and now.on_hand == lot.on_hand - taken
            )
            cells.append(f"{taken} of {lot.on_hand}")
        lots_table.add_row(product.sku, *cells, _verdict(lots_good))
        ok = ok and good and lots_good
    console.print(table)
    console.print(lots_table)
    if ok:
        console.print(
            "[bold green]inventory invariant holds:[/bold green] for every SKU and every "
            "lot 0 <= reserved <= on_hand, nothing left reserved, on_hand = seeded - "
            "fulfilled",
            highlight=False,
        )
    else:
        console.print(
            "[bold red]inventory invariant VIOLATED[/bold red]: see the FAIL rows above",
            highlight=False,
        )
    return ok


def _lot_days(seeded: Mapping[str, tuple[SeededLot, ...]]) -> tuple[int, ...]:
    first = next(iter(seeded.values()), ())
    return tuple(lot.days for lot in first)


def _verdict(good: bool) -> str:
    return "[green]ok[/green]" if good else "[red]FAIL[/red]"


@dataclass(frozen=True)
class FefoCheck:
    """The replay of every reservation: how many, how many took a lot out of order
    (a later lot while an earlier usable one still had units, or an unusable lot), and
    the units taken from lots under the minimum shelf life."""

    reservations: int
    out_of_order: int
    short_dated_units: int

    @property
    def ok(self) -> bool:
        return self.out_of_order == 0 and self.short_dated_units == 0


def fefo_check(
    tally: EventTally,
    seeded: Mapping[str, tuple[SeededLot, ...]],
    today: date,
    min_shelf_life_days: int,
) -> FefoCheck:
    """Replay the reservations and releases in commit order from the seeded lots: each
    reservation must take, per SKU, the usable lots first expiry first, a later one only
    once the earlier ones are empty, and nothing of a lot with too little shelf life."""
    usable_from = today + timedelta(days=min_shelf_life_days)
    usable = {
        sku: [lot.lot for lot in lots if lot.expires_on >= usable_from]
        for sku, lots in seeded.items()
    }
    free = {(lot.sku, lot.lot): lot.on_hand for lots in seeded.values() for lot in lots}
    reservations = out_of_order = short = 0
    for move, order_id in tally.stock_moves:
        allocations = tally.lots.get(order_id, ())
        sign = -1 if move == "reserve" else 1
        for a in allocations:
            free[a.sku, a.lot] = free.get((a.sku, a.lot), 0) + sign * a.quantity
        if move != "reserve":
            continue
        reservations += 1
        bad = False
        for sku in {a.sku for a in allocations}:
            order = usable.get(sku, [])
            taken = [a.lot for a in allocations if a.sku == sku]
            unusable = [a for a in allocations if a.sku == sku and a.lot not in order]
            short += sum(a.quantity for a in unusable)
            if unusable:
                bad = True
                continue
            last = max(order.index(lot) for lot in taken)
            # Every usable lot before the last one taken is empty now, and none is
            # skipped in between.
            bad = bad or any(free[sku, lot] != 0 for lot in order[:last])
            bad = bad or taken != sorted(taken, key=order.index)
        out_of_order += bad
    return FefoCheck(reservations, out_of_order, short)


def print_fefo(check: FefoCheck, min_shelf_life_days: int, console: Console) -> None:
    if check.ok:
        console.print(
            f"[bold green]FEFO held:[/bold green] {check.reservations} reservations "
            "replayed in commit order each took the earliest usable lot first, and no "
            f"unit of a lot with under {min_shelf_life_days} days of shelf life",
            highlight=False,
        )
    else:
        console.print(
            f"[bold red]FEFO VIOLATED[/bold red]: {check.out_of_order} of "
            f"{check.reservations} reservations took lots out of order; "
            f"{check.short_dated_units} units came from short-dated lots",
            highlight=False,
        )


def print_compensated_example(app: App, tally: EventTally, console: Console) -> None:
    """The history of one cancelled order that had something to undo: LIFO compensation."""
    preference = (
        FailureReason.RETRIES_EXHAUSTED.value,
        FailureReason.UNSUPPORTED_DESTINATION.value,
        FailureReason.INSUFFICIENT_STOCK.value,
    )
    for reason in preference:
        order_id = next((o for o, r in sorted(tally.outcome.items()) if r == reason), None)
        if order_id is not None:
            break
    else:
        return
    with app.uow() as uow:
        history = uow.events.read_streams([f"order-{order_id}", f"saga-{order_id}"])
    console.print(
        f"\n[bold]Example: order {order_id} was cancelled ({reason}).[/bold] "
        "Its events in commit order; the steps that had succeeded are undone last-in-first-out:",
        highlight=False,
    )
    undo = {"SagaCompensationStarted", "OrderCancelled"}
    undo |= {c.recorded_by.__name__ for c in ORDER_SAGA.compensations}
    for n, stored in enumerate(history, start=1):
        style = "yellow" if stored.type in undo else "cyan"
        note = ""
        if stored.type == "SagaStepAttemptFailed":
            note = f"  (attempt {stored.data.get('attempt')}: {stored.data.get('error')})"
        elif "reason" in stored.data:
            note = f"  (reason: {stored.data['reason']})"
        console.print(
            f"  {n:>2}. [{style}]{stored.type}[/{style}]  [dim]{stored.stream_id}[/dim]{note}",
            highlight=False,
        )
