"""The pure quota and part rules (quotas.py, parts.py), without servers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rawdrive_platform.storage import UploadedPart
from upload_gateway import parts
from upload_gateway.problems import FileTooLarge, PartSizeMismatch, QuotaExceeded, RateLimited
from upload_gateway.quotas import ConcurrencyLimit, QuotaLimits, Usage, admit
from upload_gateway.sessions import UploadSession

MIB = 1024 * 1024
LIMITS = QuotaLimits(max_open_uploads=2, max_bytes_in_flight=10 * MIB)


def test_admit_counts_the_sessions_admitted_before_in_the_same_batch():
    verdicts = admit(LIMITS, {"a": Usage(1, MIB)}, [("a", MIB), ("a", MIB), ("b", 9 * MIB), ("b", 2 * MIB)])
    assert [type(v) for v in verdicts] == [type(None), QuotaExceeded, type(None), QuotaExceeded]
    assert "open uploads" in verdicts[1].detail and "bytes in flight" in verdicts[3].detail
    assert verdicts[1].headers == {"Retry-After": "30"}


def test_a_file_larger_than_the_bytes_limit_alone_is_too_large_not_retried():
    (verdict,) = admit(LIMITS, {}, [("a", 10 * MIB + 1)])
    assert isinstance(verdict, FileTooLarge) and not verdict.headers


def test_a_concurrency_limit_holds_places_per_key_and_gives_them_back():
    limit = ConcurrencyLimit(1)
    with limit.hold("alice"):
        with pytest.raises(RateLimited):
            with limit.hold("alice"):
                pass
        with limit.hold("bob"):
            assert (limit.in_use("alice"), limit.in_use("bob")) == (1, 1)
    assert limit.in_use("alice") == 0
    with pytest.raises(ValueError):
        with limit.hold("alice"):
            raise ValueError  # a failing request gives its place back too
    assert limit.in_use("alice") == 0


def session(size_bytes: int, part_size: int = 8 * MIB) -> UploadSession:
    now = datetime.now(UTC)
    return UploadSession(
        upload_id="u", workspace_id="w", asset_id="a", library_id="l", folder_id=None, file_name="f.mp4",
        mime_type="video/mp4", kind="video", size_bytes=size_bytes, sha256=None, resumable_protocol="s3_multipart",
        provider="r2", storage_profile_ref="managed", object_key="k", multipart_upload_id="m", part_size=part_size,
        part_count=-(-size_bytes // part_size), state="uploading", bytes_received=0, rejection_reason=None,
        rejection_detail=None, created_by="alice", created_at=now, expires_at=now + timedelta(hours=24),
    )  # fmt: skip


def test_parts_are_planned_sized_and_others_are_refused_and_not_counted():
    s = session(13 * MIB)
    assert [parts.planned_size(s, n) for n in (1, 2)] == [8 * MIB, 5 * MIB]
    stored = [UploadedPart(1, "e1", 8 * MIB), UploadedPart(2, "big", 12 * MIB)]
    assert parts.bytes_held(s, stored) == 8 * MIB
    with pytest.raises(PartSizeMismatch) as refused:
        parts.check_sizes(s, parts.current(s, stored))
    assert refused.value.facts.parts_to_resend == [2]
    # SeaweedFS lists every upload of a number: a fitting copy counts, in whatever order listed.
    resent = [UploadedPart(2, "ok", 5 * MIB), *stored]
    assert parts.bytes_held(s, resent) == 13 * MIB
    parts.check_sizes(s, parts.current(s, resent))
    # A commit naming the oversized copy's ETag gets that copy, and the refusal.
    with pytest.raises(PartSizeMismatch):
        parts.check_sizes(s, parts.current(s, resent, {1: '"e1"', 2: '"big"'}))


def test_a_part_url_lives_the_setting_but_never_past_its_session():
    now = datetime.now(UTC)
    assert parts.url_ttl_s(900, now, now + timedelta(hours=24)) == 900
    assert parts.url_ttl_s(900, now, now + timedelta(seconds=60)) == 60
    assert parts.url_ttl_s(900, now, now - timedelta(seconds=5)) == 1
