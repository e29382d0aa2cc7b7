"""The provisioning CLI the Kubernetes Job runs, against a real NATS and PostgreSQL, as a child
process with only RAWDRIVE_* in its environment (as in the pod)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import asyncpg
import msgspec
import pytest
from nats.js import api as js_api
from nats.js.errors import APIError

from rawdrive_contracts import STREAMS, UPLOADS_STREAM
from rawdrive_devkit.devstack.servers import NatsServer
from rawdrive_devkit.testing import run_module
from rawdrive_platform import bus
from rawdrive_platform.bus import DEADLETTER_STREAM

# Every durable of the pipeline, as the Kubernetes Job names them (deploy/k8s/base/provision-job.yaml).
CONSUMERS = {
    "upload_gateway.uploads.verdicts:CONSUMER": "upload-gateway-verdicts",
    "upload_gateway.catalogue.events:CONSUMER": "upload-gateway-catalogue",
    "commit_verifier.__main__:CONSUMER": "commit-verifier",
    "media_processor.__main__:CONSUMER": "media-processor",
    "janitor.handlers:UPLOAD_EVENTS": "janitor-uploads",
    "janitor.handlers:ASSET_EVENTS": "janitor-assets",
}


def run_provision(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_module("rawdrive_platform.provision", *args, **env)


async def test_streams_and_every_service_schema_are_provisioned_and_a_rerun_is_a_no_op(nats_url, fresh_database_url):
    args = ["--streams", "--migrate", "gateway=upload_gateway", "--migrate", "verifier=commit_verifier",
            "--migrate", "janitor=janitor", *(arg for ref in CONSUMERS for arg in ("--consumers", ref))]
    env = {"RAWDRIVE_NATS_URL": nats_url, "RAWDRIVE_DATABASE_URL": fresh_database_url}

    first = run_provision(*args, **env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert set(report["streams"]) == {spec.name for spec in (*STREAMS, DEADLETTER_STREAM)}
    for schema in ("gateway", "verifier", "janitor"):
        assert "platform/0001_outbox.sql" in report["migrations"][schema]
        assert any(name.startswith(f"{schema}/") for name in report["migrations"][schema])

    # The shared server may hold some durables from other tests already: each is created or kept.
    reported = report["consumers"]
    assert sorted(reported.get("created", []) + reported.get("existing", [])) == sorted(CONSUMERS.values())
    nc = await bus.connect(nats_url, name="test-provision")
    try:
        js = nc.jetstream()
        for spec in (*STREAMS, DEADLETTER_STREAM):
            info = await js.stream_info(spec.name)
            assert str(getattr(info.config.storage, "value", info.config.storage)) == "file"
        verifier = await js.consumer_info(UPLOADS_STREAM.name, "commit-verifier")
        assert verifier.config.filter_subjects == ["rawdrive.upload.commit_requested.*"]
    finally:
        await nc.close()
    conn = await asyncpg.connect(fresh_database_url)
    try:
        for schema in ("gateway", "verifier", "janitor"):
            count = await conn.fetchval(f'SELECT count(*) FROM "{schema}".schema_migrations')
            assert count == len(report["migrations"][schema])
    finally:
        await conn.close()

    again = run_provision(*args, **env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["migrations"] == {"gateway": [], "verifier": [], "janitor": []}
    assert json.loads(again.stdout)["consumers"] == {"existing": list(CONSUMERS.values())}


@pytest.mark.servers  # starts a NATS of its own: it shrinks the streams
async def test_streams_get_max_bytes_and_a_full_work_stream_refuses_new_events_keeping_the_old(tmp_path: Path):
    nats = NatsServer(tmp_path / "nats")
    nats.start()
    try:
        limit = 64 * 1024
        env = {"RAWDRIVE_NATS_URL": nats.url, "RAWDRIVE_STREAM_MAX_BYTES": str(limit)}
        done = run_provision("--streams", "--consumers", "media_processor.__main__:CONSUMER", **env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["consumers"] == {"created": ["media-processor"]}

        nc = await bus.connect(nats.url, name="test-provision-limits")
        try:
            js = nc.jetstream()
            for spec in (*STREAMS, DEADLETTER_STREAM):
                config = (await js.stream_info(spec.name)).config
                assert config.max_bytes == limit
                expected = js_api.DiscardPolicy.OLD if spec is DEADLETTER_STREAM else js_api.DiscardPolicy.NEW
                assert config.discard == expected, spec.name

            # Fill RAWDRIVE_UPLOADS: the publish that does not fit is refused, none before it is lost.
            subject, body, accepted = "rawdrive.upload.verified.ws1", b"x" * 4096, 0
            with pytest.raises(APIError) as refused:
                for n in range(2 * limit // len(body)):
                    await js.publish(subject, body, headers={bus.MSG_ID_HEADER: f"fill-{n}"})
                    accepted += 1
            assert "maximum bytes" in str(refused.value).lower()
            state = (await js.stream_info(UPLOADS_STREAM.name)).state
            assert state.messages == accepted and state.first_seq == 1
            lag = await js.consumer_info(UPLOADS_STREAM.name, "media-processor")
            assert lag.num_pending == accepted  # the verified ones it filters on: all still there

            # A rerun keeps the durable as its service set it (here: a longer max_deliver).
            spec = msgspec.structs.replace(bus.ConsumerSpec(durable="media-processor", stream=UPLOADS_STREAM.name,
                                                            filter_subjects=tuple(lag.config.filter_subjects)),
                                           max_deliver=9)
            await bus.ensure_consumer(js, spec)
            again = run_provision("--consumers", "media_processor.__main__:CONSUMER", **env)
            assert json.loads(again.stdout)["consumers"] == {"existing": ["media-processor"]}
            assert (await js.consumer_info(UPLOADS_STREAM.name, "media-processor")).config.max_deliver == 9
        finally:
            await nc.close()
    finally:
        nats.stop()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {}, "nothing to do"),
        (["--migrate", "gateway"], {}, "SCHEMA=PACKAGE"),
        (["--migrate", "gateway=upload_gateway"], {}, "RAWDRIVE_DATABASE_URL is required"),
        (["--streams"], {"RAWDRIVE_STREAM_REPLICAS": "9"}, "RAWDRIVE_STREAM_REPLICAS"),
        (["--streams"], {"RAWDRIVE_STREAM_MAX_BYTES": "0"}, "RAWDRIVE_STREAM_MAX_BYTES"),
        (["--consumers", "janitor.handlers"], {}, "MODULE:NAME"),
        (["--consumers", "janitor.handlers:NOPE"], {}, "NOPE"),
        (["--consumers", "janitor.handlers:Dependencies"], {}, "is not a ConsumerSpec"),
    ],
)
def test_bad_arguments_or_configuration_exit_2_naming_the_problem(args, env, message):
    result = run_provision(*args, **env)
    assert result.returncode == 2
    assert message in result.stderr


def test_an_unreachable_database_fails_the_job_with_status_1():
    result = run_provision("--migrate", "gateway=upload_gateway",
                           RAWDRIVE_DATABASE_URL="postgresql://nobody:x@127.0.0.1:1/none")
    assert result.returncode == 1
    assert "provisioning failed" in result.stderr
