"""Uppy as another web app embeds it, in a real browser (Debian's Chromium driven by Playwright),
against the whole pipeline (every service a process, real NATS, PostgreSQL and SeaweedFS):
the README's two Uppy snippets, exactly as written there, bundled with esbuild from the locked
npm packages under tests/e2e/web/ and served from a page on another origin (so CORS is the
gateway's and the bucket's, as for a real app), each upload a real photo until `asset.created`
arrives; and the gateway's /docs page renders every operation of /openapi.json with nothing
loaded from elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import subprocess
import urllib.parse
from pathlib import Path

import pytest
from aiohttp import web

from rawdrive_devkit.testing import node_for

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
WEB = Path(__file__).parent / "web"  # one locked npm project per snippet (tus: Uppy 6, aws-s3: Uppy 5)
MEDIA = ROOT / "services" / "media-processor" / "tests" / "data"
PHOTO = MEDIA / "mei_Samsung_SM-J327T1.jpg"  # a real phone photo (see the processor's README)
CREATED = "com.rawdrive.asset.created.v1"
FAILED = "com.rawdrive.asset.processing_failed.v1"

# Add files to the page's `uppy` and upload them; what Uppy says of each.
UPLOAD = """async (files) => {
  for (const file of files) {
    const bytes = Uint8Array.from(atob(file.b64), (c) => c.charCodeAt(0));
    uppy.addFile({ name: file.name, type: file.type, data: new Blob([bytes], { type: file.type }) });
  }
  const result = await uppy.upload();
  return {
    successful: result.successful.map((f) => ({ name: f.name, response: f.response })),
    failed: result.failed.map((f) => ({ name: f.name, error: String(f.error) })),
  };
}"""


def readme_snippet(name: str) -> str:
    """The ```js block right after README's `<!-- tested: tests/e2e/test_uppy.py (name) -->`."""
    marker = f"<!-- tested: tests/e2e/test_uppy.py ({name}) -->\n```js\n"
    text = README.read_text()
    assert text.count(marker) == 1, f"README has no single {name} snippet marked {marker!r}"
    return text.split(marker, 1)[1].split("\n```\n", 1)[0]


def bundle(snippet: str, web_dir: Path, out: Path) -> None:
    """The snippet as a web app's build makes it: esbuild resolves its imports from web_dir's
    locked packages. Its free names (`api`, `workspace`, `token`) are the page's globals, and the
    page's `uppy` is exported to the test."""
    node = Path(node_for(web_dir))
    source = snippet + "\nwindow.uppy = uppy;\n"
    # esbuild's bin is its native binary, or a Node script where none was installed: the venv's node.
    env = {**os.environ, "PATH": f"{node.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    built = subprocess.run(
        [str(web_dir / "node_modules" / ".bin" / "esbuild"), "--bundle", "--format=iife", "--target=es2020",
         "--loader:.css=css", "--sourcefile=snippet.js", f"--outfile={out}"],
        input=source, text=True, cwd=web_dir, env=env, capture_output=True, timeout=120,
    )  # fmt: skip
    assert built.returncode == 0, f"esbuild failed:\n{built.stderr}"


class Pages:
    """A web app's own server, on another origin than the gateway's: one page per snippet."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0
        self.origin = ""
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_static("/", self.root)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self.runner, sock).start()
        # localhost, not 127.0.0.1: another origin and another site than the gateway's.
        self.origin = f"http://localhost:{self.port}"

    def page(self, name: str, snippet: str, *, api: str, workspace: str, token: str) -> str:
        folder = self.root / name
        folder.mkdir()
        bundle(snippet, WEB / name, folder / "app.js")
        settings = f"window.api = {api!r}; window.workspace = {workspace!r}; window.token = {token!r};"
        (folder / "index.html").write_text(
            f'<!doctype html><meta charset="utf-8"><title>{name}</title><link rel="icon" href="data:,">'
            f"<script>{settings}</script><script src=\"app.js\"></script>"
        )
        return f"{self.origin}/{name}/index.html"


@pytest.fixture(scope="module")
async def pages(tmp_path_factory):
    pages = Pages(tmp_path_factory.mktemp("pages"))
    await pages.start()
    yield pages
    assert pages.runner is not None
    await pages.runner.cleanup()


@pytest.fixture(scope="module")
async def world(module_service_env, tmp_path_factory, pipeline_opener, pages):
    env = module_service_env | {"RAWDRIVE_CORS_ORIGINS": pages.origin}
    async for pipeline, client in pipeline_opener(env, tmp_path_factory.mktemp("uppy")):
        # What an operator sets on the bucket for browser multipart (README): the app's origin
        # may PUT parts and read their ETag. SeaweedFS then answers other origins without CORS.
        pipeline.s3().put_bucket_cors(Bucket=env["RAWDRIVE_S3_BUCKET"], CORSConfiguration={"CORSRules": [{
            "AllowedOrigins": [pages.origin], "AllowedMethods": ["PUT"], "AllowedHeaders": ["*"],
            "ExposeHeaders": ["ETag"], "MaxAgeSeconds": 600,
        }]})  # fmt: skip
        yield pipeline, client


async def open_page(browser, url: str) -> tuple[object, list[str], list[tuple[str, str]]]:
    """The page, the errors it met (page errors, console errors, answers >= 400) and every
    request it made (method, URL)."""
    page = await browser.new_page()
    errors: list[str] = []
    requested: list[tuple[str, str]] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("response", lambda response: errors.append(f"{response.status} {response.url}") if response.status >= 400 else None)
    page.on("request", lambda request: requested.append((request.method, request.url)))
    await page.goto(url)
    return page, errors, requested


def as_file(path: Path, mime_type: str = "image/jpeg") -> dict[str, str]:
    return {"name": path.name, "type": mime_type, "b64": base64.b64encode(path.read_bytes()).decode()}


async def created(pipeline, asset_id: str) -> dict:
    events = pipeline.events
    await events.wait(lambda: events.of(CREATED, asset_id) or events.of(FAILED, asset_id), timeout_s=120)
    assert not events.of(FAILED, asset_id), events.of(FAILED, asset_id)
    return events.of(CREATED, asset_id)[0]["data"]


def hosts(requested: list[tuple[str, str]]) -> set[str]:
    return {urllib.parse.urlsplit(u).netloc for _, u in requested if u.startswith(("http:", "https:"))}


async def test_uppy_tus_uploads_a_photo_through_the_creation_endpoint(world, pages, browser):
    pipeline, client = world
    url = pages.page("tus", readme_snippet("tus"), api=pipeline.base_url, workspace=pipeline.workspace,
                     token=pipeline.token)  # fmt: skip
    page, errors, requested = await open_page(browser, url)
    outcome = await page.evaluate(UPLOAD, [as_file(PHOTO)])
    assert outcome["failed"] == [] and len(outcome["successful"]) == 1, outcome
    upload_url = outcome["successful"][0]["response"]["uploadURL"]
    match = re.fullmatch(rf"{re.escape(pipeline.base_url)}/v1/workspaces/{pipeline.workspace}/uploads/([\w-]+)/tus",
                         upload_url)  # fmt: skip
    assert match, upload_url
    async with client.http.get(f"/v1/workspaces/{pipeline.workspace}/uploads/{match.group(1)}") as response:
        session = await response.json()
    asset = await created(pipeline, session["asset_id"])
    body = PHOTO.read_bytes()
    assert (asset["file_name"], asset["kind"], asset["size_bytes"]) == (PHOTO.name, "photo", len(body))
    assert asset["library_id"] == "default"
    shown = await client.asset_when(session["asset_id"], {"available"})
    assert shown["sha256"] == hashlib.sha256(body).hexdigest()  # what the verifier hashed in storage
    # The one creating POST went to the workspace's endpoint; nothing but the page and the gateway.
    endpoint = f"{pipeline.base_url}/v1/workspaces/{pipeline.workspace}/tus"
    assert [method for method, u in requested if u == endpoint] == ["POST"]
    assert hosts(requested) == {urllib.parse.urlsplit(pages.origin).netloc, urllib.parse.urlsplit(pipeline.base_url).netloc}
    assert not errors, errors


async def test_uppy_aws_s3_uploads_photos_in_parts_straight_to_storage(world, pages, browser, tmp_path):
    pipeline, client = world
    # A real photo (one part) and a 12 MP one of about 10 MB that does not compress away (two
    # parts of the snippet's 8 MiB: Uppy's cut and the session's plan must agree).
    big = tmp_path / "IMG_big.jpg"
    subprocess.run(["convert", "-size", "4000x3000", "xc:gray", "+noise", "Random", "-quality", "95", str(big)],
                   check=True, timeout=120)  # fmt: skip
    assert big.stat().st_size > 8 * 1024 * 1024
    url = pages.page("aws-s3", readme_snippet("aws-s3"), api=pipeline.base_url, workspace=pipeline.workspace,
                     token=pipeline.token)  # fmt: skip
    page, errors, requested = await open_page(browser, url)
    outcome = await page.evaluate(UPLOAD, [as_file(PHOTO), as_file(big)])
    assert outcome["failed"] == [] and len(outcome["successful"]) == 2, outcome
    for done in outcome["successful"]:
        path = PHOTO if done["name"] == PHOTO.name else big
        asset = await created(pipeline, done["response"]["body"]["asset_id"])
        body = path.read_bytes()
        assert (asset["file_name"], asset["kind"], asset["size_bytes"]) == (path.name, "photo", len(body))
        shown = await client.asset_when(asset["asset_id"], {"available"})
        assert shown["sha256"] == hashlib.sha256(body).hexdigest()
    # The bytes went to storage, not through the gateway: three part PUTs, to the bucket's host.
    s3 = urllib.parse.urlsplit(pipeline.env["RAWDRIVE_S3_ENDPOINT"]).netloc
    to_storage = [(method, u) for method, u in requested if urllib.parse.urlsplit(u).netloc == s3]
    assert len(to_storage) == 3 and all(m == "PUT" and "partNumber=" in u for m, u in to_storage), to_storage
    assert not errors, errors


async def test_the_docs_page_renders_every_operation_from_the_gateway_alone(world, browser):
    from playwright.async_api import expect

    pipeline, client = world
    async with client.http.get("/openapi.json") as response:
        document = await response.json()
    operations = [f"operations-{op['tags'][0]}-{op['operationId']}"
                  for path in document["paths"].values() for op in path.values()]  # fmt: skip
    page, errors, requested = await open_page(browser, f"{pipeline.base_url}/docs")
    await expect(page.locator(".opblock").first).to_be_visible(timeout=30_000)
    # Swagger UI renders one block per operation, its DOM id made of the tag and the operation id.
    rendered = await page.locator(".opblock").evaluate_all("blocks => blocks.map((b) => b.id)")
    assert sorted(rendered) == sorted(operations)
    # The document's description, rendered: the accepted files and their limits.
    await expect(page.locator(".info .description")).to_contain_text("photo, at most 100 MiB")
    assert hosts(requested) == {urllib.parse.urlsplit(pipeline.base_url).netloc}, requested
    assert not errors, errors
