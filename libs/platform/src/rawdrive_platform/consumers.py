"""The consumer kit: a service declares its handler table once, and the rest comes from it.

A table maps each event type a durable consumer reads to a plain handler of (event, deps), and
optionally to what to do when a delivery fails transiently for the last time. From the table
come the consumer's subject filters (so the consumer reads exactly what it handles), the dispatch
(an event it has no handler for is poison), and the exhausted-delivery dispatch. Handlers that
write to PostgreSQL get a `UnitOfWork` in their deps (rawdrive_platform.outbox) and open their
transaction through it, rather than taking connections from a pool themselves.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

from rawdrive_contracts import CloudEvent, EventData, StreamSpec, subject_filter
from rawdrive_platform.bus import ConsumerSpec, EventHandler, ExhaustedHandler, Poison

D = TypeVar("D")
Handler = Callable[[CloudEvent[Any], D], Awaitable[None]]
Exhausted = Callable[[CloudEvent[Any], BaseException, D], Awaitable[None]]


@dataclass(frozen=True)
class HandlerTable(Generic[D]):
    """One durable consumer's handlers: event type -> handler(event, deps)."""

    durable: str
    stream: StreamSpec
    handlers: Mapping[type[EventData], Handler[D]]
    # Called once when a handler failed transiently on the last allowed delivery, before the
    # message is terminated: the stage records its own verdict (e.g. a storage_error rejection).
    exhausted: Mapping[type[EventData], Exhausted[D]] = field(default_factory=dict)

    @property
    def spec(self) -> ConsumerSpec:
        """The durable consumer, filtered on exactly the handled event types (every workspace)."""
        return ConsumerSpec(
            durable=self.durable,
            stream=self.stream.name,
            filter_subjects=tuple(subject_filter(event_type.spec) for event_type in self.handlers),
        )

    async def dispatch(self, event: CloudEvent[Any], deps: D) -> None:
        handler = self.handlers.get(type(event.data))
        if handler is None:
            raise Poison(f"{self.durable} does not handle {event.type}")
        await handler(event, deps)

    async def dispatch_exhausted(self, event: CloudEvent[Any], error: BaseException, deps: D) -> None:
        handler = self.exhausted.get(type(event.data))
        if handler is not None:
            await handler(event, error, deps)

    def bind(self, deps: D) -> tuple[EventHandler, ExhaustedHandler | None]:
        """The bus's callbacks for these deps (no exhausted callback when the table has none)."""
        on_exhausted = partial(self.dispatch_exhausted, deps=deps) if self.exhausted else None
        return partial(self.dispatch, deps=deps), on_exhausted
