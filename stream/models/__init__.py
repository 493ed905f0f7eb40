"""The scoring models at run time: their inputs, built from user state, and the ONNX loader.

``stream.models.inputs`` and ``stream.models.popularity`` are pure (numpy only) and shared with
offline training; ``stream.models.registry`` adds onnxruntime. Nothing here imports TensorFlow.
"""

from stream.models.registry import (
    MODEL_NAMES,
    InputSpec,
    Model,
    load_model,
    load_models,
    shipped_dir,
)

__all__ = ["MODEL_NAMES", "InputSpec", "Model", "load_model", "load_models", "shipped_dir"]
