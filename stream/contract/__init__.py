"""The wire contract: topic names (and, as they move here, events, validation and DLQ records).

Pure: nothing here imports Faust or a Kafka client.
"""
