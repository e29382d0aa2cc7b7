"""Read `asset.created` from RawDrive: a durable pull consumer on the RAWDRIVE_ASSETS stream.

    pip install nats-py ./libs/contracts
    python consume_asset_created.py --nats nats://127.0.0.1:4222 --durable my-indexer

A new durable consumer starts at the beginning of the stream (every asset still kept there) unless
created with --new-only; an existing one always resumes where it left off.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy

from rawdrive_contracts import (
    ASSETS_STREAM,
    AssetCreated,
    CloudEvent,
    InvalidEvent,
    UnknownEventType,
    decode_as,
    subject_filter,
)

log = logging.getLogger("consume_asset_created")


async def consume(
    nats_url: str,
    handle: Callable[[CloudEvent[AssetCreated]], Awaitable[None]],
    *,
    durable: str = "asset-created-example",
    workspace_id: str = "*",
    max_messages: int | None = None,
    batch: int = 10,
    fetch_timeout_s: float = 5.0,
    new_only: bool = False,
) -> None:
    """Call `handle` for every new asset, acking each one only once `handle` has returned.

    The durable consumer remembers its position on the server, so a restart resumes where the
    last acked message left off. Creating it, `new_only` skips what the stream already holds
    (it has no effect on a durable that exists). Stops after `max_messages` handled messages
    (None: never).
    """
    nc = await nats.connect(nats_url)
    sub = None
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            subject_filter(AssetCreated.spec, workspace_id),  # rawdrive.asset.created.<workspace|*>
            durable=durable,
            stream=ASSETS_STREAM.name,
            config=ConsumerConfig(
                ack_wait=60, max_deliver=10, deliver_policy=DeliverPolicy.NEW if new_only else DeliverPolicy.ALL
            ),
        )
        handled = 0
        while max_messages is None or handled < max_messages:
            wanted = batch if max_messages is None else min(batch, max_messages - handled)
            try:
                messages = await sub.fetch(wanted, timeout=fetch_timeout_s)
            except asyncio.TimeoutError:
                # Nothing new yet. nats-py says so with nats.errors.TimeoutError, or with a plain
                # asyncio.TimeoutError when the server's expiry of the pull beats the client's
                # timer: catch the base class of both.
                continue
            for msg in messages:
                try:
                    event = decode_as(msg.data, AssetCreated)
                except (UnknownEventType, InvalidEvent) as exc:
                    # A newer version published beside this one, or garbage: never ours to process.
                    log.warning("skipping message %s: %s", msg.metadata.sequence.stream, exc)
                    await msg.term()
                    continue
                try:
                    await handle(event)
                except Exception:
                    log.exception("handling asset %s failed; redelivering later", event.data.asset_id)
                    await msg.nak(delay=30)
                    continue
                await msg.ack()  # only now: a crash before this line means the event comes back
                handled += 1
    finally:
        if sub is not None:
            # Before drain(): nats-py's fetch takes some replies (to pulls that expired) off the
            # subscription's queue without marking them done, and drain() would wait for them
            # until it gives up (DrainTimeoutError). Nothing is lost: whatever was fetched and
            # not acked is redelivered after ack_wait.
            await sub.unsubscribe()
        await nc.drain()  # sends the acks still buffered, then closes


async def _print(event: CloudEvent[AssetCreated]) -> None:
    asset = event.data
    print(f"{event.time:%Y-%m-%d %H:%M:%S} {asset.workspace_id} {asset.asset_id} {asset.kind} {asset.file_name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--durable", default="asset-created-example")
    parser.add_argument("--workspace", default="*", help="one workspace id, or * for all")
    parser.add_argument("--new-only", action="store_true", help="a new durable skips the assets already in the stream")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    asyncio.run(
        consume(args.nats, _print, durable=args.durable, workspace_id=args.workspace, new_only=args.new_only)
    )


if __name__ == "__main__":
    main()
