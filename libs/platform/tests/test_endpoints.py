"""A customer's S3 endpoint is not a way into our network: which endpoints and addresses are
refused (pure), and that every client refuses them again at connection time and never follows a
redirect, against loopback stand-in servers."""

import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from rawdrive_devkit import testkit
from rawdrive_devkit.devstack.servers import loopback_endpoint_policy
from rawdrive_platform.config import Secret
from rawdrive_platform.storage import (
    EndpointPolicy,
    EndpointRefused,
    Storage,
    StorageError,
    StorageProfile,
    StorageUnavailable,
    address_refused,
    check_endpoint,
)

STRICT = EndpointPolicy()
LISTED = EndpointPolicy(allowed_endpoints=("https://*.corp.example", "https://minio.example.org:9000"))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
        "100.64.0.1", "100.127.255.254", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::",
        "fc00::1", "fd12:3456::1", "fe80::1", "fe80::1%eth0", "ff02::1", "::ffff:127.0.0.1",
        "::ffff:169.254.169.254", "::ffff:10.1.2.3", "198.18.0.1", "192.0.2.1",
    ],
)
def test_internal_addresses_are_refused(address):
    assert address_refused(address, STRICT)


@pytest.mark.parametrize("address", ["1.1.1.1", "52.216.8.1", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address):
    assert not address_refused(address, STRICT)


def test_an_allowed_network_is_exempt_and_nothing_else():
    policy = loopback_endpoint_policy()
    assert not address_refused("127.0.0.1", policy)
    assert address_refused("127.0.0.2", policy)
    assert address_refused("10.0.0.1", policy)


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://s3.eu-west-1.amazonaws.com",
        "https://abc123.r2.cloudflarestorage.com",
        "https://store.corp.example",
        "https://minio.example.org:9000",
        None,  # the SDK's own AWS resolution
    ],
)
def test_aws_r2_and_listed_endpoints_pass(endpoint):
    check_endpoint(endpoint, LISTED)


@pytest.mark.parametrize(
    ("endpoint", "why"),
    [
        ("http://s3.eu-west-1.amazonaws.com", "https"),
        ("ftp://s3.amazonaws.com", "https"),
        ("https://evil.example", "allowed endpoints"),
        ("https://minio.example.org:9001", "allowed endpoints"),
        ("https://s3.amazonaws.com.evil.example", "allowed endpoints"),
        ("https://127.0.0.1", "allowed endpoints"),
        ("https://user:pw@s3.amazonaws.com", "nothing else"),
        ("https://s3.amazonaws.com/path", "nothing else"),
        ("https://s3.amazonaws.com?x=1", "nothing else"),
        ("https://s3.amazonaws.com:99999", "port"),
    ],
)
def test_other_endpoints_are_refused_with_a_reason(endpoint, why):
    with pytest.raises(EndpointRefused, match=why):
        check_endpoint(endpoint, LISTED)


@pytest.mark.parametrize(
    "endpoint",
    ["https://169.254.169.254", "https://10.0.0.5:443", "https://[::ffff:127.0.0.1]", "https://[fd00::1]"],
)
def test_an_allowed_pattern_does_not_allow_an_internal_ip_literal(endpoint):
    with pytest.raises(EndpointRefused, match="not a public one"):
        check_endpoint(endpoint, EndpointPolicy(allowed_endpoints=("https://*",)))


def test_http_only_when_the_policy_allows_it():
    with pytest.raises(EndpointRefused, match="https"):
        check_endpoint("http://store.corp.example", LISTED)
    check_endpoint("http://store.corp.example", EndpointPolicy(allowed_endpoints=("http://*.corp.example",), allow_http=True))


# -- at connection time, against loopback servers ---------------------------------------------


class Recorder:
    """A loopback HTTP server that records every request; answers 200 with some bytes, or
    redirects to `redirect_to`."""

    def __init__(self, redirect_to: str | None = None) -> None:
        self.requests: list[str] = []
        self._redirect_to = redirect_to
        self.port = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        if self._redirect_to is not None:
            return web.Response(status=303, headers={"Location": self._redirect_to}, text="see other")
        return web.Response(status=200, body=b"secret internal data")


@contextlib.asynccontextmanager
async def serving(recorder: Recorder) -> AsyncIterator[Recorder]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder._handle)
    async with testkit.serving(app) as recorder.port:
        yield recorder


def byos_profile(endpoint: str, policy: EndpointPolicy) -> StorageProfile:
    return StorageProfile(
        profile_id="byos-test", provider="byos", bucket="bucket", endpoint=endpoint, region="us-east-1",
        access_key_id="id", secret_access_key=Secret("secret"), endpoint_policy=policy,
    )


async def test_an_internal_ip_literal_is_refused_when_the_storage_opens():
    with pytest.raises(EndpointRefused):
        await Storage.open(byos_profile("https://169.254.169.254", EndpointPolicy(allowed_endpoints=("https://*",))))


async def every_client_fails(storage: Storage, error: type[StorageError]) -> None:
    """However the storage reaches its endpoint (the async SDK, the blocking reader, a streamed
    part), it fails with `error`."""

    async def body() -> AsyncIterator[bytes]:
        yield b"x"

    with pytest.raises(error):
        await storage.check_bucket()
    with pytest.raises(error):
        await storage.get_range("some/key", 0, 10)
    with pytest.raises(error):
        [piece async for piece in storage.iter_chunks("some/key")]
    with pytest.raises(error):
        await storage.stream_part("some/key", "upload-1", 1, 1, body())


async def test_a_name_resolving_to_loopback_is_refused_at_every_connection():
    # `localhost` passes the save-time check (a name, listed) but resolves to loopback: no
    # client may connect, however it reads (async SDK, blocking reader, streamed part).
    async with serving(Recorder()) as internal:
        policy = EndpointPolicy(allowed_endpoints=("http://localhost:*",), allow_http=True)
        storage = await Storage.open(byos_profile(f"http://localhost:{internal.port}", policy))
        try:
            await every_client_fails(storage, StorageUnavailable)
        finally:
            await storage.close()
        assert internal.requests == []


async def test_the_same_name_connects_where_the_policy_allows_its_network():
    # The control for the test above: the refusal is the address check, not a dead server.
    async with serving(Recorder()) as server:
        policy = EndpointPolicy(allowed_endpoints=("http://localhost:*",), allowed_networks=("127.0.0.1/32",), allow_http=True)
        storage = await Storage.open(byos_profile(f"http://localhost:{server.port}", policy))
        try:
            await storage.check_bucket()
            assert b"".join([piece async for piece in storage.iter_chunks("some/key")]) == b"secret internal data"
        finally:
            await storage.close()
        assert server.requests == ["HEAD /bucket", "GET /bucket/some/key"]


async def test_no_client_follows_a_redirect_from_the_endpoint():
    async with serving(Recorder()) as internal:
        async with serving(Recorder(f"http://127.0.0.1:{internal.port}/latest/meta-data/")) as endpoint:
            url = f"http://127.0.0.1:{endpoint.port}"
            storage = await Storage.open(byos_profile(url, loopback_endpoint_policy(url)))
            try:
                await every_client_fails(storage, StorageError)
            finally:
                await storage.close()
            assert len(endpoint.requests) >= 4
        assert internal.requests == []
