"""JetStream plumbing: connect, provision streams, publish with dedup ids, consume durably.

Delivery is at-least-once. A consumer acks (and waits for the server to confirm the ack) only
after its handler returned, i.e. after the work is durable; a handler that raises `Transient`
is redelivered with backoff; one that raises `Poison` (or sends something undecodable) is
terminated with a reason. Terminated and max-delivered messages are announced by the server as
advisories, which the dead-letter stream captures (see `deadletter.py`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError, NoServersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError
from opentelemetry import trace

from rawdrive_contracts import (
    STREAMS,
    CloudEvent,
    InvalidEvent,
    StreamSpec,
    UnknownEventType,
    decode,
    encode,
    subject_for,
)
from rawdrive_platform import busauth
from rawdrive_platform.config import DEFAULT_STREAM_MAX_BYTES, NatsSettings
from rawdrive_platform.telemetry import extract_context, inject_headers

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
DEADLETTER_STREAM = StreamSpec(
    "RAWDRIVE_DEADLETTER",
    (
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",
        "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.>",
    ),
)


class Transient(Exception):
    """The work could not be done now (storage down, lock busy...); try again later."""


class Poison(Exception):
    """The message can never succeed; terminate it with this reason."""


class PublishFailed(Exception):
    """JetStream did not confirm a publish; the caller must not consider the event sent."""


class StreamSettings(msgspec.Struct, frozen=True, kw_only=True):
    replicas: int = 1
    max_age_s: float = 14 * 24 * 3600
    duplicate_window_s: float = 120.0
    max_bytes: int = DEFAULT_STREAM_MAX_BYTES  # each stream


def discard_policy(spec: StreamSpec) -> js_api.DiscardPolicy:
    """What a stream does at max_bytes. A work stream refuses new events: the publisher gets an
    error and retries (outbox rows wait, a consumer's delivery is redelivered), so nothing a
    consumer has not read yet is deleted. The dead-letter stream drops its oldest reports: the
    server's advisories cannot be retried, and the originals stay in their own streams."""
    return js_api.DiscardPolicy.OLD if spec.name == DEADLETTER_STREAM.name else js_api.DiscardPolicy.NEW


class ConsumerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A durable pull consumer. Replicas sharing a `durable` name share its work."""

    durable: str
    stream: str
    filter_subjects: tuple[str, ...]
    max_deliver: int = 5
    ack_wait_s: float = 30.0
    # Redelivery delays after a Transient failure, by attempt (the last one repeats).
    backoff_s: tuple[float, ...] = (1.0, 5.0, 15.0, 30.0)
    max_ack_pending: int = 256


EventHandler = Callable[[CloudEvent[Any]], Awaitable[None]]
# Called once when a message failed transiently on its last allowed delivery, before it is
# terminated: the stage publishes its own verdict (e.g. a storage_error rejection) here.
ExhaustedHandler = Callable[[CloudEvent[Any], BaseException], Awaitable[None]]


def server_urls(url: str) -> list[str]:
    """`RAWDRIVE_NATS_URL` as nats-py's server list: one URL, or a cluster's, comma-separated."""
    return [part.strip() for part in url.split(",") if part.strip()]


def redact_url(url: str) -> str:
    """The URL (or a cluster's, comma-separated) without any user:password, for logs."""
    return ",".join(_redact_one(part) for part in server_urls(url))


def _redact_one(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    return parts._replace(netloc=f"***@{host}" + (f":{parts.port}" if parts.port else "")).geturl()


def auth_options(settings: NatsSettings) -> dict[str, Any]:
    """nats-py's connect options for the settings' identity and TLS. ValueError (naming the
    variables, never a value) when they contradict each other."""
    options: dict[str, Any] = {}
    if settings.nats_creds is not None:
        if settings.nats_user is not None or settings.nats_password is not None:
            raise ValueError("RAWDRIVE_NATS_CREDS excludes RAWDRIVE_NATS_USER and RAWDRIVE_NATS_PASSWORD")
        options["user_credentials"] = settings.nats_creds
    elif (settings.nats_user is None) != (settings.nats_password is None):
        raise ValueError("RAWDRIVE_NATS_USER and RAWDRIVE_NATS_PASSWORD go together")
    elif settings.nats_user is not None and settings.nats_password is not None:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password.reveal()
        # Replies come back under this identity's own prefix (busauth: the only one it may read).
        options["inbox_prefix"] = busauth.inbox_prefix(settings.nats_user)
    if settings.nats_tls_ca is not None:
        if not settings.nats_url.startswith("tls://"):
            raise ValueError("RAWDRIVE_NATS_TLS_CA needs a tls:// RAWDRIVE_NATS_URL")
        options["tls"] = ssl.create_default_context(cafile=settings.nats_tls_ca)
    return options


async def connect(target: str | NatsSettings, *, name: str) -> NATS:
    """Connect and keep reconnecting without limit; the caller's work simply waits meanwhile.
    With several servers (comma-separated) a lost one is replaced by the next that answers.

    `target` is a URL (which may carry user:password, as test fixtures' do) or the settings,
    which name the identity (RAWDRIVE_NATS_USER...) as well."""
    settings = NatsSettings(nats_url=target) if isinstance(target, str) else target
    options = auth_options(settings)
    url = redact_url(settings.nats_url)
    if settings.nats_user is None and settings.nats_creds is None:
        user = urllib.parse.urlsplit(server_urls(settings.nats_url)[0]).username
        if user:
            options["inbox_prefix"] = busauth.inbox_prefix(urllib.parse.unquote(user))
    client: NATS | None = None

    async def on_disconnect() -> None:
        if client is not None and client.is_closed:
            return  # our own close or drain at shutdown, not an outage to warn about
        log.warning("nats disconnected", extra={"nats_url": url})

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"nats_url": url})

    async def on_error(exc: Exception) -> None:
        # A permissions violation lands here: the publish or request it refused then times out.
        log.warning("nats error: %s", exc)

    client = await nats.connect(
        servers=server_urls(settings.nats_url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        allow_reconnect=True,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
        **options,
    )
    return client


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, settings: StreamSettings) -> None:
    config = js_api.StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=js_api.RetentionPolicy.LIMITS,
        storage=js_api.StorageType.FILE,
        num_replicas=settings.replicas,
        max_age=settings.max_age_s,
        duplicate_window=settings.duplicate_window_s,
        max_bytes=settings.max_bytes,
        discard=discard_policy(spec),
    )
    try:
        await js.stream_info(spec.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError:
            # Another replica created it between our look and our add.
            pass
    await js.update_stream(config)


async def provision(js: JetStreamContext, settings: StreamSettings) -> None:
    """Create or update every stream of the pipeline, the dead-letter stream included."""
    for spec in (*STREAMS, DEADLETTER_STREAM):
        await ensure_stream(js, spec, settings)


async def publish(js: JetStreamContext, event: CloudEvent[Any], *, headers: dict[str, str] | None = None) -> bool:
    """Publish and wait for the stream's ack. Returns False when JetStream dropped it as a duplicate.

    The publish is a PRODUCER span; the consumers' spans continue from it (its context travels in
    the headers unless the caller passes its own)."""
    subject = subject_for(event.data)
    with tracer.start_as_current_span(
        f"publish {event.type}",
        kind=trace.SpanKind.PRODUCER,
        attributes={"messaging.system": "nats", "messaging.destination.name": subject, "messaging.message.id": event.id},
    ):
        all_headers = {MSG_ID_HEADER: event.id, **(headers if headers is not None else inject_headers({}))}
        try:
            ack = await js.publish(subject, encode(event), headers=all_headers, timeout=5)
        except (NatsTimeoutError, ConnectionClosedError, NoServersError, BadRequestError, asyncio.TimeoutError) as exc:
            raise PublishFailed(f"{event.type} {event.id}: {exc!r}") from exc
        return not ack.duplicate


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> None:
    config = js_api.ConsumerConfig(
        durable_name=spec.durable,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_wait=spec.ack_wait_s,
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
        filter_subjects=list(spec.filter_subjects),
    )
    # CONSUMER.CREATE with a durable name creates, or updates an existing consumer in place.
    await js.add_consumer(spec.stream, config)


async def terminate(msg: Msg, reason: str) -> None:
    """`+TERM <reason>`: no redelivery, and the server's advisory carries the reason."""
    # nats-py's Msg.term() sends no reason; the protocol accepts one after the verb, and an ack
    # is just a reply to the delivery, which Msg.respond sends. Nothing acks after this.
    await msg.respond(b"+TERM " + reason.encode()[:1024])


def backoff_for(spec: ConsumerSpec, num_delivered: int) -> float:
    index = min(max(num_delivered - 1, 0), len(spec.backoff_s) - 1)
    return spec.backoff_s[index]


class Consumer:
    """Runs one durable pull consumer until `stop` is set; finishes the message in hand first
    (cancelled instead, it hands the message back unacked)."""

    def __init__(
        self,
        js: JetStreamContext,
        spec: ConsumerSpec,
        handle: EventHandler,
        *,
        on_exhausted: ExhaustedHandler | None = None,
        concurrency: int = 1,
    ) -> None:
        self._js = js
        self._spec = spec
        self._handle = handle
        self._on_exhausted = on_exhausted
        self._concurrency = concurrency

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await ensure_consumer(self._js, self._spec)
        except NotFoundError as exc:
            raise RuntimeError(
                f"stream {self._spec.stream} does not exist: run `python -m rawdrive_platform.provision --streams`"
            ) from exc
        sub = await self._js.pull_subscribe_bind(self._spec.durable, stream=self._spec.stream)
        try:
            await asyncio.gather(*(self._worker(sub, stop) for _ in range(self._concurrency)))
        finally:
            await sub.unsubscribe()

    async def _worker(self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(1, timeout=1.0)
            except (NatsTimeoutError, asyncio.TimeoutError):
                continue
            # Service unavailable: JetStream is still starting after a server restart.
            except (ConnectionClosedError, NoServersError, NoRespondersError, ServiceUnavailableError) as exc:
                log.warning("fetch failed, retrying: %r", exc)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                await self._process(msg)

    async def _process(self, msg: Msg) -> None:
        meta = msg.metadata
        ctx = extract_context(dict(msg.headers or {}))
        with tracer.start_as_current_span(
            f"consume {self._spec.durable}", context=ctx, kind=trace.SpanKind.CONSUMER
        ) as span:
            span.set_attribute("messaging.message.id", (msg.headers or {}).get(MSG_ID_HEADER, ""))
            span.set_attribute("messaging.delivery_count", meta.num_delivered)
            try:
                event = decode(msg.data)
            except (InvalidEvent, UnknownEventType) as exc:
                log.error("undecodable message terminated", extra={"subject": msg.subject, "error": str(exc)})
                await terminate(msg, f"undecodable: {exc}")
                return
            keepalive = asyncio.create_task(self._keep_alive(msg))
            try:
                await self._handle(event)
            except asyncio.CancelledError:
                await self._hand_back(msg)
                raise
            except Poison as exc:
                log.error("poison message terminated", extra={"event_id": event.id, "reason": str(exc)})
                await terminate(msg, str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - anything else is retried, then dead-lettered
                await self._retry_or_give_up(msg, event, exc)
                return
            finally:
                keepalive.cancel()
            await self._ack(msg)

    async def _retry_or_give_up(self, msg: Msg, event: CloudEvent[Any], exc: Exception) -> None:
        attempt = msg.metadata.num_delivered
        if attempt < self._spec.max_deliver:
            delay = backoff_for(self._spec, attempt)
            log.warning(
                "handler failed, redelivering",
                extra={"event_id": event.id, "attempt": attempt, "delay_s": delay, "error": repr(exc)},
            )
            await msg.nak(delay=delay)
            return
        log.error("handler failed on its last delivery", extra={"event_id": event.id, "error": repr(exc)})
        if self._on_exhausted is not None:
            try:
                await self._on_exhausted(event, exc)
            except Exception as hook_exc:  # noqa: BLE001
                # The verdict could not be recorded: leave the message unacked, so the server's
                # max-deliveries advisory dead-letters it for an operator to replay.
                log.error("exhausted hook failed", extra={"event_id": event.id, "error": repr(hook_exc)})
                return
        await terminate(msg, f"gave up after {attempt} deliveries: {exc!r}")

    async def _hand_back(self, msg: Msg) -> None:
        """The handling was cancelled (the service stops and its stop timeout has passed): give
        the message back to JetStream now, unacked, for another replica, rather than when its ack
        wait runs out. Best effort: when this fails, the ack wait still brings it back."""
        try:
            await msg.nak()
        except Exception as exc:  # noqa: BLE001 - nothing more to do with it here
            log.warning("could not hand a cancelled message back", extra={"subject": msg.subject, "error": repr(exc)})

    async def _ack(self, msg: Msg) -> None:
        # Wait for the server to confirm the ack: an ack lost in flight would mean a redelivery,
        # which is safe, but a confirmed one lets us count work exactly.
        try:
            await msg.ack_sync(timeout=5.0)
        # No responders: the server restarts and JetStream is not back yet (the ack is lost).
        except (NatsTimeoutError, asyncio.TimeoutError, ConnectionClosedError, NoRespondersError,
                ServiceUnavailableError):
            log.warning("ack not confirmed; the message may be redelivered", extra={"subject": msg.subject})

    async def _keep_alive(self, msg: Msg) -> None:
        # Long work (hashing 500 MiB) must not outlive ack_wait and be handed to another replica.
        interval = max(self._spec.ack_wait_s / 3, 0.5)
        while True:
            await asyncio.sleep(interval)
            await msg.in_progress()
