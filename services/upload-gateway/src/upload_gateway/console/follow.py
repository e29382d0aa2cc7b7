"""One open feed's consumer of RAWDRIVE_ASSETS: created under a name of ours, read through a core
subscription on its deliver subject, and replaced when a delivery does not follow the last one or
the heartbeats stop (the decisions are feed.Position's; this module performs them).

Why not nats-py's ordered consumer: it creates its consumers by the unnamed
`$JS.API.CONSUMER.CREATE.<stream>` subject, whose request body may name any consumer (the
janitor's durable included), so the gateway's NATS user would have to be allowed to redefine
consumers it does not own; and nats-py 2.16 cannot recreate a named one after a gap.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from rawdrive_contracts import ASSETS_STREAM
from upload_gateway.console import feed

log = logging.getLogger(__name__)

CONTROL_STATUS = "100"  # idle heartbeats and flow control requests
RECREATE_RETRY_S = 2.0


@dataclass
class Follow:
    """Call `start`, then `next_event` for each event in stream order; `close` at the end."""

    js: JetStreamContext
    filters: list[str]
    buffer: int
    # (generation, message): a replaced consumer's messages still queued are dropped by generation.
    queue: asyncio.Queue[tuple[int, Msg]] = field(init=False)
    position: feed.Position = field(init=False, default=feed.Position(stream=0))
    generation: int = 0
    name: str | None = None
    subscription: Subscription | None = None

    def __post_init__(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.buffer)

    @property
    def _nc(self) -> NATS:
        return self.js._nc  # nats-py exposes no public accessor; the core subscription needs it

    async def start(self, after: int | None) -> None:
        """Creates the first consumer: from now (after None) or right after stream sequence `after`."""
        await self._create(None if after is None else after + 1)

    async def next_event(self) -> Msg:
        """The next event message, each once and in stream order across replaced consumers."""
        while True:
            try:
                generation, msg = await asyncio.wait_for(self.queue.get(), feed.HEARTBEAT_MISSED_S)
            except TimeoutError:
                log.info("feed: heartbeats missed, consumer replaced", extra={"consumer": self.name})
                await self._replace()
                continue
            if generation != self.generation:
                continue
            status = msg.headers.get(Header.STATUS) if msg.headers and not msg.data else None
            if status == CONTROL_STATUS:
                await self._control(msg)
                continue
            if status is not None:  # e.g. 409 consumer deleted
                log.info("feed: consumer ended, replaced", extra={"consumer": self.name, "status": status})
                await self._replace()
                continue
            sequence = msg.metadata.sequence
            position = feed.delivered(self.position, sequence.stream, sequence.consumer)
            if position is None:
                log.info("feed: gap, consumer replaced", extra={"consumer": self.name})
                await self._replace()
                continue
            self.position = position
            return msg

    async def close(self) -> None:
        await self._abandon()

    async def _control(self, msg: Msg) -> None:
        assert msg.headers is not None
        if msg.reply:  # a flow control request: answered once the messages before it were taken
            await self._nc.publish(msg.reply)
            return
        stalled = msg.headers.get(Header.CONSUMER_STALLED)
        if stalled:  # a heartbeat naming a flow control request we have not answered
            await self._nc.publish(stalled)
        last = msg.headers.get(Header.LAST_CONSUMER)
        if last is not None and not feed.heartbeat_in_order(self.position, int(last)):
            log.info("feed: heartbeat shows a gap, consumer replaced", extra={"consumer": self.name})
            await self._replace()

    async def _replace(self) -> None:
        await self._abandon()
        while True:
            try:
                await self._create(self.position.next_start())
                return
            except (NatsError, TimeoutError) as error:  # the bus is away: the browser gets keep-alives
                log.warning("feed: consumer not recreated", extra={"error": repr(error)})
                await asyncio.sleep(RECREATE_RETRY_S)

    async def _create(self, start: int | None) -> None:
        self.generation += 1
        generation, name, deliver = self.generation, feed.consumer_name(), self._nc.new_inbox()

        async def enqueue(msg: Msg) -> None:
            await self.queue.put((generation, msg))  # blocks when full: flow control holds the rest

        subscription = await self._nc.subscribe(deliver, cb=enqueue)  # before the consumer: nothing missed
        config = ConsumerConfig(
            name=name, deliver_subject=deliver, filter_subjects=self.filters, ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.NEW if start is None else DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start, flow_control=True, idle_heartbeat=feed.HEARTBEAT_S,
            inactive_threshold=feed.INACTIVE_THRESHOLD_S, mem_storage=True, num_replicas=1,
        )  # fmt: skip
        try:
            info = await self.js.add_consumer(ASSETS_STREAM.name, config)
        except BaseException:
            await subscription.unsubscribe()
            raise
        self.name, self.subscription = name, subscription
        # The sequence it starts after: what a replacement starts after if nothing comes first.
        self.position = feed.Position(stream=info.delivered.stream_seq or 0)

    async def _abandon(self) -> None:
        """Stops reading the current consumer and deletes it; one left behind (the bus away) is
        removed by the server after INACTIVE_THRESHOLD_S."""
        subscription, name = self.subscription, self.name
        self.subscription = self.name = None
        self.generation += 1
        if subscription is not None:
            try:
                await subscription.unsubscribe()
            except NatsError:
                pass  # the connection is closed: so is the subscription
        if name is not None:
            try:
                await self.js.delete_consumer(ASSETS_STREAM.name, name)
            except NotFoundError:
                pass  # already gone (what a missed heartbeat often means)
            except (NatsError, TimeoutError) as error:
                log.warning("feed: consumer not deleted", extra={"consumer": name, "error": repr(error)})
