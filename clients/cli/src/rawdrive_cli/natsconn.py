"""One NATS connection per command, failing at once (no reconnect loop) with a line that says what to do."""

from __future__ import annotations

from typing import Any

from rawdrive_cli.config import Config
from rawdrive_cli.errors import CliError


async def connect(cfg: Config, name: str) -> Any:
    import nats

    from rawdrive_platform.bus import auth_options
    from rawdrive_platform.config import NatsSettings, Secret

    settings = NatsSettings(
        nats_url=cfg.nats_url, nats_user=cfg.nats_user, nats_creds=cfg.nats_creds,
        nats_password=Secret(cfg.nats_password) if cfg.nats_password is not None else None,
    )
    try:
        options = auth_options(settings)
    except ValueError as error:
        raise CliError(f"{error}; the dev stack's .data/env holds a working identity") from None
    try:
        return await nats.connect(cfg.nats_url, connect_timeout=3, max_reconnect_attempts=0, allow_reconnect=False,
                                  name=name, **options)
    except Exception as error:  # nats-py raises several types for "nothing answers there"
        if "authorization violation" in str(error).lower():
            raise CliError(
                f"NATS at {cfg.nats_url} refused the identity (RAWDRIVE_NATS_USER / RAWDRIVE_NATS_PASSWORD); "
                "use the provisioning identity from the dev stack's .data/env"
            ) from None
        raise CliError(
            f"cannot reach NATS at {cfg.nats_url} ({error or type(error).__name__}); start the dev stack with "
            "`make dev` or set RAWDRIVE_NATS_URL / --nats-url"
        ) from None
