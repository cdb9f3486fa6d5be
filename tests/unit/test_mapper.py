"""The event mapper: every event survives the trip to a JSON row and back; old versions upcast."""

from __future__ import annotations

import dataclasses
import json
import typing
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fulfillment.adapters.mapper import EventMapper
from fulfillment.domain.events import EVENT_TYPES, DomainEvent, OrderCancelled
from fulfillment.domain.values import LotAllocation, OrderLine, PrescriptionDetails, ShippingAddress

from .builders import T0, address, at, lines, prescription

CONTRACT_NAMES = {
    "OrderCreated",
    "OrderFulfillmentSagaStarted",
    "PrescriptionCreated",
    "PrescriptionCreationFailed",
    "InventoryReserved",
    "InventoryReservationFailed",
    "ShipmentInitiated",
    "ShipmentInitiationFailed",
    "SagaCompensationStarted",
    "ShipmentCancelled",
    "InventoryReleased",
    "PrescriptionCancelled",
    "OrderFulfilled",
    "OrderCancelled",
}

# --- sample values, by field type -------------------------------------------------------

SAMPLES: dict[Any, Any] = {
    str: "value-é",
    int: 3,
    float: 1.25,
    datetime: at(3600.5),
    tuple[OrderLine, ...]: lines(("ASPIRIN-100", 2), ("IBUPROFEN-200", 1)),
    tuple[str, ...]: ("release_inventory", "cancel_prescription"),
    str | None: None,
    datetime | None: at(7200.25),
    dict[str, Any]: {"decision": "approve", "note": None, "n": [1, 2]},
    PrescriptionDetails: prescription(date(2031, 12, 31)),
    ShippingAddress: address("GB"),
    tuple[LotAllocation, ...]: (LotAllocation("ASPIRIN-100", "L1", 2),),
    bool: True,
}

text = st.text(max_size=30)
STRATEGIES: dict[Any, st.SearchStrategy[Any]] = {
    str: text,
    int: st.integers(-(2**53), 2**53),
    float: st.floats(allow_nan=False, allow_infinity=False),
    datetime: st.datetimes(timezones=st.just(UTC)),
    tuple[str, ...]: st.lists(text, max_size=3).map(tuple),
    str | None: st.none() | text,
    datetime | None: st.none() | st.datetimes(timezones=st.just(UTC)),
    dict[str, Any]: st.dictionaries(text, st.none() | text | st.integers(-100, 100), max_size=3),
    tuple[OrderLine, ...]: st.lists(
        st.builds(OrderLine, text, st.integers(1, 10_000)), max_size=4
    ).map(tuple),
    PrescriptionDetails: st.builds(PrescriptionDetails, text, text, st.dates()),
    ShippingAddress: st.builds(ShippingAddress, text, text, text, text, text),
    tuple[LotAllocation, ...]: st.lists(
        st.builds(LotAllocation, text, text, st.integers(1, 10_000)), max_size=3
    ).map(tuple),
    bool: st.booleans(),
}


def fields_of(cls: type[DomainEvent]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name != "occurred_at"}


def sample(cls: type[DomainEvent]) -> DomainEvent:
    return cls(occurred_at=T0, **{name: SAMPLES[hint] for name, hint in fields_of(cls).items()})


@st.composite
def any_event(draw: st.DrawFn) -> DomainEvent:
    cls = draw(st.sampled_from(sorted(EVENT_TYPES.values(), key=lambda c: c.__name__)))
    values = {name: draw(STRATEGIES[hint]) for name, hint in fields_of(cls).items()}
    return cls(occurred_at=draw(STRATEGIES[datetime]), **values)


def through_a_row(mapper: EventMapper, event: DomainEvent) -> DomainEvent:
    """What the event store does: JSON data in, JSON data out, recorded_at beside it."""
    data = json.loads(json.dumps(mapper.to_data(event)))
    return mapper.to_event(type(event).__name__, type(event).event_version, data, event.occurred_at)


# --- round trips --------------------------------------------------------------------------


def test_the_registry_holds_every_event_named_in_the_contract() -> None:
    assert set(EVENT_TYPES) >= CONTRACT_NAMES
    assert all(name == cls.__name__ for name, cls in EVENT_TYPES.items())


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_every_event_type_comes_back_equal_from_json(name: str) -> None:
    event = sample(EVENT_TYPES[name])

    assert through_a_row(EventMapper(), event) == event


@given(any_event())
def test_any_event_with_any_values_comes_back_equal_from_json(event: DomainEvent) -> None:
    assert through_a_row(EventMapper(), event) == event


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_the_occurrence_time_is_kept_beside_the_data_not_in_it(name: str) -> None:
    data = EventMapper().to_data(sample(EVENT_TYPES[name]))

    assert "occurred_at" not in data
    assert set(data) == set(fields_of(EVENT_TYPES[name]))


def test_stored_data_is_plain_json_readable_by_other_services() -> None:
    event = sample(EVENT_TYPES["OrderFulfillmentSagaStarted"])

    data = EventMapper().to_data(event)

    assert data["items"] == [
        {"sku": "ASPIRIN-100", "quantity": 2},
        {"sku": "IBUPROFEN-200", "quantity": 1},
    ]
    assert data["prescription"]["expires_on"] == "2031-12-31"
    assert data["shipping_address"]["country"] == "GB"
    assert datetime.fromisoformat(data["deadline_at"]) == at(3600.5)


def test_a_naive_recorded_at_is_read_as_utc() -> None:
    naive = datetime(2031, 5, 6, 7, 8, 9)

    event = EventMapper().to_event("OrderCancelled", 1, {"order_id": "o", "reason": "r"}, naive)

    assert event.occurred_at == naive.replace(tzinfo=UTC)


# --- upcasting ----------------------------------------------------------------------------


def test_an_old_event_version_is_upcast_on_the_way_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OrderCancelled, "event_version", 2)
    mapper = EventMapper(
        {("OrderCancelled", 1): lambda d: {"order_id": d["order_id"], "reason": d["why"]}}
    )

    event = mapper.to_event("OrderCancelled", 1, {"order_id": "o-1", "why": "late"}, T0)

    assert event == OrderCancelled(occurred_at=T0, order_id="o-1", reason="late")


def test_upcasters_are_chained_one_version_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OrderCancelled, "event_version", 3)
    mapper = EventMapper(
        {
            ("OrderCancelled", 1): lambda d: {**d, "reason": d.pop("why")},
            ("OrderCancelled", 2): lambda d: {**d, "reason": d["reason"].upper()},
        }
    )

    from_v1 = mapper.to_event("OrderCancelled", 1, {"order_id": "o-1", "why": "late"}, T0)
    from_v2 = mapper.to_event("OrderCancelled", 2, {"order_id": "o-1", "reason": "late"}, T0)
    current = mapper.to_event("OrderCancelled", 3, {"order_id": "o-1", "reason": "late"}, T0)

    assert from_v1 == from_v2 == OrderCancelled(occurred_at=T0, order_id="o-1", reason="LATE")
    assert current.reason == "late", "a current event passes through untouched"  # type: ignore[attr-defined]


def test_an_old_version_without_an_upcaster_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OrderCancelled, "event_version", 2)

    with pytest.raises(LookupError, match="OrderCancelled v1"):
        EventMapper().to_event("OrderCancelled", 1, {"order_id": "o-1", "reason": "x"}, T0)
