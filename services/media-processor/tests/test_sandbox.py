"""The decoders' sandbox holds no secrets: a fresh processor-like process with RAWDRIVE_ secrets
in its environment starts a Sandbox, and code run in a decoding child looks at itself."""

import json
import os
import socket
import subprocess
import sys

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
