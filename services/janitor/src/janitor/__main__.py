"""python -m janitor: wiring only."""

from importlib.resources import files

from rawdrive_platform.config import CommonSettings
from rawdrive_platform.outbox import Relay
from rawdrive_platform.service import Runtime, run_service

from janitor.handlers import UPLOAD_EVENTS, upload_event_handler


class Settings(CommonSettings, kw_only=True, frozen=True):
    health_port: int = 8083


async def main(runtime: Runtime) -> None:
    js = await runtime.jetstream()
    pool = await runtime.database("janitor", files("janitor") / "migrations")
    await runtime.managed_storage()
    runtime.consume(js, UPLOAD_EVENTS, upload_event_handler(pool))
    runtime.start(Relay(pool, js).run, name="outbox-relay")
    await runtime.serve_health()


if __name__ == "__main__":
    run_service("janitor", Settings, main)
