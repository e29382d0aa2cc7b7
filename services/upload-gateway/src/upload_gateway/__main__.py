"""python -m upload_gateway: wiring only."""

from importlib.resources import files

from rawdrive_platform.bus import Consumer
from rawdrive_platform.outbox import Relay
from rawdrive_platform.service import Runtime, run_service
from upload_gateway import verdicts
from upload_gateway.app import create_app, token_verifier
from upload_gateway.settings import Settings
from upload_gateway.tus_session import mount_tus
from upload_gateway.uploads import Gateway

MIGRATIONS = files("upload_gateway") / "migrations"


async def main(runtime: Runtime) -> None:
    settings = runtime.settings
    assert isinstance(settings, Settings)
    tokens = token_verifier(settings)  # refuses to start without a way to check tokens
    js = await runtime.jetstream()
    pool = await runtime.database("gateway", MIGRATIONS)
    storage = await runtime.managed_storage()
    runtime.start(Relay(pool, js).run, name="outbox-relay")
    runtime.start(Consumer(js, verdicts.consumer_spec(), verdicts.handler(pool)).run, name="verdicts")
    app = create_app(Gateway(settings=settings, pool=pool, storage=storage, tokens=tokens), mounts=[mount_tus])
    await runtime.serve_health(app, port=settings.http_port)


if __name__ == "__main__":
    run_service("upload-gateway", Settings, main)
