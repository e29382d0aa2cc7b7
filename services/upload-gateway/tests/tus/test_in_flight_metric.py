"""rawdrive_gateway_uploads_in_flight, which the gateway's ScaledObject scales on, counts the tus
bodies being received right now: up while a PATCH streams, down when it ends however it ends."""

import asyncio
import os

from upload_gateway.metrics import UPLOADS_IN_FLIGHT

from .conftest import OCTETS, TUS, MiB, held_body, tus_url


def in_flight() -> float:
    return UPLOADS_IN_FLIGHT._value.get()


async def test_a_streaming_patch_counts_while_its_body_arrives_and_a_refused_one_leaves_no_count(gateway, http):
    data = os.urandom(2 * MiB)
    session = gateway.session(len(data))
    url = tus_url(await gateway.instance(), session)
    created = await http.post(url, headers=TUS | {"Upload-Length": str(len(data))})
    assert created.status == 201
    before = in_flight()
    started, release = asyncio.Event(), asyncio.Event()
    headers = OCTETS | {"Upload-Offset": "0", "Content-Length": str(len(data))}
    slow = asyncio.create_task(http.patch(url, data=held_body(data, started, release), headers=headers))
    await started.wait()
    for _ in range(50):  # the server reads the first MiB shortly after the client sent it
        if in_flight() == before + 1:
            break
        await asyncio.sleep(0.05)
    assert in_flight() == before + 1

    # Refused (wrong offset, or the upload is locked by the first): the count is back where it was.
    refused = await http.patch(url, data=b"x", headers=OCTETS | {"Upload-Offset": "5"})
    assert refused.status in (409, 423)
    assert in_flight() == before + 1

    release.set()
    assert (await slow).status == 204
    assert in_flight() == before
