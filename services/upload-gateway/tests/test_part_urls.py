"""Part URLs of S3 multipart sessions (issue 20) against real PostgreSQL and SeaweedFS, through a
gateway on a real port: they expire after RAWDRIVE_PART_URL_TTL_S and can be asked for again,
they take exactly the part's planned length, and a stored part of another size is refused at
listing and commit and never counted."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import aiohttp

from upload_gateway import repository

MIB = 1024 * 1024


async def problem(response: aiohttp.ClientResponse) -> dict:
    assert response.content_type == "application/problem+json", await response.text()
    return await response.json()


async def presign(live, created: dict, numbers: list[int]) -> dict:
    url = live.uploads(f"/{created['upload_id']}/parts")
    async with live.http.post(url, json={"part_numbers": numbers}, headers=created["headers"]) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def put(http: aiohttp.ClientSession, url: str, body: bytes) -> int:
    async with http.put(url, data=body) as response:
        return response.status


async def status_of(live, created: dict) -> dict:
    async with live.http.get(live.uploads(f"/{created['upload_id']}"), headers=live.user()) as response:
        return await response.json()


# -- part URLs: lifetime and length ------------------------------------------------------------


async def test_a_part_url_expires_after_the_setting_and_the_same_part_can_be_asked_for_again(start_gateway):
    live = await start_gateway(part_url_ttl_s=2)
    created = await live.open_session(6 * MIB, resumable_protocol="s3_multipart")
    first = await presign(live, created, [1])
    (part,) = first["parts"]
    assert dict(parse_qsl(urlsplit(part["url"]).query))["X-Amz-Expires"] == "2"
    assert datetime.fromisoformat(first["expires_at"]) - datetime.now(UTC) < timedelta(seconds=3)
    body = os.urandom(6 * MIB)
    await asyncio.sleep(2.5)
    assert await put(live.http, part["url"], body) == 403  # SeaweedFS refuses the expired URL
    again = await presign(live, created, [1])  # re-issued on request
    assert await put(live.http, again["parts"][0]["url"], body) == 200
    assert (await status_of(live, created))["bytes_received"] == 6 * MIB


async def test_the_default_part_url_lives_15_minutes_not_the_session(live_gateway):
    created = await live_gateway.open_session(6 * MIB, resumable_protocol="s3_multipart")
    signed = await presign(live_gateway, created, [1])
    assert dict(parse_qsl(urlsplit(signed["parts"][0]["url"]).query))["X-Amz-Expires"] == "900"


async def test_a_part_url_takes_exactly_its_planned_length(live_gateway):
    # The report: a 12 MiB part was accepted on a 6 MiB upload and bytes_received passed size_bytes.
    size = 13 * MIB  # two parts: 8 MiB and 5 MiB
    created = await live_gateway.open_session(size, resumable_protocol="s3_multipart", file_name="clip.mp4",
                                              mime_type="video/mp4")
    signed = await presign(live_gateway, created, [1, 2])
    assert [(p["part_number"], p["size"]) for p in signed["parts"]] == [(1, 8 * MIB), (2, 5 * MIB)]
    body = os.urandom(size)
    first, last = signed["parts"]
    assert await put(live_gateway.http, last["url"], os.urandom(12 * MIB)) == 403
    assert await put(live_gateway.http, last["url"], body[8 * MIB : 8 * MIB + 1]) == 403
    assert await put(live_gateway.http, first["url"], body[: 8 * MIB]) == 200
    assert await put(live_gateway.http, last["url"], body[8 * MIB :]) == 200
    assert (await status_of(live_gateway, created))["bytes_received"] == size


async def test_a_stored_part_larger_than_the_plan_is_refused_at_listing_and_commit_and_never_counted(live_gateway):
    # A part that reached storage without a length-bound URL (one handed out before, or a store
    # that does not check the signed length): here written by the gateway's own client.
    live = live_gateway
    created = await live.open_session(6 * MIB, resumable_protocol="s3_multipart")
    session = await repository.get(live.gw.pool, live.workspace, created["upload_id"])
    await live.gw.storage.upload_part(session.object_key, session.multipart_upload_id, 1, os.urandom(12 * MIB))

    parts_url = live.uploads(f"/{created['upload_id']}/parts")
    async with live.http.get(parts_url, headers=created["headers"]) as response:
        assert response.status == 422
        listed = await problem(response)
    assert listed["code"] == "part_size_mismatch" and listed["parts_to_resend"] == [1]
    assert f"part 1 holds {12 * MIB} bytes, the plan {6 * MIB}" in listed["detail"]
    shown = await status_of(live, created)
    assert (shown["state"], shown["bytes_received"], shown["size_bytes"]) == ("created", 0, 6 * MIB)

    commit_url = live.uploads(f"/{created['upload_id']}/commit")
    async with live.http.post(commit_url, json={}, headers=live.user()) as response:
        assert response.status == 422 and (await problem(response))["parts_to_resend"] == [1]
    assert (await status_of(live, created))["state"] == "created"  # the upload is intact

    # The client sends the part again at its planned size; it replaces the stored one.
    body = os.urandom(6 * MIB)
    assert await put(live.http, (await presign(live, created, [1]))["parts"][0]["url"], body) == 200
    async with live.http.get(parts_url, headers=created["headers"]) as response:
        assert response.status == 200 and [p["size"] for p in (await response.json())["parts"]] == [6 * MIB]
    async with live.http.post(commit_url, json={}, headers=live.user()) as response:
        assert response.status == 202, await response.text()  # no verifier runs here: still verifying
