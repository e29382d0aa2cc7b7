"""python -m rawdrive_platform.provision: create/update the JetStream streams and apply service
migrations once, before a rollout (the Kubernetes provisioning Job runs this).

    python -m rawdrive_platform.provision --streams --migrate gateway=upload_gateway
    python -m rawdrive_platform.provision --consumers commit_verifier.__main__:CONSUMER \
        --migrate verifier=commit_verifier

`--streams` creates or updates every stream (RAWDRIVE_STREAM_REPLICAS, RAWDRIVE_STREAM_MAX_BYTES)
and the storage-profile KV bucket: the services may not (rawdrive_platform.busauth). `--consumers MODULE:NAME` creates the durable consumer NAME names
in MODULE (a ConsumerSpec, or a function returning one when called without arguments) if it does
not exist yet; an existing one is left as its service configured it. So a consumer exists before
its service first starts: KEDA reads its lag, not "no consumer" (which it would count as the
whole stream). `--migrate SCHEMA=PACKAGE` applies the platform's and `files(PACKAGE) /
"migrations"` to SCHEMA, exactly as the service does at start (under the same advisory lock), so
running it first only moves a failing migration out of the rollout. Reads RAWDRIVE_NATS_URL with
the provisioning identity's RAWDRIVE_NATS_USER and RAWDRIVE_NATS_PASSWORD (or RAWDRIVE_NATS_CREDS;
rawdrive_platform.busauth), RAWDRIVE_CONSUMER_ACK_WAIT_S and RAWDRIVE_DATABASE_URL (required with
--migrate).

`--reseal-profiles` is the middle step of a master key rotation (rawdrive_platform.profiles):
every published BYOS profile is sealed anew under RAWDRIVE_STORAGE_MASTER_KEY, opened with it or
one of RAWDRIVE_STORAGE_PREVIOUS_MASTER_KEYS. A profile no key opens fails the run (status 1),
since dropping a key then would lose it.

Prints one JSON line of what it did.
Exit status: 0 done, 2 bad arguments or configuration, 1 anything else failed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import logging
import sys
from collections.abc import Sequence
from importlib.resources import files
from typing import Annotated

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from rawdrive_platform import bus, db
from rawdrive_platform.config import (
    DEFAULT_STREAM_MAX_BYTES,
    ConfigError,
    LogLevel,
    NatsSettings,
    Secret,
    load_settings,
)
from rawdrive_platform.profiles import (
    PROFILES_BUCKET,
    MasterKey,
    ResealReport,
    master_key,
    profile_bucket,
    reseal_profiles,
)
from rawdrive_platform.telemetry import setup_json_logging

log = logging.getLogger("rawdrive_platform.provision")


class Settings(NatsSettings, kw_only=True, frozen=True):
    database_url: str | None = None
    stream_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    stream_max_bytes: Annotated[int, msgspec.Meta(gt=0)] = DEFAULT_STREAM_MAX_BYTES
    consumer_ack_wait_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    log_level: LogLevel = "INFO"
    storage_master_key: Secret | None = None
    storage_previous_master_keys: Secret | None = None


class Target(msgspec.Struct, frozen=True):
    schema: str
    package: str


class Report(msgspec.Struct):
    streams: list[str] = msgspec.field(default_factory=list)
    kv_buckets: list[str] = msgspec.field(default_factory=list)
    # Durable consumers created by this run, and those that already existed (left as they are).
    consumers: dict[str, list[str]] = msgspec.field(default_factory=dict)
    migrations: dict[str, list[str]] = msgspec.field(default_factory=dict)
    profiles: ResealReport | None = None


def parse_target(text: str) -> Target:
    schema, sep, package = text.partition("=")
    if not sep or not schema or not package:
        raise argparse.ArgumentTypeError(f"expected SCHEMA=PACKAGE, got {text!r}")
    return Target(schema, package)


def parse_consumer(text: str) -> bus.ConsumerSpec:
    """MODULE:NAME -> the ConsumerSpec it names (or that calling it without arguments returns)."""
    module, sep, name = text.partition(":")
    if not sep or not module or not name:
        raise argparse.ArgumentTypeError(f"expected MODULE:NAME, got {text!r}")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise argparse.ArgumentTypeError(f"{text}: {exc}") from None
    spec = found() if inspect.isfunction(found) else found
    if not isinstance(spec, bus.ConsumerSpec):
        raise argparse.ArgumentTypeError(f"{text} is not a ConsumerSpec")
    return spec


async def create_missing_consumer(js: JetStreamContext, spec: bus.ConsumerSpec) -> bool:
    """Create the durable if it does not exist (True); an existing one keeps its service's settings."""
    try:
        await js.consumer_info(spec.stream, spec.durable)
        return False
    except NotFoundError:
        await bus.ensure_consumer(js, spec)
        return True


def migrations_of(package: str):
    importlib.import_module(package)  # a clear ModuleNotFoundError when the image lacks it
    return files(package) / "migrations"


async def provision(
    settings: Settings,
    *,
    streams: bool,
    targets: list[Target],
    consumers: Sequence[bus.ConsumerSpec] = (),
    reseal_with: MasterKey | None = None,
) -> Report:
    report = Report()
    if streams or consumers or reseal_with is not None:
        nc = await bus.connect(settings, name="rawdrive-provision")
        try:
            js = nc.jetstream()
            if streams:
                await bus.provision(js, bus.StreamSettings(replicas=settings.stream_replicas,
                                                           max_bytes=settings.stream_max_bytes))
                report.streams = [spec.name for spec in (*bus.STREAMS, bus.DEADLETTER_STREAM)]
                # The services may read the profile bucket, never create it (busauth).
                await profile_bucket(js, replicas=settings.stream_replicas)
                report.kv_buckets = [PROFILES_BUCKET]
                log.info("streams provisioned", extra={"streams": report.streams, "replicas": settings.stream_replicas,
                                                       "max_bytes": settings.stream_max_bytes})
            for spec in consumers:
                # The ack wait every service's Runtime gives its consumers.
                spec = msgspec.structs.replace(spec, ack_wait_s=settings.consumer_ack_wait_s)
                created = await create_missing_consumer(js, spec)
                report.consumers.setdefault("created" if created else "existing", []).append(spec.durable)
            if consumers:
                log.info("durable consumers provisioned", extra={"consumers": report.consumers})
            if reseal_with is not None:
                kv = await profile_bucket(js, replicas=settings.stream_replicas)
                report.profiles = await reseal_profiles(kv, reseal_with)
                log.info("storage profiles resealed", extra=msgspec.structs.asdict(report.profiles))
        finally:
            await nc.close()
    for target in targets:
        assert settings.database_url is not None
        applied = await db.migrate(settings.database_url, target.schema, migrations_of(target.package))
        report.migrations[target.schema] = applied
        log.info("migrations applied", extra={"schema": target.schema, "migrations": applied})
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rawdrive_platform.provision", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", action="store_true", help="create or update every stream")
    parser.add_argument("--consumers", metavar="MODULE:NAME", type=parse_consumer, action="append", default=[],
                        help="create the durable consumer MODULE.NAME describes, if missing (repeatable)")
    parser.add_argument("--migrate", metavar="SCHEMA=PACKAGE", type=parse_target, action="append", default=[],
                        help="apply PACKAGE's migrations to SCHEMA (repeatable)")
    parser.add_argument("--reseal-profiles", action="store_true",
                        help="seal every BYOS storage profile under the current master key")
    args = parser.parse_args(argv)
    if not (args.streams or args.consumers or args.migrate or args.reseal_profiles):
        parser.error("nothing to do: give --streams, --consumers, --migrate and/or --reseal-profiles")
    try:
        settings = load_settings(Settings)
        key = master_key(settings.storage_master_key, settings.storage_previous_master_keys)
        bus.auth_options(settings)
    except (ConfigError, ValueError) as exc:
        sys.stderr.write(f"provision: {exc}\n")
        return 2
    if args.migrate and settings.database_url is None:
        sys.stderr.write("provision: RAWDRIVE_DATABASE_URL is required with --migrate\n")
        return 2
    if args.reseal_profiles and key is None:
        sys.stderr.write("provision: RAWDRIVE_STORAGE_MASTER_KEY is required with --reseal-profiles\n")
        return 2
    setup_json_logging("provision", settings.log_level)
    try:
        report = asyncio.run(provision(
            settings, streams=args.streams, targets=args.migrate, consumers=args.consumers,
            reseal_with=key if args.reseal_profiles else None,
        ))
    except Exception:
        log.exception("provisioning failed")
        return 1
    sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    if report.profiles is not None and report.profiles.unopened:
        log.error("storage profiles that no configured master key opens: keep the key that sealed them",
                  extra={"refs": report.profiles.unopened})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
