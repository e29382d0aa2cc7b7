"""NATS subjects and JetStream streams: `rawdrive.<entity>.<action>.<workspace_id>`."""

from __future__ import annotations

import msgspec

from rawdrive_contracts.events import EventData, EventSpec

SUBJECT_ROOT = "rawdrive"


class StreamSpec(msgspec.Struct, frozen=True):
    name: str
    subjects: tuple[str, ...]


UPLOADS_STREAM = StreamSpec("RAWDRIVE_UPLOADS", (f"{SUBJECT_ROOT}.upload.>",))
ASSETS_STREAM = StreamSpec("RAWDRIVE_ASSETS", (f"{SUBJECT_ROOT}.asset.>",))
STREAMS: tuple[StreamSpec, ...] = (UPLOADS_STREAM, ASSETS_STREAM)


def _check_token(value: str) -> str:
    # A subject token must not contain separators or wildcards, or a workspace could
    # publish into (or subscribe to) another's subjects.
    if not value or any(c in ".*>" or c.isspace() for c in value):
        raise ValueError(f"not a valid subject token: {value!r}")
    return value


def subject(spec: EventSpec, workspace_id: str) -> str:
    return f"{SUBJECT_ROOT}.{spec.entity}.{spec.action}.{_check_token(workspace_id)}"


def subject_for(data: EventData) -> str:
    return subject(type(data).spec, data.workspace_id)


def subject_filter(spec: EventSpec, workspace_id: str = "*") -> str:
    """A consumer filter for one event type, in one workspace or (default) all of them."""
    token = workspace_id if workspace_id == "*" else _check_token(workspace_id)
    return f"{SUBJECT_ROOT}.{spec.entity}.{spec.action}.{token}"


def stream_for(spec: EventSpec) -> StreamSpec:
    for stream in STREAMS:
        if any(s == f"{SUBJECT_ROOT}.{spec.entity}.>" for s in stream.subjects):
            return stream
    raise LookupError(f"no stream carries {spec.entity} events")
