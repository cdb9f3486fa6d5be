"""What `fulfillment demo` saw and its summary: outcomes, timings, the inventory check.

`EventTally` follows the global event feed (as any reader of the log would) and tallies
how each of the demo's orders ended; the `print_*` functions and `check_inventory` turn
that into the tables printed at the end of a run.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from rich.console import Console
from rich.table import Table

from fulfillment.bootstrap import App
from fulfillment.domain.events import (
    DomainEvent,
    OrderCancelled,
    OrderCreated,
    OrderFulfilled,
    SagaStepAttemptFailed,
)
from fulfillment.domain.status import FailureReason
from fulfillment.domain.values import OrderLine
from fulfillment.entrypoints.demo_mix import CATALOGUE
from fulfillment.service_layer.order_saga import ORDER_SAGA

FULFILLED = "fulfilled"
STUCK = "stuck (not finished)"
REASONS = (
    FailureReason.PRESCRIPTION_EXPIRED.value,
    FailureReason.INSUFFICIENT_STOCK.value,
    FailureReason.UNSUPPORTED_DESTINATION.value,
    FailureReason.RETRIES_EXHAUSTED.value,
)

TALLIED = frozenset({"OrderCreated", "OrderFulfilled", "OrderCancelled", "SagaStepAttemptFailed"})


class EventTally:
    """Follows the global event feed and tallies the outcome of the demo's orders."""

    def __init__(self, app: App, order_ids: set[str]) -> None:
        self.app = app
        self.order_ids = order_ids
        self.position = 0
        self.created_at: dict[str, datetime] = {}
        self.ended_at: dict[str, datetime] = {}
        self.outcome: dict[str, str] = {}
        self.items: dict[str, tuple[OrderLine, ...]] = {}
        self.retries: Counter[str] = Counter()

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
                    self._apply(event)
            if len(batch) < 1000:
                return

    def _apply(self, event: DomainEvent) -> None:
        if isinstance(event, SagaStepAttemptFailed) and event.saga_id in self.order_ids:
            self.retries[event.saga_id] += 1
        elif isinstance(event, OrderCreated) and event.order_id in self.order_ids:
            self.created_at[event.order_id] = event.occurred_at
            self.items[event.order_id] = event.items
        elif (
            isinstance(event, OrderFulfilled | OrderCancelled) and event.order_id in self.order_ids
        ):
            self.ended_at[event.order_id] = event.occurred_at
            self.outcome[event.order_id] = (
                FULFILLED if isinstance(event, OrderFulfilled) else event.reason
            )

    @property
    def finished(self) -> int:
        """How many of the demo's orders have ended, either way."""
        return len(self.outcome)

    def counts(self) -> Counter[str]:
        """Ended orders by outcome: `fulfilled` or the reason of the cancellation."""
        return Counter(self.outcome.values())


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
    """How the orders ended: fulfilled, cancelled by reason, stuck, rejected."""
    counts = tally.counts()
    table = Table(title="Outcomes", title_justify="left")
    table.add_column("outcome")
    table.add_column("orders", justify="right")
    table.add_column("share", justify="right")
    rows = [(FULFILLED, counts.pop(FULFILLED, 0), "green")]
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


def print_timings(tally: EventTally, elapsed: float, rate: float, console: Console) -> None:
    """Retries, throughput and latency percentiles (placed -> ended), wall time."""
    latencies = [
        (tally.ended_at[o] - tally.created_at[o]).total_seconds() * 1000
        for o in tally.ended_at
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
    table.add_row("wall time", f"{elapsed:.1f} s")
    console.print(table)


def check_inventory(app: App, tally: EventTally, console: Console) -> bool:
    """0 <= reserved <= on_hand; nothing left reserved; on_hand = seeded - fulfilled."""
    shipped: Counter[str] = Counter()
    for order_id, outcome in tally.outcome.items():
        if outcome == FULFILLED:
            for line in tally.items.get(order_id, ()):
                shipped[line.sku] += line.quantity
    table = Table(title="Inventory", title_justify="left")
    wide = console.width >= 100  # product names only where they fit
    table.add_column("sku", no_wrap=True)
    if wide:
        table.add_column("product", no_wrap=True, overflow="ellipsis", max_width=40)
    for column in ("seeded", "fulfilled", "on_hand", "reserved", "check"):
        table.add_column(column, justify="right", no_wrap=True)
    ok = True
    with app.uow() as uow:
        levels = {p.sku: uow.inventory.get(p.sku) for p in CATALOGUE}
    for product in CATALOGUE:
        level = levels[product.sku]
        on_hand, reserved = (level.on_hand, level.reserved) if level else (-1, -1)
        good = 0 <= reserved <= on_hand and reserved == 0
        good = good and on_hand == product.stock - shipped[product.sku]
        ok = ok and good
        table.add_row(
            product.sku,
            *([product.name] if wide else []),
            str(product.stock),
            str(shipped[product.sku]),
            str(on_hand),
            str(reserved),
            "[green]ok[/green]" if good else "[red]FAIL[/red]",
        )
    console.print(table)
    if ok:
        console.print(
            "[bold green]inventory invariant holds:[/bold green] for every SKU "
            "0 <= reserved <= on_hand, nothing left reserved, on_hand = seeded - fulfilled",
            highlight=False,
        )
    else:
        console.print(
            "[bold red]inventory invariant VIOLATED[/bold red]: see the FAIL rows above",
            highlight=False,
        )
    return ok


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
