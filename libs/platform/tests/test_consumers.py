"""The consumer kit: a handler table gives the consumer's filters, the dispatch and the exhausted
hook; the unit of work commits a change and its events together or not at all."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from rawdrive_contracts import (
    UPLOADS_STREAM,
    CloudEvent,
    UploadAborted,
    UploadExpired,
    new_event,
    subject_filter,
)
from rawdrive_devkit.testkit import migrated_pool
from rawdrive_platform.bus import Poison
from rawdrive_platform.consumers import HandlerTable
from rawdrive_platform.outbox import UnitOfWork


def _aborted() -> CloudEvent[UploadAborted]:
    data = UploadAborted(
        workspace_id="ws1", upload_id=uuid.uuid4().hex, asset_id="a1", storage_profile_ref="managed",
        object_key="k", aborted_by="u1",
    )
    return new_event(data, source="/test")


def _expired() -> CloudEvent[UploadExpired]:
    data = UploadExpired(
        workspace_id="ws1", upload_id="u2", asset_id="a2", storage_profile_ref="managed", object_key="k",
        expired_at=datetime.now(UTC),
    )
    return new_event(data, source="/test")


def _table(seen: list[Any], exhausted: bool = True) -> HandlerTable[list[Any]]:
    async def aborted(event: CloudEvent[UploadAborted], deps: list[Any]) -> None:
        deps.append(("handled", event.data.upload_id))

    async def gave_up(event: CloudEvent[UploadAborted], error: BaseException, deps: list[Any]) -> None:
        deps.append(("exhausted", str(error)))

    return HandlerTable(
        durable="test", stream=UPLOADS_STREAM, handlers={UploadAborted: aborted},
        exhausted={UploadAborted: gave_up} if exhausted else {},
    )


def test_the_consumer_reads_exactly_the_event_types_its_table_handles():
    spec = _table([]).spec
    assert (spec.durable, spec.stream) == ("test", UPLOADS_STREAM.name)
    assert spec.filter_subjects == (subject_filter(UploadAborted.spec),)


async def test_events_go_to_their_handler_and_an_unhandled_type_is_poison():
    seen: list[Any] = []
    table = _table(seen)
    event = _aborted()
    await table.dispatch(event, seen)
    assert seen == [("handled", event.data.upload_id)]
    with pytest.raises(Poison, match="test does not handle com.rawdrive.upload.expired.v1"):
        await table.dispatch(_expired(), seen)


async def test_the_exhausted_hook_runs_for_its_type_only_and_is_absent_without_one():
    seen: list[Any] = []
    handle, on_exhausted = _table(seen).bind(seen)
    assert on_exhausted is not None
    await on_exhausted(_aborted(), RuntimeError("storage down"))
    await on_exhausted(_expired(), RuntimeError("ignored"))
    assert seen == [("exhausted", "storage down")]
    assert _table([], exhausted=False).bind([])[1] is None


async def test_a_unit_of_work_commits_the_change_and_its_event_together_or_neither(fresh_database_url, tmp_path):
    (tmp_path / "0001_widgets.sql").write_text("CREATE TABLE widgets (id int PRIMARY KEY);")
    async with migrated_pool(fresh_database_url, "svc", tmp_path) as pool:
        uow = UnitOfWork(pool)
        async with uow.begin() as tx:
            await tx.conn.execute("INSERT INTO widgets VALUES (1)")
            await tx.enqueue(_aborted())
        with pytest.raises(RuntimeError):
            async with uow.begin() as tx:
                await tx.conn.execute("INSERT INTO widgets VALUES (2)")
                await tx.enqueue(_aborted())
                raise RuntimeError("the handler failed halfway")
        assert await pool.fetchval("SELECT array_agg(id) FROM widgets") == [1]
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
