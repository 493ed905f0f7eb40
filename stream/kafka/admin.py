"""Contract topic names and their creation, shared by the worker, replay, dump and run."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from stream.contract.topics import ALL_TOPICS, CLOCK, DLQ, INPUT_TOPICS, OUTPUT_TOPICS
from stream.errors import BrokerError
from stream.kafka.probe import kafka_ready
from stream.settings import Settings

__all__ = [
    "ALL_TOPICS",
    "CLOCK",
    "DLQ",
    "INPUT_TOPICS",
    "OUTPUT_TOPICS",
    "check_reachable",
    "ensure_topics",
]



def check_reachable(settings: Settings, timeout: float = 3.0) -> None:
    """Fail fast, with a message that says what to do, when no configured broker answers."""
    servers = settings.bootstrap_servers()
    for server in servers.split(","):
        host, _, port = server.rpartition(":")
        if kafka_ready(host, int(port), timeout=timeout):
            return
    raise BrokerError(
        f"cannot reach a Kafka broker at {servers}: start one (`shopscore broker`), "
        "fix SHOPSCORE_BROKER / --broker, or use `shopscore run` for the embedded default"
    )


async def ensure_topics(settings: Settings, names: tuple[str, ...] = ALL_TOPICS) -> None:
    """Create the contract topics with ``settings.partitions`` partitions where missing.

    Input topics, the clock and the tables' changelogs must share one partition count: that is
    what lets a user's events and state live on the same worker (co-partitioning).
    """
    check_reachable(settings)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers(),
        client_id="shopscore-admin",
        **settings.kafka_client_options(),
    )
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        wanted = [settings.topic(n) for n in names if settings.topic(n) not in existing]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(name, settings.partitions, settings.replication_factor)
                        for name in wanted
                    ]
                )
            # Metadata propagates asynchronously on some brokers; wait until all are listed.
            for _ in range(50):
                if set(wanted) <= set(await admin.list_topics()):
                    break
                await asyncio.sleep(0.1)
    except KafkaError as exc:
        raise BrokerError(f"could not create topics on {settings.broker}: {exc}") from exc
    finally:
        await admin.close()
