"""The event relay's pure parts: the payload without patient data, `--types`, the
backoff, broker URLs, RabbitMQ's confirmations."""

from __future__ import annotations

import asyncio

import pytest

from fulfillment.adapters import relay as r
from fulfillment.adapters.patient_data import PATIENT_DATA_FIELDS
from fulfillment.adapters.relay_amqp import Confirmations
from fulfillment.domain.events import EVENT_TYPES

ORDER_CREATED = {
    "position": 7,
    "stream_id": "order-1",
    "version": 1,
    "type": "OrderCreated",
    "event_version": 1,
    "recorded_at": "2026-12-02T10:00:00+00:00",
    "data": {
        "order_id": "1",
        "customer_id": "c-1",
        "items": [{"sku": "A", "quantity": 1}],
        "prescription": {
            "prescriber_id": "enc:v1:k:abc",
            "patient_name": "enc:v1:k:def",
            "expires_on": "2027-01-01",
        },
        "shipping_address": {
            "name": "Ada",
            "line1": "1 Way",
            "city": "London",
            "postal_code": "N1",
            "country": "GB",
        },
    },
}


def test_patient_data_fields_are_left_out_not_erased() -> None:
    shown = r.without_patient_data(ORDER_CREATED)
    assert shown["data"]["prescription"] == {"expires_on": "2027-01-01"}
    assert shown["data"]["shipping_address"] == {"country": "GB"}
    assert {k: v for k, v in shown.items() if k != "data"} == {
        k: v for k, v in ORDER_CREATED.items() if k != "data"
    }
    assert shown["data"]["items"] == ORDER_CREATED["data"]["items"]
    # The fields left out are exactly the sealed ones (one list, in patient_data.py).
    for value, fields in PATIENT_DATA_FIELDS.items():
        left_out = set(ORDER_CREATED["data"][value]) - set(shown["data"][value])  # type: ignore[arg-type]
        assert left_out == set(fields)
    assert ORDER_CREATED["data"]["shipping_address"]["name"] == "Ada", "input unchanged"  # type: ignore[index]


def test_events_without_patient_data_pass_unchanged() -> None:
    event = {**ORDER_CREATED, "type": "OrderFulfilled", "data": {"order_id": "1", "x": {"name": 1}}}
    assert r.without_patient_data(event) == event


def test_types_are_parsed_and_checked_against_the_known_ones() -> None:
    assert r.parse_types(None, EVENT_TYPES) is None
    assert r.parse_types(" ", EVENT_TYPES) is None
    assert r.parse_types("OrderCreated, OrderFulfilled,", EVENT_TYPES) == {
        "OrderCreated",
        "OrderFulfilled",
    }
    with pytest.raises(ValueError, match=r"unknown event types Nope, orderCreated; known: "):
        r.parse_types("OrderCreated,Nope,orderCreated", EVENT_TYPES)


def test_backoff_doubles_to_its_cap_and_starts_over_after_a_success() -> None:
    backoff = r.Backoff(0.2, 5.0)
    assert [backoff.next() for _ in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    backoff.reset()
    assert backoff.next() == 0.2


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "amqp"),
        ("AMQPS://host/vhost", "amqp"),
        ("nats://127.0.0.1:4222", "nats"),
        ("tls://nats.internal:4222", "nats"),
    ],
)
def test_broker_urls_name_their_broker(url: str, kind: str) -> None:
    assert r.broker_kind(url) == kind


@pytest.mark.parametrize("url", ["http://x", "127.0.0.1:5672", "", "kafka://x:9092"])
def test_other_urls_are_refused_in_one_line_without_the_password(url: str) -> None:
    with pytest.raises(ValueError, match="write amqp://") as caught:
        r.broker_kind(url)
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError) as secret:
        r.broker_kind("http://user:s3cret@host/")
    assert "s3cret" not in str(secret.value)


def test_passwords_are_masked() -> None:
    assert r.masked_broker_url("amqp://guest:guest@h:5672/v") == "amqp://guest:***@h:5672/v"
    assert r.masked_broker_url("nats://h:4222") == "nats://h:4222"
    assert r.checkpoint_name("default") == "relay:default"


def _settled_now(confirms: Confirmations) -> bool:
    async def check() -> bool:
        return confirms.settled().done()

    return asyncio.run(check())


def test_confirmations_settle_with_multiple_and_out_of_order_answers() -> None:
    confirms = Confirmations()
    for _ in range(6):
        confirms.sent()
    confirms.answer(3, multiple=False, refused=False)  # ahead of 1 and 2
    assert confirms.pending == 5 and not _settled_now(confirms)
    confirms.answer(2, multiple=True, refused=False)  # settles 1 and 2; 3 was already
    assert confirms.pending == 3
    confirms.answer(5, multiple=False, refused=True)
    confirms.answer(5, multiple=False, refused=True)  # a repeat counts once
    confirms.answer(6, multiple=True, refused=False)  # 4 and 6; 5 stays refused
    assert confirms.pending == 0 and confirms.refused == 1 and _settled_now(confirms)
    confirms.answer(99, multiple=True, refused=True)  # nothing pending: nothing counted
    assert confirms.refused == 1


def test_confirmations_count_a_multiple_nack_for_each_unanswered_tag() -> None:
    confirms = Confirmations()
    for _ in range(4):
        confirms.sent()
    confirms.answer(2, multiple=False, refused=False)
    confirms.answer(4, multiple=True, refused=True)
    assert confirms.refused == 3 and confirms.pending == 0


def test_a_lost_connection_fails_the_wait_for_confirmations() -> None:
    async def scenario() -> None:
        confirms = Confirmations()
        confirms.sent()
        waiting = confirms.settled()
        confirms.fail(r.BrokerError("the connection closed"))
        with pytest.raises(r.BrokerError, match="closed"):
            await waiting

    asyncio.run(scenario())
