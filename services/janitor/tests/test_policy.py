"""The janitor's decisions, without I/O: expiry, delete/restore in any order, purge dates, sweeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import reduce

import pytest
from hypothesis import given
from hypothesis import strategies as st

from janitor.policy import (
    AssetLifecycle,
    Removal,
    RunReport,
    Thresholds,
    TrackedSession,
    awaiting_purge,
    is_orphan,
    is_stale_multipart,
    on_deleted,
    on_restored,
    profile_version_may_go,
    purge_due_at,
    should_expire,
    should_purge,
)
from rawdrive_platform import keys

T0 = datetime(2026, 11, 1, tzinfo=UTC)
TH = Thresholds(
    retention=timedelta(days=30),
    expiry_grace=timedelta(minutes=5),
    orphan_min_age=timedelta(hours=72),
    multipart_min_age=timedelta(hours=24),
    profile_retire_grace=timedelta(hours=24),
)
ids = st.from_regex(keys.ID_PATTERN, fullmatch=True)
instants = st.integers(min_value=0, max_value=10_000).map(lambda s: T0 + timedelta(seconds=s))


def session(**overrides) -> TrackedSession:
    fields = dict(
        upload_id="u1", workspace_id="ws1", asset_id="a1", storage_profile_ref="managed",
        object_key=keys.original_key("ws1", "a1", "IMG.JPG"), expires_at=T0,
    )
    return TrackedSession(**(fields | overrides))


# -- expiry -------------------------------------------------------------------------------------


def test_an_open_session_expires_only_after_its_grace():
    assert not should_expire(session(), T0 + TH.expiry_grace - timedelta(seconds=1), TH)
    assert should_expire(session(), T0 + TH.expiry_grace, TH)


def test_a_committed_or_closed_session_never_expires_however_late():
    late = T0 + timedelta(days=365)
    assert not should_expire(session(commit_requested_at=T0 - timedelta(minutes=1)), late, TH)
    for closed_by in ("verified", "rejected", "aborted", "expired"):
        assert not should_expire(session(closed_by=closed_by), late, TH)


@given(expires_at=instants, now=instants, committed=st.booleans(), closed=st.booleans())
def test_expiry_is_exactly_open_uncommitted_and_past_grace(expires_at, now, committed, closed):
    s = session(expires_at=expires_at, commit_requested_at=T0 if committed else None, closed_by="verified" if closed else None)
    assert should_expire(s, now, TH) == (not committed and not closed and now >= expires_at + TH.expiry_grace)


# -- delete, restore, purge ---------------------------------------------------------------------

LifecycleEvent = tuple[str, datetime]
lifecycle_events = st.lists(st.tuples(st.sampled_from(["deleted", "restored"]), instants), min_size=1, max_size=8)


def apply(state: AssetLifecycle, event: LifecycleEvent) -> AssetLifecycle:
    kind, at = event
    if kind == "deleted":
        return on_deleted(state, at, at + timedelta(days=30))
    return on_restored(state, at)


@given(events=lifecycle_events, data=st.data())
def test_deletes_and_restores_in_any_order_or_repeated_end_in_the_same_state(events, data):
    shuffled = data.draw(st.permutations(events + data.draw(st.lists(st.sampled_from(events), max_size=4))))
    assert reduce(apply, shuffled, AssetLifecycle()) == reduce(apply, events, AssetLifecycle())


@given(events=lifecycle_events)
def test_an_asset_awaits_purge_exactly_when_its_latest_deletion_is_later_than_every_restore(events):
    state = reduce(apply, events, AssetLifecycle())
    last_delete = max((at for kind, at in events if kind == "deleted"), default=None)
    last_restore = max((at for kind, at in events if kind == "restored"), default=None)
    expected = last_delete is not None and (last_restore is None or last_restore < last_delete)
    assert awaiting_purge(state) == expected


def test_purge_waits_for_both_the_promised_date_and_the_retention():
    deleted = on_deleted(AssetLifecycle(), T0, purge_after=T0 + timedelta(days=7))
    assert purge_due_at(deleted, TH.retention) == T0 + timedelta(days=30)
    promised_late = on_deleted(AssetLifecycle(), T0, purge_after=T0 + timedelta(days=40))
    assert purge_due_at(promised_late, TH.retention) == T0 + timedelta(days=40)
    assert not should_purge(deleted, T0 + timedelta(days=30) - timedelta(seconds=1), TH)
    assert should_purge(deleted, T0 + timedelta(days=30), TH)


def test_a_restore_cancels_the_purge_and_a_later_delete_schedules_it_again():
    deleted = on_deleted(AssetLifecycle(), T0, T0 + timedelta(days=30))
    restored = on_restored(deleted, T0 + timedelta(days=1))
    assert purge_due_at(restored, TH.retention) is None
    again = on_deleted(restored, T0 + timedelta(days=2), T0 + timedelta(days=32))
    assert purge_due_at(again, TH.retention) == T0 + timedelta(days=32)


def test_a_restore_at_the_same_instant_as_the_deletion_keeps_the_asset():
    assert not awaiting_purge(on_restored(on_deleted(AssetLifecycle(), T0, T0), T0))


def test_a_purged_asset_is_not_purged_again():
    purged = AssetLifecycle(deleted_at=T0, purge_after=T0, purged_at=T0 + timedelta(days=31))
    assert not should_purge(purged, T0 + timedelta(days=400), TH)


# -- sweeps -------------------------------------------------------------------------------------

prefixes = st.one_of(st.just(""), st.tuples(ids, ids).map(lambda p: f"tenants/{p[0]}/"))


@pytest.mark.parametrize(
    ("sweeps", "min_age"),
    [(is_orphan, TH.orphan_min_age), (is_stale_multipart, TH.multipart_min_age)],
    ids=["orphan: unknown asset", "stale multipart upload: no open session"],
)
def test_an_assets_object_is_swept_when_old_enough_and_its_asset_is_not_in_the_set(sweeps, min_age):
    key = keys.original_key("ws1", "a1", "IMG.JPG")
    old = T0 - min_age
    assert sweeps(key, old, set(), T0, TH)
    assert not sweeps(key, old, {"a1"}, T0, TH)
    assert not sweeps(key, old + timedelta(seconds=1), set(), T0, TH)


def test_an_object_outside_the_assets_is_never_an_orphan_but_a_multipart_upload_goes_by_age_alone():
    assert not is_orphan(keys.avatar_key("ws1", "u1", "me.jpg"), T0 - TH.orphan_min_age, set(), T0, TH)
    assert is_stale_multipart("stray/upload.bin", T0 - TH.multipart_min_age, {"a1"}, T0, TH)


def test_a_report_counts_objects_bytes_and_multipart_uploads_apart():
    report = RunReport(dry_run=False)
    report.record([
        Removal(reason="purged_asset", bucket="b", key="k1", size_bytes=10),
        Removal(reason="purged_asset", bucket="b", key="k2", size_bytes=5),
        Removal(reason="purged_asset", bucket="b", key="k1", multipart_upload_id="mp1"),
    ])
    assert report.counters() == {
        "dry_run": False, "sessions_expired": 0, "assets_purged": 0, "multipart_uploads_aborted": 1,
        "orphans_found": 0, "objects_deleted": 2, "bytes_deleted": 15, "profile_versions_deleted": 0, "errors": 0,
    }


def test_a_retired_profile_version_goes_only_after_the_grace_and_only_when_nothing_names_it():
    retired = T0 - TH.profile_retire_grace
    assert profile_version_may_go(retired, "byos-a", set(), T0, TH)
    assert not profile_version_may_go(retired, "byos-a", {"byos-a"}, T0, TH)  # a session or asset names it
    assert not profile_version_may_go(retired + timedelta(seconds=1), "byos-a", set(), T0, TH)  # within the grace
    assert not profile_version_may_go(None, "byos-a", set(), T0, TH)  # the current version
