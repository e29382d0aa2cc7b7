"""End-to-end harness: every service a separate process, against the real servers of the session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """One service (`python -m <module>`) with its own health port and log file."""

    def __init__(self, module: str, env: dict[str, str], log_dir: Path) -> None:
        self.module = module
        self.port = free_port()
        if module == "upload_gateway":
            own = {"RAWDRIVE_HTTP_PORT": str(self.port), "RAWDRIVE_PUBLIC_URL": f"http://127.0.0.1:{self.port}"}
        else:
            own = {"RAWDRIVE_HEALTH_PORT": str(self.port)}
        self.env = {**env, **own}
        self.log_path = log_dir / f"{module}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout_s: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", self.module], env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.module} not ready after {ready_timeout_s} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """kill -9: no cleanup, no acks, as a crash or an OOM kill would."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.terminate()
        return self.process.wait(30)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture
def service_env(nats_url, fresh_database_url, s3_server) -> dict[str, str]:
    return {
        **os.environ,
        "RAWDRIVE_NATS_URL": nats_url,
        "RAWDRIVE_DATABASE_URL": fresh_database_url,
        "RAWDRIVE_S3_ENDPOINT": s3_server.endpoint,
        "RAWDRIVE_S3_REGION": s3_server.region,
        "RAWDRIVE_S3_BUCKET": s3_server.bucket,
        "RAWDRIVE_S3_ACCESS_KEY_ID": s3_server.access_key_id,
        "RAWDRIVE_S3_SECRET_ACCESS_KEY": s3_server.secret_access_key,
        "RAWDRIVE_JWT_SECRET": "e2e-secret-of-at-least-thirty-two-bytes",
        "RAWDRIVE_CONSUMER_ACK_WAIT_S": "2",
        "RAWDRIVE_LOG_LEVEL": "INFO",
    }


@pytest.fixture
def start_service(service_env, tmp_path) -> Iterator:
    started: list[ServiceProcess] = []

    def start(module: str, **overrides: str) -> ServiceProcess:
        service = ServiceProcess(module, {**service_env, **overrides}, tmp_path)
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
