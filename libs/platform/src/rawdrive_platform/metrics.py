"""The Prometheus plumbing every service shares: `/metrics`, the queue and outbox gauges, and the
Stopwatch; each service defines its own counters and histograms in its `metrics` module.

Each service process serves the default registry at `/metrics` on its health port (the gateway:
on its API port), mounted by `Runtime.serve_health`. Counters and histograms count what this
process did; the gauges here are sampled by `Runtime` every RAWDRIVE_METRICS_SAMPLE_INTERVAL_S
from JetStream and PostgreSQL. Labels take values from small fixed sets (kinds, reasons,
protocols, consumer names), never workspace, upload or asset ids, so a series count does not
grow with traffic. Every metric is named `rawdrive_*` (deploy/k8s/check reads all the modules).
"""

from __future__ import annotations

import time
from types import TracebackType

import asyncpg
from aiohttp import web
from nats.js import JetStreamContext
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

from rawdrive_platform.bus import DEADLETTER_STREAM

# The label of a duration whose kind was never learnt (a type mismatch, an unknown profile).
UNKNOWN_KIND = "unknown"
# A small photo takes well under a second; a 500 MiB video about a minute to hash or decode.
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

# -- queues (sampled) -------------------------------------------------------------------------
CONSUMER_PENDING = Gauge(
    "rawdrive_consumer_pending_messages",
    "Messages a durable consumer has yet to finish: num_pending + num_ack_pending, the JetStream "
    "consumer lag KEDA scales the verifier and the processor on",
    ["stream", "consumer"],
)
DEAD_LETTERS = Gauge(
    "rawdrive_consumer_dead_letters",
    "Messages of this consumer waiting in RAWDRIVE_DEADLETTER (terminated or out of deliveries)",
    ["stream", "consumer"],
)
OUTBOX_PENDING = Gauge(
    "rawdrive_outbox_pending_rows", "Outbox rows of this service not yet published to JetStream"
)
OUTBOX_OLDEST_AGE = Gauge(
    "rawdrive_outbox_oldest_row_age_seconds",
    "Age of the oldest outbox row of this service not yet published (0 when none waits)",
)

# -- dependencies and the database pool --------------------------------------------------------
DEPENDENCY_UP = Gauge(
    "rawdrive_dependency_up",
    "1 while the last check of a dependency (nats, postgres, s3) passed, else 0; sampled. The "
    "gateway's readiness does not follow it: alerts do",
    ["dependency"],
)
DB_POOL_CONNECTIONS = Gauge(
    "rawdrive_db_pool_connections",
    "PostgreSQL pool connections of this process: in_use (lent out) and max, at scrape time",
    ["schema", "state"],
)
DB_POOL_ACQUIRE_TIMEOUTS = Counter(
    "rawdrive_db_pool_acquire_timeouts",
    "Waits for a pooled PostgreSQL connection that ran out of time (the gateway answered 503)",
    ["schema"],
)


def watch_pool(pool: asyncpg.Pool, schema: str) -> None:
    """Read `pool`'s connections into DB_POOL_CONNECTIONS whenever /metrics is scraped."""
    DB_POOL_CONNECTIONS.labels(schema, "in_use").set_function(lambda: pool.get_size() - pool.get_idle_size())
    DB_POOL_CONNECTIONS.labels(schema, "max").set_function(pool.get_max_size)


class Stopwatch:
    """Observes the seconds a `with` block took into `histogram`, under the kind known by its end
    (set `.kind` inside the block once it is learnt). A block that raised is not observed: the
    delivery is retried, and the histogram holds the work that finished."""

    def __init__(self, histogram: Histogram, kind: str = UNKNOWN_KIND) -> None:
        self.kind = kind
        self._histogram = histogram
        self._started = 0.0

    def __enter__(self) -> Stopwatch:
        self._started = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self._histogram.labels(kind=self.kind).observe(time.perf_counter() - self._started)


async def sample_consumer(js: JetStreamContext, stream: str, durable: str) -> None:
    """Set the consumer's lag and dead-letter gauges from the server's view."""
    info = await js.consumer_info(stream, durable)
    CONSUMER_PENDING.labels(stream=stream, consumer=durable).set((info.num_pending or 0) + (info.num_ack_pending or 0))
    # Advisory subjects end in <stream>.<consumer>; the per-subject counts of the filter are ours.
    dead = await js.stream_info(DEADLETTER_STREAM.name, subjects_filter=f"$JS.EVENT.ADVISORY.CONSUMER.*.{stream}.{durable}")
    DEAD_LETTERS.labels(stream=stream, consumer=durable).set(sum((dead.state.subjects or {}).values()))


async def sample_outbox(pool: asyncpg.Pool) -> None:
    row = await pool.fetchrow(
        "SELECT count(*) AS pending, coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest_s FROM outbox"
    )
    OUTBOX_PENDING.set(row["pending"])
    OUTBOX_OLDEST_AGE.set(float(row["oldest_s"]))


async def _serve(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


def mount(app: web.Application) -> None:
    """Add /metrics (Prometheus text format) to an app that has not started yet."""
    app.router.add_get("/metrics", _serve)
