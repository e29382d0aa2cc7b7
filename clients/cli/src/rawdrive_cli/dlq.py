"""`rawdrive dlq`: the dead-letter stream, through rawdrive_platform.deadletter (its layout and
its replay rule live there)."""

from __future__ import annotations

from typing import Any

import msgspec

from rawdrive_cli.config import Config
from rawdrive_cli.errors import CliError
from rawdrive_cli.natsconn import connect


async def letters(cfg: Config) -> list[Any]:
    from rawdrive_platform.deadletter import list_dead_letters

    nc = await connect(cfg, "rawdrive-cli-dlq")
    try:
        return await list_dead_letters(nc.jetstream())
    finally:
        await nc.close()


async def show(cfg: Config, seq: int) -> dict[str, Any]:
    """The dead letter and the original message it names (decoded when it is JSON)."""
    from nats.js.errors import NotFoundError

    from rawdrive_platform.deadletter import list_dead_letters

    nc = await connect(cfg, "rawdrive-cli-dlq")
    try:
        js = nc.jetstream()
        found = [letter for letter in await list_dead_letters(js) if letter.seq == seq]
        if not found:
            raise CliError(f"no dead letter {seq}; `rawdrive dlq list` shows those there are")
        letter = found[0]
        shown: dict[str, Any] = {"dead_letter": msgspec.to_builtins(letter), "original": None}
        try:
            original = await js.get_msg(letter.stream, letter.stream_seq)
        except NotFoundError:
            return shown  # aged out of its stream
        try:
            payload: Any = msgspec.json.decode(original.data or b"")
        except msgspec.DecodeError:
            payload = (original.data or b"").decode(errors="replace")
        shown["original"] = {"subject": original.subject, "headers": dict(original.headers or {}), "data": payload}
        return shown
    finally:
        await nc.close()


async def replay(cfg: Config, seq: int) -> None:
    from nats.js.errors import NotFoundError

    from rawdrive_platform.deadletter import replay as replay_letter

    nc = await connect(cfg, "rawdrive-cli-dlq")
    try:
        await replay_letter(nc.jetstream(), seq)
    except NotFoundError:
        raise CliError(f"no dead letter {seq}, or its original has aged out; `rawdrive dlq list` shows them") from None
    finally:
        await nc.close()
