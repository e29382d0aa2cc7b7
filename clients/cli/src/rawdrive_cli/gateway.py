"""The gateway's HTTP API as the CLI uses it: upload sessions, tus, part URLs, commit, catalogue.

Each method is one request. Problems come back as GatewayProblem (one file's or asset's trouble);
a refused token and an unreachable gateway as CliError (nothing else can work either).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import aiohttp
import msgspec

from rawdrive_cli.errors import CliError, GatewayProblem, bad_token, unreachable

TUS = {"Tus-Resumable": "1.0.0"}
# Transient failures (connection lost, 5xx, 423 locked by a request the gateway is still
# finishing) are retried this many times with these pauses before the file is reported failed.
RETRY_PAUSES_S = (0.5, 2.0, 5.0)

Body = Callable[[], AsyncIterator[bytes]]  # a request body, made afresh for each attempt


class UploadCreated(msgspec.Struct, frozen=True, kw_only=True):
    upload_id: str | None = None
    asset_id: str | None = None
    upload_url: str | None = None
    headers: dict[str, str] = {}
    expires_at: datetime | None = None
    part_size: int | None = None
    part_count: int | None = None
    # An available asset in the workspace already has these bytes (same sha256): nothing to send.
    duplicate_of: str | None = None


class PresignedPart(msgspec.Struct, frozen=True):
    part_number: int
    url: str
    headers: dict[str, str]


class PresignedParts(msgspec.Struct, frozen=True):
    parts: list[PresignedPart]


class StoredPart(msgspec.Struct, frozen=True):
    part_number: int
    etag: str
    size: int | None = None


class PartList(msgspec.Struct, frozen=True):
    parts: list[StoredPart]


class CommitResult(msgspec.Struct, frozen=True):
    asset_id: str
    status: Literal["processing", "verifying"]


class Thumb(msgspec.Struct, frozen=True):
    url: str


class Variants(msgspec.Struct, frozen=True):
    thumb: Thumb | None = None


class Failure(msgspec.Struct, frozen=True):
    reason: str
    detail: str = ""


class Asset(msgspec.Struct, frozen=True, kw_only=True):
    """What the CLI shows of a catalogue asset; `--json` prints the gateway's whole document."""

    asset_id: str
    status: str
    file_name: str
    size_bytes: int
    sha256: str
    created_at: datetime
    kind: str | None = None
    variants: Variants | None = None
    failure: Failure | None = None
    purge_after: datetime | None = None

    @property
    def thumb_url(self) -> str | None:
        return self.variants.thumb.url if self.variants and self.variants.thumb else None


class AssetPage(msgspec.Struct, frozen=True):
    items: list[dict[str, Any]]
    next_cursor: str | None = None


class _Problem(msgspec.Struct):
    detail: str = ""
    code: str = ""
    title: str = ""


class Gateway:
    def __init__(self, base_url: str, token: str, workspace: str, *, retries: bool = True) -> None:
        # Uploads ride out a gateway restart; a one-shot command answers at once instead.
        self.retries = retries
        self.base_url = base_url.rstrip("/")
        self.workspace = workspace
        self._auth = {"Authorization": f"Bearer {token}"}
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Gateway:
        # No total timeout: a PATCH of a large chunk on a slow line may take minutes.
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=120)
        self._http = aiohttp.ClientSession(timeout=timeout)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._http is not None
        await self._http.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "use `async with Gateway(...)`"
        return self._http

    def url(self, path: str) -> str:
        return f"{self.base_url}/v1/workspaces/{self.workspace}{path}"

    # -- plumbing ---------------------------------------------------------------------------------

    async def _request(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, json: Any = None,
        body: Body | None = None, length: int | None = None, expect: tuple[int, ...] = (200,), retry: bool = True,
    ) -> tuple[aiohttp.ClientResponse, bytes]:
        """One request, retried on transient failures when it is safe to repeat."""
        attempts = len(RETRY_PAUSES_S) + 1 if retry and self.retries else 1
        for attempt in range(attempts):
            try:
                sent = dict(headers if headers is not None else self._auth)
                if length is not None:  # a streamed body with its length: S3 refuses chunked PUTs
                    sent["Content-Length"] = str(length)
                async with self.http.request(
                    method, url, headers=sent, json=json, data=body() if body else None, allow_redirects=False,
                ) as response:
                    body = await response.read()
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as error:
                if attempt + 1 < attempts:
                    await asyncio.sleep(RETRY_PAUSES_S[attempt])
                    continue
                if url.startswith(self.base_url):
                    raise unreachable(self.base_url, error) from None
                raise GatewayProblem(0, "storage_unreachable", f"storage did not answer: {error}") from None
            if response.status in expect:
                return response, body
            if (response.status >= 500 or response.status == 423) and attempt + 1 < attempts:
                await asyncio.sleep(RETRY_PAUSES_S[attempt])
                continue
            raise self._problem(response, body)
        raise AssertionError("unreachable")

    def _problem(self, response: aiohttp.ClientResponse, body: bytes) -> Exception:
        try:
            problem = msgspec.json.decode(body, type=_Problem)
            detail, code = problem.detail or problem.title, problem.code
        except (msgspec.DecodeError, msgspec.ValidationError):
            # tus routes and storage answer in plain text (S3: XML); keep it short.
            detail, code = body.decode(errors="replace").strip()[:300] or response.reason or "", ""
        if response.status == 401 and str(response.url).startswith(self.base_url):
            return bad_token(detail or "unauthorized")
        return GatewayProblem(response.status, code, detail)

    # -- uploads ----------------------------------------------------------------------------------

    async def create_upload(self, request: dict[str, Any]) -> UploadCreated:
        # Not retried: a lost answer would leave a second session (harmless, it expires, but a
        # repeat is the user's call).
        _, body = await self._request("POST", self.url("/uploads"), json=request, expect=(200, 201), retry=False)
        return msgspec.json.decode(body, type=UploadCreated)

    async def tus_offset(self, upload_url: str, headers: dict[str, str]) -> int | None:
        """The offset the gateway holds, or None when no tus upload was created yet."""
        try:
            response, _ = await self._request("HEAD", upload_url, headers=headers | TUS)
        except GatewayProblem as problem:
            if problem.status == 404:
                return None
            raise
        return int(response.headers["Upload-Offset"])

    async def tus_create(self, upload_url: str, headers: dict[str, str], length: int) -> None:
        await self._request(
            "POST", upload_url, headers=headers | TUS | {"Upload-Length": str(length)}, expect=(201,), retry=False
        )

    async def tus_patch(self, upload_url: str, headers: dict[str, str], offset: int, body: Body, length: int) -> int:
        """Send `data` at `offset`; the new offset. Not retried here: after a failure the caller
        asks the offset again (the gateway keeps what arrived) and continues from there."""
        response, _ = await self._request(
            "PATCH", upload_url, body=body, length=length, expect=(204,), retry=False,
            headers=headers | TUS | {"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
        )
        return int(response.headers["Upload-Offset"])

    async def presign_parts(self, upload_id: str, headers: dict[str, str], numbers: list[int]) -> list[PresignedPart]:
        _, body = await self._request(
            "POST", self.url(f"/uploads/{upload_id}/parts"), headers=headers, json={"part_numbers": numbers}
        )
        return msgspec.json.decode(body, type=PresignedParts).parts

    async def stored_parts(self, upload_id: str, headers: dict[str, str]) -> list[StoredPart]:
        _, body = await self._request("GET", self.url(f"/uploads/{upload_id}/parts"), headers=headers)
        return msgspec.json.decode(body, type=PartList).parts

    async def put_part(self, part: PresignedPart, body: Body, length: int) -> str:
        """PUT one part straight to storage with the signed headers; its ETag."""
        response, _ = await self._request("PUT", part.url, headers=part.headers, body=body, length=length)
        return response.headers["ETag"]

    async def commit(self, upload_id: str, sha256: str, parts: list[dict[str, Any]] | None) -> CommitResult:
        body: dict[str, Any] = {"sha256": sha256}
        if parts is not None:
            body["parts"] = parts
        # Commit is idempotent on the gateway: repeating it after a lost answer is safe.
        _, raw = await self._request("POST", self.url(f"/uploads/{upload_id}/commit"), json=body, expect=(200, 202))
        return msgspec.json.decode(raw, type=CommitResult)

    # -- catalogue --------------------------------------------------------------------------------

    async def asset(self, asset_id: str) -> tuple[Asset, dict[str, Any]]:
        _, body = await self._request("GET", self.url(f"/assets/{asset_id}"))
        return msgspec.json.decode(body, type=Asset), msgspec.json.decode(body)

    async def assets(self, params: dict[str, str]) -> AssetPage:
        query = "&".join(f"{key}={value}" for key, value in params.items())
        _, body = await self._request("GET", self.url(f"/assets?{query}" if query else "/assets"))
        return msgspec.json.decode(body, type=AssetPage)

    async def delete_asset(self, asset_id: str) -> None:
        await self._request("DELETE", self.url(f"/assets/{asset_id}"), expect=(204,))

    async def restore_asset(self, asset_id: str) -> tuple[Asset, dict[str, Any]]:
        _, body = await self._request("POST", self.url(f"/assets/{asset_id}/restore"))
        return msgspec.json.decode(body, type=Asset), msgspec.json.decode(body)

    async def download_url(self, asset_id: str) -> str:
        response, _ = await self._request("GET", self.url(f"/assets/{asset_id}/download"), expect=(302,))
        return response.headers["Location"]

    async def download(self, url: str, target: Path) -> AsyncIterator[int]:
        """Stream the original into `target` (via a temporary name); yields byte counts."""
        partial = target.with_name(target.name + ".part")
        async with self.http.get(url) as response:
            if response.status != 200:
                raise GatewayProblem(response.status, "", (await response.text())[:300])
            with open(partial, "wb") as out:
                async for chunk in response.content.iter_chunked(1024 * 1024):
                    out.write(chunk)
                    yield len(chunk)
        partial.replace(target)

    async def check_access(self) -> None:
        """Fail early, with one line, when the gateway is down or refuses the token."""
        try:
            await self._request("GET", self.url("/assets?limit=1"), retry=False)
        except GatewayProblem as problem:
            if problem.status in (403, 404):
                raise CliError(
                    f"the token does not give access to workspace {self.workspace!r} ({problem.detail}); "
                    "choose the workspace with --workspace / RAWDRIVE_WORKSPACE or get a token for it "
                    "with `rawdrive token --workspace NAME`"
                ) from None
            raise
