"""`rawdrive events`: the workspace's asset and upload events from JetStream, as lines or JSON.

Each stream is read by an ephemeral ordered push consumer (nothing left behind on the server,
no acks, gaps re-fetched by nats-py), starting at a time (`--since`) or at new messages. Without
`--follow` the command stops once it has caught up with the streams.
"""

from __future__ import annotations

import asyncio
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from rawdrive_cli.config import Config
from rawdrive_cli.natsconn import connect
from rawdrive_contracts import ASSETS_STREAM, UPLOADS_STREAM, InvalidEvent, UnknownEventType, decode
from rawdrive_contracts.subjects import SUBJECT_ROOT, StreamSpec

STREAM_BY_ENTITY: dict[str, StreamSpec] = {"asset": ASSETS_STREAM, "upload": UPLOADS_STREAM}
# Fields of event data worth a place on a readable line, in this order.
DETAIL_FIELDS = ("file_name", "kind", "size_bytes", "duplicate_of", "reason", "detail", "deleted_by", "purge_after")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def expand_subject(text: str, workspace: str) -> str:
    """`asset` -> rawdrive.asset.*.WS; `asset.created` -> rawdrive.asset.created.WS; a full
    subject (starting with `rawdrive.`) is taken as it is."""
    if text.startswith(f"{SUBJECT_ROOT}."):
        return text
    tokens = text.split(".")
    if tokens[0] not in STREAM_BY_ENTITY or len(tokens) > 2:
        raise ValueError(f"--subject {text!r}: write asset, upload, asset.created or a full rawdrive.* subject")
    action = tokens[1] if len(tokens) == 2 else "*"
    return f"{SUBJECT_ROOT}.{tokens[0]}.{action}.{workspace}"


def stream_of(subject: str) -> StreamSpec:
    tokens = subject.split(".")
    entity = tokens[1] if len(tokens) > 1 else ""
    if entity in STREAM_BY_ENTITY:
        return STREAM_BY_ENTITY[entity]
    raise ValueError(f"no stream carries {subject!r}; subjects look like rawdrive.asset.created.WORKSPACE")


def default_subjects(workspace: str) -> list[str]:
    return [expand_subject("asset", workspace), expand_subject("upload", workspace)]


def parse_since(text: str, now: datetime) -> datetime:
    """`10m`, `2h`, `1d`, `30s` ago, or an ISO 8601 time (UTC when it names no zone)."""
    match = _DURATION.match(text.strip())
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: write 10m, 2h, 1d or a time like 2026-12-06T10:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def readable(raw: bytes, subject: str) -> str:
    """One line: time, type, workspace, the ids, then the details the event carries."""
    try:
        event = decode(raw)
    except (InvalidEvent, UnknownEventType) as error:
        return f"{subject} (not a RawDrive event this CLI knows: {error})"
    data = event.data
    short = event.type.removeprefix("com.rawdrive.").rsplit(".v", 1)[0]
    words = [event.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z", f"{short:<25}",
             f"ws={data.workspace_id}"]
    for name in ("asset_id", "upload_id"):
        value = getattr(data, name, None)
        if value:
            words.append(f"{name.removesuffix('_id')}={value}")
    for name in DETAIL_FIELDS:
        value = getattr(data, name, None)
        if value not in (None, ""):
            shown = value.isoformat() if isinstance(value, datetime) else value
            words.append(f"{name}={shown!r}" if isinstance(shown, str) and " " in shown else f"{name}={shown}")
    return " ".join(words)


async def tail(
    cfg: Config, subjects: list[str], *, since: datetime | None, follow: bool, as_json: bool,
) -> int:
    """Print the events; returns how many were printed."""
    from nats.js.api import ConsumerConfig, DeliverPolicy

    nc = await connect(cfg, "rawdrive-cli-events")
    js = nc.jetstream()
    printed = 0
    queue: asyncio.Queue[Any] = asyncio.Queue()
    subscriptions = []
    caught_up: set[str] = set()
    try:
        for subject in subjects:
            if since is not None:
                config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                                        opt_start_time=since.astimezone(UTC).isoformat().replace("+00:00", "Z"))
            else:
                config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)

            async def on_message(msg: Any) -> None:
                await queue.put(msg)

            subscription = await js.subscribe(
                subject, stream=stream_of(subject).name, ordered_consumer=True, config=config, cb=on_message,
            )
            subscriptions.append(subscription)
            if not follow:
                # A push consumer hands messages out at once, so "nothing pending" alone may mean
                # "all in our queue"; nothing pending and nothing delivered means nothing matched.
                info = await subscription.consumer_info()
                if info.num_pending == 0 and not info.delivered.consumer_seq:
                    caught_up.add(subject)
        # Without --follow, the messages up to now, merged by event time.
        held: list[tuple[datetime, bytes, str]] = []
        while follow or len(caught_up) < len(subjects):
            try:
                msg = await asyncio.wait_for(queue.get(), timeout=None if follow else 5.0)
            except TimeoutError:
                break  # nothing more arrived: caught up
            if follow:
                _print(msg.data, msg.subject, as_json)
                printed += 1
                continue
            held.append((_event_time(msg.data), msg.data, msg.subject))
            if msg.metadata.num_pending == 0:
                caught_up.add(_matching(subjects, msg.subject))
        for _, data, subject in sorted(held, key=lambda item: item[0]):
            _print(data, subject, as_json)
            printed += 1
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()
        await nc.close()
    return printed


def _matching(subjects: list[str], subject: str) -> str:
    """The filter (of ours) that a message's subject matched."""
    entity = subject.split(".")[1]
    for candidate in subjects:
        tokens = candidate.split(".")
        if len(tokens) > 1 and tokens[1] == entity and _matches(candidate, subject):
            return candidate
    return subject


def _matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or token not in ("*", s[i]):
            return False
    return len(p) == len(s)


class _Time(msgspec.Struct):
    time: datetime


def _event_time(raw: bytes) -> datetime:
    try:
        return msgspec.json.decode(raw, type=_Time).time
    except (msgspec.DecodeError, msgspec.ValidationError):
        return datetime.max.replace(tzinfo=UTC)


def _print(raw: bytes, subject: str, as_json: bool) -> None:
    line = raw.decode(errors="replace") if as_json else readable(raw, subject)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
