"""The JetStream plumbing against a real NATS server: dedup, acks after work, retries, dead letters."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from rawdrive_contracts import UPLOADS_STREAM, UploadAborted, new_event, subject_filter
from rawdrive_devkit.testkit import jetstream
from rawdrive_platform import bus, deadletter


def aborted(workspace: str, upload: str | None = None) -> UploadAborted:
    return UploadAborted(
        workspace_id=workspace,
        upload_id=upload or uuid.uuid4().hex,
        asset_id=uuid.uuid4().hex,
        storage_profile_ref="managed",
        object_key="workspaces/x/assets/y/original/z.jpg",
        aborted_by="tester",
    )


@pytest.fixture
async def js(nats_url):
    async with jetstream(nats_url, "test-bus", duplicate_window_s=60) as js:
        yield js


@pytest.fixture
def workspace() -> str:
    return f"ws{uuid.uuid4().hex[:12]}"


def spec_for(workspace: str, **overrides) -> bus.ConsumerSpec:
    return bus.ConsumerSpec(
        durable=f"test-{uuid.uuid4().hex[:10]}",
        stream=UPLOADS_STREAM.name,
        filter_subjects=(subject_filter(UploadAborted.spec, workspace),),
        **{"ack_wait_s": 2.0, "backoff_s": (0.1,), "max_deliver": 3, **overrides},
    )


async def run_until(consumer: bus.Consumer, condition, timeout: float = 10.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def dead_letters_for(js, durable: str, want: int, timeout: float = 5.0) -> list[deadletter.DeadLetter]:
    async with asyncio.timeout(timeout):
        while True:
            letters = [d for d in await deadletter.list_dead_letters(js) if d.consumer == durable]
            if len(letters) >= want:
                return letters
            await asyncio.sleep(0.1)


async def test_publishing_the_same_event_twice_stores_it_once(js, workspace):
    event = new_event(aborted(workspace), source="test")
    assert await bus.publish(js, event) is True
    assert await bus.publish(js, event) is False
    received = []
    await run_until(bus.Consumer(js, spec_for(workspace), lambda e: _append(received, e)), lambda: received)
    await asyncio.sleep(0.3)
    assert [e.id for e in received] == [event.id]


async def _append(items: list, item) -> None:
    items.append(item)


async def test_a_transient_failure_is_redelivered_and_then_acked(js, workspace):
    event = new_event(aborted(workspace), source="test")
    await bus.publish(js, event)
    attempts = []

    async def flaky(e):
        attempts.append(e.id)
        if len(attempts) == 1:
            raise bus.Transient("storage down")

    spec = spec_for(workspace)
    await run_until(bus.Consumer(js, spec, flaky), lambda: len(attempts) >= 2)
    await asyncio.sleep(2.5)  # past ack_wait: an unacked message would come back
    info = await js.consumer_info(spec.stream, spec.durable)
    assert attempts == [event.id, event.id]
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_poison_message_is_dead_lettered_with_its_reason(js, workspace):
    event = new_event(aborted(workspace), source="test")
    await bus.publish(js, event)
    calls = []

    async def refuse(e):
        calls.append(e)
        raise bus.Poison("unsupported widget")

    spec = spec_for(workspace)
    await run_until(bus.Consumer(js, spec, refuse), lambda: calls)
    [letter] = await dead_letters_for(js, spec.durable, 1)
    assert letter.kind == "terminated"
    assert letter.reason == "unsupported widget"
    assert letter.event_id == event.id
    assert len(calls) == 1


async def test_an_undecodable_message_is_terminated_without_reaching_the_handler(js, workspace):
    subject = f"rawdrive.upload.aborted.{workspace}"
    await js.publish(subject, b"{not json", headers={bus.MSG_ID_HEADER: uuid.uuid4().hex})
    calls = []
    spec = spec_for(workspace)
    consumer = bus.Consumer(js, spec, lambda e: _append(calls, e))
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    [letter] = await dead_letters_for(js, spec.durable, 1)
    stop.set()
    await task
    assert letter.reason.startswith("undecodable")
    assert calls == []


async def test_exhausted_deliveries_call_the_stage_verdict_once_then_dead_letter(js, workspace):
    event = new_event(aborted(workspace), source="test")
    await bus.publish(js, event)
    attempts, verdicts = [], []

    async def always_down(e):
        attempts.append(e.id)
        raise bus.Transient("S3 unreachable")

    async def verdict(e, exc):
        verdicts.append((e.id, str(exc)))

    spec = spec_for(workspace, max_deliver=3)
    await run_until(bus.Consumer(js, spec, always_down, on_exhausted=verdict), lambda: verdicts)
    [letter] = await dead_letters_for(js, spec.durable, 1)
    assert attempts == [event.id] * 3
    assert verdicts == [(event.id, "S3 unreachable")]
    assert "gave up after 3 deliveries" in letter.reason


async def test_a_handling_cancelled_at_the_stop_timeout_is_handed_back_at_once(js, workspace):
    # As the Runtime cancels a consumer still working when its stop timeout has passed: another
    # replica gets the message long before the ack wait would bring it back. (A consumer killed
    # outright naks nothing; its message comes back after the ack wait: the verifier's
    # SIGKILL-mid-hash test and tests/e2e/test_resilience.py kill real processes.)
    event = new_event(aborted(workspace), source="test")
    await bus.publish(js, event)
    spec = spec_for(workspace, ack_wait_s=60.0)
    started = asyncio.Event()

    async def hang(e):
        started.set()
        await asyncio.sleep(3600)

    stopping = asyncio.create_task(bus.Consumer(js, spec, hang).run(asyncio.Event()))
    await asyncio.wait_for(started.wait(), 5)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    done = []
    await run_until(bus.Consumer(js, spec, lambda e: _append(done, e)), lambda: done, timeout=10)
    assert [e.id for e in done] == [event.id]


async def test_stop_lets_the_message_in_hand_finish_and_be_acked(js, workspace):
    await bus.publish(js, new_event(aborted(workspace), source="test"))
    spec = spec_for(workspace)
    stop = asyncio.Event()
    finished = []

    async def slow(e):
        stop.set()  # SIGTERM arrives while we work
        await asyncio.sleep(0.5)
        finished.append(e.id)

    await asyncio.wait_for(bus.Consumer(js, spec, slow).run(stop), 10)
    info = await js.consumer_info(spec.stream, spec.durable)
    assert len(finished) == 1
    assert info.num_ack_pending == 0 and info.num_redelivered == 0


async def test_long_work_is_kept_alive_past_ack_wait(js, workspace):
    await bus.publish(js, new_event(aborted(workspace), source="test"))
    spec = spec_for(workspace, ack_wait_s=1.0)
    calls = []

    async def longer_than_ack_wait(e):
        calls.append(e.id)
        await asyncio.sleep(2.5)

    await run_until(bus.Consumer(js, spec, longer_than_ack_wait, concurrency=2), lambda: len(calls) >= 1, timeout=10)
    info = await js.consumer_info(spec.stream, spec.durable)
    assert calls and len(calls) == 1
    assert info.num_redelivered == 0


async def test_a_dead_letter_can_be_replayed_to_its_subject(js, workspace):
    event = new_event(aborted(workspace), source="test")
    await bus.publish(js, event)
    spec = spec_for(workspace)
    fail = True
    seen = []

    async def handler(e):
        seen.append(e.id)
        if fail:
            raise bus.Poison("bad config")

    await run_until(bus.Consumer(js, spec, handler), lambda: seen)
    [letter] = await dead_letters_for(js, spec.durable, 1)
    fail = False
    await deadletter.replay(js, letter.seq)
    await run_until(bus.Consumer(js, spec, handler), lambda: len(seen) >= 2)
    assert seen == [event.id, event.id]
    assert [d for d in await deadletter.list_dead_letters(js) if d.consumer == spec.durable] == []


def test_backoff_follows_the_attempt_and_repeats_its_last_step():
    spec = bus.ConsumerSpec(durable="d", stream="s", filter_subjects=("x",), backoff_s=(1.0, 5.0))
    assert [bus.backoff_for(spec, n) for n in (1, 2, 3, 9)] == [1.0, 5.0, 5.0, 5.0]


def test_reason_of_an_advisory_without_one_says_what_happened():
    assert deadletter.reason_of("max_deliveries", "", 5) == "not acknowledged after 5 deliveries"
    assert deadletter.reason_of("terminated", "boom", 1) == "boom"



async def test_closing_or_draining_our_own_connection_logs_no_disconnect_warning(nats_url, caplog):
    for finish in ("close", "drain"):
        nc = await bus.connect(nats_url, name="test-clean-close")
        with caplog.at_level("WARNING", logger="rawdrive_platform.bus"):
            caplog.clear()
            await getattr(nc, finish)()
        assert not [r for r in caplog.records if r.getMessage() == "nats disconnected"], finish
