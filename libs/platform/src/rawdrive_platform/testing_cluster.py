"""pytest fixture `cluster_servers`: the production shape of NATS and PostgreSQL for one test
module (three JetStream nodes with the busauth users, every stream and the profile KV bucket
provisioned at replicas 3, a primary and its synchronous hot standby; see `devstack.cluster`;
`cluster_servers.nats.users` and `url_as` connect as an identity). Registered through the `rawdrive` plugin (testing.py). Module-scoped: the
tests kill, partition and fail these servers over, so no other module may share them."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rawdrive_platform.devstack.cluster import ClusterServers


@pytest.fixture(scope="module")
def cluster_servers() -> Iterator[ClusterServers]:
    # Not pytest's tmp_path: as root PostgreSQL runs as another user, who must traverse the parents.
    base = Path(tempfile.mkdtemp(prefix="rawdrive-test-cluster-"))
    servers = ClusterServers.create(base)
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()
        shutil.rmtree(base, ignore_errors=True)
