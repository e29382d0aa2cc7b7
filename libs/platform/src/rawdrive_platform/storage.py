"""S3 object storage through aioboto3: one client per storage profile, a narrow interface.

A profile is either the managed bucket (Cloudflare R2) or a customer's own bucket ("byos").
The client config is the one R2 accepts: botocore's default CRC32 checksums are off unless an
operation requires them, and no checksum header is ever signed into a presigned URL.
Botocore errors become four exception types so callers can choose retry or reject.

A customer's endpoint ("byos") is untrusted: `check_endpoint` allows only https AWS, R2 or
operator-listed endpoints (RAWDRIVE_BYOS_ALLOWED_ENDPOINTS), and every connection to it, from
the async client, the blocking reader and the streaming HTTP session, resolves the host itself
and connects only to addresses that pass `address_refused` (so a DNS answer cannot swap in an
internal address after the save-time check). No client follows a redirect from any endpoint.
"""

import asyncio
import contextlib
import functools
import ipaddress
import re
import socket
import threading
import unicodedata
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import aioboto3
import aiobotocore.session
import aiohttp
import botocore.session
import msgspec
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from botocore.awsrequest import AWSHTTPConnection, AWSHTTPConnectionPool, AWSHTTPSConnection, AWSHTTPSConnectionPool
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.connection import create_connection

from rawdrive_platform.config import CommonSettings, Secret

MANAGED_PROFILE_ID = "managed"
Encryption = Literal["none", "sse_s3", "sse_kms"]
# S3 DeleteObjects takes at most this many keys per request.
_DELETE_BATCH = 1000
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})
_DENIED_CODES = frozenset(
    {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
     "InvalidToken", "AllAccessDisabled", "AccountProblem"}
)
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
     "ServiceUnavailable", "InternalError", "TooManyRequests", "503", "500"}
)
_XML_ERROR_CODE = re.compile(r"<Code>([^<]{1,100})</Code>")
# A streamed part's URL only has to outlive the one request that sends it.
_STREAMED_PART_URL_S = 15 * 60


class StorageError(Exception):
    """Base of every storage failure; not transient unless it is a StorageUnavailable."""


class ObjectMissing(StorageError):
    """The object or multipart upload does not exist."""


class StorageUnavailable(StorageError):
    """Transient: connection failure, timeout, 5xx or throttling. Retrying may succeed."""


class StorageDenied(StorageError):
    """Credentials rejected or access refused. Retrying will not help."""


class EndpointRefused(StorageError):
    """A bring-your-own endpoint this deployment will not connect to (not transient)."""


class EndpointPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Where a customer's endpoint may point; see check_endpoint and address_refused."""

    # Glob patterns over `scheme://host[:port]` allowed beside AWS and R2.
    allowed_endpoints: tuple[str, ...] = ()
    # Networks (CIDR) exempt from the address refusal: the dev stack's and tests' own loopback S3.
    allowed_networks: tuple[str, ...] = ()
    allow_http: bool = False  # development only

    def __post_init__(self) -> None:
        for network in self.allowed_networks:
            ipaddress.ip_network(network)  # ValueError at start, not at the first connection


# Public S3 services a customer's bucket may live at without the operator listing them.
_BUILT_IN_ENDPOINTS = ("https://*.amazonaws.com", "https://*.r2.cloudflarestorage.com")
# Host names and IP literals only: nothing fnmatch or a URL parser could read two ways.
_HOST = re.compile(r"[a-z0-9.-]+|\[[0-9a-f:.]+\]|[0-9a-f:.]+")


def endpoint_policy(settings: CommonSettings) -> EndpointPolicy:
    return EndpointPolicy(
        allowed_endpoints=settings.byos_allowed_endpoints,
        allowed_networks=settings.byos_allowed_networks,
        allow_http=settings.byos_allow_http,
    )


def address_refused(address: str, policy: EndpointPolicy) -> bool:
    """Whether a customer's endpoint must not be reached at this address: anything but a
    global unicast address (loopback, RFC 1918, link-local and 169.254.169.254, CGNAT
    100.64/10, unique-local fc00::/7, unspecified, reserved, multicast), IPv4-mapped IPv6
    forms of these included, unless the operator exempted its network."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # a zone index (fe80::1%eth0) is no part
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in ipaddress.ip_network(network) for network in policy.allowed_networks):
        return False
    return not ip.is_global or ip.is_multicast


def check_endpoint(endpoint: str | None, policy: EndpointPolicy) -> None:
    """Raise EndpointRefused unless a customer's endpoint may be used: https (http only when
    the policy allows it), nothing but scheme, host and port, AWS, R2 or an allowed pattern,
    and an IP literal must pass address_refused (host names are checked at every connection).
    None is the SDK's own AWS resolution."""
    if endpoint is None:
        return
    parts = urlsplit(endpoint.strip())
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and policy.allow_http):
        raise EndpointRefused("the endpoint must use https")
    try:
        port = parts.port
    except ValueError:
        raise EndpointRefused("the endpoint's port is not a number from 0 to 65535") from None
    host = (parts.hostname or "").lower()
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment \
            or parts.path not in ("", "/") or not _HOST.fullmatch(host):
        raise EndpointRefused("the endpoint must be scheme://host[:port] and nothing else")
    origin = f"{scheme}://{f'[{host}]' if ':' in host else host}{'' if port is None else f':{port}'}"
    patterns = (*_BUILT_IN_ENDPOINTS, *policy.allowed_endpoints)
    if not any(fnmatchcase(origin, pattern.lower()) for pattern in patterns):
        raise EndpointRefused(
            "the endpoint is neither AWS S3 nor Cloudflare R2, and not among this deployment's "
            "allowed endpoints (RAWDRIVE_BYOS_ALLOWED_ENDPOINTS)"
        )
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return
    if address_refused(str(literal), policy):
        raise EndpointRefused("the endpoint's address is not a public one")


async def check_endpoint_resolves(endpoint: str | None, policy: EndpointPolicy) -> None:
    """check_endpoint, then resolve a host name now: EndpointRefused unless at least one of
    its addresses passes (the save-time check; connections check again)."""
    check_endpoint(endpoint, policy)
    if endpoint is None:
        return
    parts = urlsplit(endpoint.strip())
    try:
        await asyncio.to_thread(_checked_address, parts.hostname or "", parts.port or 443, policy)
    except OSError:
        raise EndpointRefused("the endpoint does not resolve to a public address") from None


class _CheckedResolver(AbstractResolver):
    """aiohttp resolver that hands the connector only addresses the policy allows: the
    connection goes to the address checked here, while TLS and Host keep the name. (aiohttp
    does not ask a resolver about IP literals: check_endpoint checked those when the Storage
    opened.)"""

    def __init__(self, policy: EndpointPolicy) -> None:
        self._policy = policy
        self._resolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        allowed = [entry for entry in found if not address_refused(entry["host"], self._policy)]
        if not allowed:
            raise OSError(f"{host} does not resolve to an allowed address")
        return allowed

    async def close(self) -> None:
        await self._resolver.close()


def _checked_address(host: str, port: int, policy: EndpointPolicy) -> str:
    """The blocking twin of _CheckedResolver: the first allowed address of `host`."""
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if not address_refused(str(sockaddr[0]), policy):
            return str(sockaddr[0])
    raise OSError(f"{host} does not resolve to an allowed address")


def _pinned_new_conn(self: Any) -> socket.socket:
    """urllib3's HTTPConnection._new_conn, connecting to the checked address of the host
    (self.host stays the name, for TLS and the Host header)."""
    try:
        address = _checked_address(self._dns_host, self.port, self.endpoint_policy)
        return create_connection(
            (address, self.port), self.timeout,
            source_address=self.source_address, socket_options=self.socket_options,
        )
    except TimeoutError as error:
        raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from error
    except OSError as error:
        raise NewConnectionError(self, f"Failed to establish a new connection: {error}") from error


@functools.cache
def _pinned_pool_classes(policy: EndpointPolicy) -> dict[str, type]:
    """botocore's connection pools whose connections go through _pinned_new_conn."""
    classes: dict[str, type] = {}
    for scheme, pool, connection in (
        ("http", AWSHTTPConnectionPool, AWSHTTPConnection),
        ("https", AWSHTTPSConnectionPool, AWSHTTPSConnection),
    ):
        pinned = type(f"Pinned{connection.__name__}", (connection,),
                      {"_new_conn": _pinned_new_conn, "endpoint_policy": policy})
        classes[scheme] = type(f"Pinned{pool.__name__}", (pool,), {"ConnectionCls": pinned})
    return classes


class _WithoutRedirects:
    """An aiohttp session whose requests never follow a redirect (aiobotocore leaves aiohttp's
    default, which follows a 303 from the endpoint to any URL)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    def request(self, *args: Any, **kwargs: Any) -> Any:
        return self._session.request(*args, allow_redirects=False, **kwargs)


class _NoRedirectHTTPSession(AIOHTTPSession):
    async def _get_session(self, proxy_url: Any) -> Any:
        return _WithoutRedirects(await super()._get_session(proxy_url))


class StorageLocation(msgspec.Struct, frozen=True, kw_only=True):
    """Where a profile's objects live, and how they are encrypted there: declared once for the
    usable StorageProfile, the sealed ProfileRecord (profiles.py) and the gateway's row."""

    bucket: str
    endpoint: str | None = None  # None: the SDK resolves the AWS endpoint from the region
    region: str = "auto"
    key_prefix: str = ""  # see keys.check_key_prefix
    encryption: Encryption = "none"
    kms_key_id: str | None = None

    def location(self) -> dict[str, Any]:
        """Just the location's fields, to build another kind of location from: `Other(**x.location(), ...)`."""
        return {name: getattr(self, name) for name in StorageLocation.__struct_fields__}


class StorageProfile(StorageLocation, frozen=True, kw_only=True):
    profile_id: str
    provider: Literal["r2", "byos"]
    access_key_id: str
    secret_access_key: Secret
    # Where a byos endpoint may point (the strict default unless the deployment widens it);
    # the managed bucket is the operator's own and is not checked.
    endpoint_policy: EndpointPolicy = EndpointPolicy()

    @property
    def checked(self) -> bool:
        return self.provider == "byos"

    def __post_init__(self) -> None:
        if self.kms_key_id is not None and self.encryption != "sse_kms":
            raise ValueError("kms_key_id is only meaningful with encryption='sse_kms'")


class ObjectInfo(msgspec.Struct, frozen=True):
    key: str
    size: int
    etag: str
    content_type: str | None
    last_modified: datetime


class UploadedPart(msgspec.Struct, frozen=True):
    part_number: int
    etag: str
    size: int | None = None  # known when listed, not when just uploaded


class MultipartUpload(msgspec.Struct, frozen=True):
    key: str
    upload_id: str
    initiated: datetime


class PresignedRequest(msgspec.Struct, frozen=True):
    """A URL plus the headers the client must send with it (they are part of the signature)."""

    method: Literal["GET", "PUT"]
    url: str
    headers: dict[str, str]


def managed_storage_profile(settings: CommonSettings) -> StorageProfile:
    """The platform's own bucket (R2 in production, SeaweedFS in development)."""
    return StorageProfile(
        profile_id=MANAGED_PROFILE_ID,
        provider="r2",
        endpoint=settings.s3_endpoint,
        region=settings.s3_region,
        bucket=settings.s3_bucket,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key,
    )


def client_config(profile: StorageProfile) -> Config:
    return Config(**_client_options(profile))


def _client_options(profile: StorageProfile) -> dict[str, Any]:
    return dict(
        signature_version="s3v4",
        # Custom endpoints (R2, SeaweedFS, MinIO) do not all resolve bucket subdomains.
        s3={"addressing_style": "path" if profile.endpoint else "auto"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=64,
    )


def _async_client_config(profile: StorageProfile) -> AioConfig:
    """client_config for aiobotocore: no redirects, and a byos endpoint's checked resolver."""
    connector_args = {"resolver": _CheckedResolver(profile.endpoint_policy)} if profile.checked else None
    return AioConfig(
        connector_args=connector_args, http_session_cls=_NoRedirectHTTPSession, **_client_options(profile)
    )


# The header each of encryption_params' parameters becomes in a presigned request, which must
# send it with the value signed.
_ENCRYPTION_HEADERS = {
    "ServerSideEncryption": "x-amz-server-side-encryption",
    "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
}


def encryption_params(profile: StorageProfile) -> dict[str, str]:
    """Boto parameters for PutObject / CreateMultipartUpload that the profile requires."""
    if profile.encryption == "sse_s3":
        return {"ServerSideEncryption": "AES256"}
    if profile.encryption == "sse_kms":
        params = {"ServerSideEncryption": "aws:kms"}
        if profile.kms_key_id:
            params["SSEKMSKeyId"] = profile.kms_key_id
        return params
    return {}


def content_disposition(download_name: str) -> str:
    """RFC 6266 attachment header: an ASCII fallback plus filename*= in UTF-8 (RFC 5987).
    Control and format characters (U+202E and kin, in names stored before they were refused)
    never reach the header: a browser would show the name reordered."""
    download_name = "".join(ch for ch in download_name if unicodedata.category(ch) not in ("Cc", "Cf"))
    fallback = "".join(
        ch if ch.isascii() and ch.isprintable() and ch not in '"\\' else "_"
        for ch in download_name
    )
    header = f'attachment; filename="{fallback}"'
    if fallback != download_name:
        header += f"; filename*=UTF-8''{quote(download_name, safe='')}"
    return header


@contextlib.contextmanager
def _translated_errors(what: str) -> Iterator[None]:
    try:
        yield
    except ClientError as error:
        raise _from_client_error(error, what) from error
    except (NoCredentialsError, PartialCredentialsError) as error:
        raise StorageDenied(f"{what}: {error}") from error
    except (BotoConnectionError, aiohttp.ClientError, asyncio.TimeoutError) as error:
        raise StorageUnavailable(f"{what}: {error}") from error
    except BotoCoreError as error:
        raise StorageError(f"{what}: {error}") from error


def _from_client_error(error: ClientError, what: str) -> StorageError:
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    detail = error.response.get("Error", {}).get("Message", "")
    return _classified(code, status, f"{what}: {code or status} {detail}")


def error_from_response(status: int, body: str, what: str) -> StorageError:
    """The exception for an S3 error answer to a request we sent ourselves (an XML body)."""
    found = _XML_ERROR_CODE.search(body)
    code = found.group(1) if found else str(status)
    return _classified(code, status, f"{what}: {code} (HTTP {status})")


def _classified(code: str, status: int, message: str) -> StorageError:
    if code in _MISSING_CODES:
        return ObjectMissing(message)
    if code in _DENIED_CODES or status == 403:
        return StorageDenied(message)
    if code in _TRANSIENT_CODES or status >= 500 or status == 429:
        return StorageUnavailable(message)
    return StorageError(message)


@functools.cache
def _aiobotocore_session() -> aiobotocore.session.AioSession:
    return aiobotocore.session.get_session()


@functools.cache
def _boto_session() -> aioboto3.Session:
    """One session for every client in the process: its loader parses the S3 model (about
    13 MiB of Python objects) once, where a session per Storage kept a copy per profile."""
    return aioboto3.Session(botocore_session=_aiobotocore_session())


# Botocore sessions are not thread-safe (their clients are): blocking clients are made under this.
_blocking_client_lock = threading.Lock()


@functools.cache
def _blocking_session() -> botocore.session.Session:
    """Session for the blocking clients iter_chunks reads with. It shares the async session's
    loader, so the parsed S3 model is held once (a session of its own added about 12 MiB)."""
    session = botocore.session.get_session()
    session.register_component("data_loader", _aiobotocore_session().get_component("data_loader"))
    return session


def _client_args(profile: "StorageProfile") -> dict[str, Any]:
    """How a profile becomes an S3 client, the same for the async and the blocking one."""
    return {
        "endpoint_url": profile.endpoint,
        "region_name": profile.region,
        "aws_access_key_id": profile.access_key_id,
        "aws_secret_access_key": profile.secret_access_key.reveal(),
        "config": client_config(profile),
    }


def _new_blocking_client(profile: "StorageProfile") -> Any:
    with _blocking_client_lock:
        client = _blocking_session().create_client("s3", **_client_args(profile))
    if profile.checked:
        pin_connections(client, profile.endpoint_policy)
    return client


def pin_connections(client: Any, policy: EndpointPolicy) -> None:
    """Make a blocking botocore client connect only to addresses `policy` allows.

    botocore has no public hook for its connection class, so this is the one place that reaches
    into its internals: the client's URLLib3Session (`_endpoint.http_session`) and the pool
    table it and its urllib3 PoolManager build connections from. test_storage's
    test_the_botocore_internals_pin_connections_uses_still_exist fails when botocore changes them.
    """
    http = client._endpoint.http_session
    http._pool_classes_by_scheme = _pinned_pool_classes(policy)
    http._manager.pool_classes_by_scheme = http._pool_classes_by_scheme


@contextlib.contextmanager
def _translated_stream_errors(what: str) -> Iterator[None]:
    """A blocking body read fails as HTTPClientError (timeout, connection reset) or, when the
    connection ends early, IncompleteReadError: both transient, unlike other BotoCoreErrors."""
    try:
        yield
    except (HTTPClientError, IncompleteReadError) as error:
        raise StorageUnavailable(f"{what}: {error}") from error


def _close_when_read(reading: "asyncio.Future[bytes]", body: Any) -> None:
    """Close a blocking body once no worker thread reads it (urllib3 responses are not
    thread-safe). Closing drops the connection rather than draining the rest of the object."""

    def close(done: "asyncio.Future[bytes]") -> None:
        if not done.cancelled():
            done.exception()  # retrieved: a read failing after the caller left is no error
        body.close()

    if reading.done():
        close(reading)
    else:
        reading.add_done_callback(close)


class Storage:
    """One bucket through one profile. Open with ``await Storage.open(profile)``; close once."""

    def __init__(
        self,
        profile: StorageProfile,
        client: Any,
        closer: contextlib.AsyncExitStack,
        http: aiohttp.ClientSession | None = None,
    ):
        self.profile = profile
        self._s3 = client
        self._closer = closer
        self._http = http  # for requests whose body streams in as it arrives
        self._blocking_s3: Any = None  # see iter_chunks, made on first use

    @classmethod
    async def open(cls, profile: StorageProfile) -> "Storage":
        """Raises EndpointRefused for a byos endpoint the policy does not allow."""
        if profile.checked:
            check_endpoint(profile.endpoint, profile.endpoint_policy)
        closer = contextlib.AsyncExitStack()
        args = _client_args(profile) | {"config": _async_client_config(profile)}
        client = await closer.enter_async_context(_boto_session().client("s3", **args))
        resolver = _CheckedResolver(profile.endpoint_policy) if profile.checked else None
        # No connection limit for streamed parts: each is fed at its client's pace (a phone at
        # 256 KiB/s holds one for 20 s a part), so a fixed limit let slow clients' parts queue
        # every other upload's behind them. They are bounded anyway: at most two per tus request
        # in flight, the load the gateway scales on.
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, resolver=resolver),
            timeout=aiohttp.ClientTimeout(sock_connect=5, sock_read=60),
        )
        closer.push_async_callback(http.close)
        return cls(profile, client, closer, http)

    async def close(self) -> None:
        await self._closer.aclose()

    @property
    def bucket(self) -> str:
        return self.profile.bucket

    async def check_bucket(self) -> None:
        """Raise unless the bucket answers with these credentials (a readiness probe)."""
        with _translated_errors(f"head bucket {self.bucket}"):
            await self._s3.head_bucket(Bucket=self.bucket)

    async def head(self, key: str) -> ObjectInfo | None:
        try:
            with _translated_errors(f"head {key}"):
                response = await self._s3.head_object(Bucket=self.bucket, Key=key)
        except ObjectMissing:
            return None
        return ObjectInfo(
            key=key,
            size=response["ContentLength"],
            etag=response["ETag"].strip('"'),
            content_type=response.get("ContentType"),
            last_modified=response["LastModified"],
        )

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start`` up to but excluding ``end`` (Python slice bounds, not HTTP's)."""
        if not 0 <= start < end:
            raise ValueError(f"empty or negative range {start}..{end}")
        with _translated_errors(f"get {key} [{start}:{end}]"):
            response = await self._s3.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}"
            )
            async with response["Body"] as body:  # releases the connection on any exit
                return await body.read()

    async def iter_chunks(self, key: str, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        """Stream an object in pieces of ``chunk_size`` bytes (the last one may be shorter).

        One GET, read by a blocking botocore client in a worker thread one piece ahead: the
        thread receives the next piece while the caller works on this one, so neither waits on
        the other, and memory stays at two pieces whatever the object's size. Measured against
        aiohttp's stream on the event loop (bench/verify_bench.py): the blocking read copies
        each byte once, from the socket straight into its piece, where the loop's transport,
        HTTP parser and StreamReader copied it up to three times (CPU per GiB read and hashed:
        about 1.15 s in 4 MiB pieces against 1.4-1.7 s). Each piece costs a thread hand-off,
        which in 1 MiB pieces ate that gain: pieces of a few MiB amortise it.
        """
        loop = asyncio.get_running_loop()
        with _translated_errors(f"get {key}"), _translated_stream_errors(f"get {key}"):
            client = await self._blocking_client()
            response = await loop.run_in_executor(
                None, functools.partial(client.get_object, Bucket=self.bucket, Key=key)
            )
            body = response["Body"]
            reading = loop.run_in_executor(None, body.read, chunk_size)
            try:
                # Shielded: a cancelled caller leaves the read to finish, then the body closes.
                while piece := await asyncio.shield(reading):
                    reading = loop.run_in_executor(None, body.read, chunk_size)
                    yield piece
            finally:
                _close_when_read(reading, body)

    async def _blocking_client(self) -> Any:
        """This profile's blocking client, made on first use in a worker thread (about 20 ms)."""
        if self._blocking_s3 is None:
            client = await asyncio.to_thread(_new_blocking_client, self.profile)
            if self._blocking_s3 is None:
                self._blocking_s3 = client
                self._closer.callback(client.close)
            else:
                client.close()  # another caller made one meanwhile
        return self._blocking_s3

    async def put(
        self,
        key: str,
        body: bytes,
        content_type: str,
        *,
        content_disposition: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> str:
        """Store a small object in one request; returns its ETag."""
        params = {"ContentDisposition": content_disposition} if content_disposition else {}
        with _translated_errors(f"put {key}"):
            response = await self._s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType=content_type,
                Metadata=metadata or {},
                **params,
                **encryption_params(self.profile),
            )
        return response["ETag"].strip('"')

    async def delete(self, keys: Iterable[str]) -> None:
        """Delete in batches; keys that are already gone count as deleted."""
        pending = list(keys)
        for start in range(0, len(pending), _DELETE_BATCH):
            batch = pending[start : start + _DELETE_BATCH]
            with _translated_errors(f"delete {len(batch)} keys"):
                response = await self._s3.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
                )
            failures = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if failures:
                first = failures[0]
                raise _from_client_error(
                    ClientError({"Error": first}, "DeleteObjects"),
                    f"delete {first.get('Key')} (and {len(failures) - 1} more)",
                )

    async def list_keys(self, prefix: str) -> AsyncIterator[str]:
        paginator = self._s3.get_paginator("list_objects_v2")
        with _translated_errors(f"list {prefix}"):
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"]

    async def create_multipart(
        self, key: str, content_type: str, *, metadata: dict[str, str] | None = None
    ) -> str:
        """Start a multipart upload; returns its upload id."""
        with _translated_errors(f"create multipart {key}"):
            response = await self._s3.create_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                ContentType=content_type,
                Metadata=metadata or {},
                **encryption_params(self.profile),
            )
        return response["UploadId"]

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, body: bytes
    ) -> UploadedPart:
        with _translated_errors(f"upload part {part_number} of {key}"):
            response = await self._s3.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=part_number, Body=body
            )
        return UploadedPart(part_number=part_number, etag=response["ETag"].strip('"'))

    async def copy_part(
        self, key: str, upload_id: str, part_number: int, source_key: str, start: int, end: int
    ) -> UploadedPart:
        """Make part `part_number` of `key`'s multipart upload from bytes ``start`` up to but
        excluding ``end`` of the object `source_key` in this bucket (UploadPartCopy): storage
        copies them, none pass through this process."""
        if not 0 <= start < end:
            raise ValueError(f"empty or negative range {start}..{end}")
        with _translated_errors(f"copy part {part_number} of {key} from {source_key} [{start}:{end}]"):
            response = await self._s3.upload_part_copy(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=part_number,
                CopySource={"Bucket": self.bucket, "Key": source_key}, CopySourceRange=f"bytes={start}-{end - 1}",
            )
        return UploadedPart(part_number=part_number, etag=response["CopyPartResult"]["ETag"].strip('"'))

    async def stream_part(
        self, key: str, upload_id: str, part_number: int, size: int, body: AsyncIterable[bytes]
    ) -> UploadedPart:
        """Upload a part of exactly `size` bytes while `body` is still producing them.

        botocore signs a body's SHA-256 before sending it, so it must hold the whole part
        first; a presigned URL (UNSIGNED-PAYLOAD) lets the bytes go out as they arrive
        instead. A body that stops short, or a cancelled call, aborts the request: S3 keeps
        nothing of an incomplete part.
        """
        what = f"stream part {part_number} of {key}"
        if self._http is None:
            raise StorageError(f"{what}: this Storage was opened without an HTTP session")
        request = await self.presign_upload_part(
            key, upload_id, part_number, _STREAMED_PART_URL_S, content_length=size
        )
        headers = {**request.headers, "Content-Length": str(size)}
        with _translated_errors(what):
            async with self._http.put(request.url, data=body, headers=headers, allow_redirects=False) as response:
                if response.status != 200:
                    raise error_from_response(response.status, await response.text(), what)
                return UploadedPart(part_number=part_number, etag=response.headers["ETag"].strip('"'))

    async def stream_put(self, key: str, content_type: str, size: int, body: AsyncIterable[bytes]) -> str:
        """Store an object of exactly `size` bytes while `body` is still producing them, in one
        PutObject; returns its ETag. Presigned as stream_part is (the length signed, the payload
        not), with the profile's encryption as signed headers: PutObject, unlike UploadPart,
        takes them. A body that stops short, or a cancelled call, aborts the request: storage
        creates no object from an incomplete body.
        """
        what = f"stream put {key}"
        if self._http is None:
            raise StorageError(f"{what}: this Storage was opened without an HTTP session")
        encryption = encryption_params(self.profile)
        params = {"Bucket": self.bucket, "Key": key, "ContentType": content_type, "ContentLength": size, **encryption}
        url = await self._presign("put_object", params, _STREAMED_PART_URL_S)
        headers = {"Content-Length": str(size), "Content-Type": content_type}
        headers |= {_ENCRYPTION_HEADERS[name]: value for name, value in encryption.items()}
        with _translated_errors(what):
            async with self._http.put(url, data=body, headers=headers, allow_redirects=False) as response:
                if response.status != 200:
                    raise error_from_response(response.status, await response.text(), what)
                return response.headers["ETag"].strip('"')

    async def list_parts(self, key: str, upload_id: str) -> list[UploadedPart]:
        parts: list[UploadedPart] = []
        paginator = self._s3.get_paginator("list_parts")
        with _translated_errors(f"list parts of {key}"):
            async for page in paginator.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id):
                parts.extend(
                    UploadedPart(
                        part_number=part["PartNumber"],
                        etag=part["ETag"].strip('"'),
                        size=part["Size"],
                    )
                    for part in page.get("Parts", [])
                )
        return parts

    async def complete_multipart(
        self, key: str, upload_id: str, parts: Sequence[UploadedPart]
    ) -> str:
        """Join the parts (in part-number order) into the object; returns its ETag."""
        ordered = sorted(parts, key=lambda part: part.part_number)
        with _translated_errors(f"complete multipart {key}"):
            response = await self._s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": p.part_number, "ETag": f'"{p.etag}"'} for p in ordered]
                },
            )
        return response["ETag"].strip('"')

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort an upload; aborting one that is already gone is not an error."""
        try:
            with _translated_errors(f"abort multipart {key}"):
                await self._s3.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                )
        except ObjectMissing:
            pass

    async def list_multipart_uploads(self, prefix: str) -> AsyncIterator[MultipartUpload]:
        paginator = self._s3.get_paginator("list_multipart_uploads")
        with _translated_errors(f"list multipart uploads {prefix}"):
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for upload in page.get("Uploads", []):
                    yield MultipartUpload(
                        key=upload["Key"],
                        upload_id=upload["UploadId"],
                        initiated=upload["Initiated"],
                    )

    async def presign_upload_part(
        self, key: str, upload_id: str, part_number: int, expires_s: int, *, content_length: int | None = None
    ) -> PresignedRequest:
        """A part URL; with `content_length`, that length is signed (X-Amz-SignedHeaders
        `content-length;host`), so storage refuses a body of any other size with 403. Every HTTP
        client sends Content-Length by itself (browsers may not set it), so it is not in `headers`."""
        # SSE-S3/KMS are fixed at CreateMultipartUpload; parts carry no encryption headers.
        params = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": part_number}
        if content_length is not None:
            params["ContentLength"] = content_length
        url = await self._presign("upload_part", params, expires_s)
        return PresignedRequest(method="PUT", url=url, headers={})

    async def presign_get(
        self, key: str, expires_s: int, download_name: str | None = None
    ) -> str:
        params = {"Bucket": self.bucket, "Key": key}
        if download_name is not None:
            params["ResponseContentDisposition"] = content_disposition(download_name)
        return await self._presign("get_object", params, expires_s)

    async def _presign(self, operation: str, params: dict[str, Any], expires_s: int) -> str:
        # R2 accepts 1 s to 7 days; refusing here beats handing out a URL that cannot work.
        if not 1 <= expires_s <= 7 * 24 * 3600:
            raise ValueError(f"presigned URLs live 1 s to 7 days, not {expires_s} s")
        with _translated_errors(f"presign {operation} {params.get('Key')}"):
            return await self._s3.generate_presigned_url(
                operation, Params=params, ExpiresIn=expires_s
            )


class StorageRegistry:
    """Opens one Storage per profile id on first use and closes them all at shutdown."""

    def __init__(self) -> None:
        self._open: dict[str, Storage] = {}
        # Replaced clients (rotated credentials) may still serve in-flight calls: close late.
        self._retired: list[Storage] = []
        self._lock = asyncio.Lock()

    async def get(self, profile: StorageProfile) -> Storage:
        current = self._open.get(profile.profile_id)
        if current is not None and current.profile == profile:
            return current
        async with self._lock:
            current = self._open.get(profile.profile_id)
            if current is not None and current.profile == profile:
                return current
            if current is not None:
                self._retired.append(current)
            self._open[profile.profile_id] = storage = await Storage.open(profile)
            return storage

    async def aclose(self) -> None:
        storages = [*self._open.values(), *self._retired]
        self._open.clear()
        self._retired.clear()
        for storage in storages:
            await storage.close()

    async def __aenter__(self) -> "StorageRegistry":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
