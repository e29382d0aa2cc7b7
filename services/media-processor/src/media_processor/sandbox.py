"""Decoding in child processes: one child per asset, with a wall-clock timeout and memory cap.

Children fork from a forkserver that has already imported Wand with the project's ImageMagick
policy (importing Wand takes about a second here; a fork takes milliseconds). Each child starts
its own process group and caps its address space, CPU time and file sizes before touching the
file; the programs it runs (ffmpeg, ffprobe, Ghostscript) inherit those limits; LibRaw (RAW)
runs inside the child itself. When the
deadline (Limits.timeout_s, the only one: ImageMagick's policy sets none) passes the parent kills
the whole group and reports a timeout, so a pixel flood, a decoder loop or a crash fails that one
asset and the worker goes on serving.

A decoder exploit must not hold the service's secrets: the forkserver is exec'd through a
launcher with an empty environment plus what the decoders need (PATH, the ImageMagick policy
path, HOME and the temp dirs), so neither it nor any child it forks has the master key, the
bucket secret or a database URL in its environ. The forkserver makes
itself not dumpable (no ptrace or /proc/<pid>/mem by a same-uid process) and, when it runs as
root, moves into a network namespace of its own with no interface up, so decoders have no
network at all. Without root (Kubernetes without CAP_SYS_ADMIN) there is no such namespace:
the pod's NetworkPolicy is what keeps decoders off the network (docs/security.md). Each child
also caps the number of processes its user may have (RLIMIT_NPROC: no fork bombs; the
processor runs as a uid of its own so the count is its alone).

Decoders live no longer than the service. The forkserver exits when the service's end of its
"alive" pipe closes, which the kernel does however the service ends (SIGTERM, SIGKILL, a crash);
multiprocessing also hands that end to every child it forks, so each decoder closes its copy
first thing: otherwise a decode still at work (up to the deadline, or its CPU limit once nobody
enforces the deadline) kept the forkserver, and itself, running after the service was gone. As
the forkserver exits (also when a SIGTERM to the service's whole process group reaches it) it
kills every decoder's process group (stop_decoders).

Temporary files have one owner each. multiprocessing runs one forkserver a process, so its
launcher, its environment and the folder holding both (rawdrive-decoders-*, in the system's temp
dir) are the process's: made once, removed when the process exits. Each call gets a folder of
its own in its Sandbox's `temp_dir` (the scratch volume), which the child makes its HOME, TMPDIR
and MAGICK_TEMPORARY_PATH before running anything, and which the parent removes once the child's
group is dead: a killed ImageMagick leaves its magick-* pixel cache there, and no further.

A caller that gives up on a call (its task cancelled: the service stopping past its stop timeout)
kills the child at once and waits for its worker thread to end, so neither a decoder nor the
thread that waits on it outlives the handling (the event loop's close waits for every thread).
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import functools
import io
import multiprocessing
import multiprocessing.connection
import os
import pickle
import resource
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from importlib.resources import files
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any

import msgspec

from media_processor.dimensions import PixelLimits, declared_size
from media_processor.jobs import Job, Outcome, Unprocessable, refuse_oversized
from media_processor.magic import DECODING, Family

# The modules the forkserver imports once, in order: the first confines the forkserver (see
# confine_forkserver), the second sets MAGICK_CONFIGURE_PATH before importing Wand.
_PRELOAD = ["media_processor.forkserver_confinement", "media_processor.imaging"]
PR_SET_DUMPABLE, PR_GET_DUMPABLE = 4, 3
_CLONE_NEWNET = 0x40000000
# Inherited from the service when set: where programs and Python packages are, nothing secret.
_PASSED_THROUGH = ("PATH", "PYTHONPATH", "LANG")
# Where a decoder and the programs it runs keep temporary files (ImageMagick's pixel cache).
_TEMP_DIR_VARIABLES = ("HOME", "TMPDIR", "MAGICK_TEMPORARY_PATH")
# How much of an upload the service itself reads for a declared picture size before forking a
# decoder: enough for a JPEG's frame header after its EXIF (at most 64 KiB) and ICC profile, for
# PNG, WebP and HEIF, and for an MP4/MOV whose `moov` comes first. No more, so that walking a
# hostile file's markers or boxes costs the service at most ~20 ms of CPU.
DECLARED_SIZE_WITHIN = 128 * 1024
# A decoder's answer (metadata and the variants' paths: a few KiB) is read at most this long, so
# a decoder an exploit took over cannot make the processor hold gigabytes.
MAX_ANSWER_BYTES = 4 * 1024 * 1024

class Limits(msgspec.Struct, frozen=True, kw_only=True):
    timeout_s: float = 120.0
    memory_bytes: int = 2 * 1024**3
    # Largest file a child (or a program it runs) may write: decoded frames, ImageMagick's cache.
    file_bytes: int = 1024**3
    # Processes (threads included) the processor's user may have while a child runs.
    processes: int = 1024
    # Declared picture sizes above these are refused before decoding (reason too_many_pixels).
    pixels: PixelLimits = PixelLimits()


def decoder_environment(temp_dir: str) -> dict[str, str]:
    """Everything a decoder's environment holds: no RAWDRIVE_* variable, no credentials."""
    passed = {name: os.environ[name] for name in _PASSED_THROUGH if name in os.environ}
    temp = dict.fromkeys(_TEMP_DIR_VARIABLES, temp_dir)
    return passed | temp | {"MAGICK_CONFIGURE_PATH": str(files("media_processor") / "magick")}


def use_temp_dir(temp_dir: str) -> None:
    """In a decoder: keep every temporary file in `temp_dir`, its own (ImageMagick reads the
    variables at each file it makes; the programs the decoder runs inherit them)."""
    os.environ.update(dict.fromkeys(_TEMP_DIR_VARIABLES, temp_dir))
    tempfile.tempdir = temp_dir


def prctl(option: int, arg: int = 0) -> int:
    result: int = ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)
    if result < 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")
    return result


def confine_forkserver() -> None:
    """Run once in the forkserver, before it forks any decoder (forks inherit both)."""
    prctl(PR_SET_DUMPABLE, 0)
    if os.geteuid() == 0:
        # A fresh network namespace has only a loopback interface, and it is down.
        if ctypes.CDLL(None, use_errno=True).unshare(_CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
    atexit.register(stop_decoders)
    # A SIGTERM to the service's whole process group (`timeout`, systemd, a shell's job control)
    # reaches the forkserver too, whose default action would skip atexit and leave the decoders.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def stop_decoders() -> None:
    """At the forkserver's exit (its service is gone): kill every decoder it forked, with what
    the decoder runs (ffmpeg, Ghostscript), in their own process groups."""
    for task in Path("/proc/self/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                os.kill(int(child), signal.SIGKILL)  # before its setsid() it has no group yet
            except ProcessLookupError:
                pass  # reaped since the listing: its group may still hold ffmpeg or Ghostscript
            _kill_group(int(child))


@functools.cache
def _decoders_context() -> ForkServerContext:
    """The process's forkserver context, made once: multiprocessing has one forkserver a process,
    started with one executable and one environment, so they cannot be a sandbox's.

    multiprocessing starts its forkserver as `<executable> -c ...` with our environment; the
    launcher, in a folder of the process's own, replaces the environment first. The folder is
    the forkserver's HOME and TMPDIR too (each decoder uses one of its own: use_temp_dir), and
    goes when the process exits.
    """
    workspace = tempfile.mkdtemp(prefix="rawdrive-decoders-")
    atexit.register(shutil.rmtree, workspace, ignore_errors=True)
    launcher = Path(workspace) / "python"
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in decoder_environment(workspace).items())
    launcher.write_text(f'#!/bin/sh\nexec /usr/bin/env -i {assignments} {shlex.quote(sys.executable)} "$@"\n')
    launcher.chmod(0o700)
    context = multiprocessing.get_context("forkserver")
    assert isinstance(context, ForkServerContext)
    context.set_forkserver_preload(_PRELOAD)
    # Process-wide as well: the processor has no other use for multiprocessing.
    context.set_executable(str(launcher))
    return context


class _Abandoned(Exception):
    """The caller gave up on the call: its child is killed, nobody wants the result."""


class Sandbox:
    def __init__(self, limits: Limits = Limits(), temp_dir: str | None = None) -> None:
        """`temp_dir`: where each call gets the folder its decoder keeps temporary files in,
        removed when the call ends (the scratch volume); default the system's temp dir."""
        self.limits = limits
        self.temp_dir = temp_dir
        self._context = _decoders_context()

    def start(self) -> None:
        """Start the forkserver now and wait until it serves (blocking; about a second).

        Otherwise the first asset after a start pays for the forkserver and its import of Wand.
        A child that does nothing proves the server is up with its preload done.
        """
        child = self._context.Process(target=_ready, daemon=True)
        child.start()
        child.join()

    async def process(self, path: str, family: Family, workdir: str) -> Outcome:
        """Decode `path` in a child; a picture its file's head declares too large for the limits
        is refused without one (forking one to refuse cost 20-70 ms median here, with the load).
        The child compares the whole file's declared sizes again: a size past the head, a RAW's,
        a PDF page's."""
        job = Job(
            path=path, family=family, workdir=workdir, timeout_s=self.limits.timeout_s * 0.9, pixels=self.limits.pixels
        )
        outcome = await self._in_thread(functools.partial(self._refuse_or_decode, job))
        assert isinstance(outcome, Outcome)
        return outcome

    def _refuse_or_decode(self, job: Job, abandon: int) -> Any:
        with open(job.path, "rb") as file:
            head = file.read(DECLARED_SIZE_WITHIN)
        what = "video frame" if DECODING[job.family].route == "video" else job.family
        refuse_oversized(declared_size(head, job.family), job.pixels, what)
        return self._run(_decode, (job,), abandon)

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` in a confined child (picklable function and result); whatever it
        raises comes back as Unprocessable."""
        return await self._in_thread(functools.partial(self._run, function, args))

    async def _in_thread(self, work: Callable[[int], Any]) -> Any:
        """`work(abandon)` in a worker thread, `abandon` a pipe that turns readable if this
        coroutine is cancelled: the work then kills its child. The thread's end is awaited before
        the cancellation goes on, so no decoder still writes into the caller's work folder as the
        caller removes it."""
        abandon, abandoning = os.pipe()
        thread = asyncio.ensure_future(asyncio.to_thread(work, abandon))
        thread.add_done_callback(lambda _: os.close(abandon))
        try:
            return await asyncio.shield(thread)
        except asyncio.CancelledError:
            if not thread.done():  # else its read end may be closed already
                os.write(abandoning, b"!")
            await asyncio.wait({thread})
            if not thread.cancelled():
                thread.exception()  # _Abandoned, or whatever ended the call as it was abandoned
            raise
        finally:
            os.close(abandoning)

    def _run(self, function: Callable[..., Any], args: tuple[Any, ...], abandon: int) -> Any:
        temp_dir = tempfile.mkdtemp(prefix="rawdrive-decode-", dir=self.temp_dir)
        try:
            return self._run_in(temp_dir, function, args, abandon)
        finally:
            # After the child's group is dead: whatever it left (a killed ImageMagick's cache).
            shutil.rmtree(temp_dir, ignore_errors=True)

    def _run_in(self, temp_dir: str, function: Callable[..., Any], args: tuple[Any, ...], abandon: int) -> Any:
        receiver, sender = self._context.Pipe(duplex=False)
        child = self._context.Process(
            target=_child, args=(sender, function, args, self.limits, temp_dir), daemon=True
        )
        child.start()
        sender.close()
        try:
            ready = multiprocessing.connection.wait([receiver, abandon], self.limits.timeout_s)
            if abandon in ready:
                raise _Abandoned()
            if not ready:
                raise Unprocessable("timeout", f"decoding took longer than {self.limits.timeout_s:.0f} s")
            try:
                answer = receiver.recv_bytes(MAX_ANSWER_BYTES)
            except OSError:  # longer than that: read none of it
                raise Unprocessable("decode_failed", f"the decoder's answer passed {MAX_ANSWER_BYTES} bytes") from None
            result = _load_result(answer)
        except EOFError:
            child.join(5)
            raise Unprocessable("decode_failed", f"the decoder died (exit status {child.exitcode})") from None
        finally:
            if child.exitcode is None:  # still running (a timeout): maybe not yet in its own group
                child.kill()
            _kill_group(child.pid)
            child.join(5)
            receiver.close()
        if isinstance(result, Unprocessable):
            raise result
        return result


# The globals a decoder's answer may name, beside our own Structs and Unprocessable (_Result).
_RESULT_GLOBALS = {
    ("msgspec._utils", "rebuild"),  # a Struct with keyword-only fields: cls(**kwargs), cls checked too
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "timezone"), ("datetime", "timedelta"),
}  # fmt: skip
_RESULT_MODULES = ("media_processor.", "rawdrive_contracts.")


class _Result(pickle.Unpickler):
    """Loads a decoder's answer. The decoder may be an exploit's: a plain pickle would let it
    name any function for the processor to call as it loads (os.system, with the secrets the
    decoder was kept from), so the answer may name only the types results are made of."""

    def find_class(self, module: str, name: str) -> Any:
        found = getattr(sys.modules.get(module), name, None) if "." not in name else None
        ours = module.startswith(_RESULT_MODULES) and isinstance(found, type)
        if (module, name) in _RESULT_GLOBALS or (ours and (issubclass(found, msgspec.Struct) or found is Unprocessable)):
            return found
        raise pickle.UnpicklingError(f"a decoder's answer may not name {module}.{name}")


def _load_result(data: bytes) -> Any:
    try:
        return _Result(io.BytesIO(data)).load()
    except Exception as error:  # noqa: BLE001 - whatever it sent, it is no result
        raise Unprocessable("decode_failed", f"the decoder answered something other than a result: {error}") from None


def _kill_group(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _release_forkserver() -> None:
    """Close the child's copy of the service's end of the forkserver's "alive" pipe, so that
    the pipe closes when the service ends, whatever this child is doing then."""
    server = forkserver._forkserver  # the process-wide one (private: the same in 3.11 to 3.13)
    if server._forkserver_alive_fd is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None


def _ready() -> None:
    """The child Sandbox.start() forks: the forkserver has served it, nothing else to do."""


def _decode(job: Job) -> Outcome:
    from media_processor import imaging  # already imported by the forkserver: free

    return imaging.process(job)


def _child(
    sender: Connection, function: Callable[..., Any], args: tuple[Any, ...], limits: Limits, temp_dir: str
) -> None:
    """Runs in the child: limit ourselves, then run; report the result or an Unprocessable."""
    _release_forkserver()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the forkserver's exit is not ours
    os.setsid()  # our own group, which the parent kills with everything we started
    use_temp_dir(temp_dir)
    cpu = int(limits.timeout_s) + 5
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))

    result: Any
    try:
        result = function(*args)
    except Unprocessable as exc:
        result = exc
    except MemoryError:
        result = Unprocessable("decode_failed", "the decoder ran out of its memory allowance")
    except Exception as exc:  # noqa: BLE001 - whatever a decoder raises fails only this asset
        result = Unprocessable("decode_failed", f"{type(exc).__name__}: {exc}")
    sender.send(result)
    sender.close()
