"""Offset continuity: a message skipped before reaching the agent is read again, never lost."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.kafka.offsets import LogReset, OffsetContinuity, Verdict, check_log_end


def test_contiguous_offsets_are_taken() -> None:
    c = OffsetContinuity()
    assert [c.check("p", o, now=0) for o in range(3)] == [Verdict.TAKE] * 3
    assert c.expected("p") == 3


def test_a_gap_asks_for_one_rewind_and_the_reread_fills_it() -> None:
    c = OffsetContinuity()
    for offset in (30, 31, 32, 33, 34):
        assert c.check("p", offset, now=0) is Verdict.TAKE
    # 35 was dropped between the fetch and the agent (Faust's queue clear on resume).
    assert c.check("p", 36, now=0) is Verdict.REWIND
    # The rest of the fetch made before the seek: skipped, no second seek.
    assert c.check("p", 37, now=0.01) is Verdict.WAIT
    assert c.expected("p") == 35
    # After the seek: 35 onwards, in order.
    assert [c.check("p", o, now=0.05) for o in (35, 36, 37)] == [Verdict.TAKE] * 3
    assert c.accepted == []


def test_a_rewind_is_repeated_when_the_reread_does_not_come() -> None:
    c = OffsetContinuity(retry_s=1.0)
    c.check("p", 0, now=0)
    assert c.check("p", 2, now=0) is Verdict.REWIND
    assert c.check("p", 3, now=0.5) is Verdict.WAIT
    assert c.check("p", 2, now=1.5) is Verdict.REWIND


def test_re_reads_after_a_seek_are_seen_not_taken() -> None:
    c = OffsetContinuity()
    for offset in range(5):
        c.check("p", offset, now=0)
    assert [c.check("p", o, now=0) for o in (0, 3, 4)] == [Verdict.SEEN] * 3
    assert c.check("p", 5, now=0) is Verdict.TAKE


def test_the_first_message_must_start_at_the_committed_offset() -> None:
    c = OffsetContinuity()
    assert c.check("p", 12, committed=10, now=0) is Verdict.REWIND
    assert c.expected("p") == 10
    assert c.check("p", 10, committed=10, now=0) is Verdict.TAKE
    # Reading from before the committed offset (a reset to earliest) is fine.
    assert OffsetContinuity().check("q", 3, committed=10, now=0) is Verdict.TAKE


def test_a_gap_the_broker_confirms_is_accepted() -> None:
    c = OffsetContinuity(retry_s=1.0)
    c.check("p", 0, now=0)
    assert c.check("p", 5, now=0) is Verdict.REWIND
    c.accept("p", 5)  # the broker's first offset at or after 1 is 5
    assert c.accepted == [("p", 1, 5)]
    assert c.expected("p") == 5
    assert c.check("p", 5, now=0.1) is Verdict.TAKE
    c.accept("p", 3)  # behind what is expected: nothing to accept
    assert c.expected("p") == 6


def test_partitions_are_independent_and_forgotten_on_revocation() -> None:
    c = OffsetContinuity()
    c.check("a", 0, now=0)
    c.check("b", 100, now=0)
    assert c.check("a", 1, now=0) is Verdict.TAKE
    c.forget(["b"])
    assert c.expected("b") is None
    assert c.check("b", 7, now=0) is Verdict.TAKE


def test_a_revoked_partition_restarts_where_its_group_committed_not_at_a_stale_message() -> None:
    # A worker's partition is revoked with offsets 5.. uncommitted and assigned back to it;
    # messages fetched before the revocation (20, 21) still reach the agent.
    c = OffsetContinuity()
    for offset in range(5, 20):
        c.check("p", offset, committed=5, now=0)
    c.revoke(["p"])
    assert c.is_fenced("p")
    assert [c.check("p", o, now=1) for o in (20, 21)] == [Verdict.FENCED] * 2
    assert c.expected("p") is None
    # Once the committed offset is known, a stale message is a gap back to it, not a start.
    assert c.check("p", 22, committed=5, now=2) is Verdict.REWIND
    assert c.expected("p") == 5 and not c.is_fenced("p")
    assert [c.check("p", o, committed=5, now=3) for o in range(5, 8)] == [Verdict.TAKE] * 3


def test_a_revoked_partition_without_a_commit_restarts_at_the_log_start() -> None:
    c = OffsetContinuity()
    c.check("p", 0, now=0)
    c.check("p", 1, now=0)
    c.revoke(["p"])
    assert c.check("p", 2, now=1) is Verdict.FENCED  # where to restart is not known yet
    assert c.check("p", 2, now=1, start=0) is Verdict.REWIND
    assert c.check("p", 0, start=0, now=2) is Verdict.TAKE


def test_forgetting_a_partition_lifts_its_fence() -> None:
    c = OffsetContinuity()
    c.revoke(["p"])
    c.forget(["p"])
    assert c.check("p", 9, now=0) is Verdict.TAKE


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=40), st.floats(min_value=0, max_value=3)),
        min_size=1,
        max_size=200,
    ),
    st.sets(st.integers(min_value=0, max_value=40)),
)
def test_taken_offsets_never_skip_one_the_broker_holds(
    deliveries: list[tuple[int, float]], absent: set[int]
) -> None:
    """Whatever order offsets arrive in, with the broker answering each rewind as a broker
    holding every offset but ``absent`` would, what is taken is strictly increasing and
    skips only absent offsets."""
    c = OffsetContinuity()
    now = 0.0
    taken = []
    for offset, dt in deliveries:
        if offset in absent:
            continue  # the broker never delivers what it does not hold
        now += dt
        verdict = c.check("p", offset, now=now)
        if verdict is Verdict.TAKE:
            taken.append(offset)
        elif verdict is Verdict.REWIND:
            expected = c.expected("p")
            first = next(o for o in itertools.count(expected) if o not in absent)
            c.accept("p", first)
    assert taken == sorted(set(taken))
    holes = {o for a, b in itertools.pairwise(taken) for o in range(a + 1, b)}
    assert holes <= absent


def test_a_log_ending_below_what_was_taken_is_a_reset() -> None:
    with pytest.raises(LogReset) as raised:
        check_log_end("p", 15, 497, 388)
    assert (raised.value.tp, raised.value.expected, raised.value.end) == ("p", 497, 15)
    assert "ends at offset 15, below offset 497" in str(raised.value)


def test_a_committed_offset_past_the_end_is_only_to_be_forgotten() -> None:
    assert check_log_end("p", 15, None, 388) is False
    assert check_log_end("p", 15, 15, 388) is False


@given(
    end=st.integers(0, 1_000),
    taken=st.none() | st.integers(0, 1_000),
    committed=st.none() | st.integers(0, 1_000),
)
def test_an_intact_log_always_passes(end: int, taken: int | None, committed: int | None) -> None:
    # An intact log's end is at least every offset taken or committed from it.
    taken = None if taken is None else min(taken, end)
    committed = None if committed is None else min(committed, end)
    assert check_log_end("p", end, taken, committed) is True
    assert check_log_end("p", None, 10**9, 10**9) is True  # no fetch yet: nothing known
