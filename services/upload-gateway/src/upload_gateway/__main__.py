"""python -m upload_gateway: wiring only."""

from importlib.resources import files

from aiohttp import web

from rawdrive_platform.config import CommonSettings, Secret
from rawdrive_platform.outbox import Relay
from rawdrive_platform.service import Runtime, run_service


class Settings(CommonSettings, kw_only=True, frozen=True):
    http_port: int = 8080
    public_url: str = "http://127.0.0.1:8080"
    jwt_secret: Secret | None = None


async def main(runtime: Runtime) -> None:
    js = await runtime.jetstream()
    pool = await runtime.database("gateway", files("upload_gateway") / "migrations")
    await runtime.managed_storage()
    runtime.start(Relay(pool, js).run, name="outbox-relay")
    app = web.Application()
    await runtime.serve_health(app, port=runtime.settings.http_port)


if __name__ == "__main__":
    run_service("upload-gateway", Settings, main)
