"""The ingest agent's batches (``stream.kafka.intake.EventBatches``) on a real Faust stream.

Faust's ``agent.test_context()`` feeds an agent's own stream in memory, so these run the real
stream machinery (its drainer, processors and events) without a broker: every event comes out
once and in order, no batch is larger than asked, a busy stream's batches fill up while the
previous one is processed, a lone event does not wait for company beyond ``within``, and a
revoked partition's buffered events are dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.types import TP

from stream.kafka.intake import EventBatches


async def _run(
    max_events: int,
    within_s: float,
    feed: Callable[[Any], Awaitable[None]],
    done: Callable[[list[list[Any]]], bool],
    *,
    work_s: float = 0.0,
    on_batch: Callable[[EventBatches, list[Any]], None] | None = None,
    batches: list[list[Any]] | None = None,
) -> list[list[Any]]:
    # The broker is never contacted: test_context feeds the stream in memory.
    app = faust.App(f"intake-{time.monotonic_ns()}", broker="kafka://127.0.0.1:1")
    batches = [] if batches is None else batches

    async def consume(stream: Any) -> None:
        intake = EventBatches(stream, max_events, within_s)
        async for events in intake:
            batches.append([e.value for e in events])
            for event in events:
                await stream.ack(event)
            await asyncio.sleep(work_s)  # a batch takes this long to process
            if on_batch is not None:
                on_batch(intake, events)

    agent = app.agent(app.channel(), name="intake")(consume)
    async with agent.test_context() as ctx:
        await feed(ctx)
        deadline = time.monotonic() + 10
        while not done(batches) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    return batches


def test_every_event_once_in_order_and_no_batch_over_the_limit() -> None:
    async def feed(ctx: Any) -> None:
        for i in range(57):
            await ctx.put(i)

    batches = asyncio.run(_run(10, 0.02, feed, lambda b: sum(map(len, b)) >= 57, work_s=0.01))
    assert [v for batch in batches for v in batch] == list(range(57))
    assert max(map(len, batches)) <= 10


def test_a_busy_stream_fills_its_batches_while_one_is_processed() -> None:
    """take_events waited a fixed ``within`` after each batch: under a backlog every batch was
    what arrived in that window. Here what arrives during a batch's processing is the next
    batch, up to the limit."""

    async def feed(ctx: Any) -> None:
        for i in range(200):
            await ctx.put(i)

    batches = asyncio.run(_run(50, 0.001, feed, lambda b: sum(map(len, b)) >= 200, work_s=0.05))
    assert [v for batch in batches for v in batch] == list(range(200))
    assert sum(len(b) == 50 for b in batches) >= 3, [len(b) for b in batches]


def test_a_lone_event_does_not_wait_for_a_full_batch() -> None:
    arrived: list[float] = []

    async def feed(ctx: Any) -> None:
        arrived.append(time.monotonic())
        await ctx.put("only")

    started = time.monotonic()
    batches = asyncio.run(_run(500, 0.05, feed, lambda b: bool(b)))
    assert batches == [["only"]]
    assert time.monotonic() - started < 5  # not a speed check: it must not wait for 499 more


def test_revoked_partitions_buffered_events_are_dropped() -> None:
    dropped: list[int] = []
    seen: list[list[Any]] = []  # the batches, as _run records them

    def revoke_at_first_batch(intake: EventBatches, events: list[Any]) -> None:
        if not dropped:
            # While the first batch was processed the rest arrived in the buffer: revoke one
            # partition's share of them.
            dropped.append(intake.discard({TP(events[0].message.topic, 1)}))

    async def feed(ctx: Any) -> None:
        await ctx.put(0, partition=0)  # the first batch: the rest arrive while it is processed
        while not seen:
            await asyncio.sleep(0.001)
        for i in range(1, 40):
            await ctx.put(i, partition=i % 2, wait=False)

    batches = asyncio.run(
        _run(
            100,
            0.001,
            feed,
            lambda b: sum(map(len, b)) + sum(dropped) >= 40,
            work_s=0.05,
            on_batch=revoke_at_first_batch,
            batches=seen,
        )
    )
    later = [v for batch in batches[1:] for v in batch]
    assert dropped[0] > 0
    assert all(v % 2 == 0 for v in later), later
    assert sum(map(len, batches)) + dropped[0] == 40
