"""The bus has no open doors: a real nats-server (loopback) with the busauth table's users."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from pathlib import Path

import nats
import pytest
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError

from rawdrive_contracts import (
    ASSETS_STREAM,
    UPLOADS_STREAM,
    CloudEvent,
    CommitRefused,
    UploadRejected,
    UploadSessionCreated,
    UploadVerified,
    new_event,
)
from rawdrive_devkit.devstack.servers import NatsServer
from rawdrive_platform import bus, busauth, profiles
from rawdrive_platform.busauth import PROVISION, BusUsers
from rawdrive_platform.config import NatsSettings, Secret, load_settings

pytestmark = pytest.mark.servers  # starts a NATS of its own
NOW = datetime.now(timezone.utc)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    runner = NatsServer(Path(tmp_path_factory.mktemp("busauth")) / "nats", users=BusUsers.generate())
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()


def settings_of(server: NatsServer, user: str) -> NatsSettings:
    assert server.users is not None
    return NatsSettings(nats_url=server.url, nats_user=user, nats_password=Secret(server.users.passwords[user]))


@pytest.fixture
async def connect_as(server: NatsServer) -> AsyncIterator:
    opened = []

    async def connect(user: str):
        nc = await bus.connect(settings_of(server, user), name=f"test-{user}")
        opened.append(nc)
        return nc

    yield connect
    for nc in opened:
        await nc.close()


async def refused(caplog: pytest.LogCaptureFixture, needle: str, timeout_s: float = 3.0) -> bool:
    """bus.connect logs each permissions violation the server reports; wait for this one."""
    async with asyncio.timeout(timeout_s):
        while not any("permissions violation" in r.getMessage() and needle.lower() in r.getMessage().lower()
                      for r in caplog.records):
            await asyncio.sleep(0.05)
    return True


def verified(workspace: str) -> CloudEvent[UploadVerified]:
    return new_event(UploadVerified(
        workspace_id=workspace, upload_id=uuid.uuid4().hex, asset_id=uuid.uuid4().hex, library_id="lib1",
        file_name="a.jpg", mime_type="image/jpeg", size_bytes=3, sha256="0" * 64,
        storage_profile_ref="managed", object_key=f"workspaces/{workspace}/a.jpg", verified_at=NOW,
    ), source="test")


# ---------------------------------------------------------------------------------------------
# The table itself


def test_every_event_type_is_published_by_one_identity_and_names_agree_with_their_owners() -> None:
    from rawdrive_contracts.events import EVENT_TYPES, EventData

    def all_event_types(cls: type) -> list[type]:
        found = []
        for sub in cls.__subclasses__():
            found += ([sub] if hasattr(sub, "spec") else []) + all_event_types(sub)
        return found

    owners: dict[tuple[str, str], list[str]] = {}
    for who in busauth.IDENTITIES:
        for spec in who.publishes:
            owners.setdefault((spec.entity, spec.action), []).append(who.user)
    catalogue = {(t.spec.entity, t.spec.action) for t in all_event_types(EventData)}
    assert set(owners) == catalogue, f"no identity publishes {catalogue - set(owners)}: a publisher that is not one"
    assert all(len(users) == 1 for users in owners.values()), owners
    assert set(all_event_types(EventData)) == set(EVENT_TYPES)
    assert busauth.identity("commit-verifier").publishes == tuple(
        cls.spec for cls in (UploadVerified, UploadRejected, CommitRefused)
    )
    assert busauth.identity(busauth.PROVISION).publishes == ()
    assert busauth.PROFILES_BUCKET == profiles.PROFILES_BUCKET
    assert busauth.DEADLETTER_STREAM == bus.DEADLETTER_STREAM.name


def test_the_server_config_needs_every_password_and_a_user_and_password_go_together() -> None:
    with pytest.raises(ValueError, match="janitor"):
        busauth.server_config({user: "x" for user in busauth.USERS if user != "janitor"})
    with pytest.raises(ValueError, match="RAWDRIVE_NATS_USER and RAWDRIVE_NATS_PASSWORD"):
        bus.auth_options(load_settings(NatsSettings, {"RAWDRIVE_NATS_USER": "janitor"}))
    with pytest.raises(ValueError, match="tls://"):
        bus.auth_options(load_settings(NatsSettings, {"RAWDRIVE_NATS_TLS_CA": "/ca.pem"}))
    with pytest.raises(ValueError, match="RAWDRIVE_NATS_CREDS excludes"):
        bus.auth_options(load_settings(NatsSettings, {"RAWDRIVE_NATS_CREDS": "/x.creds", "RAWDRIVE_NATS_USER": "j",
                                                      "RAWDRIVE_NATS_PASSWORD": "p"}))


# ---------------------------------------------------------------------------------------------
# Against the server


async def test_an_anonymous_client_and_a_wrong_password_are_refused(server: NatsServer) -> None:
    for url in (server.url, server.users.url(server.url, "janitor").replace(server.users.passwords["janitor"], "x")):
        with pytest.raises(NatsError, match="Authorization Violation"):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)


async def test_the_gateway_cannot_forge_a_verdict_but_publishes_its_own_events(connect_as, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="rawdrive_platform.bus")
    js = (await connect_as("upload-gateway")).jetstream()
    with pytest.raises(bus.PublishFailed):
        await bus.publish(js, verified("wsforge"))
    assert await refused(caplog, "rawdrive.upload.verified.wsforge")

    session = new_event(UploadSessionCreated(
        workspace_id="wsforge", upload_id=uuid.uuid4().hex, asset_id=uuid.uuid4().hex, library_id="lib1",
        file_name="a.jpg", mime_type="image/jpeg", size_bytes=3, resumable_protocol="tus",
        storage_profile_ref="managed", object_key="workspaces/wsforge/a.jpg", expires_at=NOW, created_by="u1",
    ), source="test")
    assert await bus.publish(js, session)


async def test_the_verifier_may_announce_verdicts_only(connect_as, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="rawdrive_platform.bus")
    js = (await connect_as("commit-verifier")).jetstream(timeout=1.0)
    assert await bus.publish(js, verified("wsverdict"))
    with pytest.raises(NatsTimeoutError):
        await js.publish("rawdrive.asset.created.wsverdict", b"{}", timeout=1)
    assert await refused(caplog, "rawdrive.asset.created.wsverdict")


async def test_no_service_reads_events_outside_its_durables_or_another_service_s_replies(connect_as, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="rawdrive_platform.bus")
    nc = await connect_as("media-processor")
    js = nc.jetstream(timeout=1.0)
    # Every tenant's events, by core NATS or by a consumer of its own making: refused.
    await nc.subscribe("rawdrive.>")
    assert await refused(caplog, 'subscription to "rawdrive.>"')
    with pytest.raises(NatsTimeoutError):
        await js.add_consumer(ASSETS_STREAM.name, ConsumerConfig(durable_name="snoop"), timeout=1)
    assert await refused(caplog, f"CONSUMER.DURABLE.CREATE.{ASSETS_STREAM.name}.snoop")
    # Another service's durable and inbox: refused.
    with pytest.raises(NatsTimeoutError):
        await js.consumer_info(UPLOADS_STREAM.name, "commit-verifier", timeout=1)
    assert await refused(caplog, f"CONSUMER.INFO.{UPLOADS_STREAM.name}.commit-verifier")
    await nc.subscribe(f"{busauth.inbox_prefix('commit-verifier')}.>")
    assert await refused(caplog, f'subscription to "{busauth.inbox_prefix("commit-verifier")}')
    # Its own: allowed.
    await bus.ensure_consumer(js, bus.ConsumerSpec(
        durable="media-processor", stream=UPLOADS_STREAM.name, filter_subjects=("rawdrive.upload.verified.*",)))
    assert (await js.consumer_info(UPLOADS_STREAM.name, "media-processor")).name == "media-processor"


async def test_a_service_cannot_change_or_delete_a_stream(connect_as, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="rawdrive_platform.bus")
    js = (await connect_as("janitor")).jetstream(timeout=1.0)
    with pytest.raises(NatsTimeoutError):
        await js.delete_stream(UPLOADS_STREAM.name)
    assert await refused(caplog, f"STREAM.DELETE.{UPLOADS_STREAM.name}")
    with pytest.raises(NatsTimeoutError):
        await bus.ensure_stream(js, UPLOADS_STREAM, bus.StreamSettings(max_age_s=1))
    assert await refused(caplog, f"STREAM.INFO.{UPLOADS_STREAM.name}")


async def test_profiles_are_written_by_the_gateway_only_and_listed_by_the_janitor_only(connect_as, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="rawdrive_platform.bus")
    gateway_kv = await (await connect_as("upload-gateway")).jetstream().key_value(busauth.PROFILES_BUCKET)
    ref = f"test{uuid.uuid4().hex}"
    await gateway_kv.create(ref, b"sealed record")

    processor_kv = await (await connect_as("media-processor")).jetstream(timeout=1.0).key_value(busauth.PROFILES_BUCKET)
    assert (await processor_kv.get(ref)).value == b"sealed record"  # it opens the bucket an upload names
    with pytest.raises(NatsTimeoutError):
        await processor_kv.put(ref, b"forged record")
    assert await refused(caplog, f"$KV.{busauth.PROFILES_BUCKET}.{ref}")
    with pytest.raises(NatsTimeoutError):
        await processor_kv.keys()  # every tenant's refs: not the processor's to enumerate
    assert await refused(caplog, f"CONSUMER.CREATE.KV_{busauth.PROFILES_BUCKET}")
    assert (await gateway_kv.get(ref)).value == b"sealed record"

    janitor_kv = await (await connect_as("janitor")).jetstream().key_value(busauth.PROFILES_BUCKET)
    assert ref in await janitor_kv.keys()


async def test_the_janitor_may_delete_a_profile_entry_but_not_write_one_and_the_processor_neither(
    connect_as, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="rawdrive_platform.bus")
    gateway_kv = await (await connect_as("upload-gateway")).jetstream().key_value(busauth.PROFILES_BUCKET)
    ref = f"test{uuid.uuid4().hex}"
    revision = await gateway_kv.create(ref, b"sealed record")
    version = profiles.ProfileVersion(ref=ref, workspace_id="ws1", retired_at=NOW, revision=revision)

    processor_js = (await connect_as("media-processor")).jetstream(timeout=1.0)
    processor_kv = await processor_js.key_value(busauth.PROFILES_BUCKET)
    with pytest.raises(profiles.StorageUnavailable):
        await profiles.ProfileVersions(processor_js, processor_kv).delete(version)
    assert await refused(caplog, f"STREAM.PURGE.KV_{busauth.PROFILES_BUCKET}")
    assert (await gateway_kv.get(ref)).value == b"sealed record"

    janitor_js = (await connect_as("janitor")).jetstream(timeout=1.0)
    janitor_kv = await janitor_js.key_value(busauth.PROFILES_BUCKET)
    with pytest.raises(NatsTimeoutError):
        await janitor_kv.put(ref, b"forged record")  # deleting is all it may do to a record
    assert await refused(caplog, f"$KV.{busauth.PROFILES_BUCKET}.{ref}")
    await profiles.ProfileVersions(janitor_js, janitor_kv).delete(version)
    with pytest.raises(KeyNotFoundError):
        await gateway_kv.get(ref)


async def test_the_provisioning_identity_creates_streams_and_the_bucket_and_no_password_is_logged(
    server: NatsServer, caplog
) -> None:
    from rawdrive_platform.provision import Settings, provision

    caplog.set_level(logging.DEBUG)
    settings = Settings(**{f: getattr(settings_of(server, PROVISION), f)
                           for f in ("nats_url", "nats_user", "nats_password")})
    report = await provision(settings, streams=True, targets=[])
    assert report.kv_buckets == [busauth.PROFILES_BUCKET]
    assert UPLOADS_STREAM.name in report.streams
    passwords = server.users.passwords.values()
    assert not [r for r in caplog.records if any(p in r.getMessage() or p in str(r.__dict__) for p in passwords)]
    assert bus.redact_url(server.users.url(server.url, PROVISION)) == f"nats://***@127.0.0.1:{server.port}"


async def test_the_gateway_follows_the_assets_stream_but_cannot_delete_or_redefine_a_durable_on_it(
    connect_as, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="rawdrive_platform.bus")
    stream = ASSETS_STREAM.name
    janitor_js = (await connect_as("janitor")).jetstream(timeout=1.0)
    purges = bus.ConsumerSpec(durable="janitor-assets", stream=stream, filter_subjects=("rawdrive.asset.deleted.*",))
    await bus.ensure_consumer(janitor_js, purges)
    gateway_nc = await connect_as("upload-gateway")
    gateway_js = gateway_nc.jetstream(timeout=1.0)
    catalogue = bus.ConsumerSpec(durable="upload-gateway-catalogue", stream=stream,
                                 filter_subjects=("rawdrive.asset.created.*",))
    await bus.ensure_consumer(gateway_js, catalogue)  # its own, at start: allowed

    # The janitor's durable: neither deleted nor redefined, by any of the API's create subjects.
    hijack = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, filter_subject="rawdrive.asset.created.*")
    attempts = {
        f"CONSUMER.DELETE.{stream}.janitor-assets": lambda: gateway_js.delete_consumer(stream, "janitor-assets"),
        # nats-py picks the subject from the config: DURABLE.CREATE, CREATE.<name>.<filter>, CREATE.<name>
        f"CONSUMER.DURABLE.CREATE.{stream}.janitor-assets":
            lambda: gateway_js.add_consumer(stream, hijack, durable_name="janitor-assets"),
        f"CONSUMER.CREATE.{stream}.janitor-assets.rawdrive.asset.created.*":
            lambda: gateway_js.add_consumer(stream, hijack, name="janitor-assets"),
        f"CONSUMER.CREATE.{stream}.janitor-assets\"":
            lambda: gateway_js.add_consumer(stream, hijack, name="janitor-assets", filter_subject=">"),
        # The unnamed subject with the name in the body, which nats-py's ordered consumer would
        # need: no subject deny sees the body, so the subject itself is not allowed.
        f"CONSUMER.CREATE.{stream}\"": lambda: gateway_nc.request(
            f"$JS.API.CONSUMER.CREATE.{stream}", timeout=1.0, payload=json.dumps({
                "stream_name": stream,
                "config": {"name": "janitor-assets", "ack_policy": "explicit", "filter_subject": "rawdrive.asset.created.*"},
            }).encode()),
        # Its own durable is the provisioning identity's to delete.
        f"CONSUMER.DELETE.{stream}.upload-gateway-catalogue":
            lambda: gateway_js.delete_consumer(stream, "upload-gateway-catalogue"),
    }
    for needle, attempt in attempts.items():
        with pytest.raises(NatsTimeoutError):
            await attempt()
        assert await refused(caplog, needle)
    # An allowed named subject with janitor-assets in the body acts on the subject's name: a body
    # name is overridden (nats-server 2.15.1), a durable name refused.
    answers = {}
    for field in ("name", "durable_name"):
        body = {"stream_name": stream, "config": {field: "janitor-assets", "ack_policy": "explicit",
                                                  "filter_subject": "rawdrive.asset.created.*"}}  # fmt: skip
        reply = await gateway_nc.request(f"$JS.API.CONSUMER.CREATE.{stream}.feed-probe", json.dumps(body).encode(),
                                         timeout=1.0)  # fmt: skip
        answers[field] = json.loads(reply.data)
    assert answers["name"]["name"] == "feed-probe" and "error" not in answers["name"]
    assert answers["durable_name"]["error"]["err_code"] == 10017  # name in subject does not match durable name
    assert await gateway_js.delete_consumer(stream, "feed-probe")
    info = await janitor_js.consumer_info(stream, "janitor-assets")
    assert (info.config.durable_name, info.config.filter_subjects) == ("janitor-assets", ["rawdrive.asset.deleted.*"])
    assert (await gateway_js.consumer_info(stream, "upload-gateway-catalogue")).name == "upload-gateway-catalogue"

    # The console's live feed still works: an ephemeral push consumer under a name of its own (as
    # upload_gateway.console.follow creates it), fed with flow control answered, then deleted.
    received: asyncio.Queue = asyncio.Queue()
    deliver = gateway_nc.new_inbox()
    subscription = await gateway_nc.subscribe(deliver, cb=received.put)
    name = f"feed-{uuid.uuid4().hex}"
    await gateway_js.add_consumer(stream, ConsumerConfig(
        name=name, deliver_subject=deliver, filter_subjects=["rawdrive.asset.deleted.wsfeed"],
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.NEW, flow_control=True, idle_heartbeat=0.5,
        inactive_threshold=30.0, mem_storage=True,
    ))  # fmt: skip
    for body in (b"one", b"two"):
        await gateway_js.publish("rawdrive.asset.deleted.wsfeed", body)
    data = []
    while len(data) < 2:
        msg = await asyncio.wait_for(received.get(), 5)
        if msg.headers and msg.headers.get("Status") == "100":  # flow control or heartbeat
            if msg.reply:
                await gateway_nc.publish(msg.reply)
            continue
        data.append(msg.data)
    assert data == [b"one", b"two"]
    assert await gateway_js.delete_consumer(stream, name)
    await subscription.unsubscribe()

    assert not [r for r in caplog.records if "permissions violation" in r.getMessage() and "FC." in r.getMessage()]
