"""/docs against a live gateway: the page, every file it references served by the gateway itself
(no other host), a page whose bundle was never built answered with a problem naming the fix, and
the document it renders stating the accepted files and limits. (tests/e2e/test_uppy.py renders
the page in Chromium.)"""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

from rawdrive_contracts.formats import FILE_TYPES, MIB, SIZE_LIMITS
from upload_gateway.console import docs


async def test_the_docs_page_and_every_file_it_loads_come_from_the_gateway(live_gateway):
    async with live_gateway.http.get(f"{live_gateway.url}/docs") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert response.headers["Content-Security-Policy"] == docs.PAGE_POLICY
        html = await response.text()
    referenced = re.findall(r'(?:src|href)="([^"]+)"', html)
    loaded = [ref for ref in referenced if not ref.startswith("data:") and ref != "/openapi.json"]
    assert sorted(loaded) == ["/docs/docs.js", "/docs/swagger-ui.css", "/docs/swagger-ui.js"]
    for ref in loaded:
        url = urljoin(f"{live_gateway.url}/docs", ref)
        assert urlsplit(url).netloc == urlsplit(live_gateway.url).netloc
        async with live_gateway.http.get(url) as response:
            body = await response.read()
            assert response.status == 200, ref
            assert response.content_type == ("text/css" if ref.endswith(".css") else "text/javascript")
            assert len(body) > 100
    # The bundle holds Swagger UI itself, not a loader that fetches it from elsewhere.
    async with live_gateway.http.get(f"{live_gateway.url}/docs/swagger-ui.js") as response:
        bundle = await response.text()
    assert "SwaggerUIBundle" in bundle and "unpkg.com" not in bundle and "cdn.jsdelivr" not in bundle


async def test_a_gateway_without_the_built_bundle_says_how_to_build_it(live_gateway, monkeypatch, tmp_path):
    monkeypatch.setitem(docs.FILES, "swagger-ui.js", ("docsSwaggerUiScript", tmp_path / "absent.js", "text/javascript"))
    for path in ("/docs", "/docs/docs.js"):
        async with live_gateway.http.get(f"{live_gateway.url}{path}") as response:
            assert response.status == 404
            assert response.content_type == "application/problem+json"
            assert "make bootstrap" in (await response.json())["detail"]


async def test_the_document_lists_the_docs_routes_accepted_files_and_limits(live_gateway):
    async with live_gateway.http.get(f"{live_gateway.url}/openapi.json") as response:
        document = await response.json()
    assert {"/docs", "/docs/swagger-ui.js", "/docs/swagger-ui.css", "/docs/docs.js"} <= set(document["paths"])
    description = document["info"]["description"]
    for kind, limit in SIZE_LIMITS.items():
        assert f"- {kind}, at most {limit // MIB} MiB ({limit} bytes)" in description
    for extension, file_type in FILE_TYPES.items():
        assert f".{extension} (" in description
        assert all(mime in description for mime in file_type.mime_types)
