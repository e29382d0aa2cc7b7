import unicodedata
import uuid

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rawdrive_platform import keys
from rawdrive_platform.keys import (
    FALLBACK_FILENAME,
    MAX_FILENAME_BYTES,
    AssetKey,
    AssetRef,
    InvalidKeyPart,
    asset_of_key,
    asset_prefix,
    avatar_key,
    derived_key,
    invitation_key,
    original_key,
    parse_asset_key,
    safe_filename,
    workspace_prefix,
)

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True)
any_text = st.text(st.characters(codec="utf-8"), max_size=400)
control_chars = st.sampled_from(["\x00", "\x1f", "\x7f", "\x85", "\x9f", "\u202e", "\u200b"])


def valid_filenames():
    return any_text.map(safe_filename)


@given(any_text)
@example("../../etc/passwd")
@example("..")
@example("\u202egnp.exe")
@example("e\u200d\u0301.jpg")
@example("a" * 300 + ".jpeg")
@example("\U0001f600" * 100)
def test_any_display_name_becomes_a_filename_every_builder_accepts_and_parse_reads_back(name):
    filename = safe_filename(name)
    key = original_key("ws1", "asset1", filename)
    assert parse_asset_key(key) == AssetKey(
        workspace_id="ws1", asset_id="asset1", part="original", filename=filename
    )
    key = derived_key("ws1", "asset1", "webp-2560", filename)
    assert parse_asset_key(key) == AssetKey(
        workspace_id="ws1", asset_id="asset1", part="derived", variant="webp-2560",
        filename=filename,
    )
    avatar_key("ws1", "user1", filename)
    invitation_key("ws1", "inv1", filename)


@given(any_text)
def test_safe_filename_is_idempotent_nfc_short_and_never_empty(name):
    filename = safe_filename(name)
    assert safe_filename(filename) == filename
    assert unicodedata.normalize("NFC", filename) == filename
    assert 0 < len(filename.encode("utf-8")) <= MAX_FILENAME_BYTES
    assert filename not in (".", "..")


def test_safe_filename_keeps_the_extension_when_it_truncates():
    filename = safe_filename("é" * 200 + ".cr2")
    assert filename.endswith(".cr2")
    assert len(filename.encode()) <= MAX_FILENAME_BYTES


def test_safe_filename_replaces_separators_and_strips_controls_and_bidi_overrides():
    assert safe_filename("a/b\\c.jpg") == "a_b_c.jpg"
    assert safe_filename("photo\x00\x1b\u202e.jpg") == "photo.jpg"
    assert safe_filename("Cafe\u0301.png") == "Caf\u00e9.png"


@pytest.mark.parametrize("name", ["", "   ", "..", ".", "\x00\u202e"])
def test_safe_filename_falls_back_when_nothing_usable_is_left(name):
    assert safe_filename(name) == FALLBACK_FILENAME


@given(ws=ids, asset=ids, variant=ids, user=ids, filename=valid_filenames())
def test_every_built_key_starts_with_its_workspace_prefix_and_has_the_expected_segments(
    ws, asset, variant, user, filename
):
    expected = {
        original_key(ws, asset, filename): 6,
        derived_key(ws, asset, variant, filename): 7,
        avatar_key(ws, user, filename): 5,
        invitation_key(ws, user, filename): 5,
    }
    for key, segments in expected.items():
        assert key.startswith(f"workspaces/{ws}/")
        assert key.startswith(workspace_prefix(ws))
        assert len(key.split("/")) == segments
    assert original_key(ws, asset, filename).startswith(asset_prefix(ws, asset))


@given(filename=valid_filenames())
def test_keys_under_a_customer_prefix_start_with_it_and_parse_back(filename):
    prefix = "acme/ws1/"
    key = original_key("ws1", "a1", filename, key_prefix=prefix)
    assert key.startswith("acme/ws1/workspaces/ws1/")
    assert parse_asset_key(key, key_prefix=prefix) == AssetKey(
        workspace_id="ws1", asset_id="a1", part="original", filename=filename
    )
    assert parse_asset_key(key) is None


@pytest.mark.parametrize("prefix", ["acme/", "acme/ws1", "../ws1/", "acme//ws1/", "/ws1/"])
def test_customer_prefix_without_the_workspace_id_or_with_path_tricks_is_refused(prefix):
    with pytest.raises(InvalidKeyPart):
        original_key("ws1", "a1", "x.jpg", key_prefix=prefix)


def test_uuids_and_ulids_are_valid_ids():
    key = original_key(str(uuid.uuid4()), "01ARZ3NDEKTSV4RRFFQ69G5FAV", "x.jpg")
    assert parse_asset_key(key) is not None


@given(
    clean=valid_filenames(),
    bad=st.one_of(
        st.sampled_from(["/", "\\"]).map(lambda sep: f"a{sep}b"),
        control_chars.map(lambda ch: f"a{ch}b"),
        st.sampled_from(["..", ".", ""]),
        st.integers(MAX_FILENAME_BYTES + 1, 600).map(lambda n: "x" * n),
        st.just("e\u0301"),  # not NFC
    ),
)
def test_any_filename_that_could_escape_or_deceive_is_refused_by_every_builder(clean, bad):
    with pytest.raises(InvalidKeyPart):
        original_key("ws", "a", bad)
    with pytest.raises(InvalidKeyPart):
        derived_key("ws", "a", "v", bad)
    with pytest.raises(InvalidKeyPart):
        avatar_key("ws", "u", bad)
    with pytest.raises(InvalidKeyPart):
        invitation_key("ws", "i", bad)
    assert original_key("ws", "a", clean)


@given(
    bad_id=st.one_of(
        st.sampled_from(["", ".", "..", "a/b", "a\\b", "a b", "-lead", "_lead", "a\x00"]),
        st.just("a" * 65),
        any_text.filter(lambda t: not t.isascii()),
    )
)
def test_ids_outside_the_conservative_charset_are_refused(bad_id):
    for build in (
        lambda: original_key(bad_id, "a", "x"),
        lambda: original_key("ws", bad_id, "x"),
        lambda: derived_key("ws", "a", bad_id, "x"),
        lambda: avatar_key("ws", bad_id, "x"),
        lambda: invitation_key("ws", bad_id, "x"),
        lambda: workspace_prefix(bad_id),
    ):
        with pytest.raises(InvalidKeyPart):
            build()


def test_invalid_key_part_is_a_value_error():
    assert issubclass(InvalidKeyPart, ValueError)


@pytest.mark.parametrize(
    "key",
    [
        "workspaces/ws/assets/a/original",
        "workspaces/ws/assets/a/original/x/y",
        "workspaces/ws/assets/a/thumbs/x.jpg",
        "workspaces/ws/avatars/u/x.jpg",
        "workspaces/ws/assets/../original/x.jpg",
        "workspaces/ws/assets/a/original/..",
        "/workspaces/ws/assets/a/original/x.jpg",
        "workspaces/ws/assets/a/derived/v/e\u0301.jpg",
    ],
)
def test_parse_asset_key_returns_none_for_keys_the_builder_could_not_make(key):
    assert parse_asset_key(key) is None


@given(workspace=ids, asset=ids, variant=ids, name=st.sampled_from(["IMG.JPG", "été.heic", "a b.mov"]), tail=ids)
def test_every_key_under_an_asset_prefix_belongs_to_that_asset(workspace, asset, variant, name, tail):
    key_prefix = f"customer/{workspace}/"
    ref = AssetRef(workspace, asset)
    for key in (
        original_key(workspace, asset, name, key_prefix),
        derived_key(workspace, asset, variant, name, key_prefix),
        asset_prefix(workspace, asset, key_prefix) + f"tus/{tail}",  # e.g. a stored tus tail
    ):
        assert asset_of_key(key, key_prefix) == ref
    assert asset_of_key(original_key(workspace, asset, name), key_prefix) is None  # other prefix


def test_keys_outside_asset_prefixes_belong_to_no_asset():
    for key in (
        avatar_key("ws1", "user1", "me.jpg"),
        "workspaces/ws1/assets/a1/",
        "workspaces/ws1/assets/a1",
        "workspaces/../assets/a1/original/x",
        "workspaces/ws1/assets/../original/x",
        "elsewhere/workspaces/ws1/assets/a1/original/x",
    ):
        assert asset_of_key(key) is None, key


def test_a_tus_piece_lives_under_an_asset_prefix_of_its_upload_and_is_read_back_as_that_asset():
    key = keys.tus_piece_key("ws-1", "up-1", "partial", key_prefix="tenant/ws-1/")
    assert key == "tenant/ws-1/workspaces/ws-1/assets/up-1/tus/partial"
    assert keys.asset_of_key(key, "tenant/ws-1/") == keys.AssetRef("ws-1", "up-1")
    assert keys.parse_asset_key(key, "tenant/ws-1/") is None  # neither an original nor a derived object
    with pytest.raises(keys.InvalidKeyPart):
        keys.tus_piece_key("ws-1", "up-1", "../x")
