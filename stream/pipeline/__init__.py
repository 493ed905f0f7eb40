"""The pure batch pipeline: input records and tables in, writes, records, counts and safe
offsets out (``batch.Pipeline``). No Faust, no Kafka client: the worker and offline
evaluation both drive it."""

from stream.pipeline.batch import Pipeline, PipelineConfig
from stream.pipeline.counts import Counts
from stream.pipeline.records import BatchOutput, InputRecord, OutputRecord, TableWrite
from stream.pipeline.scoring import run_inline
from stream.pipeline.stores import Stores

__all__ = [
    "BatchOutput",
    "Counts",
    "InputRecord",
    "OutputRecord",
    "Pipeline",
    "PipelineConfig",
    "Stores",
    "TableWrite",
    "run_inline",
]
