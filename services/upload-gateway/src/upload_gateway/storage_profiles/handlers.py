"""Storage profiles' effects: the live check against the customer's bucket, publishing the sealed
profile, and the workspace's active profile in PostgreSQL. The checks come first, from core.py.
"""

from __future__ import annotations

import logging
import uuid

from rawdrive_platform import storage as s3
from rawdrive_platform.profiles import ProfileResolver, mask_key_id, new_profile_ref
from upload_gateway.errors import FieldError, InvalidRequest, StorageProfileRejected, StorageProfilesDisabled
from upload_gateway.gateway import Gateway, utcnow
from upload_gateway.http.problems import storage_errors
from upload_gateway.storage_profiles import api
from upload_gateway.storage_profiles import store as profile_store
from upload_gateway.storage_profiles.core import PROBE_BODY, byos_profile, check_failure, check_request, view
from upload_gateway.storage_profiles.store import ActiveProfile

log = logging.getLogger(__name__)


async def live_check(profile: s3.StorageProfile) -> None:
    """Head the bucket, then put, read back and delete a probe under the prefix; raises
    StorageProfileRejected naming the step that failed and why."""
    probe_key = f"{profile.key_prefix}rawdrive-profile-check-{uuid.uuid4().hex}"
    storage = await s3.Storage.open(profile)
    step = "head bucket"
    try:
        await storage.check_bucket()
        step = "put probe object"
        await storage.put(probe_key, PROBE_BODY, "text/plain")
        step = "get probe object"
        if await storage.get_range(probe_key, 0, len(PROBE_BODY)) != PROBE_BODY:
            raise s3.StorageError("get probe object: the bucket returned different bytes than were put")
        step = "delete probe object"
        await storage.delete([probe_key])
    except s3.StorageError as error:
        log.info(
            "storage profile check failed",
            extra={"ref": profile.profile_id, "bucket": profile.bucket, "step": step, "error": str(error)},
        )
        failure = check_failure(step)
        raise StorageProfileRejected(f"the storage profile was not saved: {failure.message}", errors=[failure]) from None
    finally:
        await storage.close()


def _resolver(gw: Gateway) -> ProfileResolver:
    if gw.profiles is None or not gw.profiles.can_seal:
        raise StorageProfilesDisabled("this deployment has no storage master key; bring-your-own-bucket is off")
    return gw.profiles


async def save(gw: Gateway, sub: str, workspace_id: str, request: api.PutStorageProfile) -> api.StorageProfileView:
    errors = check_request(workspace_id, request)
    if errors:
        raise InvalidRequest("the storage profile is invalid", errors=errors)
    if request.mode == "managed_r2":
        await remove(gw, workspace_id)
        return view(None)
    resolver = _resolver(gw)
    profile = byos_profile(new_profile_ref(workspace_id), request, resolver.endpoint_policy)
    try:
        await s3.check_endpoint_resolves(profile.endpoint, profile.endpoint_policy)
    except s3.EndpointRefused as error:
        raise InvalidRequest("the storage profile is invalid", errors=[FieldError(path="$.endpoint", message=str(error))]) from None
    await live_check(profile)
    now = utcnow()
    with storage_errors("publish storage profile"):
        await resolver.publish(profile, workspace_id, now)
    active = ActiveProfile(
        **profile.location(),
        workspace_id=workspace_id,
        ref=profile.profile_id,
        mode="byos_s3",
        masked_key_id=mask_key_id(profile.access_key_id),
        created_by=sub,
        created_at=now,
    )
    try:
        replaced = await profile_store.activate(gw.pool, active)
    except Exception:
        await _retire(gw, profile.profile_id)  # published, never active: nothing will name it
        raise
    await _retire(gw, replaced)
    log.info(
        "storage profile activated",
        extra={"workspace_id": workspace_id, "ref": active.ref, "bucket": active.bucket, "key_id": active.masked_key_id},
    )
    return view(active)


async def show(gw: Gateway, workspace_id: str) -> api.StorageProfileView:
    return view(await profile_store.get(gw.pool, workspace_id))


async def remove(gw: Gateway, workspace_id: str) -> None:
    """Back to the managed bucket for new sessions; idempotent."""
    await _retire(gw, await profile_store.deactivate(gw.pool, workspace_id))
    log.info("storage profile removed; new sessions use the managed bucket", extra={"workspace_id": workspace_id})


async def _retire(gw: Gateway, ref: str | None) -> None:
    """Mark a version the workspace no longer uses retired. The change it follows is already
    made, so a failure here is logged, not answered: that version then stays in the KV
    (uncontacted, since nothing new names it)."""
    if ref is None or gw.profiles is None:
        return
    try:
        await gw.profiles.retire(ref, utcnow())
    except s3.StorageError as error:
        log.warning("storage profile not marked retired", extra={"ref": ref, "error": repr(error)})
