"""shopscore's streaming service.

The folders are its rooms (docs/design.md, "Code layout"): ``contract`` (topics, events,
cleaning rules, DLQ records, the owner partition), ``pipeline`` (the pure batch pipeline),
``features``, ``scoring``, ``models``, ``kafka`` (every Faust/aiokafka workaround), ``worker``
(the Faust app around the pipeline) and ``tools`` (CLI, embedded run, replay, dump, bench,
generator). The pure rooms import no Kafka client, so offline training runs exactly the code
the workers run.
"""

__version__ = "0.1.0"
