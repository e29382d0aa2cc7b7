"""The local upload state: what was sent of each file, so a rerun resumes instead of restarting.

One JSON file (default ~/.local/state/rawdrive/uploads.json, mode 0600: it holds upload-scoped
tokens) maps each file, per gateway, workspace and library, to its session: the upload URL and
headers, the offset the gateway confirmed (tus) or the parts storage holds (S3 multipart), and
whether it was committed. An entry counts only while the file keeps the size and modification
time it had; an edited file starts over. The gateway stays the truth about offsets: a resumed
upload asks it (HEAD, list parts) and the entry only says where to ask.

Every change is written at once by replacing the file (write, fsync, rename), so a crash leaves
the old or the new version, never half of one. An exclusive lock on a side file keeps two
`rawdrive upload` runs from overwriting each other's records.
"""

from __future__ import annotations

import fcntl
import os
from datetime import datetime
from pathlib import Path
from typing import IO, Literal

import msgspec

Protocol = Literal["tus", "s3_multipart"]


class FileVersion(msgspec.Struct, frozen=True):
    size: int
    mtime_ns: int


class Entry(msgspec.Struct, kw_only=True, omit_defaults=True):
    version: FileVersion
    sha256: str
    protocol: Protocol | None = None
    upload_id: str | None = None
    asset_id: str | None = None
    upload_url: str | None = None
    headers: dict[str, str] = {}
    expires_at: datetime | None = None
    part_size: int | None = None
    part_count: int | None = None
    offset: int = 0  # tus: bytes the gateway confirmed
    parts: dict[int, str] = {}  # S3 multipart: part number -> ETag, for parts storage confirmed
    committed: bool = False
    duplicate_of: str | None = None  # the gateway said an available asset has these bytes


def entry_key(gateway_url: str, workspace: str, library: str, path: Path) -> str:
    return f"{gateway_url.rstrip('/')} {workspace} {library} {path}"


def still_valid(entry: Entry | None, version: FileVersion) -> Entry | None:
    """The entry if it describes this version of the file; an edited file starts over."""
    return entry if entry is not None and entry.version == version else None


def resumable(entry: Entry, now: datetime) -> bool:
    """An uncommitted session that has not expired: its bytes can be continued."""
    return (
        not entry.committed
        and entry.upload_id is not None
        and entry.expires_at is not None
        and now < entry.expires_at
    )


class StateFileError(Exception):
    pass


class UploadState:
    """The state file, loaded once and rewritten on every change while the lock is held."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, Entry] = {}
        self._lock: IO[bytes] | None = None

    def __enter__(self) -> UploadState:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path.with_name(self.path.name + ".lock"), "ab")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StateFileError(
                f"another rawdrive upload is using {self.path}; wait for it or pass --state OTHER_FILE"
            ) from None
        if self.path.exists():
            try:
                self.entries = msgspec.json.decode(self.path.read_bytes(), type=dict[str, Entry])
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                self.__exit__()
                raise StateFileError(
                    f"the state file {self.path} is unreadable ({error}); move it away to start over"
                ) from None
        return self

    def __exit__(self, *_: object) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def put(self, key: str, entry: Entry) -> None:
        self.entries[key] = entry
        self.save()

    def save(self) -> None:
        temporary = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(msgspec.json.encode(self.entries))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)
