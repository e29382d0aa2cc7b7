"""Which bucket an event's `storage_profile_ref` names: the one way every service resolves it.

Events carry only the non-secret ref; each service turns it into an open `Storage` here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from rawdrive_platform.storage import MANAGED_PROFILE_ID, Storage


class UnknownProfile(Exception):
    """The ref names no storage profile this service can resolve."""


# Storage profile ref -> an open Storage; raises UnknownProfile.
StorageResolver = Callable[[str], Awaitable[Storage]]


def managed_only(managed: Storage) -> StorageResolver:
    """Resolves the managed bucket; bring-your-own-bucket profiles plug in beside it."""

    async def storage_for(ref: str) -> Storage:
        if ref == MANAGED_PROFILE_ID:
            return managed
        raise UnknownProfile(f"storage profile {ref!r} cannot be resolved")

    return storage_for
