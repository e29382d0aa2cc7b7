"""What a SIGKILLed or OOM-killed processor leaves on the scratch volume goes when the next one
starts; a live processor's folder, on the same scratch folder, stays."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from media_processor import scratch

# A processor in miniature, as `python -m media_processor` sets up its scratch: its folder, in it
# a handler's work folder with the original and a decode that would take ten minutes (a hostile
# file, a slow program). It prints its folder once the decoder's folder is there.
DECODING_SERVICE = """
import asyncio, sys, tempfile, time
from pathlib import Path

import pytest
from media_processor import scratch
from media_processor.sandbox import Limits, Sandbox

folder = Path(scratch.claim(sys.argv[1]))
work = Path(tempfile.mkdtemp(prefix="media-", dir=folder))
(work / "original").write_bytes(bytes(1024))

async def main():
    decode = asyncio.create_task(Sandbox(Limits(timeout_s=900), temp_dir=str(folder)).call(time.sleep, 600))
    while not list(folder.glob("rawdrive-decode-*")):
        await asyncio.sleep(0.05)
    print(folder, flush=True)
    await decode

asyncio.run(main())
"""


def start_decoding(scratch_dir: Path) -> tuple[subprocess.Popen[str], Path]:
    service = subprocess.Popen(
        [sys.executable, "-c", DECODING_SERVICE, str(scratch_dir)], stdout=subprocess.PIPE, text=True
    )
    assert service.stdout is not None
    line = service.stdout.readline().strip()
    assert line, f"the service ended before decoding (status {service.wait(30)})"
    return service, Path(line)


def contents(folder: Path) -> list[str]:
    return sorted(p.name.split("-")[0] if p.is_dir() else p.name for p in folder.iterdir())


def test_a_killed_processors_folders_go_when_the_next_one_starts_and_a_live_ones_stay(tmp_path: Path) -> None:
    services: list[subprocess.Popen[str]] = []
    try:
        killed, killed_folder = start_decoding(tmp_path)
        services.append(killed)
        live, live_folder = start_decoding(tmp_path)
        services.append(live)
        killed.kill()
        killed.wait(30)
        # Nobody removes them: the original and the decoder's folder, where ImageMagick's cache goes.
        assert contents(killed_folder) == ["media", "rawdrive"]

        following, following_folder = start_decoding(tmp_path)
        services.append(following)
        assert not killed_folder.exists()
        assert sorted(tmp_path.iterdir()) == sorted([live_folder, following_folder])
        assert contents(live_folder) == ["media", "rawdrive"]
        assert live.poll() is None  # still decoding
    finally:
        for service in services:
            service.kill()
            service.wait(30)


def test_a_start_removes_only_processors_folders_that_nobody_holds(tmp_path: Path) -> None:
    dead = tmp_path / f"{scratch.PREFIX}dead"
    (dead / "media-x").mkdir(parents=True)
    (dead / "media-x" / "original").write_bytes(bytes(1024))
    held = tmp_path / f"{scratch.PREFIX}held"
    held.mkdir()
    someone_elses = tmp_path / "lost+found"
    someone_elses.mkdir()
    (tmp_path / f"{scratch.PREFIX}file").write_text("not a folder of ours")
    holder = os.open(held, os.O_RDONLY | os.O_DIRECTORY)  # as a live processor holds its folder
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        own = Path(scratch.claim(str(tmp_path)))
    finally:
        os.close(holder)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [own.name, held.name, someone_elses.name, f"{scratch.PREFIX}file"]
    )
    assert own.parent == tmp_path and own.name.startswith(scratch.PREFIX) and list(own.iterdir()) == []


def test_a_processor_that_ends_normally_removes_its_folder(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from media_processor import scratch; print(scratch.claim(sys.argv[1]))",
         str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).parent == tmp_path
    assert list(tmp_path.iterdir()) == []



@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_folder_of_another_users_processor_is_left_alone_and_the_start_goes_on(tmp_path: Path) -> None:
    # The default scratch folder is the system's temp dir, shared by every user of the machine:
    # another user's processor folder (mkdtemp makes it 0700) cannot even be opened.
    theirs = tmp_path / f"{scratch.PREFIX}theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    # Root without the capabilities that pass over file modes: a user like any other.
    claimed = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", sys.executable, "-c",
         "import sys; from media_processor import scratch; print(scratch.claim(sys.argv[1]))", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert claimed.returncode == 0, claimed.stderr
    assert Path(claimed.stdout.strip()).parent == tmp_path
    assert theirs.is_dir()
