"""The pure core: type table, names, state machine, part plan, access rules, problem table."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawdrive_platform.config import load_settings
from rawdrive_platform.keys import check_filename, safe_filename
from upload_gateway import errors
from upload_gateway.app import token_verifier
from upload_gateway.auth import (
    MINIMUM_ROLE,
    Principal,
    TokenVerifier,
    UploadGrant,
    VerifiedTokens,
    bearer_token,
    mint_dev_token,
    principal_from_claims,
    require,
    sign_hs256,
)
from upload_gateway.errors import (
    ChecksumMismatch,
    FileTooLarge,
    Forbidden,
    InvalidState,
    NotFound,
    Unauthorized,
    UnsupportedType,
)
from upload_gateway.http.problems import PROBLEMS, from_validation_error, problem_for
from upload_gateway.settings import Settings
from upload_gateway.uploads import api
from upload_gateway.uploads.core import new_id, part_plan
from upload_gateway.uploads.limits import FILE_TYPES, MIB, SIZE_LIMITS, check_file, essence, extension_of
from upload_gateway.uploads.names import display_name
from upload_gateway.uploads.parts import (
    MAX_PARTS,
    MIN_PART_SIZE,
    PartPlan,
    part_size_up_to,
    parts_received,
    plan_parts,
)
from upload_gateway.uploads.sessions import (
    COMMIT_ATTEMPTS,
    REJECTIONS,
    TRANSITIONS,
    UploadSession,
    check_complete,
    check_given_sha256,
    commit_outcome,
    effective_state,
    gone,
    rejection_error,
)
from upload_gateway.uploads.tus_session import tus_part_size

SECRET = "s" * 32
UPLOAD_SECRET = "u" * 32

# -- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_name", "mime_type", "size", "kind"),
    [
        ("IMG_0001.JPG", "image/jpeg", 1, "photo"),
        ("photo.jpeg", "Image/JPEG; charset=binary", 100 * MIB, "photo"),
        ("a.png", "image/png", 5, "photo"),
        ("a.webp", "image/webp", 5, "photo"),
        ("a.heic", "image/heic", 5, "photo"),
        ("a.heif", "image/heif", 5, "photo"),
        ("a.cr2", "application/octet-stream", 5, "photo"),
        ("a.nef", "image/x-nikon-nef", 5, "photo"),
        ("a.arw", "image/x-sony-arw", 5, "photo"),
        ("a.raw", "image/x-raw", 5, "photo"),
        ("IMG_0001.CR3", "application/octet-stream", 5, "photo"),
        ("a.cr3", "image/x-canon-cr3", 5, "photo"),
        ("IMG_0001.DNG", "image/x-adobe-dng", 100 * MIB, "photo"),
        ("a.dng", "application/octet-stream", 5, "photo"),
        ("clip.mp4", "video/mp4", 500 * MIB, "video"),
        ("clip.MOV", "video/quicktime", 5, "video"),
        ("clip.avi", "video/x-msvideo", 5, "video"),
        ("clip.mkv", "video/x-matroska", 5, "video"),
        ("doc.pdf", "application/pdf", 50 * MIB, "document"),
    ],
)
def test_an_allowed_type_within_its_limit_is_accepted_as_its_kind(file_name, mime_type, size, kind):
    assert check_file(file_name, mime_type, size) == kind


@pytest.mark.parametrize(
    ("file_name", "mime_type"),
    [
        ("a.gif", "image/gif"),
        ("a.exe", "application/octet-stream"),
        ("noextension", "image/jpeg"),
        (".jpg", "image/jpeg"),
        ("a.jpg", "image/png"),
        ("a.png", "image/jpeg"),
        ("a.mp4", "video/quicktime"),
        ("a.pdf", "application/octet-stream"),
        ("a.jpg", "application/octet-stream"),
        ("a.jpg.exe", "image/jpeg"),
    ],
)
def test_a_disallowed_extension_or_disagreeing_mime_type_is_unsupported(file_name, mime_type):
    with pytest.raises(UnsupportedType):
        check_file(file_name, mime_type, 1)


@pytest.mark.parametrize(
    ("file_name", "mime_type", "limit"),
    [("a.jpg", "image/jpeg", 100 * MIB), ("a.mp4", "video/mp4", 500 * MIB), ("a.pdf", "application/pdf", 50 * MIB)],
)
def test_one_byte_past_the_kinds_limit_is_too_large(file_name, mime_type, limit):
    with pytest.raises(FileTooLarge):
        check_file(file_name, mime_type, limit + 1)


def test_every_extension_has_a_size_limit_and_a_lowercase_mime_type():
    for extension, file_type in FILE_TYPES.items():
        assert extension == extension.lower() and file_type.kind in SIZE_LIMITS
        assert all(m == essence(m) for m in file_type.mime_types)


@given(st.text(max_size=80), st.text(max_size=80), st.integers(min_value=1, max_value=2**70))
def test_any_file_description_is_accepted_or_refused_with_an_upload_error(file_name, mime_type, size):
    try:
        assert check_file(file_name, mime_type, size) in SIZE_LIMITS
    except (UnsupportedType, FileTooLarge):
        pass


def test_extension_is_what_follows_the_last_dot():
    assert extension_of("a.b.JPG") == "jpg"
    assert extension_of(".hidden") == ""
    assert extension_of("none") == ""


# -- names -----------------------------------------------------------------------------------


def test_display_names_drop_control_characters():
    assert display_name("ho\x00li\x1bday\x7f.jpg") == "holiday.jpg"
    assert display_name("Cafe\u0301.jpg") == "Caf\u00e9.jpg"


def test_a_name_of_only_unprintable_characters_is_an_invalid_request():
    with pytest.raises(errors.InvalidRequest):
        display_name("\x00\x01 ")


@given(st.text(min_size=1, max_size=400))
def test_any_display_name_yields_a_key_safe_filename(name):
    try:
        shown = display_name(name)
    except errors.InvalidRequest:
        return
    assert check_filename(safe_filename(shown))


# -- state machine ---------------------------------------------------------------------------

STATES = ("created", "uploading", "verifying", "committed", "aborted", "expired")


@pytest.mark.parametrize(
    ("state", "event", "target"),
    [
        ("created", "receive", "uploading"),
        ("uploading", "receive", "uploading"),
        ("created", "commit", "verifying"),
        ("uploading", "commit", "verifying"),
        ("verifying", "verify", "committed"),
        ("verifying", "reject", "aborted"),
        ("verifying", "refuse", "uploading"),
        ("created", "abort", "aborted"),
        ("uploading", "abort", "aborted"),
        ("created", "expire", "expired"),
        ("uploading", "expire", "expired"),
    ],
)
def test_allowed_transitions_reach_their_target(state, event, target):
    # The table the repository applies in SQL (UPDATE ... WHERE state = ANY(sources)).
    assert state in TRANSITIONS[event].sources and TRANSITIONS[event].target == target


def test_finished_sessions_never_move_again():
    for state in ("committed", "aborted", "expired"):
        for event in TRANSITIONS:
            assert state not in TRANSITIONS[event].sources


def session(**changes) -> UploadSession:
    now = datetime.now(UTC)
    base = dict(
        upload_id="u1", workspace_id="ws", asset_id="a1", library_id="lib", folder_id=None,
        file_name="a.jpg", mime_type="image/jpeg", kind="photo", size_bytes=10, sha256=None,
        resumable_protocol="tus", provider="r2", storage_profile_ref="managed",
        object_key="workspaces/ws/assets/a1/original/a.jpg", multipart_upload_id=None,
        part_size=None, part_count=None, state="created", bytes_received=0,
        rejection_reason=None, rejection_detail=None, created_by="me", created_at=now,
        expires_at=now + timedelta(hours=1),
    )
    return UploadSession(**(base | changes))


def test_an_open_session_past_its_expiry_is_expired_even_before_the_janitor_says_so():
    now = datetime.now(UTC)
    assert effective_state(session(expires_at=now), now) == "expired"
    assert effective_state(session(state="verifying", expires_at=now), now) == "verifying"


def test_a_repeated_commit_answers_from_the_recorded_outcome():
    now = datetime.now(UTC)
    assert commit_outcome(session(state="committed"), now) == "verified"
    assert commit_outcome(session(state="verifying"), now) == "verifying"
    with pytest.raises(ChecksumMismatch):
        commit_outcome(session(state="aborted", rejection_reason="checksum_mismatch"), now)
    with pytest.raises(InvalidState):
        commit_outcome(session(state="aborted"), now)
    with pytest.raises(errors.Gone):
        commit_outcome(session(state="expired"), now)


def test_a_refused_commit_answers_with_what_was_wrong_and_how_many_commits_are_left():
    now = datetime.now(UTC)
    refused = session(state="uploading", rejection_reason="checksum_mismatch", rejection_detail="differs",
                      commit_attempts=1, commit_sha256="ee" * 32)
    with pytest.raises(ChecksumMismatch) as raised:
        commit_outcome(refused, now)
    facts = raised.value.facts
    assert (facts.attempts_left, facts.given_sha256, facts.declared_sha256) == (COMMIT_ATTEMPTS - 1, "ee" * 32, None)
    assert "given at commit" in raised.value.detail and "2 attempts left" in raised.value.detail
    declared = msgspec.structs.replace(refused, sha256="cd" * 32, commit_sha256=None, commit_attempts=COMMIT_ATTEMPTS)
    with pytest.raises(ChecksumMismatch) as raised:
        commit_outcome(declared, now)
    assert "declared when the upload was created" in raised.value.detail and raised.value.facts.attempts_left == 0


def test_a_commit_sha256_differing_from_the_declared_one_names_both():
    check_given_sha256(session(sha256="cd" * 32), "cd" * 32)
    check_given_sha256(session(sha256=None), "ee" * 32)
    with pytest.raises(ChecksumMismatch) as raised:
        check_given_sha256(session(sha256="cd" * 32), "ee" * 32)
    assert (raised.value.facts.declared_sha256, raised.value.facts.given_sha256) == ("cd" * 32, "ee" * 32)


def test_a_commit_before_every_byte_arrived_is_incomplete_with_both_counts():
    check_complete(session(size_bytes=10), 10)
    check_complete(session(size_bytes=10), None)  # storage reported no sizes: the verifier decides
    with pytest.raises(errors.UploadIncomplete) as raised:
        check_complete(session(size_bytes=2133), 1000)
    problem = problem_for(raised.value)
    assert (problem.status, problem.code, problem.bytes_received, problem.size_bytes) == (409, "upload_incomplete", 1000, 2133)


def test_the_bytes_a_multipart_commit_would_join_are_the_listed_parts_or_all():
    sizes = {1: 8, 2: 8, 3: 3}
    assert parts_received(sizes, None) == 19
    assert parts_received(sizes, {1, 3, 4}) == 11  # part 4 was never stored
    assert parts_received({1: 8, 2: None}, None) is None


def test_each_way_an_upload_ends_has_its_own_410_title():
    now = datetime.now(UTC)
    titles = {
        name: problem_for(gone(s, now)).title
        for name, s in {
            "expired": session(expires_at=now),
            "aborted": session(state="aborted"),
            "rejected": session(state="aborted", rejection_reason="size_mismatch"),
        }.items()
    }
    assert titles == {"expired": "Upload expired", "aborted": "Upload aborted", "rejected": "Upload rejected"}
    assert gone(session(state="uploading"), now) is None and gone(session(state="verifying"), now) is None


# -- part plan -------------------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=5 * 1024**4))
def test_the_part_plan_follows_r2s_rules_for_any_size(size):
    plan = plan_parts(size)
    assert plan.part_size >= MIN_PART_SIZE and plan.part_size % MIB == 0
    assert 1 <= plan.part_count <= MAX_PARTS
    last = size - plan.part_size * (plan.part_count - 1)
    assert 0 < last <= plan.part_size


@given(st.integers(min_value=1, max_value=5 * 1024**4), st.data())
def test_parts_cut_before_the_length_is_known_fit_every_length_up_to_the_most(maximum, data):
    """tus creation-defer-length: the part size is fixed before the length arrives; whatever
    length it turns out to be (at most `maximum`), the parts cut so far follow R2's rules."""
    part_size = part_size_up_to(maximum, MIN_PART_SIZE)
    length = data.draw(st.integers(min_value=1, max_value=maximum))
    assert MIN_PART_SIZE <= part_size and part_size % MIB == 0
    assert -(-length // part_size) <= MAX_PARTS  # every part but the last whole, the last the rest


def test_parts_up_to_the_largest_kind_are_the_tus_chunk_size():
    assert part_size_up_to(500 * MIB, MIN_PART_SIZE) == MIN_PART_SIZE
    assert part_size_up_to(5 * 1024**4, MIN_PART_SIZE) == 525 * MIB  # 5 TiB in <= 10,000 parts


def _create(size: int, protocol: str = "s3_multipart", **extra) -> api.CreateUpload:
    return msgspec.convert({"file_name": "a.mp4", "mime_type": "video/mp4", "size_bytes": size, "library_id": "l",
                            "resumable_protocol": protocol, **extra}, api.CreateUpload)  # fmt: skip


def test_a_client_may_choose_its_part_size_and_gets_exactly_it_or_a_clear_refusal():
    # What Uppy's getChunkSize cut before the session existed: the session must use the same.
    assert part_plan(_create(20 * MIB, part_size=6 * MIB)) == PartPlan(part_size=6 * MIB, part_count=4)
    assert part_plan(_create(20 * MIB)) == plan_parts(20 * MIB)
    assert part_plan(_create(20 * MIB, "tus")) is None
    with pytest.raises(errors.InvalidRequest, match="10000 are allowed") as refused:
        part_plan(_create(MIN_PART_SIZE * MAX_PARTS + 1, part_size=MIN_PART_SIZE))
    assert refused.value.errors[0].path == "$.part_size"
    with pytest.raises(errors.InvalidRequest, match="for s3_multipart sessions"):
        part_plan(_create(20 * MIB, "tus", part_size=6 * MIB))
    with pytest.raises(msgspec.ValidationError, match="part_size"):
        _create(20 * MIB, part_size=MIN_PART_SIZE - 1)  # under R2's and S3's minimum part


def test_part_size_is_8_mib_until_a_file_needs_more_than_ten_thousand_parts():
    assert plan_parts(500 * MIB).part_size == 8 * MIB
    assert plan_parts(500 * MIB).part_count == 63
    assert plan_parts(8 * MIB * MAX_PARTS).part_size == 8 * MIB
    assert plan_parts(8 * MIB * MAX_PARTS + 1).part_size == 9 * MIB


def test_tus_parts_match_the_front_ends_5_mib_chunks_until_a_file_needs_bigger_parts():
    assert tus_part_size(500 * MIB) == 5 * MIB
    assert tus_part_size(5 * MIB * MAX_PARTS + 1) == 6 * MIB


# -- access ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "action", "allowed"),
    [
        ("viewer", "read", True), ("viewer", "upload", False), ("viewer", "delete", False),
        ("member", "read", True), ("member", "upload", True), ("member", "delete", True),
        ("member", "manage_storage", False), ("admin", "manage_storage", True), ("admin", "upload", True),
    ],
)
def test_each_action_needs_its_minimum_role(role, action, allowed):
    principal = Principal(sub="u", workspaces={"ws": role})
    if allowed:
        assert require(principal, "ws", action) == role
    else:
        with pytest.raises(Forbidden):
            require(principal, "ws", action)


def test_another_workspace_is_not_found_whatever_the_action():
    principal = Principal(sub="u", workspaces={"ws": "admin"})
    for action in MINIMUM_ROLE:
        with pytest.raises(NotFound):
            require(principal, "other", action)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic abc", "token abc"])
def test_a_missing_or_non_bearer_authorization_is_unauthorized(header):
    with pytest.raises(Unauthorized):
        bearer_token(header)


@pytest.mark.parametrize(
    "claims",
    [{"exp": 1}, {"sub": "u", "exp": 1, "workspaces": {"ws": "owner"}}, {"sub": "u", "exp": 1, "workspaces": ["ws"]}],
)
def test_claims_without_sub_or_with_unknown_roles_are_unauthorized(claims):
    with pytest.raises(Unauthorized):
        principal_from_claims(claims)


def test_new_ids_are_random_version_4_uuids_in_their_canonical_text():
    ids = [new_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    for text in ids:
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)


def verifier() -> TokenVerifier:
    return TokenVerifier(upload_secret=UPLOAD_SECRET, hs256_secret=SECRET)


async def test_a_dev_token_verifies_to_its_principal():
    token = mint_dev_token(SECRET, sub="alice", workspaces={"ws": "member"}, ttl_s=60)
    assert await verifier().principal(f"Bearer {token}") == Principal(sub="alice", workspaces={"ws": "member"})


@pytest.mark.parametrize(
    "token",
    [
        mint_dev_token(SECRET, sub="a", workspaces={}, ttl_s=-120),  # expired past the leeway
        mint_dev_token("x" * 32, sub="a", workspaces={}, ttl_s=60),  # another key
        jwt.encode({"sub": "a", "workspaces": {}}, SECRET, algorithm="HS256"),  # no exp
        jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"),  # no sub
        jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, "", algorithm="none"),
        "not.a.jwt",
    ],
)
async def test_expired_forged_or_incomplete_user_tokens_are_unauthorized(token):
    with pytest.raises(Unauthorized):
        await verifier().principal(f"Bearer {token}")


async def test_upload_tokens_and_user_tokens_are_never_each_other():
    tokens = verifier()
    grant = UploadGrant(sub="a", workspace_id="ws", upload_id="u1")
    upload = tokens.mint_upload_token(grant, datetime.now(UTC) + timedelta(hours=1))
    assert tokens.upload_grant(f"Bearer {upload}") == grant
    assert tokens.is_upload_token(f"Bearer {upload}")
    with pytest.raises(Unauthorized):
        await tokens.principal(f"Bearer {upload}")
    user = mint_dev_token(SECRET, sub="a", workspaces={"ws": "admin"}, ttl_s=60)
    assert not tokens.is_upload_token(f"Bearer {user}")
    with pytest.raises(Unauthorized):
        tokens.upload_grant(f"Bearer {user}")


def test_an_upload_token_is_a_standard_hs256_jwt_of_its_claims():
    claims = {"sub": "a", "aud": "rawdrive:upload", "workspace_id": "ws", "upload_id": "u1", "iat": 1, "exp": 2**40}
    token = sign_hs256(claims, UPLOAD_SECRET.encode())
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    assert jwt.decode(token, UPLOAD_SECRET, algorithms=["HS256"], audience="rawdrive:upload") == claims
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "v" * 32, algorithms=["HS256"], audience="rawdrive:upload")


ALICE = Principal(sub="alice", workspaces={"ws": "member"})


def test_a_verified_token_is_remembered_until_its_exp_and_never_past_it():
    cache = VerifiedTokens(max_age_s=300)
    cache.put("t", ALICE, exp=1060, now=1000)
    assert cache.get("t", now=1059.9) == ALICE
    assert cache.get("t", now=1060) is None
    assert cache.get("t", now=1000) is None  # gone once expired
    assert cache.get("other", now=1000) is None


def test_a_verified_token_is_remembered_at_most_max_age_and_an_expired_one_not_at_all():
    cache = VerifiedTokens(max_age_s=300)
    cache.put("long", ALICE, exp=10_000, now=1000)
    assert cache.get("long", now=1299) == ALICE
    assert cache.get("long", now=1300) is None
    cache.put("stale", ALICE, exp=999, now=1000)  # verified within the leeway, already past exp
    assert len(cache) == 0


def test_the_verified_token_cache_is_bounded_oldest_out_first():
    cache = VerifiedTokens(capacity=2)
    for token in ("a", "b", "c"):
        cache.put(token, ALICE, exp=2000, now=1000)
    assert [cache.get(t, now=1000) for t in ("a", "b", "c")] == [None, ALICE, ALICE]
    assert len(cache) == 2


async def test_a_remembered_token_still_verifies_and_a_tampered_copy_does_not():
    tokens = verifier()
    token = mint_dev_token(SECRET, sub="alice", workspaces={"ws": "member"}, ttl_s=60)
    assert await tokens.principal(f"Bearer {token}") == await tokens.principal(f"Bearer {token}") == ALICE
    # The remembered token's signature on claims that make alice an admin: not a hit, refused.
    header, _, signature = token.split(".")
    claims = jwt.decode(token, options={"verify_signature": False}) | {"workspaces": {"ws": "admin"}}
    forged = jwt.encode(claims, "x" * 32, algorithm="HS256").split(".")[1]
    with pytest.raises(Unauthorized):
        await tokens.principal(f"Bearer {header}.{forged}.{signature}")


def test_an_upload_token_expires_with_its_session():
    tokens = verifier()
    grant = UploadGrant(sub="a", workspace_id="ws", upload_id="u1")
    expired = tokens.mint_upload_token(grant, datetime.now(UTC) - timedelta(minutes=5))
    with pytest.raises(Unauthorized):
        tokens.upload_grant(f"Bearer {expired}")


def test_after_a_secret_rotation_old_upload_tokens_still_open_their_upload_and_new_ones_use_the_new_secret():
    old_secret, new_secret = "o" * 48, "n" * 48
    grant = UploadGrant(sub="a", workspace_id="ws", upload_id="u1")
    later = datetime.now(UTC) + timedelta(hours=1)
    before = TokenVerifier(upload_secret=old_secret, hs256_secret=SECRET).mint_upload_token(grant, later)
    rotated = TokenVerifier(upload_secret=new_secret, hs256_secret=SECRET, previous_upload_secrets=[old_secret])

    assert rotated.upload_grant(f"Bearer {before}") == grant
    after = rotated.mint_upload_token(grant, later)
    assert TokenVerifier(upload_secret=new_secret, hs256_secret=SECRET).upload_grant(f"Bearer {after}") == grant
    with pytest.raises(Unauthorized):  # minted under the new secret only
        TokenVerifier(upload_secret=old_secret, hs256_secret=SECRET).upload_grant(f"Bearer {after}")
    # Without the old secret, the tokens minted before no longer open anything.
    with pytest.raises(Unauthorized):
        TokenVerifier(upload_secret=new_secret, hs256_secret=SECRET).upload_grant(f"Bearer {before}")
    # An expired token signed with the old secret stays refused, and so does a stranger's.
    expired = TokenVerifier(upload_secret=old_secret, hs256_secret=SECRET).mint_upload_token(
        grant, datetime.now(UTC) - timedelta(minutes=5)
    )
    stranger = TokenVerifier(upload_secret="s" * 48, hs256_secret=SECRET).mint_upload_token(grant, later)
    for token in (expired, stranger):
        with pytest.raises(Unauthorized):
            rotated.upload_grant(f"Bearer {token}")


def test_previous_upload_secrets_are_read_comma_separated_from_the_settings():
    settings = load_settings(Settings, {
        "RAWDRIVE_DATABASE_URL": "postgresql://x@127.0.0.1/x", "RAWDRIVE_S3_BUCKET": "b",
        "RAWDRIVE_S3_ACCESS_KEY_ID": "a", "RAWDRIVE_S3_SECRET_ACCESS_KEY": "s", "RAWDRIVE_JWT_SECRET": SECRET,
        "RAWDRIVE_UPLOAD_TOKEN_SECRET": "n" * 48, "RAWDRIVE_UPLOAD_TOKEN_PREVIOUS_SECRETS": f" {'o' * 48}, {'p' * 48} ,",
    })  # fmt: skip
    grant = UploadGrant(sub="a", workspace_id="ws", upload_id="u1")
    later = datetime.now(UTC) + timedelta(hours=1)
    for old_secret in ("o" * 48, "p" * 48):
        token = TokenVerifier(upload_secret=old_secret, hs256_secret=SECRET).mint_upload_token(grant, later)
        assert token_verifier(settings).upload_grant(f"Bearer {token}") == grant


# -- problem table ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (errors.InvalidRequest("x"), 422, "invalid_request"),
        (errors.MalformedJson("x"), 400, "invalid_request"),
        (errors.UnsupportedType("x"), 422, "unsupported_type"),
        (errors.FileTooLarge("x"), 413, "file_too_large"),
        (errors.ChecksumMismatch("x"), 422, "checksum_mismatch"),
        (errors.SizeMismatch("x"), 422, "size_mismatch"),
        (errors.InvalidState("x"), 409, "invalid_state"),
        (errors.NotFound("x"), 404, "not_found"),
        (errors.Unauthorized("x"), 401, "unauthorized"),
        (errors.Forbidden("x"), 403, "forbidden"),
        (errors.Gone("x"), 410, "gone"),
        (errors.StorageError("x"), 502, "storage_error"),
        (errors.StorageUnavailable("x"), 503, "storage_error"),
    ],
)
def test_each_error_maps_to_its_status_and_code(error, status, code):
    problem = problem_for(error)
    assert (problem.status, problem.code, problem.detail) == (status, code, "x")
    assert problem.type == f"urn:rawdrive:problem:{code}"


def test_every_error_class_and_rejection_reason_has_a_status_below_500():
    # Only a dependency (storage, the event bus) or a full replica answers 5xx: retry later.
    assert all(spec.status < 500 or spec.code in {"storage_error", "unavailable"} for spec in PROBLEMS.values())
    for reason, error_type in REJECTIONS.items():
        assert problem_for(rejection_error(reason)).code in {reason, "unsupported_type"}


def test_a_validation_error_keeps_the_field_path_apart():
    try:
        msgspec.convert({"a": "x"}, type=dict[str, int])
    except msgspec.ValidationError as error:
        translated = from_validation_error(error)
    assert translated.errors == [errors.FieldError(path="$[...]", message="Expected `int`, got `str`")]
