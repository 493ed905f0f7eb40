"""The keyword arguments of ``faust.App(...)``, derived from :class:`~stream.settings.Settings`.

One source for every Faust app shopscore builds: the worker, and ``shopscore bench``'s
baselines (the bare forwarder, the consume-only agent), so the baselines measure the worker's
consumer settings rather than a copy of them that drifts.
"""

from __future__ import annotations

from typing import Any

import faust

from stream.settings import Settings

__all__ = ["broker_credentials", "faust_app_options"]


def broker_credentials(settings: Settings) -> faust.auth.Credentials | None:
    """Faust's form of the Kafka security settings (``Settings.kafka_client_options``)."""
    options = settings.kafka_client_options()
    protocol = options.get("security_protocol")
    if protocol is None:
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(options["ssl_context"])
    return faust.SASLCredentials(
        username=options["sasl_plain_username"],
        password=options["sasl_plain_password"],
        ssl_context=options.get("ssl_context"),
        mechanism=options["sasl_mechanism"],
    )


def faust_app_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """The worker's ``faust.App(settings.app_id, **options)`` keyword arguments; ``overrides``
    are applied last (``store="memory://"`` for an app that keeps no table).

    >>> options = faust_app_options(Settings(broker="kafka://k:9092"), store="memory://")
    >>> options["broker_session_timeout"], options["broker_heartbeat_interval"]
    (4.0, 1.0)
    """
    options: dict[str, Any] = {
        "broker": settings.broker,
        "store": settings.store,
        "datadir": str(settings.data_dir),
        "web_bind": settings.web_host,
        "web_host": settings.advertised_web_host(),
        "web_port": settings.web_port,
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "topic_allow_declare": True,
        "broker_rebalance_timeout": settings.rebalance_timeout_ms / 1000,
        "broker_session_timeout": settings.session_timeout_ms / 1000,
        "broker_heartbeat_interval": min(1.0, settings.session_timeout_ms / 3000),
        "consumer_auto_offset_reset": "earliest",
        "processing_guarantee": settings.processing_guarantee,
        # On revocation Faust would wait for the events the aligner holds, while the
        # partitions they wait for are paused; the new owner reads them again anyway.
        "stream_wait_empty": False,
        # Scores and changelogs are many small messages: a few ms of linger batches them
        # into far fewer produce requests (the worker was bound by socket writes).
        "producer_linger": 0.005,
        "producer_max_batch_size": 512 * 1024,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "broker_credentials": broker_credentials(settings),
    }
    options.update(overrides)
    return options
