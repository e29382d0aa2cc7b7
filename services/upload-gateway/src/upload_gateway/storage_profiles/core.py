"""Bring-your-own-bucket storage profiles' pure core: the field checks, the rate limit, the profile
built from a request, and the view a GET shows (handlers.py performs the effects).

A PUT is checked cheapest first: the fields (no I/O; the key prefix must hold the workspace id),
then the endpoint (https, AWS, R2 or allowed by the operator, resolving to public addresses only:
rawdrive_platform.storage.check_endpoint), then a live check against the customer's bucket with the given credentials (head the bucket; put,
read back and delete a probe object under the prefix, with the profile's SSE parameters), then
the profile is published, credentials sealed, under a fresh ref (rawdrive_platform.profiles) and
becomes the workspace's active profile. New sessions use the active profile; open sessions keep
the ref they started with; the version a PUT or DELETE supersedes is marked retired in the KV
bucket, for the janitor to delete once nothing names it. Secrets go only into the sealed record: responses, logs and events
carry the ref and a masked key id. A failed live-check step is reported as that step alone,
the same whatever the endpoint answered (or whether it answered): the reason goes to the log,
so the check cannot serve as a port scanner or a window onto another server's replies. Writes
are rate-limited per workspace (each PUT reaches out to the customer's endpoint).
"""

from __future__ import annotations

import time
from collections import deque

from rawdrive_platform import storage as s3
from rawdrive_platform.config import Secret
from rawdrive_platform.keys import InvalidKeyPart, check_key_prefix
from upload_gateway.errors import FieldError, RateLimited
from upload_gateway.storage_profiles import api
from upload_gateway.storage_profiles.store import ActiveProfile

PROBE_BODY = b"rawdrive storage profile check\n"
# Fields a managed_r2 request must leave out: the platform owns that bucket's settings.
_BYOS_ONLY = ("bucket", "endpoint", "key_prefix", "credentials", "kms_key_id")
# Profile writes (PUT, DELETE) a workspace may make per window, on each gateway replica.
WRITES_PER_WINDOW = 5
WRITE_WINDOW_S = 60.0


def check_request(workspace_id: str, request: api.PutStorageProfile) -> list[FieldError]:
    """Every field problem at once, before any I/O."""
    if request.mode == "managed_r2":
        errors = [
            FieldError(path=f"$.{name}", message="managed_r2 takes no bring-your-own-bucket settings")
            for name in _BYOS_ONLY
            if getattr(request, name) not in (None, "")
        ]
        if request.encryption != "none":
            errors.append(FieldError(path="$.encryption", message="the managed bucket's encryption is not configurable"))
        return errors
    errors = []
    if request.bucket is None:
        errors.append(FieldError(path="$.bucket", message="byos_s3 needs a bucket"))
    if request.credentials is None:
        errors.append(FieldError(path="$.credentials", message="byos_s3 needs access_key_id and secret_access_key"))
    if request.key_prefix == "":
        errors.append(FieldError(path="$.key_prefix", message=f"the key prefix must contain the workspace id {workspace_id!r}"))
    else:
        try:
            check_key_prefix(request.key_prefix, workspace_id)
        except InvalidKeyPart as error:
            errors.append(FieldError(path="$.key_prefix", message=str(error)))
    if request.kms_key_id is not None and request.encryption != "sse_kms":
        errors.append(FieldError(path="$.kms_key_id", message="kms_key_id is only meaningful with encryption sse_kms"))
    return errors


class WriteLimiter:
    """At most `limit` writes per workspace in any `window_s` seconds (a sliding window)."""

    def __init__(self, limit: int = WRITES_PER_WINDOW, window_s: float = WRITE_WINDOW_S) -> None:
        self._limit = limit
        self._window_s = window_s
        self._writes: dict[str, deque[float]] = {}

    def admit(self, workspace_id: str, now: float) -> None:
        """Count a write now, or raise RateLimited with the seconds until one is allowed."""
        writes = self._writes.setdefault(workspace_id, deque())
        while writes and writes[0] <= now - self._window_s:
            writes.popleft()
        if len(writes) >= self._limit:
            wait = max(1, int(writes[0] + self._window_s - now + 0.999))
            raise RateLimited(
                f"at most {self._limit} storage profile changes per {self._window_s:.0f} s; try again in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        writes.append(now)
        if len(self._writes) > 10_000:  # workspaces that went quiet are forgotten
            for quiet in [w for w, times in self._writes.items() if not times or times[-1] <= now - self._window_s]:
                del self._writes[quiet]

    def admit_now(self, workspace_id: str) -> None:
        self.admit(workspace_id, time.monotonic())


def byos_profile(ref: str, request: api.PutStorageProfile, policy: s3.EndpointPolicy) -> s3.StorageProfile:
    assert request.bucket is not None and request.credentials is not None  # check_request passed
    return s3.StorageProfile(
        profile_id=ref,
        provider="byos",
        bucket=request.bucket,
        endpoint=request.endpoint.rstrip("/") if request.endpoint else None,
        region=request.region,
        key_prefix=request.key_prefix,
        encryption=request.encryption,
        kms_key_id=request.kms_key_id,
        access_key_id=request.credentials.access_key_id,
        secret_access_key=Secret(request.credentials.secret_access_key),
        endpoint_policy=policy,
    )


def check_failure(step: str) -> FieldError:
    """The one answer for a failed live-check step, whatever went wrong: a refused connection,
    a silent port, a denial or a stranger's reply all read the same (the log has the cause)."""
    return FieldError(
        path="$",
        message=f"{step} failed: check the endpoint, region, bucket, credentials, the bucket policy "
        "for this prefix and the encryption settings",
    )


def view(profile: ActiveProfile | None) -> api.StorageProfileView:
    if profile is None:
        return api.StorageProfileView(mode="managed_r2", provider="r2", encryption="none")
    return api.StorageProfileView(
        **profile.location(),
        mode=profile.mode,
        provider="byos",
        credentials_ref=profile.ref,
        access_key_id_masked=profile.masked_key_id,
        created_by=profile.created_by,
        created_at=profile.created_at,
    )
