"""The provisioning CLI the Kubernetes Job runs, against a real NATS and PostgreSQL, as a child
process with only RAWDRIVE_* in its environment (as in the pod)."""

from __future__ import annotations

import json
import subprocess

import asyncpg
import pytest

from rawdrive_contracts import STREAMS
from rawdrive_platform import bus
from rawdrive_platform.bus import DEADLETTER_STREAM
from rawdrive_platform.testing import run_module


def run_provision(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_module("rawdrive_platform.provision", *args, **env)


async def test_streams_and_every_service_schema_are_provisioned_and_a_rerun_is_a_no_op(nats_url, fresh_database_url):
    args = ["--streams", "--migrate", "gateway=upload_gateway", "--migrate", "verifier=commit_verifier",
            "--migrate", "janitor=janitor"]
    env = {"RAWDRIVE_NATS_URL": nats_url, "RAWDRIVE_DATABASE_URL": fresh_database_url}

    first = run_provision(*args, **env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert set(report["streams"]) == {spec.name for spec in (*STREAMS, DEADLETTER_STREAM)}
    for schema in ("gateway", "verifier", "janitor"):
        assert "platform/0001_outbox.sql" in report["migrations"][schema]
        assert any(name.startswith(f"{schema}/") for name in report["migrations"][schema])

    nc = await bus.connect(nats_url, name="test-provision")
    try:
        js = nc.jetstream()
        for spec in (*STREAMS, DEADLETTER_STREAM):
            info = await js.stream_info(spec.name)
            assert str(getattr(info.config.storage, "value", info.config.storage)) == "file"
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


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {}, "nothing to do"),
        (["--migrate", "gateway"], {}, "SCHEMA=PACKAGE"),
        (["--migrate", "gateway=upload_gateway"], {}, "RAWDRIVE_DATABASE_URL is required"),
        (["--streams"], {"RAWDRIVE_STREAM_REPLICAS": "9"}, "RAWDRIVE_STREAM_REPLICAS"),
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
