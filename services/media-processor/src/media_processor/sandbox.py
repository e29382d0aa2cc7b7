"""Decoding in child processes: one child per asset, with a wall-clock timeout and memory cap.

Children fork from a forkserver that has already imported Wand with the project's ImageMagick
policy (importing Wand takes about a second here; a fork takes milliseconds). Each child starts
its own process group and caps its address space, CPU time and file sizes before touching the
file; the programs it runs (ffmpeg, ffprobe, Ghostscript) inherit those limits; LibRaw (RAW)
runs inside the child itself. When the
deadline passes the parent kills the whole group, so a pixel flood, a decoder loop or a crash
fails that one asset and the worker goes on serving.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import signal
from multiprocessing.connection import Connection
from typing import Literal

import msgspec

from media_processor.dimensions import PixelLimits
from media_processor.magic import Family
from media_processor.variants import VariantName
from rawdrive_contracts import MediaMetadata, ProcessingFailureReason

# processing_failed's `cause` (an open set in the contract): which released `reason` each refines
# is fixed by the two constructors below.
FailureCause = Literal["too_many_pixels", "corrupt_content"]

# The module the forkserver imports once; it sets MAGICK_CONFIGURE_PATH before importing Wand.
_IMAGING = "media_processor.imaging"


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    timeout_s: float = 120.0
    memory_bytes: int = 2 * 1024**3
    # Largest file a child (or a program it runs) may write: decoded frames, ImageMagick's cache.
    file_bytes: int = 1024**3
    # Declared picture sizes above these are refused before decoding (reason too_many_pixels).
    pixels: PixelLimits = PixelLimits()


class Job(msgspec.Struct, frozen=True, kw_only=True):
    path: str  # the downloaded original
    family: Family
    workdir: str  # where the child writes frames and variants
    timeout_s: float  # the child's own deadline for the programs it runs
    pixels: PixelLimits = PixelLimits()


class Produced(msgspec.Struct, frozen=True, kw_only=True):
    name: VariantName
    path: str
    width: int
    height: int


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """Metadata (with `warnings` when the file is damaged but decodable) and the variants."""

    metadata: MediaMetadata
    variants: tuple[Produced, ...]


class Unprocessable(Exception):
    """This asset cannot be processed, for good; the reason goes into processing_failed."""

    def __init__(self, reason: ProcessingFailureReason, detail: str, cause: FailureCause | None = None) -> None:
        super().__init__(f"{cause or reason}: {detail}")
        self.reason: ProcessingFailureReason = reason
        self.detail = detail[:1000]
        self.cause: FailureCause | None = cause

    def __reduce__(self) -> tuple[type[Unprocessable], tuple[str, str, FailureCause | None]]:
        # Crosses the pipe from the child: rebuild from every field, not from the message.
        return (Unprocessable, (self.reason, self.detail, self.cause))


def too_many_pixels(detail: str) -> Unprocessable:
    return Unprocessable("unsupported_content", detail, "too_many_pixels")


def corrupt_content(detail: str) -> Unprocessable:
    return Unprocessable("decode_failed", detail, "corrupt_content")


class Sandbox:
    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([_IMAGING])

    def start(self) -> None:
        """Start the forkserver now and wait until it serves (blocking; about a second).

        Otherwise the first asset after a start pays for the forkserver and its import of Wand.
        A child that does nothing proves the server is up with its preload done.
        """
        child = self._context.Process(target=_ready, daemon=True)
        child.start()
        child.join()

    async def process(self, path: str, family: Family, workdir: str) -> Outcome:
        job = Job(
            path=path, family=family, workdir=workdir, timeout_s=self.limits.timeout_s * 0.9, pixels=self.limits.pixels
        )
        return await asyncio.to_thread(self._run, job)

    def _run(self, job: Job) -> Outcome:
        receiver, sender = self._context.Pipe(duplex=False)
        child = self._context.Process(target=_child, args=(sender, job, self.limits), daemon=True)
        child.start()
        sender.close()
        try:
            if not receiver.poll(self.limits.timeout_s):
                raise Unprocessable("timeout", f"decoding took longer than {self.limits.timeout_s:.0f} s")
            result = receiver.recv()
        except EOFError:
            child.join(5)
            raise Unprocessable("decode_failed", f"the decoder died (exit status {child.exitcode})") from None
        finally:
            _kill_group(child.pid)
            child.join(5)
            receiver.close()
        if isinstance(result, Unprocessable):
            raise result
        assert isinstance(result, Outcome)
        return result


def _kill_group(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _ready() -> None:
    """The child Sandbox.start() forks: the forkserver has served it, nothing else to do."""


def _child(sender: Connection, job: Job, limits: Limits) -> None:
    """Runs in the child: limit ourselves, then decode; report an Outcome or an Unprocessable."""
    os.setsid()  # our own group, which the parent kills with everything we started
    cpu = int(limits.timeout_s) + 5
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    from media_processor import imaging  # already imported by the forkserver: free

    result: Outcome | Unprocessable
    try:
        result = imaging.process(job)
    except Unprocessable as exc:
        result = exc
    except MemoryError:
        result = Unprocessable("decode_failed", "the decoder ran out of its memory allowance")
    except Exception as exc:  # noqa: BLE001 - whatever a decoder raises fails only this asset
        result = Unprocessable("decode_failed", f"{type(exc).__name__}: {exc}")
    sender.send(result)
    sender.close()
