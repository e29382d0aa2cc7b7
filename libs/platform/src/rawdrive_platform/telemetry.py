"""Tracing and JSON logs, set up once per process.

Spans go to an OTLP/HTTP collector only when the standard OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set. Otherwise they are started unrecorded: they still
carry trace ids to the logs and NATS headers, but cost no attributes, copies or garbage that
nobody would read (a request's span: ~37 us recorded, ~10 us not). Setting the standard
OTEL_TRACES_SAMPLER records them anyway, sampled as it says. Trace context crosses NATS as W3C
headers.
"""

import logging
import os
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import msgspec
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

_OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName",
}
_provider: TracerProvider | None = None


def setup_telemetry(
    service_name: str,
    log_level: str = "INFO",
    environ: Mapping[str, str] = os.environ,
    *,
    record_spans: bool | None = None,
) -> TracerProvider:
    """Install the tracer provider and JSON logging; later calls return the same provider.

    `record_spans`: None records them when they are exported or OTEL_TRACES_SAMPLER is set (see
    the module's doc); True for a caller that adds its own span processor. Call
    ``provider.shutdown()`` at exit so batched spans are flushed.
    """
    global _provider
    if _provider is None:
        exporting = any(environ.get(name) for name in _OTLP_ENDPOINT_VARIABLES)
        if record_spans is None:
            record_spans = exporting or bool(environ.get("OTEL_TRACES_SAMPLER"))
        # None: the SDK's sampler, from OTEL_TRACES_SAMPLER (default: parent-based, always on).
        # A remote parent that was recorded is still followed: its trace stays whole.
        sampler = None if record_spans else ParentBased(ALWAYS_OFF)
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}), sampler=sampler)
        if exporting:
            # Imported here: the exporter pulls in protobuf, which only exporting needs.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
        _provider = provider
    setup_json_logging(service_name, log_level)
    return _provider


def setup_json_logging(service_name: str, log_level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter(service_name))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(log_level)


def inject_headers(headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``headers`` plus the current trace context (traceparent, tracestate)."""
    carrier = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> Context:
    """The trace context carried by a message's headers, to start the handler's span in."""
    return propagate.extract(dict(headers or {}))


def stored_context() -> str:
    """The current trace context as text, to keep with a row whose later work continues the trace."""
    return msgspec.json.encode(inject_headers()).decode()


def restored_context(stored: str | None) -> Context:
    """The trace context `stored_context` kept (an empty one for None: a new trace starts)."""
    return extract_context(msgspec.json.decode(stored, type=dict[str, str]) if stored else None)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, service, trace ids, extras."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self._service_name = service_name
        # str() for anything msgspec cannot encode; a Secret thereby prints as '***'.
        self._encoder = msgspec.json.Encoder(enc_hook=str)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self._service_name,
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = trace.format_trace_id(span_context.trace_id)
            entry["span_id"] = trace.format_span_id(span_context.span_id)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES and name not in entry:
                entry[name] = value
        return self._encoder.encode(entry).decode()
