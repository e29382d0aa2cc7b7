"""tus 1.0 server: pure protocol rules, an S3 multipart store, and the aiohttp routes."""

from upload_gateway.uploads.tus.routes import TUS_PATH, Authorize, StoreFor, tus_routes
from upload_gateway.uploads.tus.store import TusStore, UploadState
from upload_gateway.uploads.tus.target import MIN_PART_SIZE, TusTarget

__all__ = [
    "MIN_PART_SIZE", "TUS_PATH", "Authorize", "StoreFor", "TusStore", "TusTarget", "UploadState",
    "tus_routes",
]
