"""The gateway's own Prometheus metrics (served at /metrics with rawdrive_platform.metrics')."""

from prometheus_client import Counter, Gauge, Histogram

# prometheus_client appends _total to counters.
UPLOADS_STARTED = Counter("rawdrive_uploads_started", "Upload sessions opened (gateway)", ["protocol"])
UPLOADS_IN_FLIGHT = Gauge(
    # What the gateway's ScaledObject scales on: a pod's load is the bodies it holds open, not CPU.
    "rawdrive_gateway_uploads_in_flight",
    "tus requests (PATCH, creation-with-upload POST) whose body this gateway is receiving (gateway)",
)
HTTP_REQUEST_SECONDS = Histogram(
    "rawdrive_http_request_duration_seconds",
    # route is the pattern (/v1/workspaces/{workspace_id}/uploads), "unmatched" for unknown paths.
    "API requests by route, method and status: _count counts them; the time is until the handler "
    "answered (for a tus PATCH, including its body) (gateway)",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
