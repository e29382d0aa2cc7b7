"""Storage.iter_chunks against a stand-in S3 server that misbehaves on purpose.

The stand-in answers every request with a 200 and a Content-Length, then sends only what a
test tells it to, so a test can cut the body short or watch for the client hanging up.
"""

import asyncio
import contextlib
import os

import pytest

from rawdrive_devkit.devstack.servers import loopback_endpoint_policy
from rawdrive_platform.config import Secret
from rawdrive_platform.storage import Storage, StorageProfile, StorageUnavailable

MiB = 1024 * 1024


class StandInS3:
    """Answers one GET: headers claiming `length` bytes, then `body`, then `then` happens."""

    def __init__(self, length: int, body: bytes, then: str):
        self.length, self.body, self.then = length, body, then
        self.client_hung_up = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> "StandInS3":
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            + f"Content-Length: {self.length}\r\n\r\n".encode()
            + self.body
        )
        await writer.drain()
        if self.then == "close":  # the connection drops mid-body
            writer.close()
            return
        # "wait": keep the connection open, sending nothing more, until the client leaves
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        self.client_hung_up.set()
        writer.close()


async def open_storage(port: int) -> Storage:
    return await Storage.open(
        StorageProfile(
            profile_id="stand-in", provider="byos", bucket="bucket", endpoint=f"http://127.0.0.1:{port}",
            region="us-east-1", access_key_id="id", secret_access_key=Secret("secret"),
            endpoint_policy=loopback_endpoint_policy(f"http://127.0.0.1:{port}"),
        )
    )


async def test_a_body_cut_short_is_storage_unavailable():
    async with StandInS3(length=3 * MiB, body=os.urandom(MiB + 5), then="close") as server:
        storage = await open_storage(server.port)
        try:
            with pytest.raises(StorageUnavailable):
                [piece async for piece in storage.iter_chunks("some/key", chunk_size=MiB)]
        finally:
            await storage.close()


async def test_leaving_early_hangs_up_instead_of_reading_the_rest():
    # The media processor stops after the first piece of a mislabelled file: the rest of the
    # object (here: bytes that never come) must not be read. The read-ahead piece is sent.
    async with StandInS3(length=64 * MiB, body=os.urandom(2 * MiB), then="wait") as server:
        storage = await open_storage(server.port)
        try:
            async with contextlib.aclosing(storage.iter_chunks("some/key", chunk_size=MiB)) as pieces:
                first = await anext(pieces)
            assert len(first) == MiB
            # Not a timing assertion: only keeps a regression (draining) from hanging the suite.
            await asyncio.wait_for(server.client_hung_up.wait(), timeout=60)
        finally:
            await storage.close()
