"""Small helpers the services' tests share: the events a service under test has announced, and
the test S3 server as the managed storage profile."""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext

from rawdrive_contracts import CloudEvent, decode
from rawdrive_devkit.devstack.servers import S3Connection
from rawdrive_platform.config import Secret
from rawdrive_platform.storage import StorageProfile


async def stored_events(js: JetStreamContext, *subjects: str, quiet_s: float = 0.3) -> list[CloudEvent[Any]]:
    """Every event stored so far under each subject (wildcards allowed), read with an ordered
    consumer until none more comes within `quiet_s`."""
    found = []
    for subject in subjects:
        sub = await js.subscribe(subject, ordered_consumer=True)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=quiet_s)
                except Exception:  # nats' TimeoutError: nothing more stored
                    break
                found.append(decode(msg.data))
        finally:
            await sub.unsubscribe()
    return found


def managed_profile(connection: S3Connection) -> StorageProfile:
    """The test S3 server's bucket as the managed storage profile, as a service's settings give it."""
    return StorageProfile(
        profile_id="managed",
        provider="r2",
        endpoint=connection.endpoint,
        region=connection.region,
        bucket=connection.bucket,
        access_key_id=connection.access_key_id,
        secret_access_key=Secret(connection.secret_access_key),
    )
