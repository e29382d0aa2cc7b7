"""python -m commit_verifier: wiring only."""

from importlib.resources import files

from rawdrive_platform.config import CommonSettings
from rawdrive_platform.outbox import Relay
from rawdrive_platform.service import Runtime, run_service


class Settings(CommonSettings, kw_only=True, frozen=True):
    health_port: int = 8081


async def main(runtime: Runtime) -> None:
    js = await runtime.jetstream()
    pool = await runtime.database("verifier", files("commit_verifier") / "migrations")
    await runtime.managed_storage()
    runtime.start(Relay(pool, js).run, name="outbox-relay")
    await runtime.serve_health()


if __name__ == "__main__":
    run_service("commit-verifier", Settings, main)
