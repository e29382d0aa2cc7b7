"""The gateway's own durable consumer on RAWDRIVE_UPLOADS: record the verifier's verdicts (and
refused commit attempts) and the janitor's expiries; a verified upload also enters the asset
catalogue.

Each handler applies one state machine event; one that no longer applies (a redelivery, or a
session already moved on) changes nothing, which makes every handler idempotent.
"""

from __future__ import annotations

import logging

from rawdrive_contracts import (
    UPLOADS_STREAM,
    CloudEvent,
    CommitRefused,
    UploadExpired,
    UploadRejected,
    UploadVerified,
)
from rawdrive_platform.consumers import HandlerTable
from rawdrive_platform.outbox import UnitOfWork
from upload_gateway.catalogue import events as catalogue_events
from upload_gateway.uploads import repository

log = logging.getLogger(__name__)


async def on_verified(event: CloudEvent[UploadVerified], uow: UnitOfWork) -> None:
    data = event.data
    async with uow.begin() as tx:
        moved = await repository.apply(tx.conn, data.upload_id, "verify")
    if moved is None:
        log.info("verified upload was not verifying; nothing to record", extra={"upload_id": data.upload_id})
    # The asset enters the catalogue (processing) whatever the session row says: it may come
    # from another replica's session, or the row may have moved on in a redelivery. Its own
    # unit of work, so an asset the catalogue must refuse (poison) leaves the verdict recorded.
    async with uow.begin() as tx:
        await catalogue_events.record(tx, event)


async def on_rejected(event: CloudEvent[UploadRejected], uow: UnitOfWork) -> None:
    data = event.data
    async with uow.begin() as tx:
        moved = await repository.apply(tx.conn, data.upload_id, "reject", rejection=(data.reason, data.detail))
    if moved is None:
        log.info("rejected upload was not verifying; nothing to record", extra={"upload_id": data.upload_id})


async def on_refused(event: CloudEvent[CommitRefused], uow: UnitOfWork) -> None:
    data = event.data
    async with uow.begin() as tx:
        moved = await repository.apply(
            tx.conn, data.upload_id, "refuse", rejection=(data.reason, data.detail), attempt=data.attempt
        )
    if moved is None:
        log.info("refused attempt is not the session's latest; nothing to record",
                 extra={"upload_id": data.upload_id, "attempt": data.attempt})


async def on_expired(event: CloudEvent[UploadExpired], uow: UnitOfWork) -> None:
    async with uow.begin() as tx:
        await repository.apply(tx.conn, event.data.upload_id, "expire")


HANDLERS = HandlerTable[UnitOfWork](
    durable="upload-gateway-verdicts",
    stream=UPLOADS_STREAM,
    handlers={
        UploadVerified: on_verified,
        UploadRejected: on_rejected,
        CommitRefused: on_refused,
        UploadExpired: on_expired,
    },
)
# What the provisioning Job creates (upload_gateway.uploads.verdicts:CONSUMER).
CONSUMER = HANDLERS.spec
