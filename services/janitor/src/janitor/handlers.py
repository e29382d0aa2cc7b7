"""The janitor's event handlers: one table from event type to handler."""

from __future__ import annotations

from typing import Any

import asyncpg

from rawdrive_contracts import UPLOADS_STREAM, CloudEvent, UploadSessionCreated, subject_filter
from rawdrive_platform.bus import ConsumerSpec
from janitor import tracking

UPLOAD_EVENTS = ConsumerSpec(
    durable="janitor-uploads",
    stream=UPLOADS_STREAM.name,
    filter_subjects=tuple(
        subject_filter(cls.spec) for cls in (UploadSessionCreated, *tracking.CLOSING_EVENTS)
    ),
)


def upload_event_handler(pool: asyncpg.Pool):
    async def handle(event: CloudEvent[Any]) -> None:
        if isinstance(event.data, UploadSessionCreated):
            await tracking.track_session(pool, event)
        elif isinstance(event.data, tracking.CLOSING_EVENTS):
            await tracking.close_session(pool, event)

    return handle
