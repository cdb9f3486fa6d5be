"""`fhir_bundle`: an order as a FHIR R5 Bundle, validated by `fhir.resources` (R5 models),
with the statuses of the order's states and the references resolved within the bundle.

`fhir.resources` checks the structure (every element, its type, the required ones, the
instant's and the id's formats) but neither the value sets nor the invariants; those the
tests check here: the statuses against R5's required value sets, fullUrls unique, every
`authorizingPrescription` resolving to a request of the bundle, contained resources
referenced (dom-3).
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from fhir.resources import get_fhir_model_class
from fhir.resources.bundle import Bundle

from fulfillment.views.fhir import fhir_bundle

# R5's required value sets.
REQUEST_STATUSES = {
    "active",
    "on-hold",
    "ended",
    "stopped",
    "completed",
    "cancelled",
    "entered-in-error",
    "draft",
    "unknown",
}
DISPENSE_STATUSES = {
    "preparation",
    "in-progress",
    "cancelled",
    "on-hold",
    "completed",
    "entered-in-error",
    "stopped",
    "declined",
    "unknown",
}
INTENTS = {
    "proposal",
    "plan",
    "order",
    "original-order",
    "reflex-order",
    "filler-order",
    "instance-order",
    "option",
}

PLACED = {
    "customer_id": "cust-7",
    "placed_at": "2026-03-01T09:30:15.250000+00:00",
    "prescription": {
        "prescriber_id": "dr-42",
        "patient_name": "Rosalind Franklin",
        "expires_on": "2026-12-31",
    },
}
SHIPMENT = {"tracking_number": "TRK-1", "status": "in_transit"}
LOTS = {
    "none": [],
    "one": [
        {"sku": "NAPROXEN", "lot": "L-1", "quantity": 2},
        {"sku": "IBU", "lot": "I-9", "quantity": 1},
    ],
    "split": [
        {"sku": "NAPROXEN", "lot": "L-1", "quantity": 1},
        {"sku": "NAPROXEN", "lot": "L-2", "quantity": 1},
        {"sku": "IBU", "lot": "I-9", "quantity": 1},
    ],
    "partial": [{"sku": "NAPROXEN", "lot": "L-1", "quantity": 1}],
}
# (status, reason, verification status): what an order can show.
STATES = [
    ("pending", None, "not_required"),
    ("pending", None, "approved"),
    ("awaiting_verification", None, "pending"),
    ("awaiting_verification", None, "clarification_requested"),
    ("needs_attention", "shipment_failed", "not_required"),
    ("fulfilled", None, "approved"),
    ("delivered", None, "not_required"),
    ("returned", None, "not_required"),
    ("cancelled", "verification_rejected", "rejected"),
    ("cancelled", "unsupported_destination", "not_required"),
    ("cancelled", "customer_request", "approved"),
]
EXPECTED_REQUEST = {
    "pending": "active",
    "awaiting_verification": "on-hold",
    "needs_attention": "active",
    "fulfilled": "completed",
    "delivered": "completed",
    "returned": "completed",
    "cancelled": "cancelled",
}


def an_order(
    status: str = "pending",
    reason: str | None = None,
    verification: str = "not_required",
    shipment: dict[str, Any] | None = None,
    lots: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "order_id": "o-1",
        "status": status,
        "reason": reason,
        # Two lines of one SKU are one request of their sum.
        "items": [
            {"sku": "NAPROXEN", "quantity": 1},
            {"sku": "IBU", "quantity": 1},
            {"sku": "NAPROXEN", "quantity": 1},
        ],
        "saga": {"status": "running", "steps": []},
        "shipment": shipment,
        "verification": {
            "status": verification,
            "by": "pharm-ann" if verification not in ("not_required", "pending") else None,
        },
        "lots": lots or [],
    }


def expected_dispense(status: str, reason: str | None, shipped: bool) -> str:
    if status == "cancelled":
        return "declined" if reason == "verification_rejected" else "cancelled"
    if status in ("fulfilled", "delivered", "returned"):
        return "completed"
    return "in-progress" if shipped else "preparation"


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def check_valid(data: dict[str, Any]) -> Bundle:
    """Valid R5 by fhir.resources, plus what it does not check."""
    json.dumps(data)  # plain JSON
    bundle = Bundle.model_validate(data)
    assert bundle.type == "collection"
    urls = [e["fullUrl"] for e in data["entry"]]
    assert len(set(urls)) == len(urls)  # bdl-7
    assert all(u.startswith("urn:uuid:") for u in urls)
    by_url = {e["fullUrl"]: e["resource"] for e in data["entry"]}
    for entry, parsed in zip(data["entry"], bundle.entry or [], strict=True):
        resource = entry["resource"]
        model = get_fhir_model_class(resource["resourceType"])
        assert isinstance(parsed.resource, model)  # parsed as its own R5 class
        model.model_validate(resource)
        if resource["resourceType"] == "MedicationRequest":
            assert resource["status"] in REQUEST_STATUSES
            assert resource["intent"] in INTENTS
        else:
            assert resource["resourceType"] == "MedicationDispense"
            assert resource["status"] in DISPENSE_STATUSES
            for reference in resource["authorizingPrescription"]:
                assert by_url[reference["reference"]]["resourceType"] == "MedicationRequest"
            for contained in resource.get("contained", []):
                # dom-3: a contained resource is referenced from its container.
                assert resource["medication"]["reference"]["reference"] == f"#{contained['id']}"
    return bundle


@pytest.mark.parametrize(
    ("state", "shipped", "lots"),
    [
        (state, shipped, lots)
        for state, shipped, lots in itertools.product(STATES, (False, True), LOTS)
        # A shipment exists only once the units were reserved.
        if not (shipped and lots == "none")
    ],
)
def test_every_state_gives_a_valid_r5_bundle_with_the_mapped_statuses(
    state: tuple[str, str | None, str], shipped: bool, lots: str
) -> None:
    status, reason, verification = state
    order = an_order(status, reason, verification, SHIPMENT if shipped else None, LOTS[lots])

    data = fhir_bundle(order, PLACED)

    check_valid(data)
    requests = resources(data, "MedicationRequest")
    dispenses = resources(data, "MedicationDispense")
    assert [r["status"] for r in requests] == [EXPECTED_REQUEST[status]] * 2
    assert {d["status"] for d in dispenses} == {expected_dispense(status, reason, shipped)}
    if status == "cancelled":
        assert all(r["statusReason"] == {"text": reason} for r in requests)
        assert all(d["notPerformedReason"] == {"concept": {"text": reason}} for d in dispenses)
    else:
        assert not any("statusReason" in r for r in requests)
        assert not any("notPerformedReason" in d for d in dispenses)
    # Every unit asked for is in some dispense of its request, whatever the lots.
    for request in requests:
        url = next(e["fullUrl"] for e in data["entry"] if e["resource"] is request)
        units = sum(
            d["quantity"]["value"]
            for d in dispenses
            if d["authorizingPrescription"][0]["reference"] == url
        )
        assert units == request["dispenseRequest"]["quantity"]["value"]


def test_the_bundle_names_the_order_the_patient_the_prescriber_and_the_medication() -> None:
    data = fhir_bundle(an_order(), PLACED)

    assert data["resourceType"] == "Bundle"
    assert data["identifier"] == {"system": "urn:fulfillment:order", "value": "o-1"}
    assert data["timestamp"] == "2026-03-01T09:30:15.250000Z"
    naproxen, ibu = resources(data, "MedicationRequest")
    assert naproxen["medication"] == {
        "concept": {
            "coding": [{"system": "urn:fulfillment:sku", "code": "NAPROXEN"}],
            "text": "NAPROXEN",
        }
    }
    assert naproxen["dispenseRequest"] == {
        "validityPeriod": {"end": "2026-12-31"},
        "quantity": {"value": 2},  # the two NAPROXEN lines
    }
    assert ibu["dispenseRequest"]["quantity"] == {"value": 1}
    assert naproxen["subject"] == {
        "type": "Patient",
        "identifier": {"system": "urn:fulfillment:customer", "value": "cust-7"},
        "display": "Rosalind Franklin",
    }
    assert naproxen["requester"] == {
        "type": "Practitioner",
        "identifier": {"system": "urn:fulfillment:prescriber", "value": "dr-42"},
    }
    assert naproxen["authoredOn"] == data["timestamp"]
    assert naproxen["groupIdentifier"] == {"system": "urn:fulfillment:order", "value": "o-1"}
    assert "note" not in naproxen  # no verification needed
    dispenses = resources(data, "MedicationDispense")
    assert [d["quantity"] for d in dispenses] == [{"value": 2}, {"value": 1}]
    assert all(d["subject"] == naproxen["subject"] for d in dispenses)
    assert all("contained" not in d for d in dispenses)  # no lot known yet


def test_each_lot_is_a_dispense_with_a_contained_medication_of_that_batch() -> None:
    data = fhir_bundle(an_order("fulfilled", lots=LOTS["split"], shipment=SHIPMENT), PLACED)

    check_valid(data)
    dispenses = resources(data, "MedicationDispense")
    lots = [
        (d["contained"][0]["code"]["coding"][0]["code"], d["contained"][0]["batch"]["lotNumber"])
        for d in dispenses
    ]
    assert lots == [("NAPROXEN", "L-1"), ("NAPROXEN", "L-2"), ("IBU", "I-9")]
    assert [d["quantity"]["value"] for d in dispenses] == [1, 1, 1]
    first, second, _ = dispenses
    assert first["authorizingPrescription"] == second["authorizingPrescription"]


def test_units_of_no_known_lot_are_one_more_dispense_without_a_batch() -> None:
    data = fhir_bundle(an_order(lots=LOTS["partial"]), PLACED)

    naproxen = [
        d
        for d in resources(data, "MedicationDispense")
        if d["medication"]["concept"]["coding"][0]["code"] == "NAPROXEN"
    ]
    assert [(d["quantity"]["value"], "contained" in d) for d in naproxen] == [(1, True), (1, False)]


def test_the_ids_are_deterministic_uuid5s_of_the_order_and_the_sku() -> None:
    first = fhir_bundle(an_order(), PLACED)
    again = fhir_bundle(an_order("fulfilled", shipment=SHIPMENT), PLACED)
    other = fhir_bundle({**an_order(), "order_id": "o-2"}, PLACED)

    def urls(bundle: dict[str, Any]) -> list[str]:
        return [e["fullUrl"] for e in bundle["entry"]]

    assert urls(first) == urls(again)
    assert not set(urls(first)) & set(urls(other))
    assert all(u[len("urn:uuid:") :][14] == "5" for u in urls(first))  # version 5


def test_the_pharmacists_verification_is_a_note_on_the_request() -> None:
    data = fhir_bundle(an_order("pending", verification="approved"), PLACED)

    assert resources(data, "MedicationRequest")[0]["note"] == [
        {"text": "pharmacist verification: approved", "authorString": "pharm-ann"}
    ]
    waiting = fhir_bundle(an_order("awaiting_verification", verification="pending"), PLACED)
    assert resources(waiting, "MedicationRequest")[0]["note"] == [
        {"text": "pharmacist verification: pending"}
    ]


def test_a_naive_placed_at_is_utc_and_any_offset_becomes_z() -> None:
    naive = fhir_bundle(an_order(), {**PLACED, "placed_at": "2026-03-01T09:30:15"})
    offset = fhir_bundle(an_order(), {**PLACED, "placed_at": "2026-03-01T10:30:15+01:00"})

    assert naive["timestamp"] == offset["timestamp"] == "2026-03-01T09:30:15Z"
    check_valid(naive)


def test_an_order_status_it_does_not_know_is_unknown_not_a_guess() -> None:
    data = fhir_bundle(an_order("teleported"), PLACED)

    check_valid(data)
    assert {r["status"] for e in data["entry"] for r in [e["resource"]]} == {"unknown"}


def test_the_validator_is_r5_an_r4_shaped_request_is_refused() -> None:
    data = fhir_bundle(an_order(), PLACED)
    request = data["entry"][0]["resource"]
    request["medicationCodeableConcept"] = request.pop("medication")["concept"]  # R4's name

    with pytest.raises(ValueError, match="medicationCodeableConcept"):
        Bundle.model_validate(data)
