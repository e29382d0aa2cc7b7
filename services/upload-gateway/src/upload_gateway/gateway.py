"""What every capability's handlers get: the long-lived connections, the settings, and the bucket
behind a storage_profile_ref."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from aiohttp import web

from rawdrive_platform import storage as s3
from rawdrive_platform.profiles import ProfileResolver, UnknownProfile, managed_only
from upload_gateway.auth import TokenVerifier
from upload_gateway.errors import StorageError
from upload_gateway.http.problems import storage_errors
from upload_gateway.settings import Settings

log = logging.getLogger(__name__)

# The CloudEvents source of every event the gateway publishes.
SOURCE = "/services/upload-gateway"


@dataclass(frozen=True)
class Gateway:
    """Everything the routes need: long-lived connections and settings."""

    settings: Settings
    pool: asyncpg.Pool
    storage: s3.Storage
    tokens: TokenVerifier
    # Resolves storage_profile_refs and publishes BYOS profiles; None: the managed bucket only.
    profiles: ProfileResolver | None = None


GATEWAY = web.AppKey("gateway", Gateway)


def utcnow() -> datetime:
    return datetime.now(UTC)


async def storage_for(gw: Gateway, ref: str) -> s3.Storage:
    """The bucket behind a session's storage_profile_ref, or a problem when it cannot be opened."""
    resolve = gw.profiles or managed_only(gw.storage)
    try:
        with storage_errors("open storage profile"):
            return await resolve(ref)
    except UnknownProfile as error:
        log.error("storage profile cannot be resolved", extra={"ref": ref, "error": str(error)})
        raise StorageError("the workspace's storage profile cannot be opened") from None
