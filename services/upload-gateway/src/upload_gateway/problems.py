"""RFC 9457 problem details: the upload error family, its one status table, and the middleware.

Every error a client can cause is an `UploadError` subclass; `PROBLEMS` maps each to its HTTP
status and machine-readable `code`. The middleware turns those, and what aiohttp and msgspec raise
for unknown routes, wrong methods, oversized or malformed bodies, into `application/problem+json`.
Request bodies are decoded with `decode_body` (every route: JSON only, unknown fields refused,
nesting bounded), so a msgspec error raised anywhere else stays a bug. Storage failures become
problems in `storage_errors` (the uploads API and the tus routes alike), so no bucket name, key,
endpoint or SDK text reaches a client. Anything else is a bug: it is logged with its traceback and
answered as a bare 500.

Choice: an unsupported type or a mime type that disagrees with the extension is 422, not 415.
The request's own content (JSON) is supported; it is the file it describes that is refused.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from itertools import accumulate
from typing import TypeVar

import msgspec
from aiohttp import web

from rawdrive_contracts import ProcessingFailureReason, RejectionReason
from rawdrive_platform import storage as s3

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
T = TypeVar("T")
# No request body needs more than a few levels; msgspec recurses per level, so a deeper one is
# refused before it is decoded (1,000 levels used to end in a RecursionError and a 500).
MAX_JSON_DEPTH = 32
# What a client is told to wait after storage was unreachable or throttling, wherever it happened.
STORAGE_RETRY_AFTER_S = 5


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
    """Storage holds parts of another size than the upload's plan (parts.py); the client PUTs
    those again at their planned size, which replaces them."""


class QuotaExceeded(RateLimited):
    """The workspace holds as many open uploads or bytes in flight as it may (quotas.py)."""


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
    UnsupportedMediaType: ProblemSpec(415, "unsupported_media_type", "Request body is not JSON"),
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
    RateLimited: ProblemSpec(429, "rate_limited", "Too many requests"),
    PartSizeMismatch: ProblemSpec(422, "part_size_mismatch", "Part size differs from the plan"),
    QuotaExceeded: ProblemSpec(429, "quota_exceeded", "Workspace upload quota reached"),
    Unavailable: ProblemSpec(503, "unavailable", "Service unavailable"),
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


# What clients are told about a rejection or a failed processing: one fixed text per reason. The
# workers' own details (object keys, S3 messages, the content's first bytes, a decoder's stderr)
# stay in events, the database and the logs.
REJECTION_TEXTS: dict[RejectionReason, str] = {
    "checksum_mismatch": "the stored bytes' SHA-256 differs from the one the client declared",
    "size_mismatch": "the stored size differs from the declared size_bytes",
    "missing_object": "the upload is missing (no object, or a part never uploaded)",
    "type_mismatch": "the content is not of the type its name and mime type declare",
    "storage_error": "the storage could not be read to verify the upload",
}
PROCESSING_FAILURE_TEXTS: dict[ProcessingFailureReason, str] = {
    "type_mismatch": "the content is not of the type its name and mime type declare",
    "unsupported_content": "the file's content is of a kind that is not processed",
    "decode_failed": "the file could not be decoded",
    "timeout": "decoding the file took too long",
    "storage_error": "the stored file could not be read or its variants written",
    "internal": "processing failed",
}

def rejection_error(reason: RejectionReason, detail: str | None = None, facts: ProblemFacts | None = None) -> UploadError:
    return REJECTIONS[reason](detail or f"the upload was rejected: {REJECTION_TEXTS[reason]}", facts=facts)


async def decode_body(request: web.Request, type_: type[T]) -> T:
    """A JSON body as a Struct, strictly typed, unknown fields refused (the request Structs
    forbid them: a typo such as `sha_256` must not silently skip a check)."""
    raw = await request.read()
    if not raw:
        # No body counts as {}: a commit needs no fields, and a create then names what is missing.
        raw = b"{}"
    elif request.content_type != "application/json":  # aiohttp's parsed essence, lower case
        raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json")
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise MalformedJson(f"the body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return msgspec.json.decode(raw, type=type_, strict=True)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise from_validation_error(error, type_) from None
    except RecursionError:  # json_depth's count and msgspec's disagree only on broken JSON
        raise MalformedJson(f"the body nests deeper than {MAX_JSON_DEPTH} levels") from None


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in `raw`, brackets inside strings not counted."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, delete=_NOT_BRACKETS)
    return max(accumulate(_DEPTH_STEP[b] for b in brackets), default=0)


_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `(?P<field>[^`]*)`")


def from_validation_error(
    error: msgspec.ValidationError | msgspec.DecodeError, type_: type | None = None
) -> UploadError:
    """msgspec's message ends with ' - at `$.field`'; keep the path apart for clients. An unknown
    field is named in the path and, at the top level of `type_`, matched to the closest known one."""
    if not isinstance(error, msgspec.ValidationError):  # (a ValidationError is a DecodeError too)
        return MalformedJson(f"the body is not valid JSON: {error}")
    message, _, path = str(error).partition(" - at `")
    path = path.rstrip("`") or "$"
    unknown = _UNKNOWN_FIELD.fullmatch(message)
    if unknown is None:
        return InvalidRequest(message, errors=[FieldError(path=path, message=message)])
    field = unknown["field"]
    message = f"unknown field `{field}`"
    if path == "$" and type_ is not None and issubclass(type_, msgspec.Struct):
        close = difflib.get_close_matches(field, type_.__struct_fields__, n=1)
        if close:
            message += f" (did you mean `{close[0]}`?)"
    return InvalidRequest(message, errors=[FieldError(path=f"{path}.{field}", message=message)])


def from_storage_error(error: s3.StorageError, what: str) -> StorageError:
    """THE mapping from a storage failure to what a client is told: transient ones are 503 with
    Retry-After, the rest 502; either way without bucket, key, endpoint or SDK text, which go to
    the log only."""
    if isinstance(error, s3.StorageUnavailable):
        log.warning("storage unavailable", extra={"operation": what, "error": str(error)})
        return StorageUnavailable(
            f"{what}: storage is unavailable, retry later", headers={"Retry-After": str(STORAGE_RETRY_AFTER_S)}
        )
    log.error("storage error", extra={"operation": what, "error": str(error)})
    return StorageError(f"{what}: storage refused the request")


@contextlib.contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Storage failures inside the block raised as problems (see from_storage_error)."""
    try:
        yield
    except s3.StorageError as error:
        raise from_storage_error(error, what) from None


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
