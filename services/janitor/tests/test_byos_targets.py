"""The janitor sweeps each workspace's own bucket only under that workspace's prefix, found
through the same published profiles (JetStream KV, sealed with the master key) the gateway
writes. Real NATS and a second S3 server with its own credentials."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from janitor.__main__ import MANAGED_SWEEP_PREFIX, sweep_targets
from rawdrive_devkit.devstack.servers import loopback_endpoint_policy
from rawdrive_devkit.testkit import managed_profile
from rawdrive_platform import bus
from rawdrive_platform.config import Secret
from rawdrive_platform.profiles import MasterKey, ProfileResolver, new_profile_ref, profile_bucket
from rawdrive_platform.storage import StorageProfile, StorageRegistry

LOOPBACK = loopback_endpoint_policy("http://127.0.0.1:*")


def byos_profile(workspace: str, connection, key_prefix: str) -> StorageProfile:
    return StorageProfile(
        profile_id=new_profile_ref(workspace),
        provider="byos",
        bucket=connection.bucket,
        endpoint=connection.endpoint,
        region=connection.region,
        key_prefix=key_prefix,
        access_key_id=connection.access_key_id,
        secret_access_key=Secret(connection.secret_access_key),
        endpoint_policy=LOOPBACK,
    )


async def test_each_published_profile_is_swept_once_under_its_workspace_prefix(nats_url, s3_server, start_s3_server):
    customer = start_s3_server(bucket=f"cust{uuid.uuid4().hex[:8]}").connection
    nc = await bus.connect(nats_url, name="janitor-byos-test")
    key = MasterKey(b"m" * 32)
    try:
        kv = await profile_bucket(nc.jetstream(), replicas=1)
        async with StorageRegistry() as storages:
            managed = await storages.get(managed_profile(s3_server))
            publisher = ProfileResolver(managed, storages, kv, key, LOOPBACK)
            first, second = f"ws{uuid.uuid4().hex[:8]}", f"ws{uuid.uuid4().hex[:8]}"
            now = datetime.now(UTC)
            abandoned = f"ws{uuid.uuid4().hex[:8]}"
            # The first workspace saved its profile twice (two refs, one bucket and prefix).
            profiles = [
                (first, byos_profile(first, customer, f"tenants/{first}/")),
                (first, byos_profile(first, customer, f"tenants/{first}/")),
                (second, byos_profile(second, customer, f"{second}/media/")),
                (abandoned, byos_profile(abandoned, customer, f"{abandoned}/")),  # named by nothing
            ]
            for workspace, profile in profiles:
                await publisher.publish(profile, workspace, now)

            async def referenced() -> set[str]:  # what the janitor's tables name
                return {profile.profile_id for workspace, profile in profiles if workspace != abandoned}

            # Another process: a fresh resolver that knows only the KV bucket and the key.
            janitor_view = ProfileResolver(managed, storages, kv, key, LOOPBACK)
            targets = await sweep_targets(janitor_view, referenced)()
            prefixes = sorted(t.prefix for t in targets if t.storage is not managed)
            managed_targets = [t for t in targets if t.storage is managed]

            # Without the master key no customer bucket is opened, so none is swept.
            keyless = await sweep_targets(ProfileResolver(managed, storages, kv, None, LOOPBACK), referenced)()
    finally:
        await nc.close()
    assert [t.prefix for t in managed_targets] == [MANAGED_SWEEP_PREFIX]
    ours = [p for p in prefixes if first in p or second in p or abandoned in p]
    assert ours == sorted([f"tenants/{first}/workspaces/{first}/", f"{second}/media/workspaces/{second}/"])
    assert [t.prefix for t in keyless] == [MANAGED_SWEEP_PREFIX]
