"""The CloudEvents 1.0 envelope every RawDrive event travels in.

The envelope's `id` is also the JetStream `Nats-Msg-Id`, so publishing the same event twice
is deduplicated by the server. Producers derive ids deterministically (`event_id`) from what
the event is about, so a retried or redelivered decision republishes under the same id.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

import msgspec

from rawdrive_contracts.events import EVENT_TYPES, EventData, Timestamp

D = TypeVar("D")

# Fixed namespace so that event ids are stable across processes, hosts and releases.
_EVENT_ID_NAMESPACE = uuid.UUID("5f0b7c0e-3c1a-4d8e-9a57-6d2b3c5e9f10")


class CloudEvent(msgspec.Struct, Generic[D], kw_only=True):
    """A CloudEvents 1.0 structured-mode JSON document."""

    id: str
    source: str
    type: str
    time: Timestamp
    subject: str
    data: D
    specversion: Literal["1.0"] = "1.0"
    datacontenttype: Literal["application/json"] = "application/json"


class UnknownEventType(ValueError):
    """The document is a CloudEvent of a type this version of the contracts does not know."""


class InvalidEvent(ValueError):
    """The document is not a valid RawDrive CloudEvent (bad JSON, missing or mistyped field)."""


class _TypeOnly(msgspec.Struct):
    type: str


def event_id(event_type: str, *about: str) -> str:
    """A deterministic event id: the same decision about the same thing gets the same id."""
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, "/".join((event_type, *about))))


def new_event(
    data: EventData,
    *,
    source: str,
    id: str | None = None,
    time: datetime | None = None,
) -> CloudEvent[Any]:
    """Wrap event data in its envelope; the id defaults to one derived from the data's identity."""
    spec = type(data).spec
    return CloudEvent(
        id=id or event_id(spec.type, *data.identity()),
        source=source,
        type=spec.type,
        time=time or datetime.now(UTC),
        subject=data.ce_subject(),
        data=data,
    )


_encoder = msgspec.json.Encoder()
_type_decoder = msgspec.json.Decoder(_TypeOnly)
_decoders = {
    spec.type: msgspec.json.Decoder(CloudEvent[cls]) for cls, spec in EVENT_TYPES.items()
}


def encode(event: CloudEvent[Any]) -> bytes:
    return _encoder.encode(event)


def decode(raw: bytes | str) -> CloudEvent[Any]:
    """Decode any known event; unknown fields are ignored so producers may add fields."""
    try:
        event_type = _type_decoder.decode(raw).type
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidEvent(str(exc)) from exc
    decoder = _decoders.get(event_type)
    if decoder is None:
        raise UnknownEventType(event_type)
    try:
        return decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidEvent(f"{event_type}: {exc}") from exc


def decode_as(raw: bytes | str, data_type: type[D]) -> CloudEvent[D]:
    """Decode an event whose data type the caller knows (e.g. an outside consumer)."""
    event = decode(raw)
    if not isinstance(event.data, data_type):
        raise InvalidEvent(f"expected {data_type.__name__}, got {event.type}")
    return event
