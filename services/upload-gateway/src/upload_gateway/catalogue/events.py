"""The catalogue's durable consumer on RAWDRIVE_ASSETS: every asset event merges its fact.

upload.verified, which first describes an asset, comes through the gateway's consumer on
RAWDRIVE_UPLOADS (uploads/verdicts.py) and lands here through `record`, so each stream keeps one table.
Merging is order-free and idempotent (catalogue.merge), so every handler is the same call.
"""

from __future__ import annotations

from typing import Any

from rawdrive_contracts import ASSETS_STREAM, CloudEvent
from rawdrive_platform.bus import Poison
from rawdrive_platform.consumers import HandlerTable
from rawdrive_platform.outbox import Transaction, UnitOfWork
from upload_gateway.catalogue import store as catalogue_store
from upload_gateway.catalogue.core import ASSET_EVENTS, MergeConflict, facts_of


async def record(tx: Transaction, event: CloudEvent[Any]) -> None:
    try:
        await catalogue_store.record(tx.conn, facts_of(event))
    except MergeConflict as error:
        raise Poison(str(error)) from None


async def asset_event(event: CloudEvent[Any], uow: UnitOfWork) -> None:
    async with uow.begin() as tx:
        await record(tx, event)


HANDLERS = HandlerTable[UnitOfWork](
    durable="upload-gateway-catalogue",
    stream=ASSETS_STREAM,
    handlers=dict.fromkeys(ASSET_EVENTS, asset_event),
)
# What the provisioning Job creates (upload_gateway.catalogue.events:CONSUMER).
CONSUMER = HANDLERS.spec
