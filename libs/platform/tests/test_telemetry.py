import asyncio
import io
import logging
import os
import subprocess
import sys
import textwrap

import msgspec
import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from rawdrive_devkit.testkit import serving
from rawdrive_platform.config import Secret
from rawdrive_platform.telemetry import (
    JsonLogFormatter,
    extract_context,
    inject_headers,
    setup_telemetry,
)


@pytest.fixture(scope="module")
def spans():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # setup_telemetry replaces them
    provider = setup_telemetry("telemetry-test", environ={}, record_spans=True)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    root.handlers[:], root.level = handlers, level


@pytest.fixture
def log_lines():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter("telemetry-test"))
    logger = logging.getLogger("rawdrive.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, lambda: [msgspec.json.decode(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)


def test_setup_telemetry_returns_the_same_provider_when_called_again(spans):
    assert setup_telemetry("telemetry-test", environ={}) is trace.get_tracer_provider()


def test_a_span_started_from_injected_headers_continues_the_same_trace(spans):
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("publish") as publisher:
        headers = inject_headers({"Nats-Msg-Id": "evt-1"})
    assert headers["Nats-Msg-Id"] == "evt-1"
    assert "traceparent" in headers

    with tracer.start_as_current_span("handle", context=extract_context(headers)) as handler:
        pass
    assert handler.get_span_context().trace_id == publisher.get_span_context().trace_id
    finished = {span.name: span for span in spans.get_finished_spans()}
    assert finished["handle"].parent.span_id == publisher.get_span_context().span_id


def test_extracting_from_missing_headers_starts_a_new_trace(spans):
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("handle", context=extract_context(None)) as span:
        assert span.get_span_context().is_valid
    assert span.parent is None


def test_log_lines_are_json_with_the_active_trace_id_and_extra_fields(spans, log_lines):
    logger, lines = log_lines
    with trace.get_tracer("test").start_as_current_span("work") as span:
        logger.info("stored %s", "obj", extra={"asset_id": "a1", "bytes": 12, "key": Secret("k")})
    logger.warning("outside a span")

    inside, outside = lines()
    context = span.get_span_context()
    assert inside["message"] == "stored obj"
    assert (inside["level"], inside["logger"], inside["service"]) == (
        "INFO", "rawdrive.test", "telemetry-test",
    )
    assert inside["trace_id"] == trace.format_trace_id(context.trace_id)
    assert inside["span_id"] == trace.format_span_id(context.span_id)
    assert (inside["asset_id"], inside["bytes"], inside["key"]) == ("a1", 12, "***")
    assert inside["time"].endswith("+00:00")
    assert "trace_id" not in outside


def test_an_exception_is_logged_as_one_json_line(log_lines):
    logger, lines = log_lines
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    [line] = lines()
    assert "RuntimeError: boom" in line["exception"]


async def test_spans_are_exported_over_otlp_http_when_the_endpoint_is_configured(tmp_path):
    received: list[bytes] = []

    async def collect(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    script = textwrap.dedent("""
        import logging
        from opentelemetry import trace
        from rawdrive_platform.telemetry import setup_telemetry
        provider = setup_telemetry("exporting-service")
        with trace.get_tracer("t").start_as_current_span("exported-span"):
            logging.getLogger("svc").info("hello")
        provider.shutdown()
    """)
    async with serving(app) as port:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script,
            env=os.environ | {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                              "PYTHONPATH": os.pathsep.join(sys.path)},
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()
    assert any(b"exported-span" in body and b"exporting-service" in body for body in received)
    [log] = [msgspec.json.decode(line) for line in stderr.decode().splitlines()]
    assert (log["message"], log["service"]) == ("hello", "exporting-service")
    assert len(log["trace_id"]) == 32


UNEXPORTED_SERVICE = textwrap.dedent("""
    import logging, sys
    from opentelemetry import trace
    from rawdrive_platform.telemetry import inject_headers, setup_telemetry
    setup_telemetry("quiet-service")
    with trace.get_tracer("t").start_as_current_span("work") as span:
        logging.getLogger("svc").info("hello")
        sys.stdout.write(f"{span.is_recording()} {inject_headers()['traceparent']}")
""")


@pytest.mark.parametrize(
    ("sampler", "recording", "sampled"), [(None, "False", 0), ("parentbased_always_on", "True", 1)]
)
def test_without_an_exporter_spans_are_unrecorded_but_still_carry_trace_ids(sampler, recording, sampled):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    if sampler is not None:
        env["OTEL_TRACES_SAMPLER"] = sampler
    process = subprocess.run([sys.executable, "-c", UNEXPORTED_SERVICE], env=env, capture_output=True, timeout=60)
    assert process.returncode == 0, process.stderr.decode()
    is_recording, traceparent = process.stdout.decode().split()
    [log] = [msgspec.json.decode(line) for line in process.stderr.decode().splitlines()]
    assert is_recording == recording
    _, trace_id, span_id, trace_flags = traceparent.split("-")
    assert (log["trace_id"], log["span_id"]) == (trace_id, span_id)
    assert int(trace_flags, 16) & 1 == sampled  # W3C's sampled flag: recorded upstream or not
