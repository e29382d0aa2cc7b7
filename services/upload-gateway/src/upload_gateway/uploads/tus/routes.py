"""aiohttp glue between the tus protocol rules and the upload store.

Mount with `app.add_routes(tus_routes(store_for, authorize, max_size=...))`. The URL is the
upload from the moment its session exists: clients may POST to it first (tus creation, the
URL as their `endpoint`) or start with HEAD, which answers offset 0 and the session's length
until bytes arrive, and PATCH at 0 (the URL as their stored upload URL, `uploadUrl` / `url`),
so a client that saved the URL and crashed before or after the creating POST resumes alike. `authorize(request)`
belongs to the session layer: it checks the caller and the session and returns a TusTarget, or
raises its own problem+json errors (401, 404, 410). Everything after that answers with tus status
codes and short text bodies, because tus clients act on the status alone; storage failures are
answered as the rest of the API answers them (problems.from_storage_error: 503 with Retry-After
"storage unavailable, retry", or 502), never with storage's own text.

A body that sends nothing for `idle_timeout_s` is cut (`body_reader`): what arrived before is
kept, the client is answered 503 `unavailable` with Retry-After (problem+json, as a storage outage
is) and the connection closed, and the upload resumes from HEAD. Without it a stalled client would
hold its upload's lease, its per-user PATCH slot and a socket for as long as the ingress lets a
request live (an hour). 503, not 408: stock tus clients give up on a 4xx other than 409 and 423
(tus-js-client's defaultOnShouldRetry; Uppy adds 429) and retry a 5xx by themselves, which is what
resumes the upload; tusd answers its own read timeout with a 500 for the same reason.
"""

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from rawdrive_platform.storage import StorageError
from upload_gateway.errors import Unavailable
from upload_gateway.http.problems import from_storage_error, problem_for, problem_response
from upload_gateway.metrics import UPLOADS_IN_FLIGHT
from upload_gateway.uploads.tus import protocol
from upload_gateway.uploads.tus.protocol import TusError, UploadNotFound
from upload_gateway.uploads.tus.store import BodyInterrupted, Reader, TusStore, UploadState
from upload_gateway.uploads.tus.target import TusTarget

TUS_PATH = "/v1/workspaces/{workspace_id}/uploads/{upload_id}/tus"

Authorize = Callable[[web.Request], Awaitable[TusTarget[Any, Any]]]
StoreFor = Callable[[web.Request], TusStore]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# What a client whose body was cut for idling is told to wait before it resumes: nothing is busy.
IDLE_RETRY_AFTER_S = 1


def tus_routes(
    store_for: StoreFor, authorize: Authorize, *, max_size: int, path: str = TUS_PATH,
    idle_timeout_s: float | None = None,
) -> list[web.RouteDef]:
    """OPTIONS (no auth), POST (creation, creation-with-upload), HEAD, PATCH, DELETE on `path`;
    a body idle for `idle_timeout_s` is cut (None: never)."""
    handlers = _Handlers(store_for, authorize, max_size, idle_timeout_s)
    return [
        web.options(path, answering_tus_errors(handlers.options)),
        web.post(path, answering_tus_errors(handlers.post)),
        web.head(path, answering_tus_errors(handlers.head)),
        web.patch(path, answering_tus_errors(handlers.patch)),
        web.delete(path, answering_tus_errors(handlers.delete)),
    ]


def answering_tus_errors(handler: Handler) -> Handler:
    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except TusError as error:
            return _plain(error.status, str(error), protocol.error_headers(error))
        except BodyInterrupted as error:  # the client is usually gone; this is for the log
            if isinstance(error.__cause__, BodyIdle):
                # The rest of the body is not waited for: close rather than read it.
                cut = Unavailable(f"{error.__cause__}; {error}; resume from HEAD",
                                  headers={"Retry-After": str(IDLE_RETRY_AFTER_S), "Tus-Resumable": protocol.TUS_VERSION})  # fmt: skip
                response = problem_response(problem_for(cut), cut.headers)
                response.force_close()
                return response
            return _plain(400, str(error), {"Tus-Resumable": protocol.TUS_VERSION})
        except StorageError as error:  # tus clients retry a 5xx after a HEAD
            failure = from_storage_error(error, f"tus {request.method}")
            return problem_response(problem_for(failure), failure.headers)

    return answer


class BodyIdle(Exception):
    """The client sent no byte of its body for the idle timeout."""


def body_reader(request: web.Request, idle_timeout_s: float | None) -> Reader:
    """`read(n)` of the request body, raising BodyIdle when no byte came for `idle_timeout_s`."""
    read = request.content.read
    if idle_timeout_s is None:
        return read

    async def read_or_cut(size: int) -> bytes:
        try:
            async with asyncio.timeout(idle_timeout_s):
                return await read(size)
        except TimeoutError:
            raise BodyIdle(f"no bytes arrived for {idle_timeout_s:g} s") from None

    return read_or_cut


def _plain(status: int, text: str, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, text=text, headers={"Cache-Control": "no-store"} | headers)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class _Handlers:
    def __init__(self, store_for: StoreFor, authorize: Authorize, max_size: int, idle_timeout_s: float | None):
        self._store_for = store_for
        self._authorize = authorize
        self._max_size = max_size
        self._idle_timeout_s = idle_timeout_s

    async def options(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=protocol.options_headers(self._max_size))

    async def post(self, request: web.Request) -> web.StreamResponse:
        method = protocol.effective_method("POST", request.headers.get("X-HTTP-Method-Override"))
        if method != "POST":
            return await {"HEAD": self.head, "PATCH": self.patch, "DELETE": self.delete}[method](request)
        creation = protocol.parse_creation(request.headers)
        assert creation.length is not None  # not deferrable here: the session has its length
        if creation.length > self._max_size:
            raise protocol.PastLength(f"Upload-Length passes Tus-Max-Size {self._max_size}")
        target = await self._authorize(request)
        protocol.check_not_expired(target.expires_at, _now())
        store = self._store_for(request)
        state = await store.create(target, creation)
        if request.can_read_body:  # creation-with-upload
            patch = protocol.parse_patch(request.headers, creation=True)
            with UPLOADS_IN_FLIGHT.track_inprogress():
                state = await store.write(target, patch, body_reader(request, self._idle_timeout_s))
        headers = _upload_headers(state) | target.response_headers | {"Location": str(request.rel_url)}
        return web.Response(status=201, headers=headers)

    async def head(self, request: web.Request) -> web.Response:
        protocol.check_version(request.headers)
        target = await self._authorize(request)
        store = self._store_for(request)
        state = await store.held(target)
        if state is None:  # nothing sent yet: the session's upload, at 0
            protocol.check_not_expired(target.expires_at, _now())
            # A deferred upload's size_bytes is only the most it may hold, not its length.
            length = None if target.length_deferred else target.size_bytes
            headers = protocol.upload_headers(0, length, target.expires_at) | target.response_headers
            return web.Response(status=200, headers=headers)
        if state.completed:
            await store.confirm_complete(target)
        else:
            protocol.check_not_expired(target.expires_at, _now())
        headers = _upload_headers(state, target) | target.response_headers
        if state.metadata is not None:
            headers["Upload-Metadata"] = state.metadata
        if state.concat is not None:
            headers["Upload-Concat"] = state.concat
        return web.Response(status=200, headers=headers)

    async def patch(self, request: web.Request) -> web.Response:
        patch = protocol.parse_patch(request.headers)
        target = await self._authorize(request)
        protocol.check_not_expired(target.expires_at, _now())
        store = self._store_for(request)
        read = body_reader(request, self._idle_timeout_s)
        with UPLOADS_IN_FLIGHT.track_inprogress():
            try:
                state = await store.write(target, patch, read)
            except UploadNotFound:
                # A client that took the URL as its upload URL skipped the POST (create is
                # idempotent); the offset check then answers as for any upload at 0. Asked only
                # after the write found no upload (before reading the body), not before every PATCH.
                await store.create(target, protocol.session_creation(None if target.length_deferred else target.size_bytes))
                state = await store.write(target, patch, read)
        return web.Response(status=204, headers=_upload_headers(state) | target.response_headers)

    async def delete(self, request: web.Request) -> web.Response:
        protocol.check_version(request.headers)
        target = await self._authorize(request)
        await self._store_for(request).terminate(target)
        await target.on_terminate()
        return web.Response(status=204, headers={"Tus-Resumable": protocol.TUS_VERSION})

def _upload_headers(state: UploadState, target: TusTarget[Any, Any] | None = None) -> dict[str, str]:
    """The upload's headers; a deferred length that its session knows but the store has not
    recorded yet (the PATCH that opened the session broke off first) is the session's."""
    length = state.length
    if length is None and target is not None and not target.length_deferred:
        length = target.size_bytes
    return protocol.upload_headers(state.offset, length, state.expires_at)
