"""The tus creation endpoint of a workspace: `POST /v1/workspaces/{ws}/tus`, what tusd and
@tus/server call the upload collection.

A stock tus client (Uppy, tus-js-client, tuspy, TUSKit, the compliance suite) configured with
this URL and `Authorization: Bearer <user token>` needs nothing else: one POST with
`Upload-Length` and `Upload-Metadata` opens an upload and creates it in the store, with the
first bytes when the POST carries them (creation-with-upload). The answer is 201 with
`Location`, the upload's own tus URL, which then takes HEAD, PATCH and DELETE.

Concatenation (tus's extension, for tus-js-client's `parallelUploads`): `Upload-Concat: partial`
creates a partial upload through the session layer's `Concatenation.open_partial` (an upload
with an owner but no session, at PARTIAL_PATH); `Upload-Concat: final;<url> ...` has
`open_final` check the partials and open the file's session, and the store join the partials'
objects into its object (`TusStore.concatenate`); the partials are then terminated.

creation-defer-length: `Upload-Defer-Length: 1` instead of `Upload-Length` (a whole file only)
hands `open_upload` a creation whose length is None; the session layer then opens no session
until a PATCH brings the length (tus_deferred).

As with the upload routes (routes.py), this module knows the protocol and the store port
(TusStore) only: `open_upload(request, creation)` belongs to the session layer, which checks the
caller, opens the session the creation stands for and returns its TusTarget and URL
(tus_session.open_tus_upload), or raises its own errors. Protocol errors answer in tus's plain
text (routes.answering_tus_errors); the session layer's refusals answer as problem+json with the
status of the one table (http.problems.PROBLEMS), except that its 422 (a type or field refused)
is 400, since tus has no 422; each with `Tus-Resumable`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec
from aiohttp import web

from rawdrive_platform.storage import StorageError
from upload_gateway.errors import UploadError
from upload_gateway.http.problems import Problem, problem_for, problem_response
from upload_gateway.metrics import UPLOADS_IN_FLIGHT
from upload_gateway.uploads.tus import protocol
from upload_gateway.uploads.tus.concat import Concat, parse_concat
from upload_gateway.uploads.tus.protocol import Creation, TusError
from upload_gateway.uploads.tus.routes import Handler, answering_tus_errors, body_reader
from upload_gateway.uploads.tus.store import JoinSource, TusStore, UploadState
from upload_gateway.uploads.tus.target import TusTarget

CREATION_PATH = "/v1/workspaces/{workspace_id}/tus"
# A partial upload's own URL (tus concatenation): an upload without a session.
PARTIAL_PATH = "/v1/workspaces/{workspace_id}/tus/{upload_id}"


class OpenedUpload(msgspec.Struct, frozen=True):
    """What the session layer opened for a creation: the upload and its tus URL (`Location`)."""

    target: TusTarget[Any, Any]
    location: str


OpenUpload = Callable[[web.Request, Creation], Awaitable[OpenedUpload]]


class OpenedFinal(msgspec.Struct, frozen=True):
    """What the session layer opened for a final upload (concatenation): the upload, its URL,
    its creation (length: the partials' sum), the partials' objects in order and their uploads,
    which are terminated once the final object exists."""

    target: TusTarget[Any, Any]
    location: str
    creation: Creation
    sources: tuple[JoinSource, ...]
    partials: tuple[TusTarget[Any, Any], ...]


class Concatenation(Protocol):
    """The session layer's side of tus concatenation: who owns partial uploads and which
    partials a final upload may join (their owner's, finished, unexpired)."""

    async def open_partial(self, request: web.Request, creation: Creation) -> OpenedUpload: ...

    async def open_final(self, request: web.Request, concat: Concat, metadata: str | None) -> OpenedFinal: ...


def creation_routes(store: TusStore, open_upload: OpenUpload, concatenation: Concatenation, *, max_size: int,
                    path: str = CREATION_PATH, idle_timeout_s: float | None = None) -> list[web.RouteDef]:  # fmt: skip
    """OPTIONS (no auth) and POST (creation, creation-with-upload, concatenation) on `path`; a
    body idle for `idle_timeout_s` is cut as on the upload's URL (routes.body_reader)."""
    handlers = _Creation(store, open_upload, concatenation, max_size, idle_timeout_s)
    return [
        web.options(path, handlers.options),
        web.post(path, answering_tus_errors(answering_problems(handlers.create))),
    ]


def tus_problem(error: UploadError) -> Problem:
    """The problem for a refused creation, in tus's status codes: a 422 (a type or field
    refused) is 400, what tus clients and the compliance suite take as "this creation is not
    acceptable" (tus has no 422); the code and detail say which rule refused it."""
    problem = problem_for(error)
    return msgspec.structs.replace(problem, status=400) if problem.status == 422 else problem


def answering_problems(handler: Handler) -> Handler:
    """The session layer's refusals as problem+json, with Tus-Resumable as every tus answer (also
    on the URLs of uploads the creation endpoint made without a session: a deferred length's
    PATCH opens one)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except UploadError as error:
            headers = error.headers | {"Tus-Resumable": protocol.TUS_VERSION, "Cache-Control": "no-store"}
            return problem_response(tus_problem(error), headers)

    return answer


class _Creation:
    def __init__(self, store: TusStore, open_upload: OpenUpload, concatenation: Concatenation, max_size: int,
                 idle_timeout_s: float | None):
        self._store = store
        self._open_upload = open_upload
        self._concatenation = concatenation
        self._max_size = max_size
        self._idle_timeout_s = idle_timeout_s

    async def options(self, request: web.Request) -> web.Response:
        # 200, not 204: what the public compliance suite and tusd answer.
        return web.Response(status=200, headers=protocol.options_headers(self._max_size))

    async def create(self, request: web.Request) -> web.Response:
        method = protocol.effective_method("POST", request.headers.get("X-HTTP-Method-Override"))
        if method != "POST":
            raise protocol.BadRequest(f"{method} goes to the upload's URL (Location), not to the creation endpoint")
        protocol.check_version(request.headers)
        concat = parse_concat(request.headers.get("Upload-Concat"))
        if concat is not None and concat.is_final:
            return await self._create_final(request, concat)
        # A whole file may defer its length (`open_upload` then opens no session until it arrives).
        creation = protocol.parse_creation(request.headers, concat=None if concat is None else concat.raw,
                                           deferrable=concat is None)  # fmt: skip
        most = self._max_size if creation.length is None else creation.length
        if most > self._max_size:
            raise protocol.PastLength(f"Upload-Length passes Tus-Max-Size {self._max_size}")
        # A body that cannot be taken is refused before anything exists.
        patch = protocol.parse_patch(request.headers, creation=True) if request.can_read_body else None
        if patch is not None:
            protocol.check_fits(0, patch.content_length, most)
        open_upload = self._open_upload if concat is None else self._concatenation.open_partial
        opened = await open_upload(request, creation)
        target = opened.target
        try:
            state = await self._store.create(target, creation)
        except BaseException:
            # The client gets no Location: nothing can reach what was opened for it, which would
            # hold its place in the quotas until it expired (a deferred upload's: its kind's limit).
            with contextlib.suppress(Exception):
                await asyncio.shield(target.on_terminate())
            raise
        if patch is not None:
            with UPLOADS_IN_FLIGHT.track_inprogress():
                state = await self._store.write(target, patch, body_reader(request, self._idle_timeout_s))
        return _created(state, opened.target, opened.location)

    async def _create_final(self, request: web.Request, concat: Concat) -> web.Response:
        """A final upload: no length (the partials' sum) and no body of its own; its object is
        the partials joined on the storage side, then the partials are gone."""
        if "Upload-Length" in request.headers:
            raise protocol.BadRequest("a final upload takes no Upload-Length: it is the sum of its partial uploads")
        if request.can_read_body:
            raise protocol.Forbidden("a final upload takes no bytes: they are its partial uploads'")
        metadata = request.headers.get("Upload-Metadata") or None
        protocol.parse_metadata(metadata)  # malformed metadata is refused before anything exists
        final = await self._concatenation.open_final(request, concat, metadata)
        try:
            state = await self._store.concatenate(final.target, final.creation, final.sources)
        except BaseException:
            # No object: the session would only hold a quota place until it expired. The
            # partials are intact, so the client may create the final upload again.
            await asyncio.shield(final.target.on_terminate())
            raise
        for partial in final.partials:
            # The final upload exists: a partial that cannot be removed now expires instead.
            with contextlib.suppress(TusError, StorageError):
                await self._store.terminate(partial)
                await partial.on_terminate()
        return _created(state, final.target, final.location)


def _created(state: UploadState, target: TusTarget[Any, Any], location: str) -> web.Response:
    headers = protocol.upload_headers(state.offset, state.length, state.expires_at) | target.response_headers
    if state.concat is not None:
        headers["Upload-Concat"] = state.concat
    return web.Response(status=201, headers=headers | {"Location": location})
