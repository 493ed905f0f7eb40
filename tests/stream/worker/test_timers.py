"""The worker's timers outlive a cancellation of what they await, not one of themselves."""

from __future__ import annotations

import asyncio

import pytest

from stream.worker.timers import survives_cancellation


def test_a_tick_whose_awaited_operation_is_cancelled_ends_quietly() -> None:
    # As when a Kafka client awaited by the timer ends cancelled.
    ticks: list[str] = []

    async def body() -> None:
        ticks.append("start")
        seek = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(seek.cancel)
        await seek
        ticks.append("never")

    async def main() -> None:
        tick = survives_cancellation(body)
        await tick()
        await tick()  # the timer's next tick runs again

    asyncio.run(main())
    assert ticks == ["start", "start"]


def test_cancelling_the_timer_itself_still_stops_it() -> None:
    async def body() -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        task = asyncio.create_task(survives_cancellation(body)())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
