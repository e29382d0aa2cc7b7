"""RFC 9457 problem details: the one status table for the error family, and the middleware.

Every error a client can cause is an `UploadError` subclass (upload_gateway.errors); `PROBLEMS`
maps each to its HTTP status and machine-readable `code`. The middleware turns those, and what aiohttp and msgspec raise
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

import asyncio
import contextlib
import difflib
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from itertools import accumulate
from typing import TypeVar

import msgspec
from aiohttp import web

from rawdrive_platform import storage as s3
from rawdrive_platform.db import PoolExhausted
from upload_gateway.errors import (
    Aborted,
    BodyTimeout,
    BodyTooLarge,
    ChecksumMismatch,
    FieldError,
    FileTooLarge,
    Forbidden,
    Gone,
    InvalidRequest,
    InvalidState,
    MalformedJson,
    MethodNotAllowed,
    MissingObject,
    NotFound,
    PartSizeMismatch,
    ProblemFacts,
    QuotaExceeded,
    RateLimited,
    Rejected,
    RetentionOver,
    SizeMismatch,
    StorageError,
    StorageProfileRejected,
    StorageProfilesDisabled,
    StorageUnavailable,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    UnsupportedType,
    UploadError,
    UploadIncomplete,
)

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
T = TypeVar("T")
# No request body needs more than a few levels; msgspec recurses per level, so a deeper one is
# refused before it is decoded (1,000 levels used to end in a RecursionError and a 500).
MAX_JSON_DEPTH = 32
# What a client is told to wait after storage was unreachable or throttling, wherever it happened.
STORAGE_RETRY_AFTER_S = 5
# What a client is told to wait when no database connection came free in time (db.PoolExhausted).
BUSY_RETRY_AFTER_S = 2
# How long a JSON request body may take to arrive in full (RAWDRIVE_JSON_BODY_TIMEOUT_S, set on the
# app by create_app). Total, not idle: a client trickling a byte now and then would otherwise hold
# its handler for as long as the ingress lets a request live.
JSON_BODY_TIMEOUT = web.AppKey("json_body_timeout_s", float)


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
    BodyTimeout: ProblemSpec(408, "body_timeout", "Request body too slow"),
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


async def decode_body(request: web.Request, type_: type[T]) -> T:
    """A JSON body as a Struct, strictly typed, unknown fields refused (the request Structs
    forbid them: a typo such as `sha_256` must not silently skip a check). A body not in within
    the app's JSON_BODY_TIMEOUT is 408 (BodyTimeout, the connection then closed)."""
    timeout_s = request.config_dict[JSON_BODY_TIMEOUT]
    try:
        async with asyncio.timeout(timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {timeout_s:g} s; send it again") from None
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
        response = problem_response(problem_for(error), error.headers)
        if isinstance(error, BodyTimeout):  # the rest of the body is not waited for: close instead
            response.force_close()
        return response
    except PoolExhausted as error:
        log.warning("database pool exhausted", extra={"method": request.method, "path": request.path})
        busy = Unavailable(f"{error}; retry later", headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})
        return problem_response(problem_for(busy), busy.headers)
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
