"""Small helpers the services' and the end-to-end tests share: the events a service under test
has announced, the test S3 server as the managed storage profile, a janitor sweep with every age
at zero, and a workspace's dead letters."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from nats.js import JetStreamContext

from rawdrive_contracts import CloudEvent, decode
from rawdrive_devkit.devstack.servers import S3Connection
from rawdrive_devkit.testing import NatsIdentities
from rawdrive_platform import bus
from rawdrive_platform.config import Secret
from rawdrive_platform.deadletter import DeadLetter, list_dead_letters
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


def janitor_pass(env: dict[str, str], identities: NatsIdentities) -> dict:
    """One `janitor sweep` as the janitor's NATS identity over `env`'s database and bucket, with
    every age threshold at zero (orphans are reported, not deleted): multipart uploads a fault
    orphaned (created in S3 by a session whose database write then failed) are its to abort.
    Returns the sweep's JSON report."""
    overrides = {"RAWDRIVE_JANITOR_ORPHAN_MIN_AGE_HOURS": "0", "RAWDRIVE_JANITOR_MULTIPART_MIN_AGE_HOURS": "0",
                 **identities.env("janitor")}
    result = subprocess.run([sys.executable, "-m", "janitor", "sweep"], env={**env, **overrides},
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


async def dead_letters_of(nats_url: str, workspace: str) -> list[DeadLetter]:
    """The dead letters of one workspace's events (their subjects end with its id)."""
    nc = await bus.connect(nats_url, name="test-deadletters")
    try:
        letters = await list_dead_letters(nc.jetstream())
    finally:
        await nc.close()
    return [d for d in letters if d.subject and d.subject.endswith(f".{workspace}")]
