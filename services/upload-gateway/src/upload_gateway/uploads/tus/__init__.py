"""tus 1.0 server: pure protocol rules, the store port (TusStore, TusLock), its PostgreSQL+S3
implementation, and the aiohttp routes of an upload and of a workspace's creation endpoint."""

from upload_gateway.uploads.tus.creation import CREATION_PATH, OpenedUpload, OpenUpload, creation_routes
from upload_gateway.uploads.tus.lease import LeaseLock, LeaseTerms
from upload_gateway.uploads.tus.pg_store import PostgresS3Store
from upload_gateway.uploads.tus.routes import TUS_PATH, Authorize, StoreFor, tus_routes
from upload_gateway.uploads.tus.store import TusLock, TusStore, UploadState
from upload_gateway.uploads.tus.target import TusTarget

__all__ = [
    "CREATION_PATH", "TUS_PATH", "Authorize", "LeaseLock", "LeaseTerms", "OpenUpload", "OpenedUpload", "PostgresS3Store",
    "StoreFor", "TusLock", "TusStore", "TusTarget", "UploadState", "creation_routes", "tus_routes",
]
