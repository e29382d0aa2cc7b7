"""The gateway's own durable consumer on RAWDRIVE_UPLOADS: record the verifier's verdicts (and
refused commit attempts) and the janitor's expiries; a verified upload also enters the asset
catalogue.

Each handler applies one state machine event; one that no longer applies (a redelivery, or a
session already moved on) changes nothing, which makes every handler idempotent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from rawdrive_contracts import (
    UPLOADS_STREAM,
    CloudEvent,
    CommitRefused,
    UploadExpired,
    UploadRejected,
    UploadVerified,
    subject_filter,
)
from rawdrive_platform.bus import ConsumerSpec, EventHandler
from upload_gateway import asset_events, repository

log = logging.getLogger(__name__)

DURABLE = "upload-gateway-verdicts"


def consumer_spec(durable: str = DURABLE) -> ConsumerSpec:
    return ConsumerSpec(
        durable=durable,
        stream=UPLOADS_STREAM.name,
        filter_subjects=tuple(subject_filter(t.spec) for t in HANDLERS),
    )


async def on_verified(pool: asyncpg.Pool, event: CloudEvent[UploadVerified]) -> None:
    data = event.data
    if await repository.apply(pool, data.upload_id, "verify") is None:
        log.info("verified upload was not verifying; nothing to record", extra={"upload_id": data.upload_id})
    # The asset enters the catalogue (processing) whatever the session row says: it may come
    # from another replica's session, or the row may have moved on in a redelivery.
    await asset_events.record(pool, event)


async def on_rejected(pool: asyncpg.Pool, event: CloudEvent[UploadRejected]) -> None:
    data = event.data
    if await repository.apply(pool, data.upload_id, "reject", rejection=(data.reason, data.detail)) is None:
        log.info("rejected upload was not verifying; nothing to record", extra={"upload_id": data.upload_id})


async def on_refused(pool: asyncpg.Pool, event: CloudEvent[CommitRefused]) -> None:
    data = event.data
    moved = await repository.apply(
        pool, data.upload_id, "refuse", rejection=(data.reason, data.detail), attempt=data.attempt
    )
    if moved is None:
        log.info("refused attempt is not the session's latest; nothing to record",
                 extra={"upload_id": data.upload_id, "attempt": data.attempt})


async def on_expired(pool: asyncpg.Pool, event: CloudEvent[UploadExpired]) -> None:
    await repository.apply(pool, event.data.upload_id, "expire")


HANDLERS: dict[type, Callable[[asyncpg.Pool, Any], Awaitable[None]]] = {
    UploadVerified: on_verified,
    UploadRejected: on_rejected,
    CommitRefused: on_refused,
    UploadExpired: on_expired,
}


def handler(pool: asyncpg.Pool) -> EventHandler:
    async def handle(event: CloudEvent[Any]) -> None:
        await HANDLERS[type(event.data)](pool, event)

    return handle
