"""The README's consumer example really reads `asset.created` from a real NATS server."""

import asyncio
import importlib.util
import logging
import uuid
from pathlib import Path

import nats
import pytest
from nats.js.errors import BadRequestError

from rawdrive_contracts import ASSETS_STREAM, AssetCreated, CloudEvent, encode, new_event, subject_for

EXAMPLE = Path(__file__).parents[1] / "examples" / "consume_asset_created.py"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

pytestmark = pytest.mark.servers


def _load_example():
    spec = importlib.util.spec_from_file_location("consume_asset_created", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _asset_created(workspace_id: str) -> CloudEvent[AssetCreated]:
    asset_id = f"as_{uuid.uuid4().hex[:12]}"
    asset = AssetCreated(
        workspace_id=workspace_id, asset_id=asset_id, upload_id="up_example", library_id="lib_1",
        file_name="IMG_0001.HEIC", mime_type="image/heic", size_bytes=2_481_337, sha256=SHA, kind="photo",
        object_key=f"{workspace_id}/{asset_id}/original", storage_profile_ref="sp_r2_default",
    )
    return new_event(asset, source="//rawdrive/media-processor")


def _workspace() -> str:
    # The server may be shared with other tests (and reruns): a unique workspace keeps events apart.
    return f"ws_{uuid.uuid4().hex[:12]}"


async def _jetstream(nats_url: str):
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        await js.add_stream(name=ASSETS_STREAM.name, subjects=list(ASSETS_STREAM.subjects))
    except BadRequestError:
        pass  # already created, by the pipeline or another test
    return nc, js


async def _publish(js, event: CloudEvent[AssetCreated]):
    return await js.publish(subject_for(event.data), encode(event), headers={"Nats-Msg-Id": event.id})


async def test_example_consumer_decodes_a_published_asset_created_and_acks_it(nats_url):
    workspace_id = _workspace()
    event = _asset_created(workspace_id)
    nc, js = await _jetstream(nats_url)
    try:
        first = await _publish(js, event)
        again = await _publish(js, event)
        assert not first.duplicate and again.duplicate  # the event id deduplicates

        received: list[CloudEvent[AssetCreated]] = []

        async def handle(event: CloudEvent[AssetCreated]) -> None:
            received.append(event)

        durable = f"example-{workspace_id}"
        await _load_example().consume(nats_url, handle, durable=durable, workspace_id=workspace_id, max_messages=1)

        assert [e.id for e in received] == [event.id]
        assert received[0].data == event.data
        info = await js.consumer_info(ASSETS_STREAM.name, durable)
        assert (info.num_ack_pending, info.num_pending) == (0, 0)  # acked, and nothing else waiting
    finally:
        await nc.close()


@pytest.mark.parametrize("fetch_timeout_s", [0.1, 1.0])
async def test_example_consumer_waits_through_idle_fetches_and_stops_cleanly(nats_url, caplog, fetch_timeout_s):
    # A long run is mostly idle fetches. nats-py ends one either with its own TimeoutError or with
    # a plain asyncio.TimeoutError, and leaves replies behind that made the example's drain() wait
    # 30 s and log DrainTimeoutError on the way out: several idle timeouts before every event.
    workspace_id = _workspace()
    events = [_asset_created(workspace_id) for _ in range(3)]
    nc, js = await _jetstream(nats_url)
    received: list[str] = []

    async def handle(event: CloudEvent[AssetCreated]) -> None:
        received.append(event.id)

    async def publish_after_idle_fetches() -> None:
        for event in events:
            await asyncio.sleep(4 * fetch_timeout_s)
            await _publish(js, event)

    durable = f"example-{workspace_id}"
    try:
        with caplog.at_level(logging.WARNING, logger="nats"):
            publisher = asyncio.create_task(publish_after_idle_fetches())
            await _load_example().consume(
                nats_url, handle, durable=durable, workspace_id=workspace_id, max_messages=len(events),
                batch=10, fetch_timeout_s=fetch_timeout_s,
            )
            await publisher

        assert received == [e.id for e in events]
        info = await js.consumer_info(ASSETS_STREAM.name, durable)
        assert (info.num_ack_pending, info.num_pending) == (0, 0)  # the last ack went out before close
        assert [(r.getMessage(), r.exc_info and repr(r.exc_info[1])) for r in caplog.records if r.name.startswith("nats")] == []
    finally:
        await nc.close()


async def test_example_consumer_new_only_skips_what_the_stream_already_holds(nats_url):
    workspace_id = _workspace()
    before, after = _asset_created(workspace_id), _asset_created(workspace_id)
    nc, js = await _jetstream(nats_url)
    received: list[str] = []

    async def handle(event: CloudEvent[AssetCreated]) -> None:
        received.append(event.id)

    async def publish_once_consuming() -> None:
        # The durable exists once the consumer listens; only then is `after` new to it.
        while True:
            try:
                await js.consumer_info(ASSETS_STREAM.name, durable)
                break
            except nats.js.errors.NotFoundError:
                await asyncio.sleep(0.05)
        await _publish(js, after)

    durable = f"example-new-{workspace_id}"
    try:
        await _publish(js, before)
        publisher = asyncio.create_task(publish_once_consuming())
        await _load_example().consume(
            nats_url, handle, durable=durable, workspace_id=workspace_id, max_messages=1, fetch_timeout_s=0.5,
            new_only=True,
        )
        await publisher
        assert received == [after.id]

        # Without new_only, a new durable replays the stream from its start.
        replayed: list[str] = []

        async def replay(event: CloudEvent[AssetCreated]) -> None:
            replayed.append(event.id)

        await _load_example().consume(
            nats_url, replay, durable=f"example-all-{workspace_id}", workspace_id=workspace_id, max_messages=2,
            fetch_timeout_s=0.5,
        )
        assert replayed == [before.id, after.id]
    finally:
        await nc.close()
