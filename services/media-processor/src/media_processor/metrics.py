"""The processor's own Prometheus metrics (served at /metrics with rawdrive_platform.metrics')."""

from prometheus_client import Counter, Histogram

from rawdrive_platform.metrics import SECONDS_BUCKETS

# prometheus_client appends _total to counters.
PROCESSING_FAILED = Counter(
    "rawdrive_processing_failed",
    "Verified uploads announced as asset.processing_failed, by reason (processor)",
    ["reason"],
)
PROCESSING_SECONDS = Histogram(
    "rawdrive_processing_seconds",
    "Time to check, decode and store the variants of one verified upload (processor)",
    ["kind"],
    buckets=SECONDS_BUCKETS,
)
