"""``shopscore bench``: throughput, latency, memory and recovery of the full scoring path.

Every figure comes from real processes on a real broker (the embedded one unless
``SHOPSCORE_BROKER`` is set), each phase on its own fresh topics or consumer group. One
module per phase:

1. **publish** (``events``): ``events`` generated events (the synthetic shop, no invalid ones)
   are published once to the input topics of a fresh topic prefix.
2. **bare** (``baselines``): a bare Faust forwarder (a separate process: consume the three
   input topics, forward each message unchanged to one topic) reads them; throughput =
   events / (first consumed → last forwarded record's Kafka timestamp).
3. **consume-only** (``baselines``): a Faust agent (a separate process) that reads the same
   events in Faust's own ``take_events(batch_size, batch_within_s)`` batches (the issue's
   measure of the framework's ceiling; the worker batches with ``stream.kafka.intake``),
   and only counts them; throughput = events / (first batch → the batch that completes the
   count). Both baselines are built from ``stream.kafka.options.faust_app_options``, the
   worker's own Faust options.
4. **full** (``full``): one ``shopscore worker`` reads the same events; throughput = events /
   (first consumed → the last score's Kafka timestamp, once all are consumed and every score
   the worker counted is in the broker).
5. **latency** (``latency``, ``latency_ms``): a fresh worker; a producer publishes live events
   (``ts`` = now) at the fixed ``rate``. Per scored event: the ``scores.churn`` record's Kafka
   timestamp (the worker's producer create time) minus the input record's, matched on
   ``trigger`` = ``event_id``. ``saturated`` says the rate is beyond 90% of the full path's
   throughput (the figures are then queueing).
6. **latency below saturation** (``latency_below_saturation_ms``): the same measurement, on
   another fresh worker, paced at half of phase 4's throughput (``0.5 * throughput_eps``, at
   least 50 events/s), always run: a separate measurement from phase 5's unless ``rate``
   happens to be that half.
7. **state** (``state``): the full phase's changelogs (real feature and scoring states) are
   sampled and written for ``users`` users to a fresh app's changelogs; a worker started on
   them gives the recovery time (start → ``/health`` ready) and its RSS. Below 100,000 users
   both are scaled linearly above an empty worker's (phase 5's), and the JSON says so.
8. **backfill** (``backfill``): a generated orders-only history (``backfill_users`` customers
   over 270 days, ``stream.tools.generator.orders_only``) published with ``--until`` its end
   into a fresh worker; ``backfill_s`` from the first record published to the score that made
   the last customer's ``scores.churn`` valid at the end, ``backfill_eps`` the orders over it.

``report.run_bench`` runs them in order; ``python -m stream.tools.bench`` is the child process
of the baseline phases. A benchmark is not a test: nothing here asserts on speed.
"""

from stream.tools.bench.baselines import consume_only_app, forwarder_app
from stream.tools.bench.latency import percentiles
from stream.tools.bench.records import Record, iter_records, latest_values, read_records
from stream.tools.bench.report import PHASES, BenchOptions, run_bench, versions
from stream.tools.bench.state import (
    StateSample,
    fill_changelogs,
    measure_state,
    offline_sample,
    scaled,
)

__all__ = [
    "PHASES",
    "BenchOptions",
    "Record",
    "StateSample",
    "consume_only_app",
    "fill_changelogs",
    "forwarder_app",
    "iter_records",
    "latest_values",
    "measure_state",
    "offline_sample",
    "percentiles",
    "read_records",
    "run_bench",
    "scaled",
    "versions",
]
