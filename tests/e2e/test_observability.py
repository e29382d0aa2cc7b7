"""Observability end to end: the four services as processes export one connected trace per upload
to an OTLP/HTTP receiver this test runs, and each serves Prometheus metrics that count the upload.

A real JPEG goes in by tus, is committed, verified and processed until asset.created is out.
"""

from __future__ import annotations

import asyncio
import gzip
import io
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import nats
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from prometheus_client.parser import text_string_to_metric_families

from upload_gateway.auth import mint_dev_token

WORKSPACE = "e2eobs"
JPEG = Path(__file__).parents[2] / "services/media-processor/tests/data/jpeg_orientation_6.jpg"
ASSET_CREATED = "com.rawdrive.asset.created.v1"
PREFIX = "/v1/workspaces/{workspace_id}/uploads"
SERVICES = ("upload_gateway", "commit_verifier", "media_processor", "janitor")


class ExportedSpan(msgspec.Struct, frozen=True):
    service: str
    trace_id: str
    span_id: str
    parent_span_id: str  # '' for a root
    name: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind
    attributes: dict[str, str]


class OtlpReceiver:
    """POST /v1/traces with protobuf bodies, as the OTLP/HTTP exporter sends them."""

    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ExportedSpan(
                            service=resource.get("service.name", ""),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                            attributes={a.key: a.value.string_value for a in span.attributes},
                        )
                    )
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")


@pytest.fixture
async def otlp() -> AsyncIterator[tuple[OtlpReceiver, str]]:
    receiver = OtlpReceiver()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield receiver, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def pipeline(start_service, service_env, otlp):
    """The four services exporting to the receiver, flushing spans and sampling gauges quickly."""
    receiver, endpoint = otlp
    overrides = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "RAWDRIVE_METRICS_SAMPLE_INTERVAL_S": "0.5",
    }
    services = {module: start_service(module, **overrides) for module in SERVICES}
    return services, receiver


async def upload_and_wait_for_asset(gateway_port: int, secret: str, nats_url: str) -> dict:
    """Open a tus session, send the JPEG with tuspy, commit, and return the session once its
    asset.created was published."""
    from tusclient.client import TusClient

    body = JPEG.read_bytes()
    token = mint_dev_token(secret, sub="e2e-user", workspaces={WORKSPACE: "member"}, ttl_s=600)
    nc = await nats.connect(nats_url)
    created = await nc.subscribe(f"rawdrive.asset.created.{WORKSPACE}")
    try:
        async with aiohttp.ClientSession(
            f"http://127.0.0.1:{gateway_port}", headers={"Authorization": f"Bearer {token}"}
        ) as api:
            request = {"file_name": "photo.jpg", "mime_type": "image/jpeg", "size_bytes": len(body),
                       "library_id": "lib1", "resumable_protocol": "tus"}
            async with api.post(f"/v1/workspaces/{WORKSPACE}/uploads", json=request) as response:
                assert response.status == 201, await response.text()
                session = await response.json()
            uploader = TusClient(session["upload_url"], headers=session["headers"]).uploader(
                file_stream=io.BytesIO(body), chunk_size=1024
            )
            await asyncio.to_thread(uploader.upload)
            async with api.post(f"/v1/workspaces/{WORKSPACE}/uploads/{session['upload_id']}/commit", json={}) as response:
                assert (response.status, await response.json()) == (
                    200, {"asset_id": session["asset_id"], "status": "processing"}
                )
        while True:
            message = await created.next_msg(timeout=30)
            if msgspec.json.decode(message.data)["data"]["asset_id"] == session["asset_id"]:
                return session
    finally:
        await nc.close()


def trace_of_upload(spans: list[ExportedSpan], upload_id: str) -> list[ExportedSpan]:
    commits = [s for s in spans if s.name == f"POST {PREFIX}/{{upload_id}}/commit"
               and s.attributes.get("rawdrive.upload_id") == upload_id]
    if not commits:
        return []
    return [s for s in spans if s.trace_id == commits[0].trace_id]


def is_one_tree(spans: list[ExportedSpan]) -> bool:
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if not s.parent_span_id]
    return len(roots) == 1 and all(s.parent_span_id in ids for s in spans if s.parent_span_id)


REQUIRED_SPANS = {
    ("upload-gateway", f"POST {PREFIX}"),  # the session: the root
    ("upload-gateway", f"PATCH {PREFIX}/{{upload_id}}/tus"),
    ("upload-gateway", f"POST {PREFIX}/{{upload_id}}/commit"),
    ("commit-verifier", "verify upload"),
    ("media-processor", "process upload"),
    ("media-processor", f"publish {ASSET_CREATED}"),
}


async def test_one_upload_is_one_connected_trace_across_the_four_services(pipeline, service_env, nats_url):
    services, receiver = pipeline
    session = await upload_and_wait_for_asset(
        services["upload_gateway"].port, service_env["RAWDRIVE_JWT_SECRET"], nats_url
    )

    def complete() -> bool:
        spans = trace_of_upload(receiver.spans, session["upload_id"])
        return REQUIRED_SPANS <= {(s.service, s.name) for s in spans} and is_one_tree(spans)

    # Parents end (and are exported) after their children: give the last batches a moment.
    async with asyncio.timeout(15):
        while not complete():
            await asyncio.sleep(0.2)

    spans = trace_of_upload(receiver.spans, session["upload_id"])
    assert {s.service for s in spans} == {"upload-gateway", "commit-verifier", "media-processor", "janitor"}
    (root,) = [s for s in spans if not s.parent_span_id]
    assert (root.service, root.name) == ("upload-gateway", f"POST {PREFIX}")
    by_id = {s.span_id: s for s in spans}
    # asset.created is published by the processing, which continues the verification's verdict,
    # which continues the commit request.
    publish = next(s for s in spans if s.name == f"publish {ASSET_CREATED}")
    chain = []
    span: ExportedSpan | None = publish
    while span is not None:
        chain.append((span.service, span.name))
        span = by_id.get(span.parent_span_id)
    assert chain.index(("media-processor", "process upload")) < chain.index(("commit-verifier", "verify upload"))
    assert chain.index(("commit-verifier", "verify upload")) < chain.index(("upload-gateway", f"POST {PREFIX}/{{upload_id}}/commit"))
    assert chain[-1] == ("upload-gateway", f"POST {PREFIX}")


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_every_service_serves_metrics_that_count_the_upload(pipeline, service_env, nats_url):
    services, _ = pipeline
    gateway, verifier, processor, janitor = (services[m] for m in SERVICES)
    await upload_and_wait_for_asset(gateway.port, service_env["RAWDRIVE_JWT_SECRET"], nats_url)
    size = JPEG.stat().st_size

    def pending(samples, stream: str, consumer: str) -> float | None:
        return value(samples, "rawdrive_consumer_pending_messages", stream=stream, consumer=consumer)

    # Gauges are sampled every 0.5 s: wait until the verifier's and processor's lag is back to 0.
    async with asyncio.timeout(15):
        while not (pending(await asyncio.to_thread(scrape, verifier.port), "RAWDRIVE_UPLOADS", "commit-verifier") == 0
                   and pending(await asyncio.to_thread(scrape, processor.port), "RAWDRIVE_UPLOADS", "media-processor") == 0):
            await asyncio.sleep(0.2)

    at_gateway = await asyncio.to_thread(scrape, gateway.port)
    assert value(at_gateway, "rawdrive_uploads_started_total", protocol="tus") >= 1
    assert pending(at_gateway, "RAWDRIVE_UPLOADS", "upload-gateway-verdicts") is not None
    assert value(at_gateway, "rawdrive_outbox_pending_rows") is not None

    at_verifier = await asyncio.to_thread(scrape, verifier.port)
    assert value(at_verifier, "rawdrive_uploads_completed_total", kind="photo") >= 1
    assert value(at_verifier, "rawdrive_verification_seconds_count", kind="photo") >= 1
    assert value(at_verifier, "rawdrive_ingested_bytes_total", kind="photo") >= size
    assert value(at_verifier, "rawdrive_consumer_dead_letters", stream="RAWDRIVE_UPLOADS", consumer="commit-verifier") == 0

    at_processor = await asyncio.to_thread(scrape, processor.port)
    assert value(at_processor, "rawdrive_processing_seconds_count", kind="photo") >= 1

    at_janitor = await asyncio.to_thread(scrape, janitor.port)
    assert pending(at_janitor, "RAWDRIVE_UPLOADS", "janitor-uploads") is not None
    assert pending(at_janitor, "RAWDRIVE_ASSETS", "janitor-assets") is not None
    assert value(at_janitor, "rawdrive_uploads_expired_total") == 0
