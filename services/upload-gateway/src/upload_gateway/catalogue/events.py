"""The catalogue's durable consumer on RAWDRIVE_ASSETS: every asset event merges its fact.

upload.verified, which first describes an asset, comes through the gateway's consumer on
RAWDRIVE_UPLOADS (uploads/verdicts.py) and lands here through `record`, so each stream keeps one table.
Merging is order-free and idempotent (catalogue.merge), so every handler is the same call.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from rawdrive_contracts import (
    ASSETS_STREAM,
    AssetCreated,
    AssetDeleted,
    AssetProcessingFailed,
    AssetPurged,
    AssetRestored,
    CloudEvent,
    subject_filter,
)
from rawdrive_platform.bus import ConsumerSpec, EventHandler, Poison
from upload_gateway.catalogue import store as catalogue_store
from upload_gateway.catalogue.core import MergeConflict, facts_of

log = logging.getLogger(__name__)

DURABLE = "upload-gateway-catalogue"
FOLLOWED = (AssetCreated, AssetProcessingFailed, AssetDeleted, AssetRestored, AssetPurged)


def consumer_spec(durable: str = DURABLE) -> ConsumerSpec:
    return ConsumerSpec(
        durable=durable,
        stream=ASSETS_STREAM.name,
        filter_subjects=tuple(subject_filter(t.spec) for t in FOLLOWED),
    )


async def record(pool: asyncpg.Pool, event: CloudEvent[Any]) -> None:
    try:
        await catalogue_store.record(pool, facts_of(event))
    except MergeConflict as error:
        raise Poison(str(error)) from None


def handler(pool: asyncpg.Pool) -> EventHandler:
    async def handle(event: CloudEvent[Any]) -> None:
        if not isinstance(event.data, FOLLOWED):
            raise Poison(f"the catalogue does not follow {event.type}")
        await record(pool, event)

    return handle
