"""The upload console in a real browser (Debian's Chromium driven by Playwright) against the whole
pipeline (every service a process, real NATS, PostgreSQL and SeaweedFS), the gateway started with
RAWDRIVE_CONSOLE=1: sign in with a token, drop three photos and a video onto the Uppy Dashboard,
see four thumbnails arrive on the live feed (the page lists the catalogue once and never polls),
delete one and restore it from the page, and see a delete and restore made elsewhere arrive live;
pause an upload on a slow link and resume it to the same bytes; drop a folder (and pick another in
the Dashboard's folder picker) and see every file in their subfolders become an asset. A screenshot of the page is saved beside the test's logs (its path is printed).
"""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import urllib.parse
from pathlib import Path

import pytest

PHOTOS = {"exiftool_GPS.jpg": "image/jpeg", "png_rgba_alpha.png": "image/png", "mei_Nikon_D1X.webp": "image/webp"}
VIDEO = {"mei_with-gps.mp4": "video/mp4"}
LIBRARY = "console"

# What a drop from the file manager does: a DataTransfer of File objects, dragged over the
# Dashboard and dropped (Uppy reads it as it reads a real drop, folders included).
DROP = """async ([selector, files]) => {
  const transfer = new DataTransfer();
  for (const file of files) {
    const bytes = Uint8Array.from(atob(file.b64), (c) => c.charCodeAt(0));
    transfer.items.add(new File([bytes], file.name, { type: file.type }));
  }
  const target = document.querySelector(selector);
  for (const type of ["dragenter", "dragover", "drop"]) {
    target.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: transfer }));
  }
}"""
THUMBNAILS_LOADED = """() => {
  const images = [...document.querySelectorAll('#assets .card img')];
  return images.length === 4 && images.every((img) => img.complete && img.naturalWidth > 0);
}"""


@pytest.fixture(scope="module")
async def world(module_service_env, tmp_path_factory, pipeline_opener):
    env = module_service_env | {"RAWDRIVE_CONSOLE": "1"}
    async for pipeline, client in pipeline_opener(env, tmp_path_factory.mktemp("console")):
        yield pipeline, client


async def test_dropped_photos_and_a_video_appear_live_and_can_be_deleted_and_restored(world, browser, media_dir):
    from playwright.async_api import expect

    pipeline, client = world
    page = await browser.new_page(viewport={"width": 1280, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", lambda message: errors.append(f"{message.text} {message.location}") if message.type == "error" else None)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("response", lambda response: errors.append(f"{response.status} {response.url}") if response.status >= 400 else None)

    await page.goto(f"{pipeline.base_url}/console")
    await page.fill("#token", pipeline.token)
    await page.click("#sign-in-form button[type=submit]")
    await expect(page.locator("#feed-state")).to_have_text("live", timeout=15_000)
    await expect(page.locator("#workspace-id")).to_have_value(pipeline.workspace)
    await page.fill("#library-id", LIBRARY)

    files = [
        {"name": name, "type": mime, "b64": base64.b64encode((media_dir / name).read_bytes()).decode()}
        for name, mime in (PHOTOS | VIDEO).items()
    ]
    await page.evaluate(DROP, [".uppy-Dashboard-inner", files])
    await page.wait_for_function(THUMBNAILS_LOADED, timeout=120_000)
    cards = page.locator("#assets .card")
    assert sorted(await cards.locator(".name").all_text_contents()) == sorted(PHOTOS | VIDEO)
    assert sorted(await cards.locator(".status").all_text_contents()) == ["photo", "photo", "photo", "video"]
    for asset_id in await cards.evaluate_all("cards => cards.map((c) => c.dataset.assetId)"):
        shown = await client.asset_when(asset_id, {"available"})
        assert shown["library_id"] == LIBRARY and shown["variants"]["thumb"]

    # The thumbnails came from the feed: the catalogue was asked once at sign-in (the token check),
    # listed once with its trash when the feed opened, and never polled.
    listings = [urllib.parse.urlsplit(u) for u in requested]
    listings = [u.query for u in listings if u.path == f"/v1/workspaces/{pipeline.workspace}/assets"]
    assert sorted(listings) == ["limit=1", "limit=100", "limit=100&status=deleted"], listings
    # Nothing from the network but the gateway and the bucket's presigned thumbnails (the rest are
    # the page's own data: and blob: URLs).
    s3 = urllib.parse.urlsplit(pipeline.env["RAWDRIVE_S3_ENDPOINT"]).netloc
    hosts = {urllib.parse.urlsplit(u).netloc for u in requested if u.startswith(("http:", "https:"))}
    assert hosts == {urllib.parse.urlsplit(pipeline.base_url).netloc, s3}, hosts

    # Delete one from the page, then restore it.
    card = cards.filter(has_text="png_rgba_alpha.png")
    asset_id = await card.get_attribute("data-asset-id")
    await card.get_by_role("button", name="Delete").click()
    await expect(card).to_have_class(re.compile(r"\bdeleted\b"))
    assert (await client.asset_when(asset_id, {"deleted"}))["status"] == "deleted"
    await card.get_by_role("button", name="Restore").click()
    await expect(card.get_by_role("button", name="Delete")).to_be_visible()
    await expect(card).not_to_have_class(re.compile(r"\bdeleted\b"))
    assert (await client.asset_when(asset_id, {"available"}))["status"] == "available"

    # Someone else deletes and restores another: the page learns both from the feed.
    other = cards.filter(has_text="mei_with-gps.mp4")
    other_id = await other.get_attribute("data-asset-id")
    async with client.http.delete(f"/v1/workspaces/{pipeline.workspace}/assets/{other_id}") as response:
        assert response.status == 204
    await expect(other).to_have_class(re.compile(r"\bdeleted\b"), timeout=15_000)
    async with client.http.post(f"/v1/workspaces/{pipeline.workspace}/assets/{other_id}/restore") as response:
        assert response.status == 200
    await expect(other).not_to_have_class(re.compile(r"\bdeleted\b"), timeout=15_000)

    await page.wait_for_function(THUMBNAILS_LOADED)
    screenshot = pipeline.log_dir / "console.png"
    await page.screenshot(path=str(screenshot), full_page=True)
    print(f"\nconsole screenshot: {screenshot}")
    assert not errors, errors


async def test_a_paused_upload_stays_paused_and_resumes_to_the_same_bytes(world, browser, tmp_path):
    from playwright.async_api import expect

    pipeline, client = world
    photo = tmp_path / "IMG_big.jpg"  # 12 MP of noise: about 10 MB that does not compress away
    subprocess.run(["convert", "-size", "4000x3000", "xc:gray", "+noise", "Random", "-quality", "95", str(photo)],
                   check=True, timeout=120)  # fmt: skip
    page = await browser.new_page()
    tus_urls: set[str] = set()
    page.on("request", lambda request: tus_urls.add(request.url) if request.method == "PATCH" else None)
    await page.goto(f"{pipeline.base_url}/console")
    await page.fill("#token", pipeline.token)
    await page.click("#sign-in-form button[type=submit]")
    await expect(page.locator("#feed-state")).to_have_text("live", timeout=15_000)
    # A slow uplink (1 MB/s), so the upload is still going when it is paused.
    network = await page.context.new_cdp_session(page)
    await network.send("Network.enable")
    slow = {"offline": False, "latency": 20, "downloadThroughput": -1, "uploadThroughput": 1_000_000}
    await network.send("Network.emulateNetworkConditions", slow)
    await page.locator(".uppy-Dashboard-input").first.set_input_files(str(photo))  # the Dashboard's file picker

    status = page.locator(".uppy-StatusBar-statusPrimary")
    await expect(status).to_contain_text(re.compile(r"Uploading: [1-9]\d?%"), timeout=30_000)
    await page.get_by_role("button", name="Pause upload").click()
    await expect(status).to_contain_text("Paused")
    (tus_url,) = tus_urls
    upload = tus_url.removesuffix("/tus").removeprefix(pipeline.base_url)

    async def received() -> int:
        async with client.http.get(upload) as response:
            return (await response.json())["bytes_received"]

    # Uppy shows progress at most every 500 ms, and the aborted PATCH's last bytes land: let both settle.
    await page.wait_for_timeout(1000)
    paused_at, paused_bytes = await status.inner_text(), await received()
    await page.wait_for_timeout(2000)  # a paused upload sends nothing more
    assert (await status.inner_text(), await received()) == (paused_at, paused_bytes)
    assert paused_bytes < photo.stat().st_size
    card = page.locator("#assets .card", has_text=photo.name)
    assert not await card.count()  # not committed while paused

    await network.send("Network.emulateNetworkConditions", slow | {"uploadThroughput": -1})
    await page.get_by_role("button", name="Resume upload").click()
    await expect(card.locator("img")).to_be_visible(timeout=120_000)
    asset = await client.asset_when(await card.get_attribute("data-asset-id"), {"available"})
    # The verifier hashed what storage holds: exactly the file, nothing sent twice or skipped.
    body = photo.read_bytes()
    assert (asset["size_bytes"], asset["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())


def noise_images(folder: Path, relative_paths: list[str]) -> dict[str, Path]:
    """Fresh images (random noise, so bytes no other test sent) at these paths: name -> path."""
    made = {}
    for relative in relative_paths:
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["convert", "-size", "800x600", "xc:gray", "+noise", "Random", str(path)], check=True, timeout=60)
        made[path.name] = path
    return made


async def test_a_dropped_folder_and_a_picked_folder_upload_every_file_in_their_subfolders(world, browser, tmp_path):
    from playwright.async_api import expect

    pipeline, client = world
    dropped = noise_images(tmp_path / "Holiday", ["beach.jpg", "day-2/harbour.png", "day-2/evening/dinner.webp"])
    picked = noise_images(tmp_path / "Scans", ["letter.png", "2024/receipt.jpg"])
    page = await browser.new_page(viewport={"width": 1280, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    await page.goto(f"{pipeline.base_url}/console")
    await page.fill("#token", pipeline.token)
    await page.click("#sign-in-form button[type=submit]")
    await expect(page.locator("#feed-state")).to_have_text("live", timeout=15_000)
    await page.fill("#library-id", LIBRARY)

    # The Dashboard's "browse folders" picker (fileManagerSelectionType "both"): a webkitdirectory
    # input, there while the Dashboard is empty (then it lists the files).
    folder_input = page.locator(".uppy-Dashboard-input[webkitdirectory]")
    await expect(folder_input).to_have_count(1)
    await folder_input.set_input_files(str(tmp_path / "Scans"))
    # A folder dragged from the file manager: Chromium's own drag and drop (DevTools protocol)
    # with the folder's path, so the page gets a directory entry as from a real drop.
    dashboard = page.locator(".uppy-Dashboard-inner")
    box = await dashboard.bounding_box()
    assert box is not None
    drag = {"x": box["x"] + box["width"] / 2, "y": box["y"] + box["height"] / 2,
            "data": {"items": [], "files": [str(tmp_path / "Holiday")], "dragOperationsMask": 1}}  # 1: copy
    devtools = await page.context.new_cdp_session(page)
    for step in ("dragEnter", "dragOver", "drop"):
        await devtools.send("Input.dispatchDragEvent", {"type": step, **drag})

    for name, path in (dropped | picked).items():
        card = page.locator("#assets .card", has_text=name)
        await expect(card.locator("img")).to_be_visible(timeout=120_000)
        asset = await client.asset_when(await card.get_attribute("data-asset-id"), {"available"})
        body = path.read_bytes()
        assert (asset["file_name"], asset["library_id"]) == (name, LIBRARY)
        assert (asset["size_bytes"], asset["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
        assert asset["variants"]["thumb"]
    assert not errors, errors
