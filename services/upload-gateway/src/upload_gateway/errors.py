"""The errors a client can cause, as exceptions: one class per answer, no HTTP here.

Cores and handlers raise these; http.problems maps each class to its status and code (the one
table) and renders it as problem+json. Keeping them apart lets the pure cores (sessions,
catalogue, storage profiles) and the token checks raise errors without importing aiohttp.
"""

from __future__ import annotations

import msgspec


class FieldError(msgspec.Struct, frozen=True):
    """One invalid field: where (a JSON path like `$.size_bytes`) and why."""

    path: str
    message: str


class ProblemFacts(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Problem extension members a client can act on without parsing `detail`."""

    bytes_received: int | None = None
    size_bytes: int | None = None
    declared_sha256: str | None = None  # at session creation
    given_sha256: str | None = None  # at commit
    attempts_left: int | None = None  # commits still possible after a refused one
    parts_to_resend: list[int] | None = None  # stored parts of another size than the plan's


class UploadError(Exception):
    """Base of every error a client can cause; the class decides status and code (see PROBLEMS)."""

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        facts: ProblemFacts | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.facts = facts or ProblemFacts()


class InvalidRequest(UploadError):
    """The body or parameters are malformed or out of range."""


class MalformedJson(InvalidRequest):
    """The body is not JSON at all, or nests deeper than MAX_JSON_DEPTH."""


class UnsupportedMediaType(UploadError):
    """The request body is not application/json."""


class UnsupportedType(UploadError):
    """The extension is not allowed, or the mime type does not agree with it."""


class FileTooLarge(UploadError):
    pass


class ChecksumMismatch(UploadError):
    pass


class SizeMismatch(UploadError):
    pass


class MissingObject(UploadError):
    """Committed, but nothing was stored under the upload's key."""


class InvalidState(UploadError):
    """The operation is not allowed in the upload's current state."""


class UploadIncomplete(UploadError):
    """Committed before every byte arrived. Nothing changed: the client sends the rest and
    commits again."""

    def __init__(self, bytes_received: int, size_bytes: int) -> None:
        super().__init__(
            f"{bytes_received} of {size_bytes} bytes have arrived; send the rest, then commit again",
            facts=ProblemFacts(bytes_received=bytes_received, size_bytes=size_bytes),
        )


class NotFound(UploadError):
    pass


class MethodNotAllowed(UploadError):
    pass


class Gone(UploadError):
    """The upload expired."""


class Aborted(UploadError):
    """The upload was aborted (by its client, or a tus termination): its bytes are gone."""


class Rejected(UploadError):
    """The verifier rejected the upload for good: its bytes are gone."""


class RetentionOver(UploadError):
    """The asset was deleted longer ago than the retention period: it can no longer be restored."""


class Unauthorized(UploadError):
    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="rawdrive"'})


class Forbidden(UploadError):
    pass


class BodyTooLarge(UploadError):
    """The JSON request body itself is over the server's limit (not the file being uploaded)."""


class BodyTimeout(UploadError):
    """The JSON request body did not arrive in full within the server's time for it."""


class StorageError(UploadError):
    """Object storage refused or failed; retrying the same request will not help."""


class StorageUnavailable(StorageError):
    """Object storage is unreachable or throttling; retry later."""


class Unavailable(UploadError):
    """Not now: a dependency the route needs is unreachable, or the replica is at capacity; retry later."""


class StorageProfileRejected(UploadError):
    """A storage profile failed its live check (access, bucket, endpoint, encryption)."""


class StorageProfilesDisabled(StorageError):
    """This deployment has no storage master key, so it cannot keep BYOS credentials."""


class RateLimited(UploadError):
    """Too many requests of this kind for now; `Retry-After` says when to try again."""


class PartSizeMismatch(UploadError):
    """Storage holds parts of another size than the upload's plan (uploads/parts.py); the client
    PUTs those again at their planned size, which replaces them."""


class QuotaExceeded(RateLimited):
    """The workspace holds as many open uploads or bytes in flight as it may (uploads/quotas.py)."""
