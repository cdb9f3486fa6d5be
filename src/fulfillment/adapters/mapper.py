"""The one mapper between domain events and stored rows (docs/architecture.md, rule 9).

Every event passes through here on its way in and out of the store, so upcasting old
`event_version`s, and the sealing of patient data in payloads (adapters/patient_data.py),
happen in one place: `seal` on the way in; `open` on the way out, only where the data is
shown to a role that may read it or used by a saga's step (a projection, which needs no
patient data, decodes the sealed values as they are).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from enum import Enum
from typing import Any

from sqlalchemy import Connection

from fulfillment.adapters.patient_data import PatientData
from fulfillment.domain.events import EVENT_TYPES, DomainEvent
from fulfillment.domain.values import (
    LotAllocation,
    OrderLine,
    PrescriptionDetails,
    ShippingAddress,
)

_VALUES = (OrderLine, PrescriptionDetails, ShippingAddress, LotAllocation)

Data = dict[str, Any]
#: (type, from event_version) -> function that lifts the payload one version up.
Upcaster = Callable[[Data], Data]


@dataclass(frozen=True)
class StoredEvent:
    position: int
    stream_id: str
    version: int
    type: str
    event_version: int
    data: Data
    metadata: Data
    recorded_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "stream_id": self.stream_id,
            "version": self.version,
            "type": self.type,
            "event_version": self.event_version,
            "recorded_at": self.recorded_at.isoformat(),
            "data": self.data,
        }


@dataclass(frozen=True)
class EventText:
    """A stored event with its payloads as the JSON text the store holds (no parsing):
    what the relay publishes most events from (adapters/relay.py)."""

    position: int
    stream_id: str
    version: int
    type: str
    event_version: int
    data: str
    metadata: str
    recorded_at: datetime

    def stored(self) -> StoredEvent:
        """The event with its payloads parsed."""
        return StoredEvent(
            self.position,
            self.stream_id,
            self.version,
            self.type,
            self.event_version,
            json.loads(self.data),
            json.loads(self.metadata),
            self.recorded_at,
        )

    def as_json(self) -> bytes:
        """`StoredEvent.as_dict` as JSON, the stored data text spliced in unparsed."""
        return (
            b'{"position":%d,"stream_id":%b,"version":%d,"type":%b,"event_version":%d,'
            b'"recorded_at":"%b","data":%b}'
            % (
                self.position,
                json.dumps(self.stream_id).encode(),
                self.version,
                json.dumps(self.type).encode(),
                self.event_version,
                self.recorded_at.isoformat().encode(),
                self.data.encode(),
            )
        )


def to_utc(value: datetime) -> datetime:
    """Aware UTC; naive values (MariaDB, SQLite) are UTC by convention of this store."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _encode(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, _VALUES):
        return value.to_dict()
    if isinstance(value, datetime):
        return to_utc(value).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    return value


def _decoder(hint: Any) -> Callable[[Any], Any]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        present = [a for a in typing.get_args(hint) if a is not type(None)]
        inner = _decoder(present[0]) if len(present) == 1 else _identity
        return lambda raw: None if raw is None else inner(raw)
    if origin is tuple:
        item = _decoder(typing.get_args(hint)[0])
        return lambda raw: tuple(item(v) for v in raw)
    if isinstance(hint, type):
        if issubclass(hint, Enum):
            return hint
        if hint in _VALUES:
            return hint.from_dict
        if hint is datetime:
            return lambda raw: to_utc(datetime.fromisoformat(raw))
        if hint is date:
            return date.fromisoformat
    return _identity


def _identity(raw: Any) -> Any:
    return raw


_SCHEMAS: dict[type[DomainEvent], tuple[tuple[str, Callable[[Any], Any]], ...]] = {}


def _schema(cls: type[DomainEvent]) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    """The payload fields of an event class with their decoders (computed once per class)."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls)
        schema = tuple(
            (f.name, _decoder(hints[f.name]))
            for f in dataclasses.fields(cls)
            if f.name != "occurred_at"
        )
        _SCHEMAS[cls] = schema
    return schema


class EventMapper:
    def __init__(
        self,
        upcasters: dict[tuple[str, int], Upcaster] | None = None,
        patient_data: PatientData | None = None,
    ) -> None:
        self.upcasters = upcasters or {}
        #: Seals and opens patient data; None: stored and read as they are.
        self.patient_data = patient_data

    def to_data(self, event: DomainEvent) -> Data:
        return {name: _encode(getattr(event, name)) for name, _ in _schema(type(event))}

    def to_row_data(
        self, conn: Connection, event: DomainEvent, stream_id: str, version: int
    ) -> Data:
        """The data to store of an event appended at `version` of `stream_id`: its
        patient data sealed, bound to that place (in the appending transaction)."""
        data = self.to_data(event)
        if self.patient_data is None:
            return data
        return self.patient_data.seal_event(conn, type(event).__name__, data, stream_id, version)

    def open(self, conn: Connection, stored: StoredEvent) -> StoredEvent:
        """A stored event with its patient data opened (`"[erased]"` once erased)."""
        if self.patient_data is None:
            return stored
        data = self.patient_data.open_event(
            conn, stored.type, stored.data, stored.stream_id, stored.version
        )
        return stored if data is stored.data else replace(stored, data=data)

    def decode(self, conn: Connection, stored: StoredEvent) -> DomainEvent:
        """The domain event of a stored one, its patient data opened (a saga's steps)."""
        opened = self.open(conn, stored)
        return self.to_event(opened.type, opened.event_version, opened.data, opened.recorded_at)

    def to_event(
        self, type_name: str, event_version: int, data: Data, recorded_at: datetime
    ) -> DomainEvent:
        cls = EVENT_TYPES[type_name]
        while event_version < cls.event_version:
            upcast = self.upcasters.get((type_name, event_version))
            if upcast is None:
                raise LookupError(f"no upcaster for {type_name} v{event_version}")
            data = upcast(data)
            event_version += 1
        # A field added later with a default is absent from older payloads: it keeps
        # its default (a new field without one needs an upcaster).
        kwargs = {name: decode(data[name]) for name, decode in _schema(cls) if name in data}
        return cls(occurred_at=to_utc(recorded_at), **kwargs)
