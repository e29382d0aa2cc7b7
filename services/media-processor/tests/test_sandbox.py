"""The decoders' sandbox holds no secrets: a fresh processor-like process with RAWDRIVE_ secrets
in its environment starts a Sandbox, and code run in a decoding child looks at itself."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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

async def main():
    sandbox = Sandbox(Limits(timeout_s=30), temp_dir=sys.argv[1])
    sandbox.start()
    found = {
        "environ": (await sandbox.call(Path("/proc/self/environ").read_bytes)).decode(),
        "dumpable": await sandbox.call(prctl, PR_GET_DUMPABLE),
        "nproc": list(await sandbox.call(resource.getrlimit, resource.RLIMIT_NPROC)),
    }
    try:
        await sandbox.call(socket.create_connection, ("127.0.0.1", int(sys.argv[2])), 5)
        found["network"] = "connected"
    except Unprocessable as refused:
        found["network"] = refused.detail
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
    # What the decoders need is there: programs, the ImageMagick policy, temp dirs on scratch.
    assert {"PATH", "HOME", "TMPDIR", "MAGICK_CONFIGURE_PATH", "MAGICK_TEMPORARY_PATH"} <= environ.keys()
    assert environ["TMPDIR"] == environ["MAGICK_TEMPORARY_PATH"] == environ["HOME"]
    assert "/scratch" in environ["TMPDIR"]


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


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_stopped_processor_leaves_no_forkserver_and_no_decoder_behind(stop: signal.Signals) -> None:
    # As tests/e2e stops (SIGTERM) and crashes (SIGKILL) a processor, here one that dies of the
    # signal with a decode in hand: nobody wants that decode's result any more.
    service = subprocess.Popen([sys.executable, "-c", BUSY_SERVICE], stdout=subprocess.PIPE, text=True)
    left: list[int] = []
    try:
        assert service.stdout is not None and service.stdout.readline().strip() == "started"
        [forkserver] = [p for p in children(service.pid) if b"forkserver" in Path(f"/proc/{p}/cmdline").read_bytes()]
        deadline = time.monotonic() + 30
        while not children(forkserver) and time.monotonic() < deadline:
            time.sleep(0.05)
        [decoder] = children(forkserver)
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
