"""Events survive the wire, refuse garbage, and carry ids that make redelivery harmless."""

import json
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawdrive_contracts import (
    AssetCreated,
    AssetDeleted,
    AssetRestored,
    GpsPosition,
    InvalidEvent,
    MediaMetadata,
    UnknownEventType,
    UploadVerified,
    decode,
    decode_as,
    encode,
    new_event,
    subject_for,
)


def _document(event_data, **envelope) -> dict:
    return {**json.loads(encode(new_event(event_data, source="/tests"))), **envelope}


def test_every_event_type_round_trips_through_the_wire(example):
    event = new_event(example, source="//rawdrive/tests")
    decoded = decode(encode(event))
    assert decoded == event
    assert type(decoded.data) is type(example)
    assert decoded.type == type(example).spec.type
    assert decoded.specversion == "1.0"


def test_envelope_subject_names_the_resource_and_nats_subject_names_the_workspace(example):
    event = new_event(example, source="/tests")
    assert event.subject.split("/")[0] in ("uploads", "assets")
    assert subject_for(example).endswith(f".{example.workspace_id}")


PHOTO_TIME = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
PHOTO = AssetCreated(
    workspace_id="ws_1", asset_id="as_1", upload_id="up_1", library_id="lib_1", file_name="IMG_0001.HEIC",
    mime_type="image/heic", size_bytes=2_481_337, sha256=SHA, kind="photo", object_key="ws_1/as_1/original",
    storage_profile_ref="sp_r2_default",
)
finite = st.floats(allow_nan=False, allow_infinity=False)


@given(
    st.builds(
        MediaMetadata,
        camera_make=st.none() | st.text(),
        taken_at=st.none() | st.datetimes(),  # naive on purpose: cameras often record no offset
        gps=st.none() | st.builds(GpsPosition, latitude=finite, longitude=finite, altitude_m=st.none() | finite),
        iso=st.none() | st.integers(min_value=0, max_value=2**63 - 1),
        exposure_time_s=st.none() | finite,
    )
)
def test_asset_created_round_trips_whatever_metadata_the_camera_gave(metadata):
    event = new_event(msgspec.structs.replace(PHOTO, metadata=metadata), source="/tests")
    assert decode_as(encode(event), AssetCreated).data.metadata == metadata


# -- a newer producer ----------------------------------------------------------------------------


def test_decode_ignores_fields_a_newer_producer_added_to_data_and_envelope():
    document = _document(PHOTO, traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    document["data"]["color_space"] = "display-p3"
    document["data"]["metadata"]["lens_serial"] = "0412345"
    event = decode(json.dumps(document))
    assert event.data == PHOTO


def test_decode_of_an_event_type_this_version_does_not_know_raises_unknown_event_type():
    document = _document(PHOTO, type="com.rawdrive.asset.created.v2")
    with pytest.raises(UnknownEventType, match="com.rawdrive.asset.created.v2"):
        decode(json.dumps(document))


# -- garbage --------------------------------------------------------------------------------------


def _without(document: dict, *path: str) -> dict:
    *parents, last = path
    target = document
    for key in parents:
        target = target[key]
    del target[last]
    return document


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{not json", id="bad json"),
        pytest.param(b"[1, 2]", id="not an object"),
        pytest.param(json.dumps(_without(_document(PHOTO), "type")), id="no type"),
        pytest.param(json.dumps(_without(_document(PHOTO), "id")), id="no id"),
        pytest.param(json.dumps(_without(_document(PHOTO), "data", "sha256")), id="data without sha256"),
        pytest.param(json.dumps(_document(PHOTO, time="2025-03-14T09:26:53")), id="naive time"),
        pytest.param(json.dumps(_document(PHOTO, specversion="0.3")), id="other specversion"),
        pytest.param(
            json.dumps(_document(msgspec.structs.replace(PHOTO, sha256=SHA.upper()))), id="uppercase sha256"
        ),
        pytest.param(json.dumps(_document(msgspec.structs.replace(PHOTO, sha256="abc"))), id="short sha256"),
        pytest.param(json.dumps(_document(PHOTO, data={**_document(PHOTO)["data"], "size_bytes": "2481337"})), id="size as string"),
    ],
)
def test_decode_of_a_malformed_event_raises_invalid_event(raw):
    with pytest.raises(InvalidEvent):
        decode(raw)


def test_invalid_event_and_unknown_event_type_are_value_errors_a_consumer_can_tell_apart():
    assert issubclass(InvalidEvent, ValueError) and issubclass(UnknownEventType, ValueError)
    assert not issubclass(UnknownEventType, InvalidEvent) and not issubclass(InvalidEvent, UnknownEventType)


# -- ids ------------------------------------------------------------------------------------------


def test_the_same_decision_gets_the_same_id_whenever_and_wherever_it_is_published():
    first = new_event(PHOTO, source="//media-processor/pod-a")
    again = new_event(msgspec.structs.replace(PHOTO), source="//media-processor/pod-b", time=first.time + timedelta(minutes=5))
    assert first.id == again.id


def test_different_uploads_get_different_ids():
    verified = UploadVerified(
        workspace_id="ws_1", upload_id="up_1", asset_id="as_1", library_id="lib_1", file_name="a.jpg",
        mime_type="image/jpeg", size_bytes=1, sha256=SHA, storage_profile_ref="sp", object_key="k",
        verified_at=PHOTO_TIME,
    )
    other = msgspec.structs.replace(verified, upload_id="up_2", asset_id="as_2")
    assert new_event(verified, source="/t").id != new_event(other, source="/t").id


def test_same_thing_different_event_types_get_different_ids():
    deleted = AssetDeleted(workspace_id="ws_1", asset_id="as_1", deleted_by="u", deleted_at=PHOTO_TIME, purge_after=PHOTO_TIME)
    restored = AssetRestored(workspace_id="ws_1", asset_id="as_1", restored_by="u", restored_at=PHOTO_TIME)
    assert new_event(deleted, source="/t").id != new_event(restored, source="/t").id


def test_delete_restore_delete_again_are_three_distinct_events():
    def deleted(at):
        return AssetDeleted(workspace_id="ws_1", asset_id="as_1", deleted_by="u", deleted_at=at, purge_after=at + timedelta(days=30))

    first = new_event(deleted(PHOTO_TIME), source="/t")
    restore = new_event(
        AssetRestored(workspace_id="ws_1", asset_id="as_1", restored_by="u", restored_at=PHOTO_TIME + timedelta(hours=1)),
        source="/t",
    )
    second = new_event(deleted(PHOTO_TIME + timedelta(hours=2)), source="/t")
    assert len({first.id, restore.id, second.id}) == 3
    assert new_event(deleted(PHOTO_TIME), source="/t").id == first.id  # a redelivered first delete


def test_an_explicit_id_wins():
    assert new_event(PHOTO, source="/t", id="evt-123").id == "evt-123"


# -- decode_as ------------------------------------------------------------------------------------


def test_decode_as_returns_typed_data_for_the_expected_type():
    event = decode_as(encode(new_event(PHOTO, source="/t")), AssetCreated)
    assert event.data.sha256 == SHA


def test_decode_as_refuses_an_event_of_another_type():
    restored = AssetRestored(workspace_id="ws_1", asset_id="as_1", restored_by="u", restored_at=PHOTO_TIME)
    with pytest.raises(InvalidEvent, match="expected AssetCreated"):
        decode_as(encode(new_event(restored, source="/t")), AssetCreated)
