"""Upload facts: one declaration of what travels from event to event, and the helper that carries it."""

import typing
from datetime import UTC, datetime

import msgspec
import pytest

from rawdrive_contracts import (
    EVENT_TYPES,
    AssetCreated,
    CommitRequested,
    UploadRejected,
    UploadVerified,
    encode,
    new_event,
)
from rawdrive_contracts.facts import FACTS, UploadFacts, carry

NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
SHA = "a" * 64


def _bare(annotation: object) -> set[object]:
    """The types an annotation allows, None aside."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, type(int | None)) else ()
    return {a for a in args if a is not type(None)} if args else {annotation}


def _annotations(cls: type) -> dict[str, object]:
    return typing.get_type_hints(cls, include_extras=True)


def test_every_event_declares_each_fact_it_carries_with_the_facts_own_type():
    declared = _annotations(UploadFacts)
    for event_type in EVENT_TYPES:
        for name, annotation in _annotations(event_type).items():
            if name in FACTS:
                assert _bare(annotation) == _bare(declared[name]), f"{event_type.__name__}.{name}"


def _commit() -> CommitRequested:
    return CommitRequested(
        workspace_id="ws", upload_id="u1", asset_id="a1", library_id="lib", folder_id="f", file_name="x.jpg",
        mime_type="image/jpeg", size_bytes=10, resumable_protocol="s3_multipart", provider="byos",
        storage_profile_ref="p1", object_key="k", expected_sha256=SHA, multipart_upload_id="m1", requested_by="me",
    )


def test_carry_copies_every_fact_the_target_declares_and_the_caller_decides_the_rest():
    verified = carry(_commit(), UploadVerified, size_bytes=11, sha256=SHA, verified_at=NOW)
    assert verified == UploadVerified(
        workspace_id="ws", upload_id="u1", asset_id="a1", library_id="lib", folder_id="f", file_name="x.jpg",
        mime_type="image/jpeg", size_bytes=11, sha256=SHA, provider="byos", storage_profile_ref="p1",
        object_key="k", verified_at=NOW,
    )
    rejected = carry(_commit(), UploadRejected, reason="size_mismatch")
    assert rejected.multipart_upload_id == "m1" and rejected.storage_profile_ref == "p1"


def test_carried_events_encode_to_the_same_json_as_events_written_field_by_field():
    verified = UploadVerified(
        workspace_id="ws", upload_id="u1", asset_id="a1", library_id="lib", file_name="x.jpg", mime_type="image/jpeg",
        size_bytes=10, sha256=SHA, storage_profile_ref="p1", object_key="k", duplicate_of="a0", verified_at=NOW,
    )
    by_hand = AssetCreated(
        workspace_id="ws", asset_id="a1", upload_id="u1", library_id="lib", file_name="x.jpg", mime_type="image/jpeg",
        size_bytes=10, sha256=SHA, kind="photo", object_key="k", storage_profile_ref="p1", duplicate_of="a0",
    )
    carried = carry(verified, AssetCreated, kind="photo")
    assert encode(new_event(carried, source="t", time=NOW)) == encode(new_event(by_hand, source="t", time=NOW))


def test_a_required_fact_the_source_lacks_is_an_error_not_a_silent_default():
    class Partial(msgspec.Struct):
        workspace_id: str

    with pytest.raises(AttributeError):
        carry(Partial("ws"), UploadVerified, verified_at=NOW)
