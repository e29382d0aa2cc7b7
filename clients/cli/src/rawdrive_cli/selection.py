"""Which files an upload command means: paths expanded, folders walked, globs applied.

`select` takes the walk as a function so the rules are tested without a file system. Globs match
the path relative to the folder given on the command line (or a named file's own name), from the
right as `PurePosixPath.match` does: `*.jpg` matches at any depth, `raw/*.nef` in any `raw` folder.
Hidden files and folders (a leading dot: .DS_Store, .thumbnails) are skipped unless asked for.
"""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath

import msgspec

# Types Python's own table may lack (it depends on the system's mime.types). Camera RAW files have
# no registered type: browsers send application/octet-stream, and so do we.
_MIME_TYPES = {
    "heic": "image/heic",
    "heif": "image/heif",
    "webp": "image/webp",
    "mkv": "video/x-matroska",
    "avi": "video/x-msvideo",
    "mov": "video/quicktime",
    "mp4": "video/mp4",
}
OCTET_STREAM = "application/octet-stream"


class Candidate(msgspec.Struct, frozen=True):
    path: Path  # absolute
    shown: str  # as the user will recognise it: relative to the parent of the folder given


class Selection(msgspec.Struct, frozen=True):
    files: list[Candidate]
    missing: list[str]  # arguments that name nothing


Walk = Callable[[Path], Iterable[Path]]  # every file under a folder, as absolute paths


def mime_type_for(name: str) -> str:
    extension = name.rpartition(".")[2].lower() if "." in name else ""
    if extension in _MIME_TYPES:
        return _MIME_TYPES[extension]
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or OCTET_STREAM


def wanted(relative: PurePosixPath, include: Sequence[str], exclude: Sequence[str], hidden: bool) -> bool:
    if not hidden and any(part.startswith(".") for part in relative.parts):
        return False
    if include and not any(relative.match(pattern) for pattern in include):
        return False
    return not any(relative.match(pattern) for pattern in exclude)


def select(
    arguments: Sequence[str], *, include: Sequence[str] = (), exclude: Sequence[str] = (), hidden: bool = False,
    is_dir: Callable[[Path], bool], is_file: Callable[[Path], bool], walk: Walk, cwd: Path,
) -> Selection:
    """The files to upload, in a stable order, each once, and the arguments that name nothing."""
    files: dict[Path, Candidate] = {}
    missing = []
    for argument in arguments:
        path = (cwd / Path(argument).expanduser()).absolute()
        if is_dir(path):
            found = sorted(walk(path))
            for file in found:
                relative = PurePosixPath(file.relative_to(path).as_posix())
                if wanted(relative, include, exclude, hidden):
                    shown = f"{path.name}/{relative}" if path.name else str(relative)
                    files.setdefault(file, Candidate(file, shown))
        elif is_file(path):
            # A file named on the command line is wanted even if hidden; the globs still apply.
            if wanted(PurePosixPath(path.name), include, exclude, hidden=True):
                files.setdefault(path, Candidate(path, argument))
        else:
            missing.append(argument)
    return Selection(files=list(files.values()), missing=missing)


def walk_files(folder: Path) -> Iterable[Path]:
    """Regular files under `folder` (symlinked files followed, symlinked folders not: no loops)."""
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            if path.is_file():
                yield path


def select_on_disk(
    arguments: Sequence[str], *, include: Sequence[str] = (), exclude: Sequence[str] = (), hidden: bool = False
) -> Selection:
    return select(
        arguments, include=include, exclude=exclude, hidden=hidden,
        is_dir=Path.is_dir, is_file=Path.is_file, walk=walk_files, cwd=Path.cwd(),
    )
