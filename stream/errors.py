"""One root exception and one class per failure domain, so callers can catch what they handle."""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ConfigError",
    "CorruptState",
    "ExportError",
    "ModelError",
    "Rejected",
    "ShopscoreError",
    "TrainingError",
]


class ShopscoreError(Exception):
    """Root of every error shopscore raises on purpose."""


class ConfigError(ShopscoreError):
    """A setting is missing or malformed; the message says which and how to fix it."""


class BrokerError(ShopscoreError):
    """The Kafka broker cannot be started or reached."""


class ModelError(ShopscoreError):
    """A shipped or configured ONNX model cannot be used (missing, corrupt, or trained on
    another feature schema); the message says to retrain (``shopscore train`` + ``export``)."""


class TrainingError(ShopscoreError):
    """Offline training cannot run: the ``train`` extra is missing or the log is unusable."""


class ExportError(ShopscoreError):
    """Keras → ONNX export failed, or ONNX outputs differ from Keras beyond the tolerance."""


class CorruptState(ShopscoreError):
    """A stored state record (a changelog value) cannot be decoded into what it claims to be.

    Raised by every state decoder on anything malformed, whatever its cause, so a caller (the
    table codecs) can skip the record, count it and go on: anyone who can write to the broker
    can write to a changelog, and one bad record must not wedge recovery.
    """

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what}: {detail}")
        self.what = what
        self.detail = detail


class Rejected(ShopscoreError):
    """An input event is refused; it goes to the dead-letter topic with ``reason``.

    This is the explicit skip signal: the worker never drops an event silently, it raises
    this, counts it under ``reason`` and writes the raw payload to ``events.dlq``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
