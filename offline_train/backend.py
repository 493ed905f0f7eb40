"""TensorFlow, imported only when training or exporting, on a bounded number of threads.

The service never imports this module: TensorFlow is the ``train`` extra, not a runtime
dependency. Importing here fails fast with the command that installs it.
"""

from __future__ import annotations

import os
from types import ModuleType

from stream.errors import TrainingError

__all__ = ["INSTALL_HINT", "keras_backend"]

INSTALL_HINT = "install the train extra: pip install 'shopscore[train]'"


def keras_backend(threads: int = 2, seed: int | None = None) -> tuple[ModuleType, ModuleType]:
    """``(tensorflow, keras)`` with TensorFlow limited to ``threads`` intra-op threads.

    Machines here have 2 cores shared with other work, so TensorFlow must not grab them all.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    # oneDNN's fused kernels round differently from onnxruntime; the plain kernels keep the
    # Keras/ONNX parity check far inside its 1e-5 tolerance.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import keras
        import tensorflow as tf
    except ImportError as exc:
        raise TrainingError(f"TensorFlow is not installed ({exc}): {INSTALL_HINT}") from None
    tf.get_logger().setLevel("ERROR")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already initialised by an earlier call in this process: keep its settings
    if seed is not None:
        keras.utils.set_random_seed(seed)
    return tf, keras
