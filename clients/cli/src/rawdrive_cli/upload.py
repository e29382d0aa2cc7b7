"""`rawdrive upload`: every selected file hashed, sent (tus or S3 multipart), committed, awaited.

Per file: the SHA-256 is computed while reading the file once and declared when the session is
opened; the session and every confirmed offset or part go into the state file before the next
piece is sent, so a rerun after Ctrl-C or a crash continues each file where the gateway says it
stands, and skips files already committed. A file the gateway refuses (too large, wrong type,
checksum) is reported and the others go on.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import msgspec
from rich.progress import Progress, TaskID

from rawdrive_cli import plan
from rawdrive_cli.errors import GatewayProblem
from rawdrive_cli.gateway import Asset, Gateway, PresignedPart
from rawdrive_cli.selection import Candidate, mime_type_for
from rawdrive_cli.state import Entry, FileVersion, UploadState, entry_key, resumable, still_valid

READ_BLOCK = 1024 * 1024  # hashing reads
SEND_PIECE = 64 * 1024  # bodies are streamed in pieces this big (progress and --limit-rate)
ASSET_POLL_S = 0.5
# Asset states after which waiting is over.
SETTLED = {"available", "failed", "deleted"}



class Outcome(msgspec.Struct, kw_only=True, omit_defaults=True):
    file: str
    state: str  # the asset's state, or "failed" when no asset came of it
    asset_id: str | None = None
    thumb_url: str | None = None
    reason: str | None = None  # why it failed
    protocol: str | None = None
    resumed_from: int | None = None  # bytes the gateway already had when this run started
    skipped: Literal["already_uploaded", "duplicate"] | None = None
    upload_id: str | None = None

    @property
    def failed(self) -> bool:
        return self.state == "failed"


class Options(msgspec.Struct, frozen=True, kw_only=True):
    protocol: plan.ProtocolChoice = "auto"
    s3_threshold: int = plan.DEFAULT_S3_THRESHOLD
    part_jobs: int = 4
    limit_rate: int | None = None  # bytes per second for the whole run
    wait: bool = True
    wait_timeout_s: float = 600.0
    library: str = "default"


class Throttle:
    """One byte budget for the whole run (--limit-rate)."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self.sent = 0
        self.started = time.monotonic()

    async def take(self, n: int) -> None:
        self.sent += n
        delay = plan.throttle_delay(self.rate, self.sent, time.monotonic() - self.started)
        if delay:
            await asyncio.sleep(delay)


class FileBar:
    """A file's progress bar, and its share of the total bar."""

    def __init__(self, progress: Progress, total: TaskID, name: str, size: int) -> None:
        self.progress, self.total, self.size = progress, total, size
        self.task = progress.add_task(name, total=size)
        self.counted = 0  # what this file has added to the total bar

    def phase(self, description: str, done: int) -> None:
        self.progress.update(self.task, description=description, completed=done)

    def hashing(self, done: int) -> None:
        self.progress.update(self.task, completed=done)

    def sent(self, done: int) -> None:
        self.progress.update(self.task, completed=done)
        self.progress.advance(self.total, done - self.counted)
        self.counted = done

    def finish(self) -> None:
        self.sent(self.size)
        self.progress.remove_task(self.task)


def _read(path: Path, start: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(length)
    if len(data) != length:
        raise OSError(f"{path} changed while uploading (short read at {start})")
    return data


def _hash(path: Path, report: Callable[[int], None]) -> str:
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            digest.update(block)
            done += len(block)
            report(done)
    return digest.hexdigest()


class Uploader:
    def __init__(
        self, gateway: Gateway, state: UploadState, options: Options, progress: Progress, total: TaskID,
    ) -> None:
        self.gw, self.state, self.options = gateway, state, options
        self.progress, self.total = progress, total
        self.throttle = Throttle(options.limit_rate)

    # -- one file -------------------------------------------------------------------------------

    async def upload(self, candidate: Candidate) -> Outcome:
        path = candidate.path
        try:
            stat = path.stat()
        except OSError as error:
            return Outcome(file=candidate.shown, state="failed", reason=f"cannot read: {error.strerror}")
        bar = FileBar(self.progress, self.total, candidate.shown, stat.st_size)
        try:
            return await self._upload(candidate, FileVersion(stat.st_size, stat.st_mtime_ns), bar)
        except GatewayProblem as problem:
            return Outcome(file=candidate.shown, state="failed", reason=str(problem))
        except OSError as error:
            return Outcome(file=candidate.shown, state="failed", reason=f"cannot read: {error}")
        finally:
            bar.finish()

    async def _upload(self, candidate: Candidate, version: FileVersion, bar: FileBar) -> Outcome:
        key = entry_key(self.gw.base_url, self.gw.workspace, self.options.library, candidate.path)
        entry = still_valid(self.state.get(key), version)
        if entry is not None and entry.committed:
            asset_id = entry.duplicate_of or entry.asset_id
            assert asset_id is not None
            return await self._settled(candidate, asset_id, skipped="already_uploaded")
        if entry is None:
            bar.phase(f"[dim]hashing[/] {candidate.shown}", 0)
            sha256 = await asyncio.to_thread(_hash, candidate.path, bar.hashing)
            entry = Entry(version=version, sha256=sha256)
        resumed_from = None
        if resumable(entry, datetime.now(UTC)):
            try:
                resumed_from = await self._send(candidate, entry, bar, resuming=True)
            except GatewayProblem as problem:
                if problem.status == 409:  # committed before the crash: commit again (idempotent)
                    resumed_from = version.size
                elif problem.status in (404, 410):  # the session is gone (expired, aborted)
                    entry = Entry(version=version, sha256=entry.sha256)
                else:
                    raise
        if resumed_from is None:
            duplicate = await self._open_session(candidate, entry, key)
            if duplicate is not None:
                return duplicate
            entry = self.state.entries[key]
            await self._send(candidate, entry, bar, resuming=False)
        assert entry.upload_id is not None and entry.asset_id is not None
        bar.phase(f"[dim]committing[/] {candidate.shown}", version.size)
        await self._commit(entry)
        entry.committed = True
        self.state.put(key, entry)
        outcome = await self._settled(candidate, entry.asset_id)
        outcome.protocol, outcome.upload_id = entry.protocol, entry.upload_id
        outcome.resumed_from = resumed_from
        return outcome

    async def _open_session(self, candidate: Candidate, entry: Entry, key: str) -> Outcome | None:
        """Open the session and record it; an Outcome when the gateway says it is a duplicate."""
        size = entry.version.size
        protocol = plan.choose_protocol(self.options.protocol, size, self.options.s3_threshold)
        created = await self.gw.create_upload({
            "file_name": candidate.path.name,
            "mime_type": mime_type_for(candidate.path.name),
            "size_bytes": size,
            "library_id": self.options.library,
            "resumable_protocol": protocol,
            "sha256": entry.sha256,
            "on_duplicate": "skip",  # an available asset with these bytes answers instead: nothing sent twice
        })
        if created.duplicate_of is not None:
            self.state.put(key, Entry(version=entry.version, sha256=entry.sha256, committed=True,
                                      duplicate_of=created.duplicate_of))
            return await self._settled(candidate, created.duplicate_of, skipped="duplicate")
        self.state.put(key, Entry(
            version=entry.version, sha256=entry.sha256, protocol=protocol, upload_id=created.upload_id,
            asset_id=created.asset_id, upload_url=created.upload_url, headers=created.headers,
            expires_at=created.expires_at, part_size=created.part_size, part_count=created.part_count,
        ))
        return None

    async def _send(self, candidate: Candidate, entry: Entry, bar: FileBar, *, resuming: bool) -> int:
        """Send what the gateway does not hold yet; the bytes it held before (resumed from)."""
        bar.phase(("[cyan]resuming[/] " if resuming else "") + candidate.shown, 0)
        key = entry_key(self.gw.base_url, self.gw.workspace, self.options.library, candidate.path)
        if entry.protocol == "tus":
            return await self._send_tus(candidate.path, entry, key, bar)
        return await self._send_parts(candidate.path, entry, key, bar)

    # -- tus --------------------------------------------------------------------------------------

    async def _send_tus(self, path: Path, entry: Entry, key: str, bar: FileBar) -> int:
        assert entry.upload_url is not None
        size = entry.version.size
        offset = await self.gw.tus_offset(entry.upload_url, entry.headers)
        if offset is None:
            await self.gw.tus_create(entry.upload_url, entry.headers, size)
            offset = 0
        held = offset
        bar.sent(offset)
        failures = 0
        while offset < size:
            chunk = plan.tus_chunks(offset, size)[0]
            data = await asyncio.to_thread(_read, path, chunk.start, chunk.length)
            try:
                offset = await self.gw.tus_patch(
                    entry.upload_url, entry.headers, offset, self._body(data, bar, chunk.start), len(data)
                )
                failures = 0
            except GatewayProblem as problem:
                # The gateway keeps what arrived of a broken body: ask where it stands, go on.
                failures += 1
                if problem.status in (400, 401, 403, 404, 409, 410, 413) or failures > 3:
                    raise
                await asyncio.sleep(failures)
                offset = await self.gw.tus_offset(entry.upload_url, entry.headers) or 0
            entry.offset = offset
            self.state.put(key, entry)
            bar.sent(offset)
        return held

    def _body(self, data: bytes, bar: FileBar, start: int) -> Callable[[], AsyncIterator[bytes]]:
        """The request body as pieces, each paced by --limit-rate and shown on the bar."""

        async def pieces() -> AsyncIterator[bytes]:
            view = memoryview(data)
            for at in range(0, len(data), SEND_PIECE):
                piece = view[at : at + SEND_PIECE]
                await self.throttle.take(len(piece))
                yield bytes(piece)
                bar.sent(start + at + len(piece))

        return pieces

    # -- S3 multipart -----------------------------------------------------------------------------

    async def _send_parts(self, path: Path, entry: Entry, key: str, bar: FileBar) -> int:
        assert entry.upload_id is not None and entry.part_size and entry.part_count
        size, part_size = entry.version.size, entry.part_size
        # Storage is the truth about which parts arrived; the state file may trail it by a part.
        stored = {p.part_number: p.etag for p in await self.gw.stored_parts(entry.upload_id, entry.headers)}
        entry.parts = stored
        held = sum(plan.part_range(n, part_size, size).length for n in stored)
        done = {n: plan.part_range(n, part_size, size).length for n in stored}
        bar.sent(held)
        limit = asyncio.Semaphore(self.options.part_jobs)

        async def send(part: PresignedPart) -> None:
            async with limit:
                piece = plan.part_range(part.part_number, part_size, size)
                data = await asyncio.to_thread(_read, path, piece.start, piece.length)

                def shown(n: int) -> None:
                    done[part.part_number] = n
                    bar.sent(sum(done.values()))

                etag = await self.gw.put_part(part, self._part_body(data, shown), len(data))
                done[part.part_number] = piece.length
                entry.parts[part.part_number] = etag
                self.state.put(key, entry)

        for numbers in plan.batches(plan.missing_parts(entry.part_count, set(stored))):
            presigned = await self.gw.presign_parts(entry.upload_id, entry.headers, numbers)
            await asyncio.gather(*(send(part) for part in presigned))
        return held

    def _part_body(self, data: bytes, shown: Callable[[int], None]) -> Callable[[], AsyncIterator[bytes]]:
        async def pieces() -> AsyncIterator[bytes]:
            view = memoryview(data)
            for at in range(0, len(data), SEND_PIECE):
                piece = view[at : at + SEND_PIECE]
                await self.throttle.take(len(piece))
                yield bytes(piece)
                shown(at + len(piece))

        return pieces

    # -- commit and the asset ---------------------------------------------------------------------

    async def _commit(self, entry: Entry) -> None:
        assert entry.upload_id is not None
        parts = None
        if entry.protocol == "s3_multipart":
            parts = [{"part_number": n, "etag": etag} for n, etag in sorted(entry.parts.items())]
        deadline = time.monotonic() + self.options.wait_timeout_s
        # 202: still verifying; commit again (idempotent) until the verdict.
        while (await self.gw.commit(entry.upload_id, entry.sha256, parts)).status == "verifying":
            if time.monotonic() > deadline:
                raise GatewayProblem(0, "verifying", f"still verifying after {self.options.wait_timeout_s:.0f} s")
            await asyncio.sleep(1.0)

    async def _settled(self, candidate: Candidate, asset_id: str, skipped: str | None = None) -> Outcome:
        """The asset as the catalogue shows it once processed (or now, with --no-wait)."""
        deadline = time.monotonic() + self.options.wait_timeout_s
        asset: Asset | None = None
        while True:
            try:
                asset, _ = await self.gw.asset(asset_id)
            except GatewayProblem as problem:
                if problem.status != 404:  # 404: the catalogue has not heard of it yet
                    raise
            if asset is not None and (asset.status in SETTLED or not self.options.wait):
                break
            if time.monotonic() > deadline or (asset is None and not self.options.wait):
                break
            await asyncio.sleep(ASSET_POLL_S)
        outcome = Outcome(file=candidate.shown, state=asset.status if asset else "processing", asset_id=asset_id,
                          skipped=skipped)  # type: ignore[arg-type]
        if asset is not None:
            outcome.thumb_url = asset.thumb_url
            if asset.status == "failed":
                failure = asset.failure
                outcome.reason = f"processing failed: {failure.reason} {failure.detail}".strip() if failure else None
        return outcome
