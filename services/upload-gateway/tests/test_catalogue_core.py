"""The catalogue's pure core: facts merge in any order and any number of times to one status."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawdrive_contracts import CloudEvent, DecodeWarning, EventData, MediaMetadata, events, new_event
from upload_gateway.catalogue.core import (
    AssetFacts,
    InvalidCursor,
    MergeConflict,
    Position,
    decode_cursor,
    encode_cursor,
    facts_of,
    merge,
    restore_outcome,
    status_of,
)

T0 = datetime(2025, 1, 1, tzinfo=UTC)
SHA = "ab" * 32


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def verified(t: float = 0) -> CloudEvent[Any]:
    return _event(events.UploadVerified(
        workspace_id="ws", upload_id="u1", asset_id="a1", library_id="lib", file_name="ÅÄÖ.jpg",
        mime_type="image/jpeg", size_bytes=10, sha256=SHA, storage_profile_ref="managed",
        object_key="workspaces/ws/assets/a1/original/ÅÄÖ.jpg", verified_at=at(t),
    ), t)


def created(t: float = 1) -> CloudEvent[Any]:
    return _event(events.AssetCreated(
        workspace_id="ws", asset_id="a1", upload_id="u1", library_id="lib", file_name="ÅÄÖ.jpg",
        mime_type="image/jpeg", size_bytes=10, sha256=SHA, kind="photo", width=4, height=3,
        object_key="workspaces/ws/assets/a1/original/ÅÄÖ.jpg", storage_profile_ref="managed",
    ), t)


def failed(t: float = 1) -> CloudEvent[Any]:
    return _event(events.AssetProcessingFailed(
        workspace_id="ws", asset_id="a1", upload_id="u1", reason="decode_failed", object_key="k",
        storage_profile_ref="managed",
    ), t)


def deleted(t: float) -> CloudEvent[Any]:
    return _event(events.AssetDeleted(workspace_id="ws", asset_id="a1", deleted_by="bob", deleted_at=at(t),
                                      purge_after=at(t + 100)), t)


def restored(t: float) -> CloudEvent[Any]:
    return _event(events.AssetRestored(workspace_id="ws", asset_id="a1", restored_by="bob", restored_at=at(t)), t)


def purged(t: float) -> CloudEvent[Any]:
    return _event(events.AssetPurged(workspace_id="ws", asset_id="a1", purged_at=at(t)), t)


def _event(data: EventData, t: float) -> CloudEvent[Any]:
    return new_event(data, source="/test", time=at(t))


def fold(arrived: list[CloudEvent[Any]]) -> AssetFacts:
    return reduce(merge, map(facts_of, arrived), AssetFacts(asset_id="a1", workspace_id="ws"))


@pytest.mark.parametrize(
    ("arrived", "status"),
    [
        ([verified()], "processing"),
        ([verified(), created()], "available"),
        ([created(), verified()], "available"),  # created overtook the verdict
        ([verified(), failed()], "failed"),
        ([verified(), failed(1), created(2)], "available"),  # a retry succeeded
        ([verified(), created(2), failed(1)], "available"),  # a stale failure arrives late
        ([verified(), created(1), failed(2)], "failed"),  # a newer failure stands
        ([verified(), created(), deleted(5)], "deleted"),
        ([verified(), created(), deleted(5), restored(6)], "available"),  # back to where it was
        ([verified(), failed(), restored(6), deleted(5)], "failed"),  # restore before its delete
        ([verified(), deleted(5), restored(6), deleted(7)], "deleted"),
        ([verified(), deleted(7), restored(6), deleted(5)], "deleted"),  # the later delete wins
        ([verified(), created(), deleted(5), purged(9)], "purged"),
        ([purged(9), verified()], "purged"),  # a purged asset never comes back
        ([deleted(5)], None),  # nothing says what the file is yet
        ([failed()], None),
    ],
)
def test_status_follows_the_facts_not_the_order_they_arrived_in(arrived, status):
    assert status_of(fold(arrived)) == status


HISTORY = [verified(0), created(2), failed(1), deleted(5), restored(6), deleted(7), restored(8), purged(20)]


@given(st.lists(st.sampled_from(HISTORY), min_size=1, max_size=20), st.randoms(use_true_random=False))
def test_any_permutation_and_duplication_of_the_same_facts_gives_the_same_record(arrived, rnd):
    shuffled = list(arrived)
    rnd.shuffle(shuffled)
    doubled = shuffled + rnd.sample(shuffled, k=len(shuffled) // 2)
    assert fold(shuffled) == fold(arrived) == fold(doubled)
    assert status_of(fold(doubled)) == status_of(fold(arrived))


@given(st.permutations(HISTORY[:6]))
def test_every_order_of_a_whole_life_lands_in_the_same_place(arrived):
    assert status_of(fold(list(arrived))) == "deleted"
    assert status_of(fold([*arrived, purged(20)])) == "purged"


def test_a_record_from_another_workspace_is_never_merged():
    with pytest.raises(MergeConflict):
        merge(AssetFacts(asset_id="a1", workspace_id="ws"), AssetFacts(asset_id="a1", workspace_id="other"))


def test_restore_is_possible_only_while_deleted_and_before_purge_after():
    deleted_facts = fold([verified(), deleted(5)])
    assert restore_outcome(deleted_facts, at(50)) == "restore"
    assert restore_outcome(deleted_facts, at(105)) == "retention_over"
    assert restore_outcome(fold([verified()]), at(50)) == "not_deleted"


@given(st.datetimes(timezones=st.just(UTC)), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True))
def test_a_cursor_round_trips_and_is_url_safe(created_at, asset_id):
    cursor = encode_cursor(Position(created_at, asset_id))
    assert decode_cursor(cursor) == Position(created_at, asset_id)
    assert all(c.isalnum() or c in "-_" for c in cursor)


@pytest.mark.parametrize("cursor", ["", "!!!", "bm90IGpzb24", "WzEsMl0", "WyIyMDI1LTAxLTAxVDAwOjAwOjAwIiwiYSJd"])
def test_a_cursor_the_api_did_not_hand_out_is_refused(cursor):
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor)


def test_a_damaged_assets_warnings_and_a_failures_cause_are_kept_for_the_api():
    warning = DecodeWarning(code="truncated", detail="Premature end of JPEG file")
    damaged = created().data
    damaged.metadata = MediaMetadata(width=4, height=3, warnings=(warning,))
    facts = fold([verified(), _event(damaged, 1)])
    assert facts.processed is not None and facts.processed.metadata.warnings == (warning,)

    refused = failed().data
    refused.reason, refused.cause = "unsupported_content", "too_many_pixels"
    facts = fold([verified(), _event(refused, 1)])
    assert facts.failure is not None
    assert (facts.failure.reason, facts.failure.cause) == ("unsupported_content", "too_many_pixels")
