"""The pure tus rules: header parsing, validation, the status table and response headers."""

import base64
import hashlib
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from upload_gateway.uploads.tus import protocol
from upload_gateway.uploads.tus.protocol import (
    BadRequest,
    ChecksumMismatch,
    OffsetMismatch,
    PastLength,
    UnsupportedMediaType,
    UnsupportedVersion,
    UploadExpired,
    UploadLocked,
    UploadNotFound,
)

V = {"Tus-Resumable": "1.0.0"}
PATCH = V | {"Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}


def encode(metadata: dict[str, str | None]) -> str:
    return ",".join(
        key if value is None else f"{key} {base64.b64encode(value.encode()).decode()}"
        for key, value in metadata.items()
    )


def test_every_error_carries_the_status_tus_clients_expect():
    table = {BadRequest: 400, UploadNotFound: 404, OffsetMismatch: 409, UploadExpired: 410,
             UnsupportedVersion: 412, PastLength: 413, UnsupportedMediaType: 415,
             UploadLocked: 423, ChecksumMismatch: 460}
    assert {cls: cls.status for cls in table} == table


@pytest.mark.parametrize("headers", [{}, {"Tus-Resumable": "0.2.2"}, {"Tus-Resumable": "1.0"}])
def test_a_missing_or_other_version_is_412_and_names_the_supported_version(headers):
    with pytest.raises(UnsupportedVersion) as caught:
        protocol.check_version(headers)
    assert protocol.error_headers(caught.value)["Tus-Version"] == "1.0.0"


def test_options_headers_announce_version_extensions_checksums_and_max_size():
    headers = protocol.options_headers(500 * 1024 * 1024)
    assert headers["Tus-Version"] == "1.0.0"
    assert headers["Tus-Extension"] == (
        "creation,creation-with-upload,creation-defer-length,termination,checksum,expiration,concatenation"
    )
    assert headers["Tus-Checksum-Algorithm"] == "sha1,sha256"
    assert headers["Tus-Max-Size"] == "524288000"


def test_creation_reads_length_and_metadata_and_keeps_the_raw_header():
    raw = encode({"filename": "Grüße.jpg", "filetype": "image/jpeg", "flag": None})
    creation = protocol.parse_creation(V | {"Upload-Length": "12", "Upload-Metadata": raw})
    assert creation.length == 12
    assert creation.metadata == {"filename": "Grüße.jpg", "filetype": "image/jpeg", "flag": None}
    assert creation.raw_metadata == raw


@pytest.mark.parametrize("length", [None, "", "-1", "1.5", "0x10", " 5", "١٢", "9" * 20])
def test_creation_refuses_a_missing_or_malformed_length(length):
    headers = V if length is None else V | {"Upload-Length": length}
    with pytest.raises(BadRequest):
        protocol.parse_creation(headers)


def test_deferred_length_is_refused_where_a_session_fixes_it():
    with pytest.raises(BadRequest, match="Defer"):
        protocol.parse_creation(V | {"Upload-Defer-Length": "1"})


def test_deferred_length_where_allowed_is_a_creation_without_a_length():
    creation = protocol.parse_creation(V | {"Upload-Defer-Length": "1", "Upload-Metadata": "a Zm9v"}, deferrable=True)
    assert (creation.length, creation.metadata) == (None, {"a": "foo"})
    # Without the header the length is required as ever.
    assert protocol.parse_creation(V | {"Upload-Length": "7"}, deferrable=True).length == 7


@pytest.mark.parametrize(
    "headers",
    [{"Upload-Defer-Length": "0"}, {"Upload-Defer-Length": "true"}, {"Upload-Defer-Length": "2"},
     {"Upload-Defer-Length": ""}, {"Upload-Defer-Length": "1", "Upload-Length": "100"}],
)  # fmt: skip
def test_deferred_length_takes_only_1_and_never_beside_a_length(headers):
    with pytest.raises(BadRequest):
        protocol.parse_creation(V | headers, deferrable=True)


def test_a_patch_may_carry_upload_length_but_a_creation_body_takes_it_from_the_post():
    assert protocol.parse_patch(PATCH | {"Upload-Length": "12"}).length == 12
    assert protocol.parse_patch(PATCH).length is None
    assert protocol.parse_patch(PATCH | {"Upload-Length": "12"}, creation=True).length is None
    with pytest.raises(BadRequest):
        protocol.parse_patch(PATCH | {"Upload-Length": "twelve"})


@pytest.mark.parametrize(
    ("recorded", "declared", "known", "offset", "expected"),
    [
        (None, None, None, 5, None),  # deferred, nothing new: still unknown
        (None, 12, None, 5, 12),  # a PATCH brings it
        (None, 12, 12, 5, 12),  # the session opened for it agrees
        (None, None, 12, 5, 12),  # the session knows it, the store had not recorded it
        (12, None, 12, 5, 12),  # known: a PATCH need not repeat it
        (12, 12, 12, 12, 12),  # may repeat it; the offset may equal it
    ],
)
def test_settle_length_learns_a_deferred_length_once(recorded, declared, known, offset, expected):
    assert protocol.settle_length(recorded, declared, known, offset) == expected


@pytest.mark.parametrize(
    ("recorded", "declared", "known", "offset"),
    [(12, 13, 12, 0), (12, 13, None, 0), (None, 13, 12, 0), (12, None, 13, 0), (None, 4, None, 5)],
)
def test_settle_length_refuses_a_second_different_length_or_one_short_of_the_offset(recorded, declared, known, offset):
    with pytest.raises(BadRequest):
        protocol.settle_length(recorded, declared, known, offset)


@pytest.mark.parametrize(
    "header",
    ["key", "a Zm9v,a YmFy", "bad key Zm9v", "a Zm9v, ", "k Zm9v!", "k Zm9", "k /w==", "ké Zm9v",
     "k\x01 Zm9v", ",", "a Zm9v,,b"],
)
def test_malformed_metadata_is_400(header):
    if header == "key":  # a key without a value is allowed
        assert protocol.parse_metadata(header) == {"key": None}
        return
    with pytest.raises(BadRequest):
        protocol.parse_metadata(header)


def test_blank_metadata_means_none():
    assert protocol.parse_metadata(None) == {} and protocol.parse_metadata("  ") == {}


keys = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=","),
    min_size=1, max_size=20,
)


@given(st.dictionaries(keys, st.one_of(st.none(), st.text(max_size=50)), min_size=1, max_size=8))
def test_metadata_round_trips_through_its_encoding(metadata):
    # HTTP trims a header's trailing space, so a last "key " (empty value) arrives as "key":
    # the spec lets the two mean the same, and so does this comparison.
    parsed = protocol.parse_metadata(encode(metadata).rstrip(" "))
    assert {k: v or None for k, v in parsed.items()} == {k: v or None for k, v in metadata.items()}


def test_an_empty_value_with_its_space_is_an_empty_string():
    assert protocol.parse_metadata("a ,b Zm9v") == {"a": "", "b": "foo"}


@given(st.text(max_size=80))
def test_garbage_metadata_parses_or_is_400_never_anything_else(header):
    try:
        parsed = protocol.parse_metadata(header)
    except BadRequest:
        return
    assert all(" " not in key and "," not in key and key for key in parsed)


def test_patch_needs_the_offset_octet_stream_content_type():
    with pytest.raises(UnsupportedMediaType):
        protocol.parse_patch(PATCH | {"Content-Type": "application/octet-stream"})
    assert protocol.parse_patch(
        PATCH | {"Content-Type": "Application/Offset+Octet-Stream; charset=x"}
    ).offset == 0


def test_patch_reads_offset_content_length_and_checksum():
    digest = hashlib.sha256(b"abc").digest()
    patch = protocol.parse_patch(
        PATCH | {"Upload-Offset": "7", "Content-Length": "3",
                 "Upload-Checksum": f"sha256 {base64.b64encode(digest).decode()}"}
    )
    assert (patch.offset, patch.content_length) == (7, 3)
    assert patch.checksum.matches(b"abc") and not patch.checksum.matches(b"abd")


def test_creation_with_upload_starts_at_offset_zero_without_upload_offset():
    headers = {k: v for k, v in PATCH.items() if k != "Upload-Offset"}
    assert protocol.parse_patch(headers, creation=True).offset == 0
    with pytest.raises(BadRequest):
        protocol.parse_patch(headers)


@pytest.mark.parametrize(
    "header",
    ["md5 " + base64.b64encode(hashlib.md5(b"").digest()).decode(), "crc32 AAAAAA==",
     "sha1", "sha1 not-base64!"],
)
def test_unsupported_algorithms_and_malformed_digests_are_400(header):
    with pytest.raises(BadRequest):
        protocol.parse_checksum(header)


@pytest.mark.parametrize("header", ["sha256 " + base64.b64encode(b"short").decode(), "sha1 " + base64.b64encode(bytes(32)).decode()])
def test_a_digest_of_the_wrong_length_is_a_mismatch_460(header):
    with pytest.raises(protocol.ChecksumMismatch):
        protocol.parse_checksum(header)


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
def test_both_checksum_algorithms_verify_bodies(algorithm):
    digest = base64.b64encode(hashlib.new(algorithm, b"body").digest()).decode()
    checksum = protocol.parse_checksum(f"{algorithm} {digest}")
    assert checksum.matches(b"body") and not checksum.matches(b"bodY")


def test_offsets_must_match_and_bodies_must_fit():
    protocol.check_offset(5, 5)
    with pytest.raises(OffsetMismatch):
        protocol.check_offset(4, 5)
    protocol.check_fits(5, 5, 10)
    protocol.check_fits(5, None, 10)
    with pytest.raises(PastLength):
        protocol.check_fits(5, 6, 10)


def test_an_upload_at_or_past_its_expiry_is_gone():
    moment = datetime(2026, 1, 1, tzinfo=timezone.utc)
    protocol.check_not_expired(moment, moment - timedelta(seconds=1))
    with pytest.raises(UploadExpired):
        protocol.check_not_expired(moment, moment)


def test_upload_expires_is_an_rfc_7231_date_in_gmt():
    moment = datetime(2026, 11, 5, 9, 3, 7, tzinfo=timezone(timedelta(hours=2)))
    assert protocol.http_date(moment) == "Thu, 05 Nov 2026 07:03:07 GMT"
    headers = protocol.upload_headers(3, 10, moment)
    assert headers["Upload-Offset"] == "3" and headers["Upload-Length"] == "10"
    assert headers["Cache-Control"] == "no-store" and headers["Tus-Resumable"] == "1.0.0"


def test_an_unknown_length_is_said_by_upload_defer_length_and_no_upload_length():
    headers = protocol.upload_headers(3, None, datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert headers["Upload-Defer-Length"] == "1" and "Upload-Length" not in headers


@pytest.mark.parametrize(
    ("method", "override", "expected"),
    [("POST", None, "POST"), ("POST", "PATCH", "PATCH"), ("POST", "delete", "DELETE"),
     ("POST", "HEAD", "HEAD"), ("PATCH", None, "PATCH")],
)
def test_method_override_tunnels_through_post(method, override, expected):
    assert protocol.effective_method(method, override) == expected


@pytest.mark.parametrize(("method", "override"), [("POST", "GET"), ("POST", "TRACE"), ("PATCH", "DELETE")])
def test_other_overrides_are_400(method, override):
    with pytest.raises(BadRequest):
        protocol.effective_method(method, override)
