"""Model hot swap: a new version in ``SHOPSCORE_MODEL_DIR`` is loaded off the event loop and
swapped in between two batches, or refused as a whole while the old models keep serving."""

from __future__ import annotations

import asyncio
import functools
import logging
from pathlib import Path
from typing import Any

from stream.errors import ModelError
from stream.models.registry import MODEL_NAMES, Model, TrainedFor, load_models
from stream.worker.metrics import Metrics

__all__ = ["ModelWatcher", "publish_model_info", "swap_models"]

log = logging.getLogger("shopscore")


class ModelWatcher:
    """Notices a new model version in ``SHOPSCORE_MODEL_DIR`` and loads it off the event loop.

    A directory's fingerprint is its manifests' bytes; when it changes, every model is loaded
    and checked (schema hash, sha256, onnxruntime) before any is swapped, so a half-copied or
    mismatched set is refused as a whole and the old models keep serving.
    """

    def __init__(self, directory: Path | None, trained_for: TrainedFor | None = None) -> None:
        self.directory = directory
        self.trained_for = trained_for
        self._fingerprint = self._read_fingerprint()

    def _read_fingerprint(self) -> bytes | None:
        if self.directory is None:
            return None
        parts = []
        for name in MODEL_NAMES:
            try:
                parts.append((self.directory / f"{name}.json").read_bytes())
            except OSError:
                parts.append(b"")
        return b"\0".join(parts)

    def changed(self) -> bool:
        fingerprint = self._read_fingerprint()
        if fingerprint == self._fingerprint:
            return False
        self._fingerprint = fingerprint
        return True


def publish_model_info(scorer: Any, metrics: Metrics) -> None:
    for name, model in scorer.models.items():
        metrics.model.labels(name).info({"version": model.version})


async def swap_models(
    watcher: ModelWatcher, scorer: Any, lock: asyncio.Lock, metrics: Metrics
) -> bool:
    """Load a changed model directory off the loop; swap between batches (under ``lock``), or
    keep serving the old models when the new ones are refused."""
    if not watcher.changed():
        return False
    loop = asyncio.get_running_loop()
    try:
        models: dict[str, Model] = await loop.run_in_executor(
            None, functools.partial(load_models, watcher.directory, trained_for=watcher.trained_for)
        )
    except ModelError as exc:
        metrics.model_rejected.inc()
        log.error("refusing the new models, the current ones keep serving: %s", exc)
        return False
    async with lock:  # between batches
        old = scorer.models
        scorer.models = models
    for name, model in models.items():
        if old.get(name) is None or old[name].version != model.version:
            metrics.model_swaps.labels(name).inc()
            log.info(
                "model %s swapped: %s -> %s",
                name,
                old[name].version if name in old else None,
                model.version,
            )
    publish_model_info(scorer, metrics)
    return True
