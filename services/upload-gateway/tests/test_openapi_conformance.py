"""Schemathesis against /openapi.json of a gateway process (`python -m upload_gateway`) on real
PostgreSQL, NATS and S3: no 5xx, and every response matches the document. Every documented
operation, a few examples each."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from rawdrive_contracts import AssetCreated, UploadVerified, new_event
from rawdrive_devkit.devstack.servers import create_database, drop_database
from rawdrive_platform import bus
from upload_gateway.auth import mint_dev_token

SECRET = "conformance-secret-" + "x" * 20
WORKSPACE = f"ws{uuid.uuid4().hex[:10]}"
ASSET = str(uuid.uuid4())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _seed(nats_url: str) -> None:
    """One available asset, announced the way the verifier and the processor announce it."""
    nc = await bus.connect(nats_url, name="test-conformance")
    js = nc.jetstream()
    common = dict(workspace_id=WORKSPACE, asset_id=ASSET, upload_id="u1", library_id="lib1", file_name="a.jpg",
                  mime_type="image/jpeg", size_bytes=1, sha256="ab" * 32, storage_profile_ref="managed",
                  object_key=f"workspaces/{WORKSPACE}/assets/{ASSET}/original/a.jpg")
    await bus.publish(js, new_event(UploadVerified(**common, verified_at=datetime.now(UTC)), source="/test"))
    await bus.publish(js, new_event(AssetCreated(**common, kind="photo"), source="/test"))
    await nc.close()


@pytest.fixture(scope="module")
def gateway(database_url: str, nats_url: str, s3_server) -> Iterator[str]:
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = urllib.parse.urlsplit(database_url)._replace(path="/postgres").geturl()
    create_database(admin, name)
    port = _free_port()
    env = os.environ | {
        "RAWDRIVE_DATABASE_URL": urllib.parse.urlsplit(database_url)._replace(path=f"/{name}").geturl(),
        "RAWDRIVE_NATS_URL": nats_url,
        "RAWDRIVE_S3_ENDPOINT": s3_server.endpoint,
        "RAWDRIVE_S3_REGION": s3_server.region,
        "RAWDRIVE_S3_BUCKET": s3_server.bucket,
        "RAWDRIVE_S3_ACCESS_KEY_ID": s3_server.access_key_id,
        "RAWDRIVE_S3_SECRET_ACCESS_KEY": s3_server.secret_access_key,
        "RAWDRIVE_JWT_SECRET": SECRET,
        "RAWDRIVE_HTTP_PORT": str(port),
        "RAWDRIVE_COMMIT_WAIT_S": "0",
        "RAWDRIVE_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen([sys.executable, "-m", "upload_gateway"], env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "the gateway exited"
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the gateway did not become ready"
            time.sleep(0.2)
        asyncio.run(_seed(nats_url))
        token = mint_dev_token(SECRET, sub="alice", workspaces={WORKSPACE: "member"}, ttl_s=600)
        deadline = time.monotonic() + 15
        while True:  # the catalogue consumer has the asset once it answers 200
            request = urllib.request.Request(f"{base}/v1/workspaces/{WORKSPACE}/assets/{ASSET}",
                                             headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(request, timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the seeded asset never reached the catalogue"
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        drop_database(admin, name)


# What the document promises. Not positive_data_acceptance: a schema-valid upload can still be
# refused by rules a schema cannot state (the file-type table), with a documented 422.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
    checks.unsupported_method,
    checks.ignored_auth,
]


# tus PATCH bodies are raw bytes; schemathesis knows no serializer for their media type.
@schemathesis.serializer("application/offset+octet-stream")
def _raw_bytes(ctx, value):
    return value if isinstance(value, bytes) else str(value).encode()



def test_the_gateway_answers_every_generated_request_as_its_document_says(gateway):
    # Schemathesis' pytest plugin (from_fixture) does not run under pytest 9, so each
    # operation's strategy is driven by hypothesis directly.
    schema = schemathesis.openapi.from_url(f"{gateway}/openapi.json")
    token = mint_dev_token(SECRET, sub="alice", workspaces={WORKSPACE: "member"}, ttl_s=600)
    operations = [result.ok() for result in schema.get_all_operations()]
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    documented = {(m, path) for path, item in schema.raw_schema["paths"].items() for m in item if m in methods}
    exercised = {(op.method.lower(), op.path) for op in operations}
    # Every documented operation, tus included, except the document itself, which schemathesis
    # has already fetched (and parsed) to get here.
    assert exercised == documented - {("get", "/openapi.json")}, documented - exercised
    statuses: Counter[int] = Counter()

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            # Requests go to the seeded workspace and asset, so they reach the handlers (other
            # workspaces and unknown assets are the route tests' business).
            if "workspace_id" in (case.path_parameters or {}):
                case.path_parameters["workspace_id"] = WORKSPACE
            if "asset_id" in (case.path_parameters or {}):
                case.path_parameters["asset_id"] = ASSET
            response = case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)
            statuses[response.status_code] += 1

        check()
    # The generated requests reached the handlers, not only the validation in front of them.
    assert statuses[200] > 0 and statuses[204] + statuses[302] > 0, statuses
