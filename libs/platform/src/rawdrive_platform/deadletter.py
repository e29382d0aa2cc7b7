"""The dead-letter stream: what no consumer could process, for an operator to inspect and replay.

JetStream announces a message that reached its delivery limit, or that a consumer terminated,
with an advisory naming the stream sequence of the original. `RAWDRIVE_DEADLETTER` keeps those
advisories; the original stays in its stream (limits retention), so it can be shown and
republished. A replay is a new copy on the original subject, seen by every consumer of that
subject: handlers are idempotent, so only the one that failed does new work.

    python -m rawdrive_platform.deadletter list
    python -m rawdrive_platform.deadletter replay DLQ_SEQ
    python -m rawdrive_platform.deadletter drop DLQ_SEQ

It connects as the provisioning identity (RAWDRIVE_NATS_USER=provision and its password, see
rawdrive_platform.busauth): a service's own identity may neither read other streams nor
republish events it does not own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Literal

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from rawdrive_platform.bus import DEADLETTER_STREAM, MSG_ID_HEADER, connect
from rawdrive_platform.config import NatsSettings, load_settings

_ADVISORY_KINDS = {
    "io.nats.jetstream.advisory.v1.max_deliver": "max_deliveries",
    "io.nats.jetstream.advisory.v1.terminated": "terminated",
}


class _Advisory(msgspec.Struct):
    type: str
    stream: str
    consumer: str
    stream_seq: int
    deliveries: int = 0
    reason: str = ""


class DeadLetter(msgspec.Struct, kw_only=True):
    seq: int  # position in the dead-letter stream
    kind: Literal["max_deliveries", "terminated"]
    stream: str
    consumer: str
    stream_seq: int
    deliveries: int
    reason: str
    subject: str | None  # of the original; None when the original has aged out of its stream
    event_id: str | None


def reason_of(advisory_kind: str, reason: str, deliveries: int) -> str:
    if reason:
        return reason
    if advisory_kind == "max_deliveries":
        return f"not acknowledged after {deliveries} deliveries"
    return "terminated without a reason"


async def list_dead_letters(js: JetStreamContext) -> list[DeadLetter]:
    try:
        info = await js.stream_info(DEADLETTER_STREAM.name)
    except NotFoundError:
        return []
    if info.state.messages == 0:
        return []  # an empty stream reports first_seq 0, and get_msg(0) is a bad request
    letters = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            raw = await js.get_msg(DEADLETTER_STREAM.name, seq)
        except NotFoundError:
            continue  # dropped by an operator
        advisory = msgspec.json.decode(raw.data, type=_Advisory)
        kind = _ADVISORY_KINDS.get(advisory.type)
        if kind is None:
            continue
        subject = event_id = None
        try:
            original = await js.get_msg(advisory.stream, advisory.stream_seq)
            subject = original.subject
            event_id = (original.headers or {}).get(MSG_ID_HEADER)
        except NotFoundError:
            pass
        letters.append(
            DeadLetter(
                seq=seq,
                kind=kind,  # type: ignore[arg-type]
                stream=advisory.stream,
                consumer=advisory.consumer,
                stream_seq=advisory.stream_seq,
                deliveries=advisory.deliveries,
                reason=reason_of(kind, advisory.reason, advisory.deliveries),
                subject=subject,
                event_id=event_id,
            )
        )
    return letters


async def replay(js: JetStreamContext, seq: int) -> None:
    """Republish the original of dead letter `seq`, then drop the dead letter."""
    advisory = msgspec.json.decode((await js.get_msg(DEADLETTER_STREAM.name, seq)).data, type=_Advisory)
    original = await js.get_msg(advisory.stream, advisory.stream_seq)
    headers = dict(original.headers or {})
    # A fresh dedup id, or JetStream would drop the copy as a duplicate of the original.
    headers[MSG_ID_HEADER] = f"{headers.get(MSG_ID_HEADER, advisory.stream_seq)}:replay:{seq}"
    await js.publish(original.subject, original.data or b"", headers=headers)
    await drop(js, seq)


async def drop(js: JetStreamContext, seq: int) -> None:
    await js.delete_msg(DEADLETTER_STREAM.name, seq)


async def _main(args: argparse.Namespace) -> int:
    settings = msgspec.structs.replace(load_settings(NatsSettings), nats_url=args.nats_url)
    nc = await connect(settings, name="rawdrive-deadletter")
    js = nc.jetstream()
    try:
        if args.command == "list":
            for letter in await list_dead_letters(js):
                sys.stdout.write(msgspec.json.encode(letter).decode() + "\n")
        elif args.command == "replay":
            await replay(js, args.seq)
        else:
            await drop(js, args.seq)
    finally:
        await nc.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rawdrive_platform.deadletter", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nats-url", default=os.environ.get("RAWDRIVE_NATS_URL", "nats://127.0.0.1:4222"))
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="one JSON line per dead letter")
    for name in ("replay", "drop"):
        sub = commands.add_parser(name)
        sub.add_argument("seq", type=int)
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
