"""Every Faust/aiokafka workaround and client option lives here; the only package besides
``stream/worker`` and Kafka-talking tools that imports faust or aiokafka."""
