"""One NATS connection per command, failing at once (no reconnect loop) with a line that says what to do."""

from __future__ import annotations

from typing import Any

from rawdrive_cli.errors import CliError


async def connect(nats_url: str, name: str) -> Any:
    import nats

    try:
        return await nats.connect(nats_url, connect_timeout=3, max_reconnect_attempts=0, allow_reconnect=False,
                                  name=name)
    except Exception as error:  # nats-py raises several types for "nothing answers there"
        raise CliError(
            f"cannot reach NATS at {nats_url} ({error or type(error).__name__}); start the dev stack with "
            "`make dev` or set RAWDRIVE_NATS_URL / --nats-url"
        ) from None
