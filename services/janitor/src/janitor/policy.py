"""The janitor's decisions, without I/O: given what it tracks, the clock and the thresholds,
what expires, what is purged, which multipart uploads are stale and which objects are orphans.

The shell (`sweeps.py`, `handlers.py`) fetches candidates, asks these functions, and acts.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime, timedelta
from typing import Literal

import msgspec

from rawdrive_platform import keys


class Thresholds(msgspec.Struct, frozen=True, kw_only=True):
    # Soft-deleted assets are kept at least this long (and at least until their purge_after).
    retention: timedelta
    # A session is expired only this long after its expiry, so a commit the janitor has not
    # heard of yet (its consumer lagging) is not swept from under the verifier.
    expiry_grace: timedelta
    orphan_min_age: timedelta
    multipart_min_age: timedelta
    # A retired profile version goes only this long after its retirement, so a session that
    # started under it just before (its event not yet here) is heard of first.
    profile_retire_grace: timedelta


class TrackedSession(msgspec.Struct, frozen=True, kw_only=True):
    upload_id: str
    workspace_id: str
    asset_id: str
    storage_profile_ref: str
    object_key: str
    expires_at: datetime
    # Set once the client committed: the session is the verifier's now, as in the gateway,
    # where a `verifying` session no longer expires.
    commit_requested_at: datetime | None = None
    closed_by: str | None = None


class AssetLifecycle(msgspec.Struct, frozen=True, kw_only=True):
    """The latest soft delete and the latest restore seen, whatever order they arrived in."""

    deleted_at: datetime | None = None
    purge_after: datetime | None = None
    restored_at: datetime | None = None
    purged_at: datetime | None = None


class AssetRef(msgspec.Struct, frozen=True):
    workspace_id: str
    asset_id: str


# -- expiry -------------------------------------------------------------------------------------


def should_expire(session: TrackedSession, now: datetime, thresholds: Thresholds) -> bool:
    return (
        session.closed_by is None
        and session.commit_requested_at is None
        and now >= session.expires_at + thresholds.expiry_grace
    )


# -- soft delete, restore, purge ----------------------------------------------------------------


def on_deleted(state: AssetLifecycle, deleted_at: datetime, purge_after: datetime) -> AssetLifecycle:
    # Only a later deletion replaces the one on record, so a redelivered or late older
    # deletion cannot move the purge date.
    if state.deleted_at is not None and state.deleted_at >= deleted_at:
        return state
    return msgspec.structs.replace(state, deleted_at=deleted_at, purge_after=purge_after)


def on_restored(state: AssetLifecycle, restored_at: datetime) -> AssetLifecycle:
    if state.restored_at is not None and state.restored_at >= restored_at:
        return state
    return msgspec.structs.replace(state, restored_at=restored_at)


def awaiting_purge(state: AssetLifecycle) -> bool:
    """Deleted, not restored since, not purged yet. A restore at the very instant of the
    deletion counts as later: when in doubt, keep the bytes."""
    return (
        state.purged_at is None
        and state.deleted_at is not None
        and (state.restored_at is None or state.restored_at < state.deleted_at)
    )


def purge_due_at(state: AssetLifecycle, retention: timedelta) -> datetime | None:
    """Never before what the user was told (purge_after), nor before the operator's retention."""
    if not awaiting_purge(state):
        return None
    assert state.deleted_at is not None and state.purge_after is not None
    return max(state.purge_after, state.deleted_at + retention)


def should_purge(state: AssetLifecycle, now: datetime, thresholds: Thresholds) -> bool:
    due = purge_due_at(state, thresholds.retention)
    return due is not None and now >= due


# -- sweeps -------------------------------------------------------------------------------------


def asset_of_key(key: str, key_prefix: str = "") -> AssetRef | None:
    """The asset an object belongs to: anything under `keys.asset_prefix(ws, asset)`, the
    original and derived objects as well as a tus tail or any other partial object."""
    if not key.startswith(key_prefix):
        return None
    match key[len(key_prefix) :].split("/"):
        case ["workspaces", workspace_id, "assets", asset_id, first, *_] if first:
            try:
                prefix = keys.asset_prefix(workspace_id, asset_id, key_prefix)
            except keys.InvalidKeyPart:
                return None
            return AssetRef(workspace_id, asset_id) if key.startswith(prefix) else None
        case _:
            return None


def is_orphan(
    key: str,
    last_modified: datetime,
    known_asset_ids: Collection[str],
    now: datetime,
    thresholds: Thresholds,
    key_prefix: str = "",
) -> bool:
    asset = asset_of_key(key, key_prefix)
    return (
        asset is not None
        and asset.asset_id not in known_asset_ids
        and now - last_modified >= thresholds.orphan_min_age
    )


def is_stale_multipart(
    key: str,
    initiated: datetime,
    open_asset_ids: Collection[str],
    now: datetime,
    thresholds: Thresholds,
    key_prefix: str = "",
) -> bool:
    """Old enough, and not part of a session still open: expiry handles those, on their terms."""
    asset = asset_of_key(key, key_prefix)
    if asset is not None and asset.asset_id in open_asset_ids:
        return False
    return now - initiated >= thresholds.multipart_min_age


def profile_version_may_go(
    retired_at: datetime | None, ref: str, referenced: Collection[str], now: datetime, thresholds: Thresholds
) -> bool:
    """A profile version's record may leave the KV once the workspace moved on from it (long
    enough ago) and nothing whose bytes live there names it: no open session, no asset live or
    soft-deleted (its purge needs the profile to reach the bucket). The current version is
    never retired."""
    return retired_at is not None and now >= retired_at + thresholds.profile_retire_grace and ref not in referenced


def within(key: str, prefix: str) -> bool:
    """A sweep of a bring-your-own bucket touches nothing outside its workspace's prefix."""
    return key.startswith(prefix)


# -- what a run removed -------------------------------------------------------------------------

Reason = Literal["expired_session", "rejected_upload", "aborted_upload", "purged_asset", "stale_multipart", "orphan"]


class Removal(msgspec.Struct, frozen=True, kw_only=True):
    """One object or multipart upload removed (or, in a dry run, that would be)."""

    reason: Reason
    bucket: str
    key: str
    size_bytes: int = 0
    multipart_upload_id: str | None = None


class RunReport(msgspec.Struct, kw_only=True):
    """What one run did; logged as JSON. The metrics count removals as they happen (cleanup.count_removed)."""

    dry_run: bool
    sessions_expired: int = 0
    assets_purged: int = 0
    multipart_uploads_aborted: int = 0
    orphans_found: int = 0
    objects_deleted: int = 0
    bytes_deleted: int = 0
    # Retired storage profile versions whose KV record was deleted (or, dry, would be).
    profile_versions_deleted: int = 0
    errors: int = 0
    removals: list[Removal] = msgspec.field(default_factory=list)
    # Orphans found while their deletion is disabled: reported for an operator, left in place.
    orphans_kept: list[Removal] = msgspec.field(default_factory=list)

    def counters(self) -> dict[str, int | bool]:
        """The counts without the item lists: the run's log line."""
        return {name: getattr(self, name) for name in self.__struct_fields__ if name not in ("removals", "orphans_kept")}

    def record(self, removals: Iterable[Removal]) -> None:
        for removal in removals:
            self.removals.append(removal)
            if removal.multipart_upload_id is not None:
                self.multipart_uploads_aborted += 1
            else:
                self.objects_deleted += 1
                self.bytes_deleted += removal.size_bytes
