"""Value objects: immutable, compared by value, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from fulfillment.domain.errors import DomainError

#: What a field of patient data reads as once its customer was erased (crypto-shredding,
#: adapters/patient_data.py).
ERASED = "[erased]"


@dataclass(frozen=True, slots=True)
class OrderLine:
    sku: str
    quantity: int

    def __post_init__(self) -> None:
        if self.quantity < 1:
            raise DomainError(f"quantity must be at least 1, got {self.quantity}")

    def to_dict(self) -> dict[str, Any]:
        return {"sku": self.sku, "quantity": self.quantity}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OrderLine:
        return cls(sku=data["sku"], quantity=int(data["quantity"]))


@dataclass(frozen=True, slots=True)
class LotAllocation:
    """Units of one SKU a reservation took from one lot (first expiry, first out)."""

    sku: str
    lot: str
    quantity: int

    def to_dict(self) -> dict[str, Any]:
        return {"sku": self.sku, "lot": self.lot, "quantity": self.quantity}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LotAllocation:
        return cls(sku=data["sku"], lot=data["lot"], quantity=int(data["quantity"]))


@dataclass(frozen=True, slots=True)
class PrescriptionDetails:
    prescriber_id: str
    patient_name: str
    expires_on: date

    def is_expired(self, today: date) -> bool:
        return self.expires_on < today

    @property
    def erased(self) -> bool:
        """Its patient's data was erased: no prescription can be made from it."""
        return ERASED in (self.patient_name, self.prescriber_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prescriber_id": self.prescriber_id,
            "patient_name": self.patient_name,
            "expires_on": self.expires_on.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrescriptionDetails:
        return cls(
            prescriber_id=data["prescriber_id"],
            patient_name=data["patient_name"],
            expires_on=date.fromisoformat(data["expires_on"]),
        )


@dataclass(frozen=True, slots=True)
class ShippingAddress:
    name: str
    line1: str
    city: str
    postal_code: str
    country: str

    @property
    def erased(self) -> bool:
        """Its customer's data was erased: nothing can be shipped there."""
        return ERASED in (self.name, self.line1, self.city, self.postal_code)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "line1": self.line1,
            "city": self.city,
            "postal_code": self.postal_code,
            "country": self.country,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShippingAddress:
        return cls(**{k: data[k] for k in ("name", "line1", "city", "postal_code", "country")})


def merge_lines(lines: tuple[OrderLine, ...]) -> tuple[OrderLine, ...]:
    """Lines of the same SKU summed, sorted by SKU (a stable lock order for reservations)."""
    totals: dict[str, int] = {}
    for line in lines:
        totals[line.sku] = totals.get(line.sku, 0) + line.quantity
    return tuple(OrderLine(sku, qty) for sku, qty in sorted(totals.items()))
