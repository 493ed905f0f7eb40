"""Contract topic names and their creation, shared by the worker, replay, dump and run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from stream.contract.topics import ALL_TOPICS, CLOCK, DLQ, INPUT_TOPICS, OUTPUT_TOPICS
from stream.errors import BrokerError, ConfigError
from stream.kafka.probe import kafka_ready
from stream.settings import Settings

__all__ = [
    "ALL_TOPICS",
    "CLOCK",
    "DLQ",
    "INPUT_TOPICS",
    "OUTPUT_TOPICS",
    "check_reachable",
    "check_session_timeout",
    "check_transactions",
    "ensure_topics",
]

log = logging.getLogger("shopscore")

_SESSION_BOUNDS = ("group.min.session.timeout.ms", "group.max.session.timeout.ms")


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


async def ensure_topics(
    settings: Settings, names: tuple[str, ...] = ALL_TOPICS, *, physical: tuple[str, ...] = ()
) -> None:
    """Create the contract topics ``names`` (and the ``physical`` topics, named as they are)
    with ``settings.partitions`` partitions where missing.

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
        await _check_partition_counts(admin, settings, names, existing)
        topics = [settings.topic(n) for n in names] + list(physical)
        wanted = [name for name in dict.fromkeys(topics) if name not in existing]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [
                        NewTopic(name, settings.partitions, settings.replication_factor)
                        for name in wanted
                    ]
                )
            # Metadata propagates asynchronously, and Apache Kafka elects each new partition's
            # leader a moment later (a produce before it is refused with NotLeaderForPartition
            # and retried, noisily): wait until every new partition has a leader.
            for _ in range(100):
                if _all_led(await admin.describe_topics(wanted), settings.partitions):
                    break
                await asyncio.sleep(0.1)
    except KafkaError as exc:
        raise BrokerError(f"could not create topics on {settings.broker}: {exc}") from exc
    finally:
        await admin.close()


def _all_led(described: list[dict[str, Any]], partitions: int) -> bool:
    """Every described topic exists with ``partitions`` partitions, each with a leader."""
    return all(
        topic.get("error_code") == 0
        and len(topic.get("partitions") or ()) == partitions
        and all(p.get("leader", -1) >= 0 for p in topic["partitions"])
        for topic in described
    )


async def _check_partition_counts(
    admin: AIOKafkaAdminClient, settings: Settings, names: tuple[str, ...], existing: set[str]
) -> None:
    """Existing input and clock topics must have ``settings.partitions`` partitions: a user's
    events, state and clock ticks are found on one partition number across them. (A topic
    created by a producer's first send gets the broker's ``num.partitions`` instead.)"""
    copartitioned = [
        settings.topic(n)
        for n in names
        if n in (*INPUT_TOPICS, CLOCK) and settings.topic(n) in existing
    ]
    if not copartitioned:
        return
    for topic in await admin.describe_topics(copartitioned):
        count = len(topic.get("partitions") or ())
        if topic.get("error_code") == 0 and count != settings.partitions:
            raise ConfigError(
                f"topic {topic['topic']!r} has {count} partitions but SHOPSCORE_PARTITIONS="
                f"{settings.partitions}: the input topics and clock need the same count (set "
                "SHOPSCORE_PARTITIONS to it, or use a new SHOPSCORE_TOPIC_PREFIX)"
            )


async def check_session_timeout(settings: Settings) -> None:
    """Fail fast when the broker would refuse the consumer group's session timeout.

    Apache Kafka answers a join with a session timeout outside ``group.min.session.timeout.ms``
    .. ``group.max.session.timeout.ms`` (6 s .. 30 min by default) with a fatal
    ``InvalidSessionTimeoutError``, after which a Faust worker waits forever, never ready. The
    bounds are asked of the broker (DescribeConfigs); a broker that does not answer it (the
    embedded one, or missing rights) is not checked.
    """
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers(),
        client_id="shopscore-admin",
        **settings.kafka_client_options(),
    )
    try:
        await admin.start()
        node = next(iter(admin._client.cluster.brokers())).nodeId
        wanted = dict.fromkeys(_SESSION_BOUNDS)
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(node), wanted)]
        )
        bounds = {
            entry[0]: int(entry[1])
            for _error, _message, _type, _name, entries in response.resources
            for entry in entries
            if entry[0] in wanted and entry[1] is not None
        }
    except Exception as exc:  # an unanswered check is no verdict
        log.debug("session timeout bounds not checked: %r", exc)
        return
    finally:
        await admin.close()
    low, high = (bounds.get(name) for name in _SESSION_BOUNDS)
    timeout = settings.session_timeout_ms
    if (low is not None and timeout < low) or (high is not None and timeout > high):
        raise ConfigError(
            f"SHOPSCORE_SESSION_TIMEOUT={timeout / 1000:g}s is outside what {settings.broker} "
            f"accepts ({_SESSION_BOUNDS[0]}={low}, {_SESSION_BOUNDS[1]}={high}): set "
            "SHOPSCORE_SESSION_TIMEOUT and SHOPSCORE_REBALANCE_TIMEOUT within it (10s works on "
            "a default Apache Kafka)"
        )


async def check_transactions(settings: Settings, timeout: float = 15.0) -> None:
    """With ``processing_guarantee="exactly_once"``, fail fast on a broker without
    transactions (the embedded one answers InitProducerId for a transactional id with an
    error), instead of a worker that crashes at its first commit."""
    if settings.processing_guarantee != "exactly_once":
        return
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers(),
        client_id="shopscore-admin",
        transactional_id=f"{settings.app_id}-transactions-check",
        enable_idempotence=True,
        acks="all",
        request_timeout_ms=int(timeout * 1000),
        **settings.kafka_client_options(),
    )
    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)  # the refusal is said below, in one line
    try:
        await asyncio.wait_for(producer.start(), timeout)
    except Exception as exc:
        raise ConfigError(
            f"SHOPSCORE_PROCESSING_GUARANTEE=exactly_once needs a broker with transactions, "
            f"and {settings.broker} refused one ({type(exc).__name__}; the embedded broker has "
            "none): use at_least_once there, or Apache Kafka"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), timeout)
        client_log.setLevel(level)
