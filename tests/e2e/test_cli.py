"""The `rawdrive` command as a user runs it: a subprocess against the whole pipeline (every service
a process, real NATS, PostgreSQL and SeaweedFS), configured only through RAWDRIVE_* variables.

Covered: a folder of photos and a video uploaded and shown available with thumbnails, a rerun
that sends nothing, S3 multipart with parallel parts, kill -9 mid-upload and a rerun that resumes
from the gateway's offset, a file over the limit reported while the others go on, a bad token
and an unreachable gateway as one line each, the same bytes under another name and folder not sent
again, `events` (following and catching up) showing
asset.created, the assets commands, development tokens, Ctrl-C on a folder upload (one line, exit
130, state kept, the rerun resumes) and a real dead letter (the janitor refusing an event) listed,
shown and replayed to the janitor, which refuses the copy again with its reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "rawdrive_cli"]
MIB = 1024 * 1024
MIXED = ("exiftool_GPS.jpg", "png_rgba_alpha.png", "heic_generated.heic", "mei_with-gps.mp4")


# NATS as the operator: the provisioning identity, which the dev stack's .data/env gives the CLI.
OPERATOR_NATS: dict[str, str] = {}
OPERATOR_URL: dict[str, str] = {}  # the same identity as a URL with credentials, for the test's own publishes


@pytest.fixture(scope="module")
async def world(module_service_env, tmp_path_factory, pipeline_opener, nats_identities):
    OPERATOR_NATS.update(nats_identities.env("provision"))
    OPERATOR_URL["url"] = nats_identities.url_as("provision")
    async for pipeline, client in pipeline_opener(module_service_env, tmp_path_factory.mktemp("cli")):
        yield pipeline, client


def cli_env(pipeline, home: Path, **overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAWDRIVE_")}
    env.update({
        "HOME": str(home),
        "RAWDRIVE_ENV_FILE": str(home / "no-env-file"),  # never the developer's .data/env
        "RAWDRIVE_PUBLIC_URL": pipeline.base_url,
        "RAWDRIVE_TOKEN": pipeline.token,
        "RAWDRIVE_WORKSPACE": pipeline.workspace,
        "RAWDRIVE_STATE_FILE": str(home / "state.json"),
        **OPERATOR_NATS,
    })
    env.update(overrides)
    return env


async def run(env: dict[str, str], *args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    def call() -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], env=env, cwd=env["HOME"], capture_output=True, text=True,
                              timeout=timeout_s)

    return await asyncio.to_thread(call)


def outcomes(result: subprocess.CompletedProcess[str]) -> dict[str, dict]:
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return {Path(line["file"]).name: line for line in lines}


def noise_jpeg(path: Path, width: int, height: int) -> Path:
    """A photo-sized JPEG that does not compress away (random noise, as sensor noise would)."""
    subprocess.run(["convert", "-size", f"{width}x{height}", "xc:gray", "+noise", "Random", "-quality", "95",
                    str(path)], check=True, timeout=120)
    return path


async def test_a_folder_of_photos_and_a_video_becomes_available_assets_and_a_rerun_sends_nothing(
    world, tmp_path, media_dir
):
    pipeline, client = world
    folder = tmp_path / "Pictures"
    (folder / "2024").mkdir(parents=True)
    for name in MIXED:
        shutil.copy(media_dir / name, folder / "2024" / name)
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: skipped, not a failure
    env = cli_env(pipeline, tmp_path)

    result = await run(env, "upload", "--json", "--jobs", "3", str(folder))
    assert result.returncode == 0, result.stderr + result.stdout
    seen = outcomes(result)
    assert set(seen) == set(MIXED)
    for name, outcome in seen.items():
        assert outcome["state"] == "available", outcome
        assert outcome["thumb_url"].startswith("http"), outcome
        status, asset = await client.asset(outcome["asset_id"])
        assert status == 200 and asset["file_name"] == name
        assert asset["sha256"] == hashlib.sha256((media_dir / name).read_bytes()).hexdigest()
    _, video = await client.asset(seen["mei_with-gps.mp4"]["asset_id"])
    assert video["kind"] == "video" and set(video["variants"]) == {"thumb", "medium", "large"}

    again = await run(env, "upload", "--json", str(folder))
    assert again.returncode == 0, again.stderr
    assert {name: (o["skipped"], o["asset_id"]) for name, o in outcomes(again).items()} == {
        name: ("already_uploaded", o["asset_id"]) for name, o in seen.items()
    }


async def test_the_same_bytes_under_another_name_in_another_folder_are_not_sent_again(world, tmp_path):
    pipeline, _ = world
    env = cli_env(pipeline, tmp_path)
    (tmp_path / "2023").mkdir()
    (tmp_path / "backup").mkdir()
    original = noise_jpeg(tmp_path / "2023" / "beach.jpg", 640, 480)
    first = await run(env, "upload", "--json", str(tmp_path / "2023"))
    assert first.returncode == 0, first.stderr + first.stdout
    uploaded = outcomes(first)["beach.jpg"]
    assert uploaded["state"] == "available" and "skipped" not in uploaded, uploaded

    shutil.copy(original, tmp_path / "backup" / "beach-copy.jpg")
    again = await run(env, "upload", "--json", str(tmp_path / "backup"))
    assert again.returncode == 0, again.stderr + again.stdout
    skipped = outcomes(again)["beach-copy.jpg"]
    assert (skipped["skipped"], skipped["asset_id"], skipped["state"]) == (
        "duplicate", uploaded["asset_id"], "available"
    ), skipped
    assert "upload_id" not in skipped and "protocol" not in skipped  # no session was opened
    # Nothing was sent: no session announced and no asset for the copy; the original shows it all.
    events = await run(env, "events", "--since", "10m", "--json")
    assert events.returncode == 0, events.stderr
    names = [json.loads(line)["data"].get("file_name") for line in events.stdout.splitlines()]
    assert "beach.jpg" in names and "beach-copy.jpg" not in names
    listed = [json.loads(line) for line in (await run(env, "assets", "ls", "--json")).stdout.splitlines()]
    assert "beach-copy.jpg" not in {item["file_name"] for item in listed}
    human = await run(env, "upload", str(tmp_path / "backup"))  # the state file remembers the duplicate
    assert human.returncode == 0 and uploaded["asset_id"] in human.stdout, human.stdout


async def test_s3_multipart_sends_parallel_parts_straight_to_storage(world, tmp_path):
    pipeline, client = world
    photo = noise_jpeg(tmp_path / "big.jpg", 4000, 3000)  # more than one 8 MiB part
    assert photo.stat().st_size > 8 * MIB
    result = await run(cli_env(pipeline, tmp_path), "upload", "--json", "--protocol", "s3", "--part-jobs", "2",
                       str(photo))
    assert result.returncode == 0, result.stderr + result.stdout
    [outcome] = outcomes(result).values()
    assert (outcome["protocol"], outcome["state"]) == ("s3_multipart", "available"), outcome
    _, asset = await client.asset(outcome["asset_id"])
    assert asset["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()
    assert asset["size_bytes"] == photo.stat().st_size


async def first_confirmed_offset(upload: subprocess.Popen, state_file: Path) -> dict:
    """The first state file entry whose confirmed offset is inside its file (after a 5 MiB PATCH,
    before the last), read while `upload` still runs: the moment to stop it mid-file."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and upload.poll() is None:
        if state_file.exists():
            entries = [e for e in json.loads(state_file.read_text()).values()
                       if 0 < e.get("offset", 0) < e["version"]["size"]]
            if entries:
                return entries[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no offset recorded; exit {upload.poll()}: {upload.stderr.read() if upload.stderr else ''}")


async def test_killed_mid_upload_the_same_command_resumes_from_the_gateways_offset(world, tmp_path):
    pipeline, client = world
    photo = noise_jpeg(tmp_path / "resume.jpg", 4000, 3000)
    size = photo.stat().st_size
    env = cli_env(pipeline, tmp_path)
    state_file = Path(env["RAWDRIVE_STATE_FILE"])
    command = [*CLI, "upload", "--json", "--protocol", "tus", "--limit-rate", "2M", str(photo)]
    first = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    recorded = await first_confirmed_offset(first, state_file)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert 0 < recorded["offset"] < size

    result = await run(env, "upload", "--json", "--protocol", "tus", str(photo))
    assert result.returncode == 0, result.stderr + result.stdout
    [outcome] = outcomes(result).values()
    assert outcome["upload_id"] == recorded["upload_id"] and outcome["asset_id"] == recorded["asset_id"]
    assert recorded["offset"] <= outcome["resumed_from"] < size
    assert outcome["state"] == "available", outcome
    _, asset = await client.asset(outcome["asset_id"])
    assert asset["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()


async def test_ctrl_c_on_a_folder_upload_says_so_in_one_line_and_the_rerun_resumes(world, tmp_path):
    pipeline, client = world
    folder = tmp_path / "Camera"
    folder.mkdir()
    big = noise_jpeg(folder / "IMG_0001.jpg", 4000, 3000)  # two 5 MiB PATCHes at least
    small = noise_jpeg(folder / "IMG_0002.jpg", 640, 480)
    env = cli_env(pipeline, tmp_path, COLUMNS="200")
    state_file = Path(env["RAWDRIVE_STATE_FILE"])
    command = [*CLI, "upload", "--protocol", "tus", "--jobs", "2", "--limit-rate", "2M", str(folder)]
    first = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    recorded = await first_confirmed_offset(first, state_file)
    assert recorded["version"]["size"] == big.stat().st_size  # the small one fits in one PATCH
    first.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, stderr = await asyncio.to_thread(first.communicate, timeout=30)
    assert first.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["interrupted; rerun the same command to resume"], stderr
    # The state file was left whole, private, and names the interrupted session.
    assert state_file.stat().st_mode & 0o777 == 0o600
    saved = [e for e in json.loads(state_file.read_text()).values() if e.get("upload_id") == recorded["upload_id"]]
    assert len(saved) == 1 and saved[0]["offset"] >= recorded["offset"]

    again = await run(env, "upload", "--json", "--protocol", "tus", str(folder))
    assert again.returncode == 0, again.stderr + again.stdout
    seen = outcomes(again)
    resumed = seen[big.name]
    assert (resumed["upload_id"], resumed["state"]) == (recorded["upload_id"], "available"), resumed
    assert saved[0]["offset"] <= resumed["resumed_from"] < big.stat().st_size
    assert seen[small.name]["state"] == "available", seen[small.name]
    for photo in (big, small):
        _, asset = await client.asset(seen[photo.name]["asset_id"])
        assert asset["sha256"] == hashlib.sha256(photo.read_bytes()).hexdigest()


async def test_a_file_over_the_limit_is_reported_and_the_others_are_uploaded(world, tmp_path, media_dir):
    pipeline, _ = world
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(media_dir / "exiftool_GPS.jpg", folder / "small.jpg")
    with open(folder / "huge.jpg", "wb") as huge:  # 101 MiB, past the 100 MiB photo limit
        huge.truncate(101 * MIB)
    (folder / "notes.txt").write_text("not a photo")
    result = await run(cli_env(pipeline, tmp_path, COLUMNS="300"), "upload", "--quiet", str(folder))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "3 files: 1 available, 2 failed" in result.stdout
    failures = result.stdout[result.stdout.index("Failed"):]
    assert "huge.jpg" in failures and "file_too_large" in failures and "at most 100 MiB" in failures
    assert "notes.txt" in failures and "unsupported_type" in failures
    assert "small.jpg" not in failures


async def test_a_bad_token_and_an_unreachable_gateway_each_say_in_one_line_what_to_do(world, tmp_path, media_dir):
    pipeline, _ = world
    photo = media_dir / "exiftool_GPS.jpg"
    bad = await run(cli_env(pipeline, tmp_path, RAWDRIVE_TOKEN="not-a-token"), "upload", str(photo))
    assert bad.returncode == 2
    [line] = bad.stderr.strip().splitlines()
    assert line.startswith("rawdrive: the gateway refused the token") and "rawdrive token" in line

    down = await run(cli_env(pipeline, tmp_path, RAWDRIVE_PUBLIC_URL="http://127.0.0.1:9"), "assets", "ls")
    assert down.returncode == 2
    [line] = down.stderr.strip().splitlines()
    assert "cannot reach the gateway at http://127.0.0.1:9" in line and "make dev" in line

    none = await run(cli_env(pipeline, tmp_path, RAWDRIVE_TOKEN=""), "assets", "ls")
    assert none.returncode == 2 and "no token" in none.stderr


async def test_events_show_asset_created_live_and_when_catching_up(world, tmp_path, media_dir):
    pipeline, _ = world
    env = cli_env(pipeline, tmp_path)
    follower = subprocess.Popen([*CLI, "events", "--follow", "--json", "--since", "1m"], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Bytes no earlier test uploaded: the same bytes again would be skipped as a duplicate.
        photo = tmp_path / "events.png"
        subprocess.run(["convert", "-size", "320x240", "xc:gray", "+noise", "Random", str(photo)], check=True,
                       timeout=60)
        result = await run(env, "upload", "--json", str(photo))
        assert result.returncode == 0, result.stderr
        asset_id = outcomes(result)["events.png"]["asset_id"]

        def created_line() -> dict:
            assert follower.stdout is not None
            for line in follower.stdout:
                event = json.loads(line)
                if event["type"] == "com.rawdrive.asset.created.v1" and event["data"]["asset_id"] == asset_id:
                    return event
            raise AssertionError(f"events ended: {follower.stderr.read() if follower.stderr else ''}")

        event = await asyncio.wait_for(asyncio.to_thread(created_line), timeout=60)
        assert event["data"]["file_name"] == "events.png"
    finally:
        follower.terminate()
        follower.wait(10)

    caught_up = await run(env, "events", "--since", "10m", "--subject", "asset.created")
    assert caught_up.returncode == 0, caught_up.stderr
    assert asset_id in caught_up.stdout, caught_up.stdout + caught_up.stderr
    [line] = [line for line in caught_up.stdout.splitlines() if asset_id in line]
    assert " asset.created " in line and "file_name=events.png" in line and "kind=photo" in line
    # Uploads are there too by default, in time order: session_created before verified.
    lines = (await run(env, "events", "--since", "10m")).stdout.splitlines()
    mine = [line.split()[1] for line in lines if f"asset={asset_id}" in line]
    assert mine.index("upload.session_created") < mine.index("upload.verified") < mine.index("asset.created")


async def test_assets_can_be_listed_downloaded_deleted_and_restored(world, tmp_path, media_dir):
    pipeline, _ = world
    env = cli_env(pipeline, tmp_path)
    photo = tmp_path / "keep.jpg"
    shutil.copy(media_dir / "jpeg_orientation_6.jpg", photo)
    asset_id = outcomes(await run(env, "upload", "--json", str(photo)))["keep.jpg"]["asset_id"]

    listed = [json.loads(line) for line in (await run(env, "assets", "ls", "--json")).stdout.splitlines()]
    assert asset_id in {item["asset_id"] for item in listed}
    saved = await run(env, "assets", "download", asset_id, "-o", str(tmp_path / "copy.jpg"))
    assert saved.returncode == 0, saved.stderr
    assert (tmp_path / "copy.jpg").read_bytes() == photo.read_bytes()

    removed = await run(env, "assets", "rm", asset_id)
    assert removed.returncode == 0 and f"rawdrive assets restore {asset_id}" in removed.stdout
    listed = [json.loads(line) for line in (await run(env, "assets", "ls", "--json")).stdout.splitlines()]
    assert asset_id not in {item.get("asset_id") for item in listed}
    restored = await run(env, "assets", "restore", asset_id, "--json")
    assert json.loads(restored.stdout)["status"] == "available"

    missing = await run(env, "assets", "get", "no-such-asset")
    assert missing.returncode == 2 and "rawdrive assets ls" in missing.stderr


async def test_a_development_token_opens_the_workspace_with_its_role(world, tmp_path, media_dir):
    pipeline, _ = world
    env = cli_env(pipeline, tmp_path, RAWDRIVE_TOKEN="", RAWDRIVE_JWT_SECRET=pipeline.env["RAWDRIVE_JWT_SECRET"])
    viewer = (await run(env, "token", "--role", "viewer", "--ttl", "600")).stdout.strip()
    as_viewer = cli_env(pipeline, tmp_path, RAWDRIVE_TOKEN=viewer)
    assert (await run(as_viewer, "assets", "ls")).returncode == 0
    refused = await run(as_viewer, "upload", "--json", str(media_dir / "exiftool_GPS.jpg"))
    assert refused.returncode == 1
    assert "forbidden" in outcomes(refused)["exiftool_GPS.jpg"]["reason"]
    # No token at all but the dev stack's secret: one is minted for the workspace (admin).
    assert (await run(env, "upload", "--json", str(media_dir / "exiftool_GPS.jpg"))).returncode == 0
    assert "RAWDRIVE_JWT_SECRET" in (await run(cli_env(pipeline, tmp_path), "token")).stderr


async def dlq_entries(env: dict[str, str]) -> list[dict]:
    listed = await run(env, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


async def dead_letter_of(env: dict[str, str], event_id: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [letter for letter in await dlq_entries(env) if letter["event_id"] == event_id]
        if found:
            return found[0]
        await asyncio.sleep(0.5)
    raise AssertionError(f"no dead letter for event {event_id} within {timeout_s} s")


async def test_a_dead_letter_is_listed_shown_and_replayed_to_the_service_that_refused_it(world, tmp_path):
    from rawdrive_contracts import UploadAborted, new_event
    from rawdrive_platform import bus

    pipeline, _ = world
    env = cli_env(pipeline, tmp_path, COLUMNS="300")
    # An aborted upload naming a storage profile the janitor cannot resolve: it cannot reach the
    # bytes, so it terminates the event with the reason, and JetStream dead-letters it.
    profile = f"sp-unknown-{uuid.uuid4().hex[:8]}"
    event = new_event(UploadAborted(
        workspace_id=pipeline.workspace, upload_id=uuid.uuid4().hex, asset_id=uuid.uuid4().hex,
        storage_profile_ref=profile, object_key=f"workspaces/{pipeline.workspace}/assets/x/original/x.jpg",
        aborted_by="e2e-operator",
    ), source="e2e")
    nc = await bus.connect(OPERATOR_URL["url"], name="e2e-cli-dlq")
    try:
        assert await bus.publish(nc.jetstream(), event)
    finally:
        await nc.close()

    letter = await dead_letter_of(env, event.id)
    assert (letter["kind"], letter["stream"], letter["consumer"]) == ("terminated", "RAWDRIVE_UPLOADS", "janitor-uploads")
    assert letter["subject"] == f"rawdrive.upload.aborted.{pipeline.workspace}"
    assert letter["reason"].startswith(f"storage profile {profile!r}"), letter  # why it cannot resolve it follows
    table = await run(env, "dlq", "list")
    [row] = [line for line in table.stdout.splitlines() if profile in line]
    cells = [cell.strip() for cell in row.split("│")]
    assert cells[1:5] == [str(letter["seq"]), "terminated", "RAWDRIVE_UPLOADS", "janitor-uploads"], row

    shown = await run(env, "dlq", "show", str(letter["seq"]))
    assert shown.returncode == 0, shown.stderr
    shown = json.loads(shown.stdout)
    assert shown["dead_letter"] == letter
    assert shown["original"]["subject"] == letter["subject"]
    assert (shown["original"]["data"]["id"], shown["original"]["data"]["data"]["storage_profile_ref"]) == (event.id, profile)

    replayed = await run(env, "dlq", "replay", str(letter["seq"]))
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == f"replayed dead letter {letter['seq']} to its original subject and dropped it"
    # The janitor got the copy (its own dedup id), still cannot resolve the profile, and says so again.
    again = await dead_letter_of(env, f"{event.id}:replay:{letter['seq']}")
    assert (again["kind"], again["consumer"], again["reason"]) == ("terminated", "janitor-uploads", letter["reason"])
    assert again["seq"] > letter["seq"]
    assert letter["seq"] not in {d["seq"] for d in await dlq_entries(env)}

    gone = await run(env, "dlq", "replay", str(letter["seq"]))
    assert gone.returncode == 2 and "rawdrive dlq list" in gone.stderr
    unknown = await run(env, "dlq", "show", "999999999")
    assert unknown.returncode == 2 and "rawdrive dlq list" in unknown.stderr
