"""tus 1.0 server: pure protocol rules, the store port (TusStore, TusLock), its PostgreSQL+S3
implementation, and the aiohttp routes."""

from upload_gateway.uploads.tus.pg_store import AdvisoryLock, PostgresS3Store
from upload_gateway.uploads.tus.routes import TUS_PATH, Authorize, StoreFor, tus_routes
from upload_gateway.uploads.tus.store import TusLock, TusStore, UploadState
from upload_gateway.uploads.tus.target import TusTarget

__all__ = [
    "TUS_PATH", "AdvisoryLock", "Authorize", "PostgresS3Store", "StoreFor", "TusLock", "TusStore", "TusTarget",
    "UploadState", "tus_routes",
]
