"""Users held as changelog bytes and decoded on touch (``stream.worker.state_cache``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stream.features import UserState, encode_state
from stream.worker.state_cache import DecodedTable
from stream.worker.tables import decode_user


class _Table(dict):
    """A table's store as the cache sees it: ``get``, iteration, and the changelog hook."""

    def apply_changelog_batch(self, batch):
        for event in batch:
            self[event.key] = event.value


def _table(users: dict[str, UserState]) -> tuple[_Table, DecodedTable, list]:
    table = _Table({u.encode(): encode_state(s) for u, s in users.items()})
    rejected: list[tuple[bytes, str]] = []
    decoded = DecodedTable(table, decode_user, lambda k, p: rejected.append((k, p)), 2)
    return table, decoded, rejected


def test_a_user_is_decoded_once_then_served_from_the_cache() -> None:
    _, decoded, rejected = _table({"u1": UserState("u1", max_ts=5)})
    first = decoded.get(b"u1")
    assert first == UserState("u1", max_ts=5) and decoded.get(b"u1") is first
    assert decoded.take_misses() == 1 and decoded.get(b"nobody") is None
    assert list(decoded) == [b"u1"] and len(decoded) == 1 and not rejected


def test_the_cache_keeps_the_last_capacity_users_and_decodes_others_again() -> None:
    _, decoded, _ = _table({u: UserState(u) for u in ("a", "b", "c")})
    a = decoded.get(b"a")
    decoded.get(b"b")
    decoded.get(b"a")  # a is now the most recent
    decoded.get(b"c")  # evicts b
    assert decoded.cached == 2 and decoded.get(b"a") is a
    decoded.take_misses()
    assert decoded.get(b"b") == UserState("b") and decoded.take_misses() == 1


def test_a_write_is_remembered_and_a_deletion_forgotten() -> None:
    table, decoded, _ = _table({})
    state = UserState("u1", max_ts=9)
    table[b"u1"] = encode_state(state)
    decoded.remember(b"u1", state)
    assert decoded.get(b"u1") is state and decoded.take_misses() == 0
    del table[b"u1"]
    decoded.remember(b"u1", None)
    assert decoded.get(b"u1") is None


def test_an_undecodable_record_is_reported_and_read_as_absent() -> None:
    table, decoded, rejected = _table({"u1": UserState("u1")})
    table[b"impostor"] = encode_state(UserState("someone-else"))
    table[b"damaged"] = encode_state(UserState("damaged"))[:-3]
    assert decoded.get(b"impostor") is None and decoded.get(b"damaged") is None
    assert [key for key, _ in rejected] == [b"impostor", b"damaged"]
    assert "user_id is not its key" in rejected[0][1]


def test_recovery_replaces_what_the_cache_held() -> None:
    table, decoded, _ = _table({"u1": UserState("u1", max_ts=1)})
    decoded.follow_changelog()
    assert decoded.get(b"u1").max_ts == 1
    newer = SimpleNamespace(key=b"u1", value=encode_state(UserState("u1", max_ts=2)))
    table.apply_changelog_batch([newer])
    assert decoded.get(b"u1").max_ts == 2


def test_values_already_decoded_are_served_as_they_are() -> None:
    state = UserState("u1")
    table = _Table({b"u1": state})  # an older format, decoded at recovery
    decoded = DecodedTable(table, decode_user, lambda k, p: None)
    assert decoded.get(b"u1") is state and decoded.take_misses() == 0
    with pytest.raises(ValueError):
        DecodedTable(table, decode_user, lambda k, p: None, 0)


def test_after_a_rebalance_only_users_of_partitions_kept_stay_cached() -> None:
    _, decoded, _ = _table({u: UserState(u) for u in ("a", "b")})
    decoded.capacity = 10
    decoded.get(b"a")
    decoded.get(b"b")
    assert decoded.retain(lambda key: key == b"a") == 1
    assert decoded.cached == 1 and decoded.take_misses() == 2
    decoded.get(b"a")
    assert decoded.take_misses() == 0
