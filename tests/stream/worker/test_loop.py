"""The worker's event loop (``stream.worker.loop``): uvloop by default, asyncio on request."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from stream.errors import ConfigError
from stream.settings import Settings
from stream.worker.loop import new_event_loop


@pytest.fixture(autouse=True)
def _restore_policy():
    yield
    asyncio.set_event_loop_policy(None)
    asyncio.set_event_loop(None)


def test_uvloop_by_default_and_for_the_threads_too() -> None:
    assert Settings().event_loop == "uvloop"
    loop = new_event_loop(Settings().event_loop)
    try:
        assert isinstance(loop, uvloop.Loop)
        # Faust's consumer thread makes its own loop through the policy: the same kind.
        other = asyncio.new_event_loop()
        assert isinstance(other, uvloop.Loop)
        other.close()
        assert loop.run_until_complete(asyncio.sleep(0, result=7)) == 7
    finally:
        loop.close()


def test_asyncio_on_request() -> None:
    settings = Settings.from_env({"SHOPSCORE_EVENT_LOOP": "AsyncIO"})
    loop = new_event_loop(settings.event_loop)
    try:
        assert settings.event_loop == "asyncio"
        assert not isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_an_unknown_loop_is_a_one_line_configuration_error() -> None:
    with pytest.raises(ConfigError, match="SHOPSCORE_EVENT_LOOP='trio' is invalid: must be one of"):
        Settings.from_env({"SHOPSCORE_EVENT_LOOP": "trio"})
