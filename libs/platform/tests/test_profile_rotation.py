"""Master key rotation against a real NATS KV: reseal every published profile, then the old key
can go. The pure parts (keyring, reseal_record) are in test_profiles.py."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue

from rawdrive_devkit.devstack.servers import NatsServer
from rawdrive_devkit.testing import run_module
from rawdrive_platform import bus
from rawdrive_platform.config import Secret
from rawdrive_platform.profiles import (
    MasterKey,
    ProfileRecord,
    new_profile_ref,
    open_profile,
    profile_bucket,
    reseal_profiles,
    seal_profile,
)
from rawdrive_platform.storage import StorageProfile

NOW = datetime(2026, 11, 28, tzinfo=UTC)


def byos(workspace_id: str) -> StorageProfile:
    return StorageProfile(
        profile_id=new_profile_ref(workspace_id), provider="byos", bucket=f"bucket-{workspace_id}",
        endpoint="https://s3.example.com", region="eu-west-1", key_prefix=f"{workspace_id}/",
        access_key_id="AKIAABCDEFGHIJKLWXYZ", secret_access_key=Secret(f"secret-of-{workspace_id}"),
    )  # fmt: skip


async def publish(kv: KeyValue, profile: StorageProfile, key: MasterKey) -> None:
    record = seal_profile(profile, profile.profile_id.split("-")[1], key, NOW)
    await kv.create(record.ref, msgspec.json.encode(record))


async def read(kv: KeyValue, ref: str) -> ProfileRecord:
    return msgspec.json.decode((await kv.get(ref)).value or b"", type=ProfileRecord)


@pytest.fixture
async def kv(nats_url: str) -> AsyncIterator[KeyValue]:
    """A KV bucket of this test's own, so other tests' profiles (other keys) stay out of it."""
    nc = await bus.connect(nats_url, name="test-rotation")
    js = nc.jetstream()
    bucket = f"test_profiles_{uuid.uuid4().hex[:12]}"
    try:
        yield await js.create_key_value(bucket=bucket, history=1)
    finally:
        await js.delete_key_value(bucket)
        await nc.close()


async def test_reseal_moves_old_records_to_the_new_key_reports_strangers_and_a_rerun_changes_nothing(kv):
    old, new, stranger = (os.urandom(32) for _ in range(3))
    under_old, under_new, foreign = byos("wsold"), byos("wsnew"), byos("wsforeign")
    await publish(kv, under_old, MasterKey(old))
    await publish(kv, under_new, MasterKey(new))
    await publish(kv, foreign, MasterKey(stranger))
    rotating = MasterKey(new, previous=[old])

    report = await reseal_profiles(kv, rotating)

    assert report.resealed == [under_old.profile_id]
    assert report.current == 1
    assert report.unopened == [foreign.profile_id]
    # The new key alone now opens both, to the very profiles published.
    assert open_profile(await read(kv, under_old.profile_id), MasterKey(new)) == under_old
    assert open_profile(await read(kv, under_new.profile_id), MasterKey(new)) == under_new
    again = await reseal_profiles(kv, rotating)
    assert (again.resealed, again.current, again.unopened) == ([], 2, [foreign.profile_id])


class RacingKeyValue:
    """The real bucket, but another reseal rewrites the record just before our first update."""

    def __init__(self, kv: KeyValue, rival: MasterKey) -> None:
        self._kv = kv
        self._rival = rival
        self.raced = False

    async def status(self) -> KeyValue.BucketStatus:
        return await self._kv.status()

    async def keys(self) -> list[str]:
        return await self._kv.keys()

    async def get(self, key: str) -> KeyValue.Entry:
        return await self._kv.get(key)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        if not self.raced:
            self.raced = True
            current = await self._kv.get(key)
            record = msgspec.json.decode(current.value or b"", type=ProfileRecord)
            rival = msgspec.structs.replace(
                record, sealed_credentials=self._rival.seal(self._rival.open(record.sealed_credentials, key.encode()), key.encode())
            )
            await self._kv.update(key, msgspec.json.encode(rival), last=current.revision)
        return await self._kv.update(key, value, last=last)


async def test_a_record_rewritten_by_a_concurrent_reseal_is_read_again_not_overwritten_blindly(kv):
    old, new = os.urandom(32), os.urandom(32)
    profile = byos("wsrace")
    await publish(kv, profile, MasterKey(old))
    racing = RacingKeyValue(kv, MasterKey(new, previous=[old]))

    report = await reseal_profiles(racing, MasterKey(new, previous=[old]))  # type: ignore[arg-type]

    assert racing.raced
    # Our update lost the race; the record read again was already under the new key.
    assert (report.resealed, report.current) == ([], 1)
    assert open_profile(await read(kv, profile.profile_id), MasterKey(new)) == profile


class EarlyKeyValue(RacingKeyValue):
    """The real bucket, but its first listing ends before any key arrived, as nats-py's
    `keys()` sometimes does (its watcher's end marker overtakes the first key)."""

    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv, rival=MasterKey(os.urandom(32)))
        self.raced = True  # no rival writes here
        self.listings = 0

    async def keys(self) -> list[str]:
        self.listings += 1
        if self.listings == 1:
            raise NoKeysError
        return await super().keys()


async def test_a_listing_that_ends_before_the_first_key_is_asked_again_not_taken_for_empty(kv):
    old, new = os.urandom(32), os.urandom(32)
    profile = byos("wsearly")
    await publish(kv, profile, MasterKey(old))
    early = EarlyKeyValue(kv)

    report = await reseal_profiles(early, MasterKey(new, previous=[old]))  # type: ignore[arg-type]

    assert early.listings == 2
    assert report.resealed == [profile.profile_id]


# -- the provisioning command, as the rotation runbook uses it ----------------------------------


def run_provision(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_module("rawdrive_platform.provision", *args, **env)


@pytest.mark.servers  # starts a NATS of its own
async def test_provision_reseal_profiles_rotates_the_key_and_fails_while_a_profile_would_be_lost(tmp_path: Path):
    # A NATS of its own: the command walks the whole shared profile bucket.
    nats = NatsServer(tmp_path / "nats")
    nats.start()
    try:
        nc = await bus.connect(nats.url, name="test-provision-reseal")
        try:
            kv = await profile_bucket(nc.jetstream(), replicas=1)
            old, new = MasterKey.generate(), MasterKey.generate()
            profile = byos("wsrot")
            await publish(kv, profile, MasterKey.from_secret(Secret(old)))
            env = {"RAWDRIVE_NATS_URL": nats.url, "RAWDRIVE_STORAGE_MASTER_KEY": new,
                   "RAWDRIVE_STORAGE_PREVIOUS_MASTER_KEYS": old}

            done = run_provision("--reseal-profiles", **env)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["profiles"] == {"resealed": [profile.profile_id], "current": 0, "unopened": []}
            assert open_profile(await read(kv, profile.profile_id), MasterKey.from_secret(Secret(new))) == profile
            assert old not in done.stdout + done.stderr and new not in done.stdout + done.stderr

            # A key that is not configured sealed this one: dropping keys now would lose it.
            stranger = byos("wslost")
            await publish(kv, stranger, MasterKey.from_secret(Secret(MasterKey.generate())))
            refused = run_provision("--reseal-profiles", **env)
            assert refused.returncode == 1
            assert json.loads(refused.stdout)["profiles"]["unopened"] == [stranger.profile_id]
        finally:
            await nc.close()
    finally:
        nats.stop()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "RAWDRIVE_STORAGE_MASTER_KEY is required with --reseal-profiles"),
        ({"RAWDRIVE_STORAGE_PREVIOUS_MASTER_KEYS": MasterKey.generate()}, "needs RAWDRIVE_STORAGE_MASTER_KEY"),
        ({"RAWDRIVE_STORAGE_MASTER_KEY": MasterKey.generate(), "RAWDRIVE_STORAGE_PREVIOUS_MASTER_KEYS": "c2hvcnQ="},
         "RAWDRIVE_STORAGE_PREVIOUS_MASTER_KEYS: a key must be 32 bytes"),
    ],
)
def test_reseal_without_a_usable_key_exits_2_naming_the_variable(env, message):
    result = run_provision("--reseal-profiles", **env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "c2hvcnQ=" not in result.stderr


def test_a_service_with_a_malformed_previous_key_refuses_to_start_naming_it():
    result = run_module(
        "janitor",
        RAWDRIVE_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none", RAWDRIVE_NATS_URL="nats://127.0.0.1:1",
        RAWDRIVE_S3_BUCKET="b", RAWDRIVE_S3_ACCESS_KEY_ID="a", RAWDRIVE_S3_SECRET_ACCESS_KEY="s",
        RAWDRIVE_STORAGE_MASTER_KEY=MasterKey.generate(), RAWDRIVE_STORAGE_PREVIOUS_MASTER_KEYS="not base64!",
    )  # fmt: skip
    assert result.returncode == 2
    assert "RAWDRIVE_STORAGE_PREVIOUS_MASTER_KEYS is not valid base64" in result.stderr
    assert "not base64!" not in result.stderr
