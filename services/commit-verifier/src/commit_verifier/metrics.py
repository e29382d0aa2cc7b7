"""The verifier's own Prometheus metrics (served at /metrics with rawdrive_platform.metrics')."""

from prometheus_client import Counter, Histogram

from rawdrive_platform.metrics import SECONDS_BUCKETS

# prometheus_client appends _total to counters.
UPLOADS_COMPLETED = Counter(
    "rawdrive_uploads_completed", "Uploads verified and committed as assets (verifier)", ["kind"]
)
UPLOADS_REJECTED = Counter("rawdrive_uploads_rejected", "Commits the verifier rejected (verifier)", ["reason"])
INGESTED_BYTES = Counter(
    "rawdrive_ingested_bytes",
    # Verified sizes rather than bytes through the gateway: S3 multipart parts bypass it.
    "Bytes of verified uploads, counted once each at verification, whatever the protocol (verifier)",
    ["kind"],
)
VERIFICATION_SECONDS = Histogram(
    "rawdrive_verification_seconds",
    "Time to complete, measure and hash one commit and record the decision (verifier)",
    ["kind"],
    buckets=SECONDS_BUCKETS,
)
