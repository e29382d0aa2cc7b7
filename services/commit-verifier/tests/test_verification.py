"""The verifier's pure core: verdicts from sizes and digests, multipart completion plans, events."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from commit_verifier.verification import Rejected, Verified, decide, plan_completion, verdict_event
from rawdrive_contracts import CommitRefused, CommitRequested, PartRef, UploadRejected, UploadVerified, event_id
from rawdrive_platform.storage import UploadedPart

sizes = st.integers(min_value=0, max_value=5 * 1024**4)
digests = st.binary(max_size=64).map(lambda b: hashlib.sha256(b).hexdigest())


@given(size=sizes, digest=digests)
def test_matching_size_and_checksum_is_verified(size, digest):
    assert decide(size, size, digest, digest) == Verified(size=size, sha256=digest)


@given(size=sizes, digest=digests)
def test_without_an_expected_checksum_the_size_alone_decides_and_the_digest_is_recorded(size, digest):
    assert decide(size, size, None, digest) == Verified(size=size, sha256=digest)


@given(size=sizes, expected=digests, computed=digests)
def test_a_different_checksum_is_rejected_with_the_computed_one(size, expected, computed):
    verdict = decide(size, size, expected, computed)
    if expected == computed:
        assert isinstance(verdict, Verified)
    else:
        assert verdict == Rejected(
            reason="checksum_mismatch", detail=verdict.detail, actual_size=size, actual_sha256=computed
        )


@given(declared=sizes, actual=sizes, digest=digests)
def test_a_different_size_is_rejected_whatever_the_checksum(declared, actual, digest):
    verdict = decide(declared, actual, digest, digest)
    assert isinstance(verdict, Verified) == (declared == actual)
    if declared != actual:
        assert verdict.reason == "size_mismatch" and verdict.actual_size == actual


def test_a_missing_object_is_rejected_as_missing():
    verdict = decide(10, None, None, hashlib.sha256(b"").hexdigest())
    assert isinstance(verdict, Rejected) and verdict.reason == "missing_object"


def test_an_uppercase_expected_checksum_still_matches():
    digest = hashlib.sha256(b"x").hexdigest()
    assert isinstance(decide(1, 1, digest.upper(), digest), Verified)


def stored(*numbers: int) -> list[UploadedPart]:
    return [UploadedPart(part_number=n, etag=f"etag{n}", size=5) for n in numbers]


@given(st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, unique=True))
def test_without_a_client_list_every_stored_part_is_joined_in_order(numbers):
    plan = plan_completion(stored(*numbers), None)
    assert [p.part_number for p in plan] == sorted(numbers)


@given(
    st.lists(st.integers(min_value=1, max_value=200), min_size=1, unique=True).flatmap(
        lambda numbers: st.tuples(st.just(numbers), st.lists(st.sampled_from(numbers), min_size=1))
    )
)
def test_a_client_list_of_stored_parts_defines_the_object(case):
    numbers, listed = case
    refs = [PartRef(part_number=n, etag=f'"ETAG{n}"') for n in listed]  # quoted, other case
    plan = plan_completion(stored(*numbers), refs)
    assert [p.part_number for p in plan] == sorted(set(listed))


def test_a_listed_part_that_was_never_uploaded_is_a_missing_object():
    plan = plan_completion(stored(1, 2), [PartRef(part_number=1, etag="etag1"), PartRef(part_number=3, etag="x")])
    assert isinstance(plan, Rejected) and plan.reason == "missing_object" and "part 3" in plan.detail


def test_a_listed_part_whose_etag_differs_is_a_checksum_mismatch():
    plan = plan_completion(stored(1, 2), [PartRef(part_number=1, etag="etag1"), PartRef(part_number=2, etag="other")])
    assert isinstance(plan, Rejected) and plan.reason == "checksum_mismatch" and "part 2" in plan.detail


def test_an_upload_without_parts_is_a_missing_object():
    plan = plan_completion([], None)
    assert isinstance(plan, Rejected) and plan.reason == "missing_object"


def commit(**overrides) -> CommitRequested:
    fields = dict(
        workspace_id="ws1", upload_id="up1", asset_id="as1", library_id="lib1", file_name="a.jpg",
        mime_type="image/jpeg", size_bytes=3, resumable_protocol="s3_multipart", storage_profile_ref="managed",
        object_key="workspaces/ws1/assets/as1/original/a.jpg", multipart_upload_id="mp1", requested_by="u1",
    )
    return CommitRequested(**(fields | overrides))


def test_the_verdict_event_id_depends_only_on_the_upload_and_the_outcome():
    digest = hashlib.sha256(b"abc").hexdigest()
    first = verdict_event(commit(), Verified(size=3, sha256=digest), duplicate_of=None, now=datetime(2026, 1, 1, tzinfo=UTC))
    again = verdict_event(commit(), Verified(size=3, sha256=digest), duplicate_of="as0", now=datetime.now(UTC))
    assert first.id == again.id == event_id(UploadVerified.spec.type, "up1")
    assert first.source == "commit-verifier"


def test_a_rejection_event_carries_what_the_janitor_and_the_client_need():
    event = verdict_event(
        commit(expected_sha256="0" * 64),
        Rejected(reason="size_mismatch", detail="declared 3 bytes, stored 4", actual_size=4),
        duplicate_of=None,
        now=datetime.now(UTC),
    )
    data = event.data
    assert isinstance(data, UploadRejected)
    assert (data.reason, data.expected_size_bytes, data.actual_size_bytes) == ("size_mismatch", 3, 4)
    assert (data.object_key, data.multipart_upload_id, data.storage_profile_ref) == (
        "workspaces/ws1/assets/as1/original/a.jpg", "mp1", "managed",
    )


MISMATCH = Rejected(reason="checksum_mismatch", detail="differs", actual_size=3, actual_sha256="1" * 64)
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_checksum_mismatch_with_attempts_left_only_refuses_that_attempt_under_its_own_id():
    first = verdict_event(commit(expected_sha256="0" * 64, attempts_left=2), MISMATCH, duplicate_of=None, now=NOW)
    second = verdict_event(
        commit(expected_sha256="0" * 64, attempt=2, attempts_left=1), MISMATCH, duplicate_of=None, now=NOW
    )
    assert isinstance(first.data, CommitRefused) and isinstance(second.data, CommitRefused)
    assert (first.data.attempt, first.data.attempts_left, first.data.actual_sha256) == (1, 2, "1" * 64)
    assert first.id != second.id and first.id == event_id(CommitRefused.spec.type, "up1", "attempt-1")


def test_the_last_attempts_mismatch_and_any_other_rejection_are_final():
    last = verdict_event(commit(expected_sha256="0" * 64, attempt=3), MISMATCH, duplicate_of=None, now=NOW)
    size = Rejected(reason="size_mismatch", detail="declared 3 bytes, stored 4", actual_size=4)
    wrong_size = verdict_event(commit(attempts_left=2), size, duplicate_of=None, now=NOW)
    assert isinstance(last.data, UploadRejected) and isinstance(wrong_size.data, UploadRejected)
    assert last.id == wrong_size.id == event_id(UploadRejected.spec.type, "up1")  # one final decision per upload
