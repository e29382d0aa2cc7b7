"""The outbox gauges the alerts read (RawdriveOutboxBacklogOld): how many rows wait and how long
the oldest has waited, from a real PostgreSQL outbox."""

from __future__ import annotations

import pytest

from rawdrive_platform import db, metrics


@pytest.fixture
def migrations_dir(tmp_path):
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_svc.sql").write_text("CREATE TABLE things (id int);")
    return folder


async def test_outbox_gauges_count_the_waiting_rows_and_age_the_oldest(fresh_database_url, migrations_dir):
    await db.migrate(fresh_database_url, "svc", migrations_dir)
    pool = await db.create_pool(fresh_database_url, "svc")
    try:
        await metrics.sample_outbox(pool)
        assert metrics.OUTBOX_PENDING._value.get() == 0
        assert metrics.OUTBOX_OLDEST_AGE._value.get() == 0  # nothing waits: no age

        await pool.execute(
            "INSERT INTO outbox (event_id, subject, payload, created_at) VALUES "
            "('old', 's', ''::bytea, now() - interval '90 seconds'), ('new', 's', ''::bytea, now())"
        )
        await metrics.sample_outbox(pool)
        assert metrics.OUTBOX_PENDING._value.get() == 2
        assert 90 <= metrics.OUTBOX_OLDEST_AGE._value.get() < 120
    finally:
        await pool.close()
