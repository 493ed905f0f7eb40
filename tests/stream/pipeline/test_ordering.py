"""The event-time aligner: ordered release across topics, caught-up topics, stalls."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream.pipeline.ordering import EventTimeAligner

TOPICS = ("clicks", "carts", "orders")


def backlog(*lagging: str):
    return lambda topic, partition: topic not in lagging


def test_a_topic_ahead_waits_for_the_one_behind() -> None:
    a = EventTimeAligner(TOPICS, max_hold_s=10)
    a.push("orders", 0, ts=500, item="o500", now=0)
    a.push("clicks", 0, ts=100, item="c100", now=0)
    assert a.release(backlog("clicks"), now=1) == ["c100"]
    assert len(a) == 1
    a.push("clicks", 0, ts=600, item="c600", now=2)
    assert a.release(backlog("clicks"), now=3) == ["o500", "c600"]


def test_caught_up_topics_do_not_hold_anything_back() -> None:
    a = EventTimeAligner(TOPICS, max_hold_s=10)
    a.push("orders", 0, ts=500, item="o", now=0)
    assert a.release(backlog(), now=0) == ["o"]


def test_unknown_topic_holds_until_max_hold_then_releases() -> None:
    a = EventTimeAligner(TOPICS, max_hold_s=1)
    a.push("orders", 0, ts=500, item="o", now=0)
    unknown = lambda topic, partition: None if topic == "clicks" else True  # noqa: E731
    assert a.release(unknown, now=0.5) == []
    assert a.release(unknown, now=1.5) == ["o"]


def test_a_stalled_topic_stops_holding_others_but_a_slow_one_does_not() -> None:
    a = EventTimeAligner(TOPICS, max_hold_s=1)
    a.push("clicks", 0, ts=100, item="c100", now=0)
    a.push("orders", 0, ts=500, item="o500", now=0)
    unknown = lambda topic, partition: None if topic == "clicks" else True  # noqa: E731
    assert a.release(unknown, now=0.5) == ["c100"]
    a.push("clicks", 0, ts=200, item="c200", now=0.9)  # slow but moving
    assert a.release(unknown, now=1.5) == ["c200"]
    assert a.release(unknown, now=3.0) == ["o500"]  # no clicks for >1s: stalled


def test_a_topic_known_to_have_more_data_holds_however_long_it_takes() -> None:
    # A busy worker may not read a partition for many seconds; its data is on the broker.
    a = EventTimeAligner(TOPICS, max_hold_s=1)
    a.push("clicks", 0, ts=100, item="c100", now=0)
    a.push("orders", 0, ts=500, item="o500", now=0)
    assert a.release(backlog("clicks"), now=0.5) == ["c100"]
    assert a.release(backlog("clicks"), now=60.0) == []
    a.push("clicks", 0, ts=600, item="c600", now=61.0)
    assert a.release(backlog("clicks"), now=61.0) == ["o500", "c600"]


def test_a_partition_held_too_long_is_reported_with_what_holds_it() -> None:
    a = EventTimeAligner(TOPICS, max_hold_s=1)
    a.push("orders", 2, ts=500, item="o500", now=0)
    a.push("orders", 2, ts=600, item="o600", now=20)
    a.push("orders", 1, ts=500, item="o1", now=20)
    assert a.release(backlog("carts"), now=25) == []
    assert a.stalled(backlog("carts"), now=25, after_s=30) == []
    assert a.stalled(backlog("carts"), now=31, after_s=30) == [(2, ["carts"], 2)]


def test_partitions_are_independent_and_revocation_returns_held_items() -> None:
    a = EventTimeAligner(TOPICS, max_hold_s=10)
    a.push("orders", 0, ts=500, item="p0", now=0)
    a.push("clicks", 0, ts=10, item="p0c", now=0)
    a.push("orders", 1, ts=500, item="p1", now=0)
    # Partition 1 has no clicks yet while clicks has a backlog: it waits; partition 0 does not.
    assert a.release(backlog("clicks"), now=0) == ["p0c"]
    assert a.forget_partitions({0}) == ["p0"]
    assert len(a) == 1


@given(st.lists(st.tuples(st.sampled_from(TOPICS), st.integers(0, 10_000)), min_size=1))
def test_releases_in_event_time_order_when_topics_arrive_in_order(pushes) -> None:
    # Each topic's own events arrive in ts order (as within one Kafka partition).
    per_topic = {t: sorted(ts for topic, ts in pushes if topic == t) for t in TOPICS}
    a = EventTimeAligner(TOPICS, max_hold_s=1e9)
    out: list[int] = []
    cursors = dict.fromkeys(TOPICS, 0)
    order = [topic for topic, _ in pushes]
    for step, topic in enumerate(order):
        ts = per_topic[topic][cursors[topic]]
        cursors[topic] += 1
        a.push(topic, 0, ts=ts, item=ts, now=step)
        remaining = {t for t in TOPICS if cursors[t] < len(per_topic[t])}
        out += a.release(lambda t, p, r=remaining: t not in r, now=step)
    out += a.drain()
    assert out == sorted(out) and len(out) == len(pushes)


def test_a_caught_up_topic_vouches_only_for_events_fetched_before_its_watermark() -> None:
    # clicks looked caught up at fetch time 100 ms; an order fetched at 150 ms may be ahead of
    # clicks the broker already had at 150 ms, so it waits for a fresher clicks fetch.
    a = EventTimeAligner(TOPICS, max_hold_s=10, fresh_wait_s=2)
    a.push("orders", 0, ts=500, item="o", now=0, fetched_ms=150)
    stale = lambda topic, partition: 100.0 if topic == "clicks" else True  # noqa: E731
    assert a.release(stale, now=0.1) == []
    fresh = lambda topic, partition: 150.0 if topic == "clicks" else True  # noqa: E731
    assert a.release(fresh, now=0.2) == ["o"]


def test_a_stale_watermark_delays_by_at_most_fresh_wait() -> None:
    a = EventTimeAligner(TOPICS, max_hold_s=10, fresh_wait_s=2)
    a.push("orders", 0, ts=500, item="o", now=0, fetched_ms=150)
    stale = lambda topic, partition: 100.0 if topic == "clicks" else True  # noqa: E731
    assert a.release(stale, now=1.9) == []
    assert a.release(stale, now=2.1) == ["o"]
