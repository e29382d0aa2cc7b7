"""The console's routes: the page and its files, the workspace's live asset feed (server-sent
events), and in the dev stack only a development token for the page.

The feed authenticates like every API route, with `Authorization: Bearer`: the page reads it with
fetch (not EventSource, which cannot send headers), so no token ever sits in a URL or a log line.
Each open feed holds one JetStream consumer of its own (console/follow.py); a replica holds at most `MAX_FEEDS` and ends
them all when it shuts down (an endless response would otherwise hold the shutdown for its whole
grace period).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import ClientConnectionResetError, web
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.client import JetStreamContext

from rawdrive_contracts import InvalidEvent, UnknownEventType, decode
from upload_gateway.auth import mint_dev_token
from upload_gateway.console import feed
from upload_gateway.console.follow import Follow
from upload_gateway.errors import Unavailable, UploadError
from upload_gateway.gateway import GATEWAY, Gateway, storage_for
from upload_gateway.http.openapi import Operation, Reply, Route, mount
from upload_gateway.http.problems import storage_errors
from upload_gateway.http.requests import user
from upload_gateway.settings import Settings

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# Built by `make bootstrap` from console/web (npm + esbuild); not in git.
VENDOR = STATIC / "vendor"
# Every file the page loads, at /console/<name>: (operation id, file).
FILES = {
    "console.js": ("consoleScript", STATIC / "console.js"),
    "console.css": ("consoleStyle", STATIC / "console.css"),
    "uppy.js": ("uppyScript", VENDOR / "uppy.js"),
    "uppy.css": ("uppyStyle", VENDOR / "uppy.css"),
}
MAX_FEEDS = 500
FEED_BUFFER = 256  # messages waiting for a slow browser; then NATS holds the rest (flow control)
FEED_RETRY_AFTER_S = 5
# The dev stack's token: what `make token` prints (rawdrive_devkit.devstack.dev_token).
DEV_WORKSPACE, DEV_ROLE, DEV_SUB, DEV_TOKEN_TTL_S = "dev", "admin", "dev-user", 24 * 3600
# The page's own files and Uppy's only; thumbnails and uploads may be on other origins.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data: blob: http: https:; connect-src 'self' http: https:; "
    "style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@dataclass
class Console:
    js: JetStreamContext
    dev_token_secret: str | None
    max_feeds: int = MAX_FEEDS
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    open_feeds: int = 0


CONSOLE = web.AppKey("console", Console)


def _file(path: Path, content_type: str | None = None) -> web.FileResponse:
    headers = {"Cache-Control": "no-cache"}  # revalidated (ETag): a new build shows at once
    if content_type:
        headers["Content-Type"] = content_type
    return web.FileResponse(path, headers=headers)


DEV_TOKEN_META = '<meta name="rawdrive-dev-token" content="">'


def page_html(dev_token: bool) -> str:
    """The page; in the dev stack it names the dev token route, so elsewhere nothing asks for it."""
    html = (STATIC / "index.html").read_text()
    assert DEV_TOKEN_META in html
    return html.replace(DEV_TOKEN_META, DEV_TOKEN_META.replace('""', f'"{_DEV_TOKEN.path}"')) if dev_token else html


async def page(request: web.Request) -> web.Response:
    html = page_html(request.app[CONSOLE].dev_token_secret is not None)
    headers = {"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"}
    return web.Response(text=html, content_type="text/html", headers=headers)


def _content_type(name: str) -> str:
    # Set, not guessed: the system's mime tables differ (RFC 9239 says text/javascript).
    return "text/css" if name.endswith(".css") else "text/javascript"


def _serve(name: str, path: Path) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def serve(request: web.Request) -> web.StreamResponse:
        return _file(path, f"{_content_type(name)}; charset=utf-8")

    return serve


async def dev_token(request: web.Request) -> web.Response:
    secret = request.app[CONSOLE].dev_token_secret
    assert secret is not None  # the route exists only with one
    token = mint_dev_token(secret, sub=DEV_SUB, workspaces={DEV_WORKSPACE: DEV_ROLE}, ttl_s=DEV_TOKEN_TTL_S)
    return web.json_response({"token": token, "workspace_id": DEV_WORKSPACE}, headers={"Cache-Control": "no-store"})


async def _thumb_url(gw: Gateway, event: Any) -> str | None:
    found = feed.thumb_key(event)
    if found is None:
        return None
    ref, key = found
    try:
        storage = await storage_for(gw, ref)
        with storage_errors("presign thumbnail"):
            return await storage.presign_get(key, gw.settings.asset_url_ttl_s)
    except UploadError as error:  # the item still goes out; the listing gives the picture later
        log.warning("feed: thumbnail not presigned", extra={"asset_id": event.data.asset_id, "error": str(error)})
        return None


async def _message(gw: Gateway, msg: Msg) -> bytes | None:
    try:
        event = decode(msg.data)
    except (UnknownEventType, InvalidEvent) as error:
        log.warning("feed: event skipped", extra={"subject": msg.subject, "error": str(error)})
        return None
    item = feed.feed_item(event, await _thumb_url(gw, event))
    return None if item is None else feed.sse_message(msg.metadata.sequence.stream, item)


async def _follow(js: JetStreamContext, workspace_id: str, after: int | None) -> Follow:
    follow = Follow(js=js, filters=feed.subjects(workspace_id), buffer=FEED_BUFFER)
    try:
        await follow.start(after)
    except (NatsError, TimeoutError) as error:
        log.warning("feed: cannot subscribe", extra={"error": repr(error)})
        raise Unavailable(
            "the live feed is unavailable (event bus unreachable); retry later",
            headers={"Retry-After": str(FEED_RETRY_AFTER_S)},
        ) from None
    return follow


async def events(request: web.Request) -> web.StreamResponse:
    gw = request.config_dict[GATEWAY]
    _, workspace_id = await user(request, gw.tokens, "read")
    after = feed.resume_after(request.headers.get("Last-Event-ID"))
    console = request.app[CONSOLE]
    if console.closing.is_set() or console.open_feeds >= console.max_feeds:
        raise Unavailable(
            f"this gateway holds as many live feeds as it may ({console.max_feeds}); retry later",
            headers={"Retry-After": str(FEED_RETRY_AFTER_S)},
        )
    console.open_feeds += 1
    try:
        follow = await _follow(console.js, workspace_id, after)
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx and its kin would hold the events back
        })  # fmt: skip
        try:
            await response.prepare(request)
            await response.write(feed.SSE_OPEN)
            await _relay(gw, console.closing, follow, response)
        except (ClientConnectionResetError, ConnectionResetError):
            pass  # the browser went away: found by the next write, a keep-alive at the latest
        finally:
            await follow.close()
        return response
    finally:
        console.open_feeds -= 1


async def _relay(gw: Gateway, closing: asyncio.Event, follow: Follow, response: web.StreamResponse) -> None:
    closed = asyncio.ensure_future(closing.wait())
    # Not cancelled by a keep-alive: it may be replacing the consumer.
    received: asyncio.Future[Msg] | None = None
    try:
        while True:
            if received is None:
                received = asyncio.ensure_future(follow.next_event())
            done, _ = await asyncio.wait((received, closed), timeout=feed.KEEPALIVE_S,
                                         return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            if closed in done:
                return
            if received not in done:
                await response.write(feed.SSE_KEEPALIVE)
                continue
            msg, received = received.result(), None
            message = await _message(gw, msg)
            if message is not None:
                await response.write(message)
    finally:
        closed.cancel()
        if received is not None:
            received.cancel()


class DevToken(msgspec.Struct, frozen=True):
    token: str
    workspace_id: str


_PAGE = Operation(
    method="GET", path="/console", operation_id="consolePage", tag="console", auth="none",
    summary="The upload console page (RAWDRIVE_CONSOLE)",
    replies=(Reply(200, "The page", str, "text/html"),),
)
_FILES = tuple(
    Route(
        Operation(
            method="GET", path=f"/console/{name}", operation_id=operation_id, tag="console", auth="none",
            summary=f"The console page's {name}" + (" (bundled: no CDN)" if path.parent == VENDOR else ""),
            replies=(Reply(200, "The file", str, _content_type(name)),),
        ),
        _serve(name, path),
    )
    for name, (operation_id, path) in FILES.items()
)
_EVENTS = Operation(
    method="GET", path="/console/workspaces/{workspace_id}/events", operation_id="consoleEvents", tag="console",
    summary="The workspace's asset events as they happen (server-sent events; resume with Last-Event-ID)",
    description="Each message: `id` the stream sequence, `event: asset`, `data` a FeedItem in JSON.",
    replies=(Reply(200, "An endless text/event-stream", feed.FeedItem, "text/event-stream"),),
    problems=(401, 403, 404, 422, 503),
)
_DEV_TOKEN = Operation(
    method="GET", path="/console/dev-token", operation_id="consoleDevToken", tag="console", auth="none",
    summary="Development only (RAWDRIVE_CONSOLE_DEV_TOKEN): an admin token for workspace dev",
    replies=(Reply(200, "A token", DevToken),),
)


def console_mount(settings: Settings, js: JetStreamContext) -> Callable[[web.Application], None]:
    """Mounts the console on the gateway app; refuses (ValueError, the service does not start) a
    dev token outside development, or a console whose Uppy bundle was never built."""
    missing = [str(path) for _, path in FILES.values() if not path.is_file()]
    if missing:
        raise ValueError(f"RAWDRIVE_CONSOLE: the page's files {missing} are missing; build them with `make bootstrap`")
    secret = None
    if settings.console_dev_token:
        if settings.jwt_jwks_url or settings.jwt_secret is None:
            raise ValueError("RAWDRIVE_CONSOLE_DEV_TOKEN is for development: it needs RAWDRIVE_JWT_SECRET and no JWKS URL")
        secret = settings.jwt_secret.reveal()

    def mount_console(app: web.Application) -> None:
        console = Console(js=js, dev_token_secret=secret)
        app[CONSOLE] = console

        async def end_feeds(_: web.Application) -> None:
            console.closing.set()

        app.on_shutdown.append(end_feeds)
        routes = [Route(_PAGE, page), *_FILES, Route(_EVENTS, events)]
        if secret is not None:
            routes.append(Route(_DEV_TOKEN, dev_token))
        mount(app, routes)

    return mount_console
