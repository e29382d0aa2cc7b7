"""The processor's folder on the scratch volume, and the removal of those a killed one left.

Everything a processor writes on scratch (the handlers' media-* work folders with the originals,
the decoders' rawdrive-decode-* folders with ImageMagick's pixel cache) goes into one folder of
its process's own, which it holds with an flock for as long as it lives. A processor that ends
normally removes its folder; one that is SIGKILLed or OOM-killed cannot, and its folder (up to a
GiB or more) would stay on the volume, an emptyDir that survives container restarts, until the
pod goes: a few such restarts and the pod is evicted for its ephemeral storage.

So each processor, as it starts, removes the folders beside its own that it can lock: the kernel
releases a process's flock when the process dies, however it dies, so a folder whose lock can be
taken has no living owner. A live processor's folder is locked and kept, so replicas that share a
scratch folder (tests, a misconfigured pod) never remove each other's work.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

PREFIX = "rawdrive-processor-"


def claim(scratch_dir: str | None) -> str:
    """Make and lock this process's folder in `scratch_dir` (None: the system's temp dir),
    then remove the ones dead processes left there. Blocking: it may delete gigabytes."""
    scratch = Path(scratch_dir or tempfile.gettempdir())
    folder = _locked_folder(scratch)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for other in scratch.glob(f"{PREFIX}*"):
        if other != folder:
            _remove_if_unowned(other)
    return str(folder)


def _locked_folder(scratch: Path) -> Path:
    while True:
        folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=scratch))
        # Another processor starting now may find it before it is locked, take it for a dead
        # one's and remove it: then make another.
        try:
            held = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(held), os.stat(folder)):
                # `held` stays open, unreferenced, for the process's life: closing it (or the
                # process's death) releases the lock.
                return folder
        except FileNotFoundError:
            pass
        os.close(held)


def _remove_if_unowned(folder: Path) -> None:
    try:
        held = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        # Removed by another processor starting at the same time, not a folder, or another
        # user's (the default scratch is the system's temp dir, shared): not ours to remove.
        return
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(held)  # its owner lives
        return
    try:
        shutil.rmtree(folder, ignore_errors=True)
    finally:
        os.close(held)
