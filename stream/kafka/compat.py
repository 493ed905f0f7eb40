"""Working around a Kafka-protocol broker's and Faust's gaps that would lose state.

End offsets. The embedded Tansu broker reports a partition's end offset as the base offset of
its last record batch plus one; with batched produce (every Faust changelog) that is short of
the real end. Faust reads a table's changelog up to that reported end when it recovers, so state
written in the last batch would be silently lost on restart. A fetch response's high watermark
is right on every broker, so the end offsets Faust asks for are corrected with one fetch. On
Apache Kafka the two agree and the correction changes nothing.

Message delivery. Faust races each fetched message's delivery to the streams against a
rebalance with three futures and a task; ``_Consumer._drain_messages`` delivers with a plain
``await`` unless the flow is already suspended, and waits for room in a full stream buffer
once per half buffer instead of once per message (see there).

Flush before commit. Faust flushes its producer before committing consumer offsets, but its
buffer's flush gives up after 0.1 s without a message sent and does not count the message its
sender task is handing to the client. Offsets could then be committed for events whose table
changelog writes were still in the buffer: a ``kill -9`` at that moment lost them for good
(seen as users missing one event after a crash). The producer here drains the buffer
completely, then waits for the client's own flush, so a commit follows every write before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.exceptions import ProducerSendError
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = [
    "ends_if_cancelled_from_outside",
    "first_offsets",
    "input_transactions",
    "install",
    "topic_partitions",
    "true_end_offsets",
]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def ends_if_cancelled_from_outside(what: str) -> Iterator[None]:
    """Run the block; if something it awaits is cancelled, not the current task itself (a
    Kafka client stopping with requests in flight, a probe's client that failed), the block
    just ends, with an info line naming ``what``. Faust ends a timer for good when its body
    raises ``CancelledError`` while the app runs (seen: the lost-tail timer gone after a broker
    freeze, when its probe's client ended cancelled, and a partition's events held for
    alignment ever after), so such a cancellation is only a repair that did not happen this
    time; a cancellation of the task itself (the worker stopping) propagates."""
    try:
        yield
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise
        log.info("%s was cancelled; it is tried again later", what)


async def true_end_offsets(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition], timeout: float = 5.0
) -> dict[TopicPartition, int]:
    """End offsets that agree with fetch high watermarks (see module docstring).

    The probing consumer runs on its own event loop in a helper thread: inside Faust's consumer
    thread a second client on the same loop stalls recovery.
    """
    tps = list(partitions)
    listed = await consumer.end_offsets(tps)
    if not any(listed.values()):
        return dict(listed)
    servers, security = _connection(consumer)
    return await asyncio.get_running_loop().run_in_executor(
        None, lambda: asyncio.run(_probe(servers, dict(listed), timeout, security))
    )


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partitions of ``topic`` (empty when it does not exist), asked of the broker.

    A consumer without a subscription knows only the topics its bootstrap metadata named: the
    embedded broker names every topic there, Apache Kafka none. ``consumer.topics()`` fetches
    every topic's metadata but does not keep it, so ``partitions_for_topic`` stays ``None``
    after it on Kafka; the partitions are read from the metadata it fetched instead.
    """
    known = consumer.partitions_for_topic(topic)
    if known:
        return set(known)
    cluster = await consumer._client.fetch_all_metadata()
    return set(cluster.partitions_for_topic(topic) or ())


def input_transactions(app: Any, input_topics: Iterable[str]) -> Callable[[int], str]:
    """The transactional id of an input partition, as Faust's ``TransactionManager`` names the
    transaction it commits that partition's offsets in (``{app id}-{topic group}-{partition}``).
    The input topics are one topic group (one agent reads them all); checked on first use."""
    topics = list(input_topics)
    group: list[int] = []

    def transactional_id(partition: int) -> str:
        if not group:
            groups = {app.assignor.group_for_topic(topic) for topic in topics}
            if len(groups) != 1:
                raise RuntimeError(f"input topics in several topic groups: {sorted(groups)}")
            group.append(groups.pop())
        return f"{app.conf.id}-{group[0]}-{partition}"

    return transactional_id


def _connection(consumer: AIOKafkaConsumer) -> tuple[str, dict[str, Any]]:
    """Bootstrap servers and security settings of ``consumer``: a probe connects like the
    consumer it checks (SASL/TLS on a secured cluster)."""
    client = consumer._client
    return client._bootstrap_servers, {
        "security_protocol": client._security_protocol,
        "ssl_context": client._ssl_context,
        "sasl_mechanism": client._sasl_mechanism,
        "sasl_plain_username": client._sasl_plain_username,
        "sasl_plain_password": client._sasl_plain_password,
    }


async def first_offsets(
    consumer: AIOKafkaConsumer, wanted: Mapping[TopicPartition, int], timeout: float = 5.0
) -> dict[TopicPartition, int]:
    """For each partition, the first offset the broker holds at or after the wanted one (its
    end offset when there is none). Tells a real gap in a partition's offsets (compaction,
    transaction markers) from a message lost on its way to the agent (``stream.kafka.offsets``):
    only a record the broker returns proves offsets before it absent. Partitions the probe
    could not read in ``timeout`` (or that end in offsets without records) are left out."""
    servers, security = _connection(consumer)
    # aiokafka asserts its own TopicPartition type; Faust's TP (a partition from its
    # assignment) compares and hashes equal, so the caller's keys still find the results.
    wanted = {TopicPartition(tp.topic, tp.partition): offset for tp, offset in wanted.items()}
    return await asyncio.get_running_loop().run_in_executor(
        None, lambda: asyncio.run(_first_offsets(servers, wanted, timeout, security))
    )


async def _first_offsets(
    servers: str,
    wanted: dict[TopicPartition, int],
    timeout: float,
    security: Mapping[str, Any],
) -> dict[TopicPartition, int]:
    async with _reader(servers, security, "shopscore-offset-probe", wanted) as probe:
        found: dict[TopicPartition, int] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(found) < len(wanted) and loop.time() < deadline:
            pending = [tp for tp in wanted if tp not in found]
            # Every record fetched, not a few: with a cap, one partition's records could fill
            # it and another's look absent.
            batch = await probe.getmany(*pending, timeout_ms=200)
            for tp in pending:
                records = batch.get(tp)
                if records:
                    found[tp] = records[0].offset
                elif (highwater := probe.highwater(tp)) is not None and highwater <= wanted[tp]:
                    found[tp] = highwater  # nothing at or after the wanted offset yet
        return found


@contextlib.asynccontextmanager
async def _reader(
    servers: str,
    security: Mapping[str, Any],
    client_id: str,
    positions: Mapping[TopicPartition, int],
) -> AsyncIterator[AIOKafkaConsumer]:
    """A group-less consumer assigned to ``positions`` and sought to them."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=servers,
        client_id=client_id,
        group_id=None,
        enable_auto_commit=False,
        **security,
    )
    await consumer.start()
    try:
        consumer.assign(list(positions))
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        yield consumer
    finally:
        await consumer.stop()


async def _probe(
    servers: str,
    listed: dict[TopicPartition, int],
    timeout: float,
    security: Mapping[str, Any] | None = None,
) -> dict[TopicPartition, int]:
    nonempty = {tp: end - 1 for tp, end in listed.items() if end > 0}
    async with _reader(servers, security or {}, "shopscore-end-offsets", nonempty) as probe:
        corrected = dict(listed)
        pending = set(nonempty)
        deadline = asyncio.get_running_loop().time() + timeout
        while pending and asyncio.get_running_loop().time() < deadline:
            await probe.getmany(*pending, timeout_ms=200, max_records=1)
            for tp in list(pending):
                highwater = probe.highwater(tp)
                if highwater is not None:
                    corrected[tp] = max(listed[tp], highwater)
                    pending.discard(tp)
        return corrected


#: How long a fetch may wait for data. Faust fixes 1.5 s, and the embedded broker answers a
#: fetch only when that wait ends, not when data arrives: every event would wait up to 1.5 s
#: (and a caught-up partition's high watermark would be that stale for the event-time
#: aligner). 50 ms costs a few idle requests a second.
FETCH_MAX_WAIT_MS = 50


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_consumer(self, loop: asyncio.AbstractEventLoop) -> AIOKafkaConsumer:
        consumer = super()._create_consumer(loop=loop)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by its Fetcher at start()
        return consumer

    async def _highwaters(self, partitions: list[TopicPartition]) -> Mapping[TopicPartition, int]:
        if self.consumer.in_transaction:
            return await super()._highwaters(partitions)
        return await true_end_offsets(self._ensure_consumer(), partitions)


class _Consumer(faust_aiokafka.Consumer):
    #: Exactly-once: the worker's batch lock. A commit (offsets into each partition's
    #: transaction, then its end) waits for the batch in progress, so a transaction holds
    #: whole batches: never a batch's outputs without the acks that follow them.
    commit_lock: asyncio.Lock | None = None

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        async with self.commit_lock or contextlib.nullcontext():
            return await super().commit(topics, start_new_transaction)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover
        """Faust's loop that hands fetched messages to the streams (faust-streaming 0.15.3,
        ``faust.transport.consumer.Consumer._drain_messages``), with two changes: a message is
        delivered with a plain ``await`` while the flow is not suspended, and a full stream
        buffer is waited on until it is half empty before delivering into it.

        Faust races every delivery against ``suspend_flow`` with ``Service.wait_first``: three
        futures, a task and ``asyncio.wait`` per message, 31 µs measured here, about 40% of the
        whole consume-only path. The race only matters when a delivery blocks (a full stream
        buffer) and a rebalance starts meanwhile; deliveries that start with the flow suspended
        still race it. A delivery that blocks before the flow is suspended completes when the
        streams drain their buffers, which they do during a rebalance too (skipping stale
        messages, as Faust does with messages its race let through).

        Under a backlog the stream buffer (``stream_buffer_maxsize``) is full whenever a batch
        is being processed, and Faust's conductor then hands over every message with a task
        and ``asyncio.wait`` as soon as one slot frees: 5-6% of the worker's main thread at
        saturation, measured. Waiting here until the buffer is half empty lets the next half
        buffer of messages take the conductor's ``put_nowait`` path.
        """
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        suspended = self.suspend_flow.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        yield_every = 100
        # The conductor's channels (stream buffers) per partition: Faust keeps no public map.
        channels_of = self.app.topics._tp_index.get
        num_since_yield = 0
        sleep = asyncio.sleep
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0
                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            if gap > 1 and r_offset and acks_enabled_for(message.topic):
                                await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None and self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                            if suspended():
                                await self.wait_first(callback(message), self.suspend_flow.wait())
                            else:
                                for channel in channels_of(tp, ()):
                                    if channel.queue.full():
                                        await self._wait_for_room(channel.queue)
                                await callback(message)
                            set_read_offset(tp, offset)
                    unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    async def _wait_for_room(self, queue: asyncio.Queue[Any], poll_s: float = 0.002) -> None:
        """Until ``queue`` is at most half full (or the flow is suspended, or the consumer
        stops): polled, as the streams drain it in batches."""
        low = queue.maxsize // 2
        suspended = self.suspend_flow.is_set
        while queue.qsize() > low and not (suspended() or self.should_stop):
            await asyncio.sleep(poll_s)


class _Producer(faust_aiokafka.Producer):
    """Faust's producer whose ``flush`` returns only when nothing sent before it is pending
    (see module docstring, "Flush before commit"), and raises once any send has failed.

    A failed send poisons the producer. Faust commits consumer offsets only after a producer
    flush; a record that could not be produced (``MessageSizeTooLargeError`` for one over
    ``max_request_size``, or a send that failed at the broker) makes every later ``flush``
    raise, so no offset is committed past the input that produced it: the consumer crashes,
    the worker exits non-zero, and after a restart that input is read again. Faust alone only
    logs a warning (or crashes after committing), and the record is lost.
    """

    #: How often a flush that makes no progress says so (it keeps waiting: committing
    #: offsets before their writes are produced would lose them on a crash).
    STALL_WARNING_S = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handing_over = 0
        #: The first send that failed; once set, ``flush`` (so every commit) raises it.
        self.failure: BaseException | None = None
        send_pending = self.buffer._send_pending

        async def _send_pending(fut: Any) -> None:
            # Bound before the buffer's sender task starts, which looks the method up once.
            self.handing_over += 1
            try:
                await send_pending(fut)
            finally:
                self.handing_over -= 1

        self.buffer._send_pending = _send_pending  # type: ignore[method-assign]

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
        *,
        transactional_id: str | None = None,
    ) -> Any:
        size = len(key or b"") + len(value or b"")
        try:
            fut = await super().send(
                topic,
                key,
                value,
                partition,
                timestamp,
                headers,
                transactional_id=transactional_id,
            )
        except Exception as exc:
            self._poison(exc, topic, size)
            raise
        fut.add_done_callback(lambda done: self._delivered(done, topic, size))
        return fut

    def _delivered(self, fut: asyncio.Future[Any], topic: str, size: int) -> None:
        if fut.cancelled():
            self._poison(asyncio.CancelledError("send cancelled"), topic, size)
        elif (exc := fut.exception()) is not None:
            self._poison(exc, topic, size)

    def _poison(self, exc: BaseException, topic: str, size: int) -> None:
        if self.failure is None:
            self.failure = exc
            log.critical(
                "producing a record of %d bytes to %s failed: %r. No consumer offset is "
                "committed from now on; the worker stops, and reads the input again after a "
                "restart",
                size,
                topic,
                exc,
            )

    def check(self) -> None:
        """Raise ``ProducerSendError`` if a send has failed (see the class docstring)."""
        if self.failure is not None:
            raise ProducerSendError(
                f"not committing offsets: a record could not be produced ({self.failure!r})"
            ) from self.failure

    async def flush(self) -> None:
        self.check()
        buffer = self.buffer
        stalled_since = time.monotonic()
        while buffer.size or self.handing_over:
            self.check()
            if buffer.state != "running":
                raise RuntimeError("Cannot flush: the producer buffer is not running")
            buffer.message_sent.clear()
            try:
                await asyncio.wait_for(buffer.message_sent.wait(), timeout=1.0)
                stalled_since = time.monotonic()
            except asyncio.TimeoutError:
                if time.monotonic() - stalled_since >= self.STALL_WARNING_S:
                    log.warning(
                        "producer flush: %d messages pending, none sent for %.0f s "
                        "(broker unreachable?); offsets are not committed until they are",
                        buffer.size + self.handing_over,
                        time.monotonic() - stalled_since,
                    )
                    stalled_since = time.monotonic()
        self.check()
        await super().flush()
        await asyncio.sleep(0)  # the failed sends' done callbacks run
        self.check()


def install() -> None:
    """Make Faust's Kafka transport use the corrected end offsets and the draining producer
    flush (idempotent)."""
    faust_aiokafka.Transport.Consumer = _Consumer
    faust_aiokafka.Transport.Producer = _Producer
