"""python -m media_processor: wiring only."""

from rawdrive_platform.config import CommonSettings
from rawdrive_platform.service import Runtime, run_service


class Settings(CommonSettings, kw_only=True, frozen=True):
    health_port: int = 8082


async def main(runtime: Runtime) -> None:
    await runtime.jetstream()
    await runtime.managed_storage()
    await runtime.serve_health()


if __name__ == "__main__":
    run_service("media-processor", Settings, main)
