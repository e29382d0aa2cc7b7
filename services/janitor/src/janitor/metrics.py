"""The janitor's own Prometheus metrics (served at /metrics with rawdrive_platform.metrics')."""

from prometheus_client import Counter

# prometheus_client appends _total to counters.
UPLOADS_EXPIRED = Counter("rawdrive_uploads_expired", "Upload sessions expired before their commit (janitor)")
JANITOR_DELETED_OBJECTS = Counter("rawdrive_janitor_deleted_objects", "Objects the janitor deleted", ["reason"])
JANITOR_DELETED_BYTES = Counter("rawdrive_janitor_deleted_bytes", "Bytes of the objects the janitor deleted", ["reason"])
JANITOR_ABORTED_MULTIPART = Counter(
    "rawdrive_janitor_aborted_multipart_uploads", "Incomplete multipart uploads the janitor aborted", ["reason"]
)
