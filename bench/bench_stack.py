"""The servers a benchmark runs our services against, and the environment pointing at them."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from rawdrive_devkit.devstack.servers import NatsServer, PostgresServer, S3Server, start_all, stop_all

JWT_SECRET = "bench-secret-of-at-least-thirty-two-bytes!"


class BenchStack(NamedTuple):
    work: Path  # a temporary folder, removed afterwards
    s3: S3Server
    env: dict[str, str]  # os.environ plus the RAWDRIVE_* settings a service needs


@contextmanager
def bench_stack(prefix: str) -> Iterator[BenchStack]:
    """NATS, PostgreSQL and SeaweedFS on free ports in a temporary folder, stopped on exit."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        nats, postgres = NatsServer(work / "nats"), PostgresServer(work / "pg")
        s3 = S3Server(work / "s3", access_key_id="bench", secret_access_key="bench-secret-key")
        start_all([nats, postgres, s3])
        conn = s3.connection
        env = {**os.environ, "RAWDRIVE_NATS_URL": nats.url, "RAWDRIVE_DATABASE_URL": postgres.url,
               "RAWDRIVE_S3_ENDPOINT": conn.endpoint, "RAWDRIVE_S3_REGION": conn.region,
               "RAWDRIVE_S3_BUCKET": conn.bucket, "RAWDRIVE_S3_ACCESS_KEY_ID": conn.access_key_id,
               "RAWDRIVE_S3_SECRET_ACCESS_KEY": conn.secret_access_key, "RAWDRIVE_JWT_SECRET": JWT_SECRET,
               "RAWDRIVE_LOG_LEVEL": "WARNING"}
        try:
            yield BenchStack(work, s3, env)
        finally:
            stop_all([nats, postgres, s3])
