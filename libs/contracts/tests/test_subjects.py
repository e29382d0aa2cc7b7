"""Subjects are `rawdrive.<entity>.<action>.<workspace_id>` and every event has one stream."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rawdrive_contracts import (
    ASSETS_STREAM,
    EVENT_TYPES,
    STREAMS,
    AssetCreated,
    UploadVerified,
    stream_for,
    subject,
    subject_filter,
)


def _matches(pattern: str, subject_: str) -> bool:
    """NATS subject matching: `*` is one token, a trailing `>` is one or more."""
    want, got = pattern.split("."), subject_.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or token not in ("*", got[i]):
            return False
    return len(want) == len(got)


def test_subject_is_root_entity_action_workspace():
    assert subject(AssetCreated.spec, "ws_42") == "rawdrive.asset.created.ws_42"
    assert subject(UploadVerified.spec, "ws_42") == "rawdrive.upload.verified.ws_42"


def test_subject_filter_covers_all_workspaces_by_default_or_one():
    assert subject_filter(AssetCreated.spec) == "rawdrive.asset.created.*"
    assert subject_filter(AssetCreated.spec, "ws_42") == "rawdrive.asset.created.ws_42"


@pytest.mark.parametrize("workspace_id", ["", "a.b", "*", "a*", ">", "a>", "a b", "a\tb", "a\nb", "a\vb", "a\u00a0b"])
def test_workspace_ids_that_would_escape_their_subject_are_refused(workspace_id):
    with pytest.raises(ValueError):
        subject(AssetCreated.spec, workspace_id)
    if workspace_id != "*":  # as a filter, "*" means every workspace
        with pytest.raises(ValueError):
            subject_filter(AssetCreated.spec, workspace_id)


@given(st.text(min_size=1).filter(lambda s: not any(c in ".*>" or c.isspace() for c in s)))
def test_any_other_workspace_id_is_exactly_the_fourth_token(workspace_id):
    assert subject(AssetCreated.spec, workspace_id).split(".") == ["rawdrive", "asset", "created", workspace_id]


@pytest.mark.parametrize("spec", EVENT_TYPES.values(), ids=lambda spec: spec.type)
def test_every_event_type_is_carried_by_exactly_one_stream(spec):
    example = subject(spec, "ws_1")
    carrying = [stream for stream in STREAMS if any(_matches(s, example) for s in stream.subjects)]
    assert carrying == [stream_for(spec)]


def test_streams_do_not_overlap_and_assets_stream_is_named_for_outside_consumers():
    assert len({s.name for s in STREAMS}) == len(STREAMS)
    assert ASSETS_STREAM.name == "RAWDRIVE_ASSETS"
    assert ASSETS_STREAM.subjects == ("rawdrive.asset.>",)
