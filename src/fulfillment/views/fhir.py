"""An order as a FHIR R5 `Bundle` (type `collection`): plain dicts, no FHIR library.

`fhir_bundle(order, placed)` takes the `GET /orders/{id}` view and what the order was
placed with (customer, time, prescription) and returns, for each SKU of the order:

* one `MedicationRequest`: the prescribed medication (a CodeableConcept, the SKU as code
  in `SKU_SYSTEM`), the patient (`subject`: a Patient by the customer's identifier,
  displayed with the prescription's patient name), the prescriber (`requester`: a
  Practitioner by identifier), the quantity and the prescription's expiry
  (`dispenseRequest.quantity`, `.validityPeriod.end`), the pharmacist's verification as
  a note;
* its `MedicationDispense`s, each naming the request in `authorizingPrescription` by the
  request's `fullUrl` (`urn:uuid:`, a uuid5 of the order id and SKU, so the same order
  always gives the same bundle): one per lot the units were taken from, with its
  quantity and a contained `Medication` whose `batch.lotNumber` is the lot (R5 keeps the
  lot on Medication, and a dispense names one medication, so a line that drew from two
  lots is two dispenses); when no lot is known for (some of) the units, one dispense of
  those units with the medication as a concept only.

Lines of one SKU are one request (their quantities summed), as the order reserves them.
Statuses (R5's required value sets): see `request_status` and `dispense_status`; an
order status this module does not know maps to `unknown` in both.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

SKU_SYSTEM = "urn:fulfillment:sku"
ORDER_SYSTEM = "urn:fulfillment:order"
ORDER_LINE_SYSTEM = "urn:fulfillment:order-line"
CUSTOMER_SYSTEM = "urn:fulfillment:customer"
PRESCRIBER_SYSTEM = "urn:fulfillment:prescriber"
#: The namespace of the entries' uuid5s.
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:fulfillment:fhir")
#: Order statuses after which the medication has left the pharmacy.
FINISHED = frozenset({"fulfilled", "delivered", "returned"})
_SEP = "\x1f"  # ids and SKUs have no control characters: an unambiguous separator
_CONTAINED_ID = "medication"


def request_status(order: Mapping[str, Any]) -> str:
    """MedicationRequest.status: `on-hold` awaiting verification, `cancelled`,
    `completed` once fulfilled (delivered, returned), `active` otherwise."""
    status = order["status"]
    if status == "awaiting_verification":
        return "on-hold"
    if status == "cancelled":
        return "cancelled"
    if status in FINISHED:
        return "completed"
    if status in ("pending", "needs_attention"):
        return "active"
    return "unknown"


def dispense_status(order: Mapping[str, Any]) -> str:
    """MedicationDispense.status: `declined` when the pharmacist rejected the
    prescription, `cancelled` for any other cancellation, `completed` once fulfilled
    (delivered, returned), `in-progress` once a shipment exists, else `preparation`."""
    status = order["status"]
    if status == "cancelled":
        return "declined" if order.get("reason") == "verification_rejected" else "cancelled"
    if status in FINISHED:
        return "completed"
    if status not in ("pending", "awaiting_verification", "needs_attention"):
        return "unknown"
    return "in-progress" if order.get("shipment") is not None else "preparation"


def _urn(*parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(NAMESPACE, _SEP.join(parts))}"


def _instant(value: str) -> str:
    """An ISO datetime as a FHIR instant: UTC, with seconds and zone (naive: UTC)."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _medication(sku: str) -> dict[str, Any]:
    return {"coding": [{"system": SKU_SYSTEM, "code": sku}], "text": sku}


def _lines(order: Mapping[str, Any]) -> dict[str, int]:
    """Quantity per SKU, in the order the SKUs first appear."""
    lines: dict[str, int] = {}
    for item in order["items"]:
        lines[item["sku"]] = lines.get(item["sku"], 0) + int(item["quantity"])
    return lines


def _lots(order: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """SKU -> lot -> units taken from it."""
    lots: dict[str, dict[str, int]] = {}
    for taken in order.get("lots") or ():
        of_sku = lots.setdefault(taken["sku"], {})
        of_sku[taken["lot"]] = of_sku.get(taken["lot"], 0) + int(taken["quantity"])
    return lots


def _verification_note(order: Mapping[str, Any]) -> list[dict[str, Any]]:
    verification = order.get("verification") or {}
    status = verification.get("status")
    if status in (None, "not_required"):
        return []
    note: dict[str, Any] = {"text": f"pharmacist verification: {status.replace('_', ' ')}"}
    if verification.get("by"):
        note["authorString"] = str(verification["by"])
    return [note]


def fhir_bundle(order: Mapping[str, Any], placed: Mapping[str, Any]) -> dict[str, Any]:
    """The order as a FHIR R5 Bundle of type `collection` (see the module's docstring).

    `order`: the `GET /orders/{id}` view (`order_id`, `status`, `reason`, `items`,
    `shipment`, `verification`, `lots`). `placed`: `customer_id`, `placed_at` (ISO
    datetime) and `prescription` (`prescriber_id`, `patient_name`, `expires_on`).
    """
    order_id = str(order["order_id"])
    prescription = placed["prescription"]
    placed_at = _instant(str(placed["placed_at"]))
    expires_on = date.fromisoformat(str(prescription["expires_on"])).isoformat()
    patient = {
        "type": "Patient",
        "identifier": {"system": CUSTOMER_SYSTEM, "value": str(placed["customer_id"])},
        "display": str(prescription["patient_name"]),
    }
    prescriber = {
        "type": "Practitioner",
        "identifier": {"system": PRESCRIBER_SYSTEM, "value": str(prescription["prescriber_id"])},
    }
    requested, dispensed = request_status(order), dispense_status(order)
    reason = order.get("reason")
    notes = _verification_note(order)
    lots = _lots(order)
    entries: list[dict[str, Any]] = []
    for sku, quantity in _lines(order).items():
        request_url = _urn("MedicationRequest", order_id, sku)
        request: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "identifier": [{"system": ORDER_LINE_SYSTEM, "value": f"{order_id}/{sku}"}],
            "groupIdentifier": {"system": ORDER_SYSTEM, "value": order_id},
            "status": requested,
            "intent": "order",
            "medication": {"concept": _medication(sku)},
            "subject": patient,
            "authoredOn": placed_at,
            "requester": prescriber,
            "dispenseRequest": {
                "validityPeriod": {"end": expires_on},
                "quantity": {"value": quantity},
            },
        }
        if requested == "cancelled" and reason:
            request["statusReason"] = {"text": str(reason)}
        if notes:
            request["note"] = notes
        entries.append({"fullUrl": request_url, "resource": request})

        portions: list[tuple[str | None, int]] = list(lots.get(sku, {}).items())
        remainder = quantity - sum(units for _, units in portions)
        if remainder > 0:  # units of no known lot (all of them, before a reservation)
            portions.append((None, remainder))
        for lot, units in portions:
            dispense: dict[str, Any] = {
                "resourceType": "MedicationDispense",
                "status": dispensed,
                "subject": patient,
                "authorizingPrescription": [
                    {"reference": request_url, "type": "MedicationRequest"}
                ],
                "quantity": {"value": units},
            }
            if lot is None:
                dispense["medication"] = {"concept": _medication(sku)}
                url = _urn("MedicationDispense", order_id, sku)
            else:
                dispense["contained"] = [
                    {
                        "resourceType": "Medication",
                        "id": _CONTAINED_ID,
                        "code": _medication(sku),
                        "batch": {"lotNumber": lot},
                    }
                ]
                dispense["medication"] = {
                    "concept": _medication(sku),
                    "reference": {"reference": f"#{_CONTAINED_ID}"},
                }
                url = _urn("MedicationDispense", order_id, sku, lot)
            if dispensed in ("cancelled", "declined") and reason:
                dispense["notPerformedReason"] = {"concept": {"text": str(reason)}}
            entries.append({"fullUrl": url, "resource": dispense})
    return {
        "resourceType": "Bundle",
        "identifier": {"system": ORDER_SYSTEM, "value": order_id},
        "type": "collection",
        "timestamp": placed_at,
        "entry": entries,
    }


def patient_of(bundle: Mapping[str, Any]) -> str | None:
    """The customer id of the patient a bundle of `fhir_bundle` is about (its resources'
    `subject`), for the access audit; None if no resource names one."""
    for entry in bundle.get("entry") or ():
        subject = entry.get("resource", {}).get("subject") or {}
        identifier = subject.get("identifier") or {}
        if identifier.get("system") == CUSTOMER_SYSTEM and identifier.get("value") is not None:
            return str(identifier["value"])
    return None
