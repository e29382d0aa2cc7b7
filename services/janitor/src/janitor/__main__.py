"""python -m janitor: the service (wiring only), or `python -m janitor sweep [--dry-run]`, one
pass of every job printed as JSON (its events go out through the service's outbox relay)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from importlib.resources import files

import asyncpg
import msgspec

from janitor import tracking
from janitor.handlers import ASSET_EVENTS, UPLOAD_EVENTS, Dependencies, dispatch
from janitor.settings import Settings
from janitor.sweeps import Janitor, Lease, SweepTarget, TargetSource
from rawdrive_platform import bus, db, keys
from rawdrive_platform.config import ConfigError, load_settings
from rawdrive_platform.profiles import ProfileResolver, ProfileVersions, profile_bucket, profile_resolver
from rawdrive_platform.service import Runtime, run_service
from rawdrive_platform.storage import StorageRegistry
from rawdrive_platform.telemetry import setup_json_logging

MIGRATIONS = files("janitor") / "migrations"
# Every workspace's objects in the managed bucket (the root of keys.py's layout).
MANAGED_SWEEP_PREFIX = "workspaces/"


def sweep_targets(profiles: ProfileResolver, referenced: Callable[[], Awaitable[set[str]]]) -> TargetSource:
    """The managed bucket's workspaces, and each workspace's own bucket only under
    `keys.workspace_prefix(workspace, profile.key_prefix)`: nothing outside it is ours. Only
    profile versions an open session or a live asset still names are swept: a replaced or
    abandoned endpoint is not contacted again."""

    async def targets() -> list[SweepTarget]:
        found = [SweepTarget(storage=profiles.managed, prefix=MANAGED_SWEEP_PREFIX)]
        seen = set()
        live = await referenced()
        for workspace_id, profile in await profiles.published():
            if profile.profile_id not in live:
                continue
            prefix = keys.workspace_prefix(workspace_id, profile.key_prefix)
            # Every saved version gets a ref; versions on one bucket and prefix are one target.
            scope = (profile.endpoint, profile.bucket, prefix)
            if scope not in seen:
                seen.add(scope)
                found.append(SweepTarget(storage=await profiles(profile.profile_id), prefix=prefix))
        return found

    return targets


def build_janitor(
    settings: Settings, pool: asyncpg.Pool, profiles: ProfileResolver, versions: ProfileVersions, *, dry_run: bool
) -> Janitor:
    return Janitor(
        pool=pool,
        storage_for=profiles,
        sweep_targets=sweep_targets(profiles, partial(tracking.referenced_profile_refs, pool)),
        lease=Lease(settings.database_url),
        thresholds=settings.thresholds(),
        schedule=settings.schedule(),
        delete_orphans=settings.janitor_delete_orphans,
        dry_run=dry_run,
        profile_versions=versions,
    )


async def main(runtime: Runtime) -> None:
    settings = runtime.settings
    assert isinstance(settings, Settings)
    js = await runtime.jetstream()
    pool = await runtime.database("janitor", MIGRATIONS)
    storage_for = await runtime.storage_resolver()
    deps = Dependencies(pool=pool, storage_for=storage_for, dry_run=settings.janitor_dry_run)
    runtime.consume(js, UPLOAD_EVENTS, partial(dispatch, deps=deps))
    runtime.consume(js, ASSET_EVENTS, partial(dispatch, deps=deps))
    versions = ProfileVersions(js, await profile_bucket(js, replicas=settings.stream_replicas))
    janitor = build_janitor(settings, pool, storage_for, versions, dry_run=settings.janitor_dry_run)
    runtime.start(janitor.run, name="janitor-schedule")
    runtime.relay(pool, js)
    await runtime.serve_health()


async def sweep_once(settings: Settings, *, dry_run: bool) -> int:
    await db.migrate(settings.database_url, "janitor", MIGRATIONS)
    pool = await db.create_pool(settings.database_url, "janitor", max_size=2)
    # NATS only for the profiles KV: BYOS sessions resolve here exactly as in the service.
    nc = await bus.connect(settings, name="janitor-sweep")  # as the janitor (RAWDRIVE_NATS_USER...)
    try:
        async with StorageRegistry() as storages:
            js = nc.jetstream()
            storage_for = await profile_resolver(js, settings, storages)
            versions = ProfileVersions(js, await profile_bucket(js, replicas=settings.stream_replicas))
            janitor = build_janitor(settings, pool, storage_for, versions, dry_run=dry_run)
            try:
                report = await janitor.run_once()
            finally:
                await janitor.lease.close()
    finally:
        await nc.close()
        await pool.close()
    if report is None:
        sys.stderr.write("janitor: another janitor holds the lease; nothing done\n")
        return 3
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(report)).decode() + "\n")
    return 0


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m janitor sweep", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="print what would go; change nothing")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(Settings)
    except ConfigError as exc:
        sys.stderr.write(f"janitor: {exc}\n")
        return 2
    setup_json_logging("janitor", settings.log_level)
    return asyncio.run(sweep_once(settings, dry_run=args.dry_run or settings.janitor_dry_run))


if __name__ == "__main__":
    if sys.argv[1:2] == ["sweep"]:
        sys.exit(cli(sys.argv[2:]))
    run_service("janitor", Settings, main)
