"""The interactive API documentation: `/docs` is Swagger UI over this gateway's `/openapi.json`.

Swagger UI is bundled by `make bootstrap` from the console's npm project (`web/docs.js` ->
`static/vendor/swagger-ui.{js,css}`, beside the console's Uppy bundle, so one build makes both
and no CDN is involved). Unlike the console, the docs are always mounted: a gateway whose bundle
was not built (an image without the web build) answers 404 on `/docs`, pointing at
`/openapi.json`, and still starts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from upload_gateway.errors import NotFound
from upload_gateway.http.openapi import Operation, Reply, Route, mount

STATIC = Path(__file__).parent / "static"
VENDOR = STATIC / "vendor"
PAGE = STATIC / "docs.html"
# Every file the page loads, at /docs/<name>: (operation id, file, content type).
FILES = {
    "swagger-ui.js": ("docsSwaggerUiScript", VENDOR / "swagger-ui.js", "text/javascript"),
    "swagger-ui.css": ("docsSwaggerUiStyle", VENDOR / "swagger-ui.css", "text/css"),
    "docs.js": ("docsScript", STATIC / "docs.js", "text/javascript"),
}
# Swagger UI sets inline styles and shows data: images; "Try it out" calls this gateway only.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
NOT_BUILT = "the API documentation page is not built on this gateway (make bootstrap builds it); the document is at /openapi.json"


def missing() -> list[str]:
    """The page's files that are not there (the bundle was never built)."""
    return [str(path) for path in (PAGE, *(path for _, path, _ in FILES.values())) if not path.is_file()]


def _file(path: Path, content_type: str) -> web.FileResponse:
    if missing():
        raise NotFound(NOT_BUILT)
    # Revalidated (ETag): a new build shows at once.
    return web.FileResponse(path, headers={"Cache-Control": "no-cache", "Content-Type": f"{content_type}; charset=utf-8"})


async def page(_: web.Request) -> web.StreamResponse:
    response = _file(PAGE, "text/html")
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response


def _serve(path: Path, content_type: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def serve(_: web.Request) -> web.StreamResponse:
        return _file(path, content_type)

    return serve


ROUTES = (
    Route(
        Operation(
            method="GET", path="/docs", operation_id="docsPage", tag="meta", auth="none",
            summary="This document, browsable and callable (Swagger UI, bundled: no CDN)",
            replies=(Reply(200, "The page", str, "text/html"),), problems=(404,),
        ),
        page,
    ),
    *(
        Route(
            Operation(
                method="GET", path=f"/docs/{name}", operation_id=operation_id, tag="meta", auth="none",
                summary=f"The docs page's {name}", replies=(Reply(200, "The file", str, content_type),),
                problems=(404,),
            ),
            _serve(path, content_type),
        )
        for name, (operation_id, path, content_type) in FILES.items()
    ),
)


def mount_docs(app: web.Application) -> None:
    mount(app, ROUTES)
