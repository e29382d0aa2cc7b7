"""The CLI's rules without I/O: config precedence, file selection, part planning, state entries,
event subjects and lines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath

import jwt
import msgspec
import pytest

from rawdrive_cli import config, events, plan, tokens
from rawdrive_cli.selection import mime_type_for, select, wanted
from rawdrive_cli.state import Entry, FileVersion, UploadState, entry_key, resumable, still_valid
from rawdrive_contracts import AssetCreated, Variants, encode, new_event

# -- configuration ---------------------------------------------------------------------------------


def test_a_flag_beats_the_environment_which_beats_the_env_file():
    env_file = {"RAWDRIVE_PUBLIC_URL": "http://file:1", "RAWDRIVE_WORKSPACE": "from-file",
                "RAWDRIVE_NATS_URL": "nats://file:2", "RAWDRIVE_JWT_SECRET": "file-secret"}
    environ = {"RAWDRIVE_PUBLIC_URL": "http://env:1/", "RAWDRIVE_WORKSPACE": "from-env", "HOME": "/home/u"}
    cfg = config.resolve({"workspace": "from-flag"}, environ, env_file)
    assert cfg.workspace == "from-flag"
    assert cfg.gateway_url == "http://env:1"  # trailing slash dropped
    assert cfg.nats_url == "nats://file:2"
    assert cfg.jwt_secret == "file-secret"
    assert cfg.token is None


def test_without_any_source_the_dev_stack_defaults_apply():
    cfg = config.resolve({}, {"HOME": "/home/u"}, {})
    assert (cfg.gateway_url, cfg.nats_url, cfg.workspace, cfg.library) == (
        "http://127.0.0.1:8080", "nats://127.0.0.1:4222", "dev", "default")
    assert cfg.state_file == Path("/home/u/.local/state/rawdrive/uploads.json")
    assert config.resolve({}, {"XDG_STATE_HOME": "/s"}, {}).state_file == Path("/s/rawdrive/uploads.json")


def test_an_empty_variable_does_not_hide_the_env_file():
    cfg = config.resolve({"token": None}, {"RAWDRIVE_TOKEN": ""}, {"RAWDRIVE_TOKEN": "t"})
    assert cfg.token == "t"


def test_the_env_file_is_found_from_a_subfolder_of_the_repository(tmp_path):
    (tmp_path / ".data").mkdir()
    (tmp_path / ".data" / "env").write_text("# comment\nRAWDRIVE_WORKSPACE=ws1\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    found = config.find_env_file(None, {}, deep)
    assert found == tmp_path / ".data" / "env"
    assert config.read_env_file(found) == {"RAWDRIVE_WORKSPACE": "ws1"}
    assert config.find_env_file(None, {"RAWDRIVE_ENV_FILE": "/x/env"}, deep) == Path("/x/env")
    assert config.find_env_file("/y/env", {"RAWDRIVE_ENV_FILE": "/x/env"}, deep) == Path("/y/env")
    assert config.read_env_file(tmp_path / "missing") == {}


# -- selection -------------------------------------------------------------------------------------

TREE = {
    "/p/Pictures": ["2024/a.jpg", "2024/b.JPG", "2024/clip.mp4", "raw/c.nef", ".thumbnails/t.jpg", "notes.txt",
                    "2024/.DS_Store"],
}


def _select(arguments, **kwargs):
    files = {Path(root) / rel for root, rels in TREE.items() for rel in rels}
    return select(
        arguments, **kwargs, cwd=Path("/p"),
        is_dir=lambda p: str(p) in TREE,
        is_file=lambda p: p in files,
        walk=lambda root: [Path(root) / rel for rel in TREE[str(root)]],
    )


def test_a_folder_is_walked_skipping_hidden_files_and_each_file_is_shown_under_the_folder_name():
    chosen = _select(["Pictures"])
    assert [c.shown for c in chosen.files] == [
        "Pictures/2024/a.jpg", "Pictures/2024/b.JPG", "Pictures/2024/clip.mp4", "Pictures/notes.txt",
        "Pictures/raw/c.nef",
    ]
    assert chosen.files[0].path == Path("/p/Pictures/2024/a.jpg")
    assert chosen.missing == []


def test_include_and_exclude_globs_match_at_any_depth():
    assert [c.shown for c in _select(["Pictures"], include=["*.jpg", "*.JPG"], exclude=["2024/b.*"]).files] == [
        "Pictures/2024/a.jpg"]
    assert [c.shown for c in _select(["Pictures"], include=["raw/*"]).files] == ["Pictures/raw/c.nef"]
    assert len(_select(["Pictures"], hidden=True).files) == 7


def test_missing_paths_are_reported_and_a_file_named_twice_is_uploaded_once():
    chosen = _select(["Pictures/2024/a.jpg", "nowhere", "Pictures"], include=["*.jpg"])
    assert [c.path.name for c in chosen.files] == ["a.jpg"]
    assert chosen.missing == ["nowhere"]


def test_glob_rules():
    assert wanted(PurePosixPath("x/y.jpg"), ["*.jpg"], [], False)
    assert not wanted(PurePosixPath(".x/y.jpg"), [], [], False)
    assert not wanted(PurePosixPath("x/y.jpg"), [], ["x/*"], False)


def test_mime_types_are_the_ones_the_gateway_expects():
    assert mime_type_for("IMG_0001.HEIC") == "image/heic"
    assert mime_type_for("a.jpg") == "image/jpeg"
    assert mime_type_for("clip.mkv") == "video/x-matroska"
    assert mime_type_for("DSC_1.NEF") in ("image/x-nikon-nef", "application/octet-stream")
    assert mime_type_for("README") == "application/octet-stream"


# -- planning --------------------------------------------------------------------------------------

MIB = plan.MIB


def test_auto_chooses_s3_multipart_from_the_threshold():
    assert plan.choose_protocol("auto", 64 * MIB - 1) == "tus"
    assert plan.choose_protocol("auto", 64 * MIB) == "s3_multipart"
    assert plan.choose_protocol("s3", 10) == "s3_multipart"
    assert plan.choose_protocol("tus", 10**12) == "tus"


def test_tus_chunks_end_on_the_gateways_part_boundaries_also_when_resuming_mid_part():
    size = 12 * MIB + 7
    assert plan.tus_chunks(0, size) == [plan.ByteRange(0, 5 * MIB), plan.ByteRange(5 * MIB, 5 * MIB),
                                        plan.ByteRange(10 * MIB, 2 * MIB + 7)]
    assert plan.tus_chunks(3 * MIB, size)[0] == plan.ByteRange(3 * MIB, 2 * MIB)
    assert plan.tus_chunks(size, size) == []
    # Past 10,000 parts the part grows in whole MiB, as the gateway's plan does.
    assert plan.tus_chunk_size(100 * 1024 * MIB) == 11 * MIB


def test_parts_cover_the_file_exactly_and_only_missing_ones_are_sent_again():
    size, part = 20 * MIB + 3, 8 * MIB
    ranges = [plan.part_range(n, part, size) for n in (1, 2, 3)]
    assert ranges == [plan.ByteRange(0, part), plan.ByteRange(part, part), plan.ByteRange(2 * part, 4 * MIB + 3)]
    assert sum(r.length for r in ranges) == size
    with pytest.raises(ValueError):
        plan.part_range(4, part, size)
    assert plan.missing_parts(5, {1, 3}) == [2, 4, 5]
    assert plan.batches(list(range(1, 251))) == [list(range(1, 101)), list(range(101, 201)), list(range(201, 251))]


def test_rate_limit_pauses_only_when_ahead_of_the_rate():
    assert plan.throttle_delay(None, 10**9, 0.0) == 0.0
    assert plan.throttle_delay(1000, 3000, 1.0) == pytest.approx(2.0)
    assert plan.throttle_delay(1000, 500, 1.0) == 0.0


def test_sizes_read_as_curl_reads_them():
    assert plan.parse_size("512k") == 512 * 1024
    assert plan.parse_size("8M") == 8 * MIB
    assert plan.parse_size("1.5GiB") == int(1.5 * 1024 * MIB)
    assert plan.parse_size("100") == 100
    for bad in ("fast", "-1k", "3q"):
        with pytest.raises(ValueError):
            plan.parse_size(bad)


# -- state -----------------------------------------------------------------------------------------

NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


def _entry(**kwargs) -> Entry:
    defaults = dict(version=FileVersion(10, 1), sha256="ab" * 32, protocol="tus", upload_id="u1", asset_id="a1",
                    upload_url="http://gw/tus", expires_at=NOW + timedelta(hours=1))
    return Entry(**(defaults | kwargs))


def test_an_entry_counts_only_for_the_same_size_and_modification_time():
    entry = _entry()
    assert still_valid(entry, FileVersion(10, 1)) is entry
    assert still_valid(entry, FileVersion(10, 2)) is None
    assert still_valid(entry, FileVersion(11, 1)) is None
    assert still_valid(None, FileVersion(10, 1)) is None


def test_only_open_sessions_resume():
    assert resumable(_entry(), NOW)
    assert not resumable(_entry(expires_at=NOW - timedelta(seconds=1)), NOW)
    assert not resumable(_entry(committed=True), NOW)
    assert not resumable(Entry(version=FileVersion(1, 1), sha256="x"), NOW)


def test_entries_are_per_gateway_workspace_library_and_file():
    keys = {entry_key(g, w, lib, Path("/f")) for g in ("http://a", "http://a/", "http://b")
            for w in ("w1", "w2") for lib in ("l1",)}
    assert len(keys) == 4


def test_the_state_file_survives_a_reload_is_private_and_refuses_a_second_user(tmp_path):
    path = tmp_path / "state" / "uploads.json"
    entry = _entry(parts={1: '"etag1"'}, offset=5)
    with UploadState(path) as state:
        state.put("k", entry)
        with pytest.raises(Exception, match="another rawdrive upload"):
            UploadState(path).__enter__()
    assert path.stat().st_mode & 0o777 == 0o600
    with UploadState(path) as state:
        assert state.get("k") == entry


def test_an_unreadable_state_file_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "uploads.json"
    path.write_text("{not json")
    with pytest.raises(Exception, match="move it away"):
        UploadState(path).__enter__()


# -- events and tokens -----------------------------------------------------------------------------


def test_subject_shorthands_expand_to_the_workspace():
    assert events.expand_subject("asset", "ws") == "rawdrive.asset.*.ws"
    assert events.expand_subject("upload.verified", "ws") == "rawdrive.upload.verified.ws"
    assert events.expand_subject("rawdrive.asset.created.*", "ws") == "rawdrive.asset.created.*"
    assert events.stream_of("rawdrive.asset.created.ws").name == "RAWDRIVE_ASSETS"
    assert events.stream_of("rawdrive.upload.*.ws").name == "RAWDRIVE_UPLOADS"
    for bad in ("photos", "asset.created.ws"):
        with pytest.raises(ValueError):
            events.expand_subject(bad, "ws")
    with pytest.raises(ValueError):
        events.stream_of("rawdrive.workspace.created.ws")


def test_since_takes_durations_and_times():
    assert events.parse_since("10m", NOW) == NOW - timedelta(minutes=10)
    assert events.parse_since("1d", NOW) == NOW - timedelta(days=1)
    assert events.parse_since("2026-12-06T10:00:00", NOW) == datetime(2026, 12, 6, 10, tzinfo=UTC)
    with pytest.raises(ValueError):
        events.parse_since("yesterday", NOW)


def test_an_event_reads_as_one_line_with_its_ids_and_details():
    data = AssetCreated(
        workspace_id="ws", asset_id="a1", upload_id="u1", library_id="lib", folder_id=None,
        file_name="My photo.jpg", mime_type="image/jpeg", size_bytes=2133, sha256="ab" * 32, kind="photo",
        object_key="k", storage_profile_ref="managed", provider="r2", variants=Variants(),
    )
    raw = encode(new_event(data, source="/test", time=NOW))
    line = events.readable(raw, "rawdrive.asset.created.ws")
    assert line.startswith("2026-12-06T12:00:00.000Z asset.created")
    assert "ws=ws asset=a1 upload=u1 file_name='My photo.jpg' kind=photo size_bytes=2133" in line
    assert "not a RawDrive event" in events.readable(b'{"type":"x"}', "rawdrive.asset.x.ws")


def test_a_development_token_carries_the_gateways_user_claims():
    token = tokens.mint("s" * 32, workspace="ws", role="viewer", sub="me", ttl_s=60, now=1000)
    claims = jwt.decode(token, "s" * 32, algorithms=["HS256"], options={"verify_exp": False})
    assert claims == {"sub": "me", "iat": 1000, "exp": 1060, "workspaces": {"ws": "viewer"}}


def test_state_entries_encode_part_numbers_as_json_object_keys():
    raw = msgspec.json.encode({"k": _entry(parts={2: "e"})})
    assert msgspec.json.decode(raw, type=dict[str, Entry])["k"].parts == {2: "e"}
