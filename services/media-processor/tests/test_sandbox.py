"""The decoders' sandbox holds no secrets: a fresh processor-like process with RAWDRIVE_ secrets
in its environment starts a Sandbox, and code run in a decoding child looks at itself. Decoders
end with the processor, and their temporary files with each call."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from media_processor.sandbox import MAX_ANSWER_BYTES, Limits, Sandbox, Unprocessable

SECRETS = {
    "RAWDRIVE_STORAGE_MASTER_KEY": "master-key-that-must-not-leak",
    "RAWDRIVE_S3_SECRET_ACCESS_KEY": "bucket-secret-that-must-not-leak",
    "RAWDRIVE_DATABASE_URL": "postgresql://u:password-that-must-not-leak@db/x",
}

# Runs in its own interpreter: multiprocessing's forkserver is one per process, and this test
# must see one started from an environment holding the secrets.
PROBE = """
import asyncio, json, resource, socket, sys
from pathlib import Path
from media_processor.sandbox import PR_GET_DUMPABLE, Limits, Sandbox, Unprocessable, prctl

# Where a decoder's temporary files go, by each name a program may read it under.
TEMP_DIRS = (
    "[*map(__import__('os').getenv, ('HOME', 'TMPDIR', 'MAGICK_TEMPORARY_PATH')), __import__('tempfile').gettempdir()]"
)

async def main():
    sandbox = Sandbox(Limits(timeout_s=30), temp_dir=sys.argv[1])
    sandbox.start()
    found = {
        "environ": (await sandbox.call(Path("/proc/self/environ").read_bytes)).decode(),
        "temp_dirs": [await sandbox.call(eval, TEMP_DIRS) for _ in range(2)],
        "dumpable": await sandbox.call(prctl, PR_GET_DUMPABLE),
        "nproc": list(await sandbox.call(resource.getrlimit, resource.RLIMIT_NPROC)),
    }
    try:
        await sandbox.call(socket.create_connection, ("127.0.0.1", int(sys.argv[2])), 5)
        found["network"] = "connected"
    except Unprocessable as refused:
        found["network"] = refused.detail
    found["scratch"] = sys.argv[1]
    print(json.dumps(found))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> dict:
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        result = subprocess.run(
            [sys.executable, "-c", PROBE, str(tmp_path_factory.mktemp("scratch")), str(listener.getsockname()[1])],
            env=os.environ | SECRETS, capture_output=True, text=True, timeout=120, check=False,
        )
    finally:
        listener.close()
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_decoding_child_has_no_secret_in_its_environment(probed, tmp_path):
    environ = dict(entry.split("=", 1) for entry in probed["environ"].split("\0") if entry)
    assert not [name for name in environ if name.startswith("RAWDRIVE_")]
    assert not [value for value in SECRETS.values() if value in probed["environ"]]
    # What the decoders need is there: programs, the ImageMagick policy, temp dirs.
    assert {"PATH", "HOME", "TMPDIR", "MAGICK_CONFIGURE_PATH", "MAGICK_TEMPORARY_PATH"} <= environ.keys()
    # Each call's decoder keeps its temporary files in a folder of its own, on scratch.
    first, second = probed["temp_dirs"]
    assert len(set(first)) == len(set(second)) == 1 and first != second
    assert Path(first[0]).parent == Path(second[0]).parent == Path(probed["scratch"])


def test_a_decoding_child_is_not_dumpable_and_cannot_fork_without_bound(probed):
    assert probed["dumpable"] == 0
    assert probed["nproc"][0] == probed["nproc"][1] < 100_000


@pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs root (documented in docs/security.md)")
def test_a_decoding_child_has_no_network_when_the_processor_runs_as_root(probed):
    assert probed["network"] != "connected"
    assert "unreachable" in probed["network"].lower()


def test_the_processor_starts_without_a_database_url():
    from media_processor.__main__ import Settings
    from rawdrive_platform.config import load_settings

    settings = load_settings(Settings, {"RAWDRIVE_S3_BUCKET": "b", "RAWDRIVE_S3_ACCESS_KEY_ID": "id", "RAWDRIVE_S3_SECRET_ACCESS_KEY": "s"})
    assert settings.database_url is None


# A processor in miniature: starts its sandbox, says so, then waits on a decode that would take
# ten minutes (a hostile file, a slow program) when it is stopped.
BUSY_SERVICE = """
import asyncio, time
from media_processor.sandbox import Limits, Sandbox

sandbox = Sandbox(Limits(timeout_s=900))
sandbox.start()
print("started", flush=True)
asyncio.run(sandbox.call(time.sleep, 600))
"""


def children(pid: int) -> list[int]:
    try:
        return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    except FileNotFoundError:
        return []


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for whoever inherited it to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize(
    ("stop", "whole_group"),
    [(signal.SIGTERM, False), (signal.SIGKILL, False), (signal.SIGTERM, True)],
    ids=["SIGTERM", "SIGKILL", "SIGTERM to its process group"],
)
def test_a_stopped_processor_leaves_no_forkserver_and_no_decoder_behind(
    stop: signal.Signals, whole_group: bool, tmp_path: Path
) -> None:
    # As tests/e2e stops (SIGTERM) and crashes (SIGKILL) a processor, here one that dies of the
    # signal with a decode in hand: nobody wants that decode's result any more.
    # The whole group, as `timeout`, systemd or a shell's job control stop a program: the
    # forkserver gets the signal too. Folders of a process killed by a signal stay in tmp_path.
    service = subprocess.Popen(
        [sys.executable, "-c", BUSY_SERVICE], stdout=subprocess.PIPE, text=True, start_new_session=whole_group,
        env=os.environ | {"TMPDIR": str(tmp_path)},
    )
    left: list[int] = []
    try:
        assert service.stdout is not None and service.stdout.readline().strip() == "started"
        [forkserver] = [p for p in children(service.pid) if b"forkserver" in Path(f"/proc/{p}/cmdline").read_bytes()]
        deadline = time.monotonic() + 30
        while not children(forkserver) and time.monotonic() < deadline:
            time.sleep(0.05)
        [decoder] = children(forkserver)
        if whole_group:
            os.killpg(service.pid, stop)
        else:
            service.send_signal(stop)
        service.wait(30)
        deadline = time.monotonic() + 10
        while (left := [p for p in (forkserver, decoder) if running(p)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == [], "still running after the processor stopped"
    finally:
        for pid in left:  # as they were before the fix: for ten minutes
            os.kill(pid, signal.SIGKILL)
        if service.poll() is None:
            service.kill()


# Run in a decoding child by eval (a test module cannot be imported there): ImageMagick keeps a
# picture's pixels in a temporary file (magick-*) once they pass its memory and map limits; the
# value is where the open ones are.
SPILL = (
    "[limits := __import__('wand.resource').resource.limits, limits.__setitem__('memory', 1),"
    " limits.__setitem__('map', 1), picture := __import__('wand.image').image.Image(width=512, height=512),"
    " [target for fd in __import__('os').listdir('/proc/self/fd')"
    "  if 'magick-' in (target := __import__('os').path.realpath(f'/proc/self/fd/{fd}'))]][-1]"
)
SPILL_THEN_HANG = f"[{SPILL}, __import__('time').sleep(600)]"


async def test_a_decoders_temporary_files_go_to_its_own_sandboxs_temp_dir(tmp_path: Path) -> None:
    # Two sandboxes in one process share one forkserver: the second one's temp dir counts too.
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        [spilled] = await Sandbox(Limits(timeout_s=60), temp_dir=str(tmp_path / name)).call(eval, SPILL, {})
        assert Path(spilled).parent.parent == tmp_path / name
        assert list((tmp_path / name).iterdir()) == []  # gone with its call


async def test_a_killed_decoder_leaves_no_temporary_file(tmp_path: Path) -> None:
    with pytest.raises(Unprocessable) as failure:
        await Sandbox(Limits(timeout_s=3), temp_dir=str(tmp_path)).call(eval, SPILL_THEN_HANG, {})
    assert failure.value.reason == "timeout"
    assert list(tmp_path.rglob("*")) == []


# Sandboxes come and go in a processor's life (and by the hundred in a test run): a fresh
# interpreter whose system temp dir is the test's makes some, decodes in each, and exits.
MANY_SANDBOXES = """
import asyncio, sys
from pathlib import Path
from media_processor.sandbox import Limits, Sandbox

async def main():
    for scratch in sys.argv[1:]:
        await Sandbox(Limits(timeout_s=30), temp_dir=scratch).call(eval, "[]", {})
    print(len(list(Path(sys.argv[1]).parent.glob("**/rawdrive-*"))), flush=True)

asyncio.run(main())
"""


def test_sandboxes_leave_no_folder_behind_when_the_process_ends(tmp_path: Path) -> None:
    system_temp = tmp_path / "tmp"
    scratches = [tmp_path / f"scratch{i}" for i in range(4)]
    for folder in (system_temp, *scratches):
        folder.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", MANY_SANDBOXES, *map(str, scratches)],
        env=os.environ | {"TMPDIR": str(system_temp)}, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"  # while it runs: the process's forkserver folder, one
    assert [p for p in tmp_path.rglob("*") if p not in (system_temp, *scratches)] == []


async def test_a_cancelled_call_kills_its_decoder_before_it_returns(tmp_path: Path) -> None:
    # As the processor's Runtime cancels a handling still decoding when its stop timeout passes:
    # nothing of the decode (its process, its thread, its folder) may outlive the cancellation.
    call = asyncio.create_task(Sandbox(Limits(timeout_s=900), temp_dir=str(tmp_path)).call(time.sleep, 600))
    async with asyncio.timeout(30):
        while not list(tmp_path.iterdir()):  # the decoder's folder: the call is under way
            await asyncio.sleep(0.05)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(call, 10)
    assert list(tmp_path.iterdir()) == []  # removed once the decoder's group was dead


# What a decoder an exploit took over could send back: a pickle whose loading runs a call of its
# choice (here, touching a file) in the processor, which holds the secrets the decoder has not.
HOSTILE_RESULT = """type("Hostile", (), {"__reduce__": lambda self: (
    __import__("pathlib").Path.touch, (__import__("pathlib").Path(marker),))})()"""


async def test_a_decoders_answer_cannot_make_the_processor_run_anything(tmp_path: Path) -> None:
    marker = tmp_path / "ran-in-the-processor"
    sandbox = Sandbox(Limits(timeout_s=60), temp_dir=str(tmp_path))
    with pytest.raises(Unprocessable) as refused:
        await sandbox.call(eval, HOSTILE_RESULT, {"marker": str(marker)})
    assert refused.value.reason == "decode_failed"
    assert not marker.exists()
    # What decoders really answer still comes back.
    assert await sandbox.call(eval, "(1, 'two', b'3', [4.0], {'five': None})", {}) == (1, "two", b"3", [4.0], {"five": None})


async def test_a_decoders_answer_longer_than_any_result_is_refused_unread(tmp_path: Path) -> None:
    sandbox = Sandbox(Limits(timeout_s=60), temp_dir=str(tmp_path))
    with pytest.raises(Unprocessable) as refused:
        await sandbox.call(eval, "b'x' * (MAX_ANSWER_BYTES + 1)", {"MAX_ANSWER_BYTES": MAX_ANSWER_BYTES})
    assert refused.value.reason == "decode_failed" and "passed" in refused.value.detail
