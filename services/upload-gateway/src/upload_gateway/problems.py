"""RFC 9457 problem details: the upload error family, its one status table, and the middleware.

Every error a client can cause is an `UploadError` subclass; `PROBLEMS` maps each to its HTTP
status and machine-readable `code`. The middleware turns those, and what aiohttp and msgspec raise
for unknown routes, wrong methods, oversized or malformed bodies, into `application/problem+json`.
Request bodies are decoded with `decode_body`, so a msgspec error raised anywhere else stays a
bug. Anything else is a bug: it is logged with its traceback and answered as a bare 500.

Choice: an unsupported type or a mime type that disagrees with the extension is 422, not 415.
The request's own content (JSON) is supported; it is the file it describes that is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from aiohttp import web

from rawdrive_contracts import RejectionReason

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
T = TypeVar("T")


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
    """The body is not JSON at all."""


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


class StorageError(UploadError):
    """Object storage refused or failed; retrying the same request will not help."""


class StorageUnavailable(StorageError):
    """Object storage is unreachable or throttling; retry later."""


class StorageProfileRejected(UploadError):
    """A storage profile failed its live check (access, bucket, endpoint, encryption)."""


class StorageProfilesDisabled(StorageError):
    """This deployment has no storage master key, so it cannot keep BYOS credentials."""


class Problem(ProblemFacts, frozen=True, kw_only=True, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldError] | None = None


class ProblemSpec(msgspec.Struct, frozen=True):
    status: int
    code: str
    title: str


# The one table from error to status and code. A subclass not listed inherits its base's entry.
PROBLEMS: dict[type[UploadError], ProblemSpec] = {
    InvalidRequest: ProblemSpec(422, "invalid_request", "Invalid request"),
    MalformedJson: ProblemSpec(400, "invalid_request", "Malformed JSON"),
    UnsupportedType: ProblemSpec(422, "unsupported_type", "Unsupported file type"),
    FileTooLarge: ProblemSpec(413, "file_too_large", "File too large"),
    ChecksumMismatch: ProblemSpec(422, "checksum_mismatch", "Checksum mismatch"),
    SizeMismatch: ProblemSpec(422, "size_mismatch", "Size mismatch"),
    MissingObject: ProblemSpec(422, "missing_object", "Nothing was uploaded"),
    InvalidState: ProblemSpec(409, "invalid_state", "Invalid upload state"),
    UploadIncomplete: ProblemSpec(409, "upload_incomplete", "Upload incomplete"),
    NotFound: ProblemSpec(404, "not_found", "Not found"),
    MethodNotAllowed: ProblemSpec(405, "method_not_allowed", "Method not allowed"),
    Gone: ProblemSpec(410, "gone", "Upload expired"),
    Aborted: ProblemSpec(410, "upload_aborted", "Upload aborted"),
    Rejected: ProblemSpec(410, "upload_rejected", "Upload rejected"),
    RetentionOver: ProblemSpec(410, "retention_over", "Retention period over"),
    Unauthorized: ProblemSpec(401, "unauthorized", "Unauthorized"),
    Forbidden: ProblemSpec(403, "forbidden", "Forbidden"),
    BodyTooLarge: ProblemSpec(413, "body_too_large", "Request body too large"),
    StorageError: ProblemSpec(502, "storage_error", "Storage error"),
    StorageUnavailable: ProblemSpec(503, "storage_error", "Storage unavailable"),
    StorageProfileRejected: ProblemSpec(422, "storage_profile_rejected", "Storage profile check failed"),
    StorageProfilesDisabled: ProblemSpec(503, "storage_error", "Storage profiles unavailable"),
}
INTERNAL = ProblemSpec(500, "internal", "Internal server error")

# What a verifier's rejection means to the client that committed.
REJECTIONS: dict[RejectionReason, type[UploadError]] = {
    "checksum_mismatch": ChecksumMismatch,
    "size_mismatch": SizeMismatch,
    "missing_object": MissingObject,
    "type_mismatch": UnsupportedType,
    "storage_error": StorageError,
}


def spec_for(error: UploadError) -> ProblemSpec:
    for cls in type(error).__mro__:
        if cls in PROBLEMS:
            return PROBLEMS[cls]
    return INTERNAL


def problem_for(error: UploadError) -> Problem:
    spec = spec_for(error)
    return Problem(
        type=f"urn:rawdrive:problem:{spec.code}",
        title=spec.title,
        status=spec.status,
        detail=error.detail,
        code=spec.code,
        errors=error.errors,
        **msgspec.structs.asdict(error.facts),
    )


def rejection_error(reason: RejectionReason, detail: str, facts: ProblemFacts | None = None) -> UploadError:
    return REJECTIONS[reason](detail or f"the upload was rejected: {reason}", facts=facts)


async def decode_body(request: web.Request, type_: type[T]) -> T:
    """A JSON body as a Struct, strictly typed; unknown fields are ignored (newer clients)."""
    raw = await request.read()
    try:
        # An empty body counts as {}: a commit needs no fields, and a create then names what is missing.
        return msgspec.json.decode(raw or b"{}", type=type_, strict=True)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise from_validation_error(error) from None


def from_validation_error(error: msgspec.ValidationError | msgspec.DecodeError) -> UploadError:
    """msgspec's message ends with ' - at `$.field`'; keep the path apart for clients."""
    if isinstance(error, msgspec.ValidationError):
        message, _, path = str(error).partition(" - at `")
        return InvalidRequest(message, errors=[FieldError(path=path.rstrip("`") or "$", message=message)])
    return MalformedJson(f"the body is not valid JSON: {error}")


def from_http_exception(error: web.HTTPException) -> UploadError | None:
    """aiohttp's own routing and body-size refusals; None for anything a handler chose to raise
    (e.g. the tus routes' protocol statuses), which passes through unchanged."""
    if isinstance(error, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(
            f"{error.method} is not allowed here",
            headers={"Allow": ", ".join(sorted(error.allowed_methods))},
        )
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return BodyTooLarge(error.text or "request body too large")
    if isinstance(error, web.HTTPNotFound):
        return NotFound("no such resource")
    return None


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=problem.status,
        body=msgspec.json.encode(problem),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except UploadError as error:
        return problem_response(problem_for(error), error.headers)
    except web.HTTPException as error:
        translated = from_http_exception(error)
        if translated is None:
            raise
        return problem_response(problem_for(translated), translated.headers)
    except Exception:
        log.exception("unhandled error", extra={"method": request.method, "path": request.path})
        problem = Problem(
            type=f"urn:rawdrive:problem:{INTERNAL.code}",
            title=INTERNAL.title,
            status=INTERNAL.status,
            detail="an unexpected error occurred; it has been logged",
            code=INTERNAL.code,
        )
        return problem_response(problem)
