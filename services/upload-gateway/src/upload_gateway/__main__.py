"""python -m upload_gateway: wiring only."""

from importlib.resources import files

from rawdrive_platform.outbox import UnitOfWork
from rawdrive_platform.service import Runtime, run_service
from upload_gateway.app import create_app, token_verifier
from upload_gateway.catalogue import events as catalogue_events
from upload_gateway.console.routes import console_mount
from upload_gateway.gateway import Gateway
from upload_gateway.settings import Settings
from upload_gateway.storage_profiles.routes import mount_storage_profiles
from upload_gateway.uploads import verdicts
from upload_gateway.uploads.tus_session import mount_tus

MIGRATIONS = files("upload_gateway") / "migrations"


async def main(runtime: Runtime) -> None:
    settings = runtime.settings
    assert isinstance(settings, Settings)
    tokens = token_verifier(settings)  # refuses to start without a way to check tokens
    js = await runtime.jetstream()
    pool = await runtime.database(
        "gateway", MIGRATIONS, max_size=settings.db_pool_max_size, acquire_timeout_s=settings.db_pool_acquire_timeout_s
    )
    storage = await runtime.managed_storage()
    profiles = await runtime.storage_resolver()
    runtime.relay(pool, js)
    uow = UnitOfWork(pool)
    runtime.handle(js, verdicts.HANDLERS, uow)
    runtime.handle(js, catalogue_events.HANDLERS, uow)
    gateway = Gateway(settings=settings, pool=pool, storage=storage, tokens=tokens, profiles=profiles)
    console = [console_mount(settings, js)] if settings.console else []
    app = create_app(gateway, mounts=[mount_tus, mount_storage_profiles, *console])
    # Readiness: this pod can serve. NATS, PostgreSQL and storage outages are answered per request
    # (503 with Retry-After) and watched through rawdrive_dependency_up, not by leaving rotation.
    await runtime.serve_health(app, port=settings.http_port, ready_on_dependencies=False)


if __name__ == "__main__":
    run_service("upload-gateway", Settings, main)
