"""The README's consumer example really reads `asset.created` from a real NATS server."""

import importlib.util
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


async def test_example_consumer_decodes_a_published_asset_created_and_acks_it(nats_url):
    # The server may be shared with other tests (and reruns): unique ids keep this test's event its own.
    workspace_id, asset_id = f"ws_{uuid.uuid4().hex[:12]}", f"as_{uuid.uuid4().hex[:12]}"
    asset = AssetCreated(
        workspace_id=workspace_id, asset_id=asset_id, upload_id="up_example", library_id="lib_1",
        file_name="IMG_0001.HEIC", mime_type="image/heic", size_bytes=2_481_337, sha256=SHA, kind="photo",
        object_key=f"{workspace_id}/{asset_id}/original", storage_profile_ref="sp_r2_default",
    )
    event = new_event(asset, source="//rawdrive/media-processor")

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        try:
            await js.add_stream(name=ASSETS_STREAM.name, subjects=list(ASSETS_STREAM.subjects))
        except BadRequestError:
            pass  # already created, by the pipeline or another test
        first = await js.publish(subject_for(asset), encode(event), headers={"Nats-Msg-Id": event.id})
        again = await js.publish(subject_for(asset), encode(event), headers={"Nats-Msg-Id": event.id})
        assert not first.duplicate and again.duplicate  # the event id deduplicates

        received: list[CloudEvent[AssetCreated]] = []

        async def handle(event: CloudEvent[AssetCreated]) -> None:
            received.append(event)

        durable = f"example-{workspace_id}"
        await _load_example().consume(nats_url, handle, durable=durable, workspace_id=workspace_id, max_messages=1)

        assert [e.id for e in received] == [event.id]
        assert received[0].data == asset
        info = await js.consumer_info(ASSETS_STREAM.name, durable)
        assert (info.num_ack_pending, info.num_pending) == (0, 0)  # acked, and nothing else waiting
    finally:
        await nc.close()

