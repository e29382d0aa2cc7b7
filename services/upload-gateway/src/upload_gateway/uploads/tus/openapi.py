"""The tus endpoints in the OpenAPI document: their routes are built by tus_routes and
creation_routes, not a route table."""

from upload_gateway.http.openapi import Header, Operation, Reply
from upload_gateway.http.problems import PROBLEM_CONTENT_TYPE, Problem
from upload_gateway.uploads.tus import protocol as tus
from upload_gateway.uploads.tus.creation import CREATION_PATH, PARTIAL_PATH
from upload_gateway.uploads.tus.routes import TUS_PATH

_TUS_RESUMABLE = Header("Tus-Resumable", f"Always {tus.TUS_VERSION}", required=True)
_TUS_ERRORS = (
    Reply(400, "Malformed tus headers", str, "text/plain"),
    Reply(409, "Upload-Offset differs from the stored offset (HEAD, then resume)", str, "text/plain"),
    Reply(410, "The upload expired or was aborted", str, "text/plain"),
    Reply(412, f"Tus-Resumable is not {tus.TUS_VERSION}", str, "text/plain", headers=("Tus-Version",)),
    Reply(413, "Past Upload-Length or Tus-Max-Size", str, "text/plain"),
    Reply(415, f"Content-Type is not {tus.PATCH_CONTENT_TYPE}", str, "text/plain"),
    Reply(423, "Another request is writing this upload", str, "text/plain"),
    Reply(460, "Upload-Checksum does not match the body", str, "text/plain"),
    # Storage failures are answered as everywhere else in the API (problems.from_storage_error).
    Reply(502, "Storage refused", Problem, PROBLEM_CONTENT_TYPE),
    # And a body that sent nothing for RAWDRIVE_TUS_IDLE_TIMEOUT_S (routes.py): 503, which stock clients retry.
    Reply(503, "Storage unavailable, or the body idled and was cut (its bytes kept); retry after Retry-After "
               "seconds, resuming from HEAD", Problem, PROBLEM_CONTENT_TYPE,
          headers=("Retry-After",)),
)
_OFFSET_HEADERS = ("Tus-Resumable", "Upload-Offset", "Upload-Length", "Upload-Expires")


def _capabilities(path: str, operation_id: str, status: int, note: str, summary: str = "tus capabilities") -> Operation:
    """OPTIONS on a tus URL: its capabilities (tus discovery), without authentication."""
    return Operation(
        method="OPTIONS", path=path, operation_id=operation_id, tag="tus", auth="none", description=note,
        summary=summary,
        replies=(Reply(status, "Capabilities", headers=("Tus-Resumable", "Tus-Version", "Tus-Extension",
                                                        "Tus-Max-Size", "Tus-Checksum-Algorithm")),),
    )


_TUS_NOTE = (
    f"tus {tus.TUS_VERSION} (https://tus.io/protocols/resumable-upload), extensions "
    f"{', '.join(tus.TUS_EXTENSIONS)}; checksums {', '.join(tus.CHECKSUM_ALGORITHMS)}. Protocol errors are "
    "text/plain with the tus status; authentication and storage errors are problem+json. Send the headers "
    "the session's `headers` field gave (the upload token)."
)
TUS_OPERATIONS = (
    _capabilities(TUS_PATH, "tusOptions", 204, _TUS_NOTE),
    Operation(
        method="POST", path=TUS_PATH, operation_id="tusCreate", tag="tus", auth="upload", description=_TUS_NOTE,
        summary="Create the tus upload of this session (creation, creation-with-upload)",
        headers=(
            _TUS_RESUMABLE,
            Header("Upload-Length", "The file's size in bytes; must equal the session's", required=True, type="integer"),
            Header("Upload-Metadata", "tus metadata: comma-separated `key base64value` pairs"),
            Header("Content-Type", f"{tus.PATCH_CONTENT_TYPE} when the body carries the first bytes"),
            Header("X-HTTP-Method-Override", "HEAD, PATCH or DELETE for clients that can only POST"),
        ),
        body=bytes, body_media_type=tus.PATCH_CONTENT_TYPE,
        replies=(Reply(201, "Created", headers=("Location", *_OFFSET_HEADERS)), *_TUS_ERRORS),
        problems=(401, 403, 404, 429),
    ),
    Operation(
        method="HEAD", path=TUS_PATH, operation_id="tusOffset", tag="tus", auth="upload", description=_TUS_NOTE,
        summary="How many bytes are stored (resume from Upload-Offset)",
        headers=(_TUS_RESUMABLE,),
        replies=(Reply(200, "The offset", headers=(*_OFFSET_HEADERS, "Upload-Metadata")), *_TUS_ERRORS),
        problems=(401, 403, 404),
    ),
    Operation(
        method="PATCH", path=TUS_PATH, operation_id="tusAppend", tag="tus", auth="upload", description=_TUS_NOTE,
        summary="Append bytes at Upload-Offset",
        headers=(
            _TUS_RESUMABLE,
            Header("Upload-Offset", "Where these bytes start; must equal the stored offset", required=True,
                   type="integer"),
            Header("Content-Type", tus.PATCH_CONTENT_TYPE, required=True),
            Header("Upload-Checksum", "`sha1 <base64>` or `sha256 <base64>` of this request's body"),
        ),
        body=bytes, body_media_type=tus.PATCH_CONTENT_TYPE,
        replies=(Reply(204, "Stored", headers=_OFFSET_HEADERS), *_TUS_ERRORS),
        problems=(401, 403, 404, 429),
    ),
    Operation(
        method="DELETE", path=TUS_PATH, operation_id="tusTerminate", tag="tus", auth="upload", description=_TUS_NOTE,
        summary="Terminate the upload (tus termination)",
        headers=(_TUS_RESUMABLE,),
        replies=(Reply(204, "Terminated", headers=("Tus-Resumable",)), *_TUS_ERRORS),
        problems=(401, 403, 404),
    ),
)

_CREATION_NOTE = (
    "tus creation endpoint of the workspace for stock tus clients (Uppy, tus-js-client, tuspy): send "
    "`Authorization: Bearer <user token>` (member or admin) here and to the upload's URL in `Location`. "
    "The session is committed when its last byte arrives; `Upload-Asset-Id` names the asset."
)
CREATION_OPERATIONS = (
    _capabilities(CREATION_PATH, "tusCreationOptions", 200, _CREATION_NOTE,
                  "tus capabilities of the creation endpoint"),
    Operation(
        method="POST", path=CREATION_PATH, operation_id="tusCreateSession", tag="tus", description=_CREATION_NOTE,
        summary="Open an upload session and its tus upload in one request (creation, creation-with-upload)",
        headers=(
            _TUS_RESUMABLE,
            Header("Upload-Length", "The file's size in bytes (at least 1); none on a final upload or with "
                   "Upload-Defer-Length", type="integer"),
            Header("Upload-Defer-Length", "`1`: the size is not known yet (creation-defer-length); the upload "
                   "(its own URL) becomes the session when a PATCH brings Upload-Length", type="integer"),
            Header("Upload-Metadata", "base64 `filename` (required but on a partial upload), `filetype`, "
                   "`library_id`, `folder_id`, `sha256` (hex)"),
            Header("Upload-Concat", "`partial`: a partial upload (its own URL, no session); `final;<url> <url> ...`: "
                   "the session of the file those finished partial uploads make, joined by storage"),
            Header("Content-Type", f"{tus.PATCH_CONTENT_TYPE} when the body carries the first bytes"),
            Header("Upload-Checksum", "`sha1 <base64>` or `sha256 <base64>` of the body"),
        ),
        body=bytes, body_media_type=tus.PATCH_CONTENT_TYPE,
        replies=(
            Reply(201, "Created: send the rest to Location", headers=(
                "Location", "Upload-Asset-Id", "Tus-Resumable", "Upload-Offset", "Upload-Length", "Upload-Defer-Length",
                "Upload-Expires", "Upload-Concat")),
            Reply(412, f"Tus-Resumable is not {tus.TUS_VERSION}", str, "text/plain", headers=("Tus-Version",)),
            Reply(403, "A body on a final upload", str, "text/plain"),
            Reply(415, f"Content-Type is not {tus.PATCH_CONTENT_TYPE}", str, "text/plain"),
            Reply(460, "Upload-Checksum does not match the body", str, "text/plain"),
        ),
        # 429: the workspace's quota, or the sender's concurrent byte-sending requests (patch_limits.py).
        problems=(400, 401, 403, 404, 413, 429, 502, 503),
    ),
)

_PARTIAL_NOTE = (
    "A partial upload (tus concatenation) made by the creation endpoint with `Upload-Concat: partial`: only "
    "the user who made it may send, read or terminate it, or name it in a final upload, which removes it. "
    "Also an upload made with `Upload-Defer-Length: 1`, for its maker only: HEAD says `Upload-Defer-Length: 1` "
    "until a PATCH brings `Upload-Length`, which opens its session under the session API's rules (refused as "
    "the creation endpoint refuses, the bytes kept) and is then fixed; it is committed when its last byte arrives."
)
PARTIAL_OPERATIONS = (
    _capabilities(PARTIAL_PATH, "tusPartialOptions", 204, _PARTIAL_NOTE),
    *(Operation(
        method=method, path=PARTIAL_PATH, operation_id=f"tusPartial{name}", tag="tus", description=_PARTIAL_NOTE,
        summary=summary, headers=headers, replies=(reply, *_TUS_ERRORS), problems=(400, 401, 403, 404, 413, 429),
        **({"body": bytes, "body_media_type": tus.PATCH_CONTENT_TYPE} if method == "PATCH" else {}),
    )
    for method, name, summary, headers, reply in (
        ("HEAD", "Offset", "How many bytes of the partial upload are stored", (_TUS_RESUMABLE,),
         Reply(200, "The offset", headers=(*_OFFSET_HEADERS, "Upload-Defer-Length", "Upload-Metadata", "Upload-Concat"))),
        ("PATCH", "Append", "Append bytes to the partial upload at Upload-Offset", (
            _TUS_RESUMABLE,
            Header("Upload-Offset", "Where these bytes start", required=True, type="integer"),
            Header("Content-Type", tus.PATCH_CONTENT_TYPE, required=True),
            Header("Upload-Checksum", "`sha1 <base64>` or `sha256 <base64>` of this request's body"),
            Header("Upload-Length", "A deferred upload's size, once (then fixed)", type="integer"),
        ), Reply(204, "Stored", headers=_OFFSET_HEADERS)),
        ("DELETE", "Terminate", "Terminate the partial upload", (_TUS_RESUMABLE,),
         Reply(204, "Terminated", headers=("Tus-Resumable",))),
    )),
)
