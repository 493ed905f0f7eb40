"""One user's scoring state (``UserScores``): their latest published scores and the predictions
still waiting for a label, kept beside their feature state in a changelog-backed table.

Its changelog form is a JSON array (format 1) compressed with zstd and a dictionary trained on
such arrays (``stream.packing``), behind the byte 2: about a quarter of the JSON's size; plain
format-1 records are still read.

It is read back from a changelog topic anyone with write access to the broker can write to, so
``UserScores.from_bytes`` checks every field's type and bounds and returns a well-formed object
or raises ``CorruptState``, never another exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from stream import packing, strict
from stream.features.schema import FEATURE_NAMES
from stream.scoring.offers import DEFAULT_ARMS

__all__ = ["MAX_SCORES_BYTES", "UserScores"]

_USER_FORMAT = 1
#: The first byte of a compressed record (a JSON array never starts with it).
_PACKED = b"\x02"

#: The largest scoring state record read back.
MAX_SCORES_BYTES = 8 * 2**20


@dataclass
class UserScores:
    """One user's latest published scores and the predictions still waiting for a label."""

    #: Output topic -> the last message published there for this user.
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Churn predictions awaiting their label: ``[ts, vector, p_onnx, ordered, btyd, said]``
    #: (``pending.PendingChurn``).
    churn_pending: list[Any] = field(default_factory=list)
    #: The last interest ranking: ``{"ranked": [...], "candidates": {cat: {feature: v}}}``.
    interest_pending: dict[str, Any] | None = None
    #: The offer shown and not yet rewarded: ``{"ts", "arm", "propensity", "context"}``.
    offer_pending: dict[str, Any] | None = None
    last_offer_ts: int | None = None

    def to_bytes(self) -> bytes:
        """The changelog form: ``to_json`` compressed."""
        return _PACKED + packing.pack(self.to_json(), packing.SCORES_DICTIONARY)

    def to_json(self) -> bytes:
        """The format-1 JSON array the changelog form compresses."""
        return orjson.dumps(
            [
                _USER_FORMAT,
                self.latest,
                [list(p) for p in self.churn_pending],
                self.interest_pending,
                self.offer_pending,
                self.last_offer_ts,
            ]
        )

    @staticmethod
    def is_packed(data: bytes) -> bool:
        """Whether ``data`` has the shape of ``to_bytes``' form (not inflated to tell)."""
        return len(data) <= MAX_SCORES_BYTES and packing.is_packed(data, _PACKED)

    @classmethod
    def from_bytes(cls, data: bytes) -> UserScores:
        """The ``UserScores`` that ``to_bytes`` wrote, or ``CorruptState``: every field's type
        and bounds are checked (a pending churn vector has ``len(FEATURE_NAMES)`` numbers, an
        offer's arm is a known arm...), so a forged record cannot crash scoring later.

        >>> UserScores.from_bytes(UserScores(last_offer_ts=5).to_bytes()).last_offer_ts
        5
        >>> UserScores.from_bytes(b"[1, {}, 5]")
        Traceback (most recent call last):
        ...
        stream.errors.CorruptState: scoring state: expected 6 fields, got 3
        """
        return strict.decoded("scoring state", _decode_scores, data)


_MAX_TOPICS = 64
_MAX_FEATURES = 64
_MAX_PENDING = 10_000
_MAX_CANDIDATES = 100_000


def _decode_scores(data: Any) -> UserScores:
    if isinstance(data, bytes | bytearray | memoryview) and data[:1] == _PACKED:
        if len(data) > MAX_SCORES_BYTES:
            raise strict.fail(f"{len(data)} bytes > {MAX_SCORES_BYTES}")
        data = packing.unpack(bytes(data[1:]), MAX_SCORES_BYTES)
    fields = strict.versioned_array(
        data, max_bytes=MAX_SCORES_BYTES, formats=(_USER_FORMAT,), fields=6
    )
    _fmt, latest, churn, interest, offer, last_offer = fields
    for topic, message in strict.need_dict(latest, "latest", _MAX_TOPICS).items():
        strict.need_str(topic, "latest topic", 256)
        strict.need_json(strict.need_dict(message, "latest message", 1_000), "latest message")
    for entry in strict.need_list(churn, "churn_pending", _MAX_PENDING):
        _check_pending_churn(entry)
    if interest is not None:
        _check_pending_interest(interest)
    if offer is not None:
        _check_pending_offer(offer)
    return UserScores(latest, churn, interest, offer, strict.opt_int(last_offer, "last_offer_ts"))


def _check_pending_churn(entry: Any) -> None:
    strict.need_list(entry, "a pending churn prediction", 6)
    if len(entry) < 3:
        raise strict.fail("a pending churn prediction needs 3 to 6 fields")
    strict.need_int(entry[0], "pending churn ts", 0, strict.MAX_TS)
    vector = strict.need_list(entry[1], "pending churn vector", length=len(FEATURE_NAMES))
    strict.need_nums(vector, "a pending churn feature")
    strict.need_num(entry[2], "pending churn p_onnx", 0.0, 1.0)
    if len(entry) >= 4:
        strict.need_bool(entry[3], "pending churn ordered")
    if len(entry) >= 5 and entry[4] is not None:
        churn, alive, orders = strict.need_list(entry[4], "pending churn BTYD view", length=3)
        strict.need_num(churn, "pending churn BTYD churn", 0.0, 1.0)
        strict.need_num(alive, "pending churn BTYD P(alive)", 0.0, 1.0)
        strict.need_num(orders, "pending churn BTYD expected orders", 0.0)
    if len(entry) == 6 and entry[5] is not None:
        said = strict.need_list(entry[5], "pending churn figures said", length=2)
        strict.need_nums(said, "a pending churn figure said", 0.0, 1.0)


def _check_features(value: Any, name: str) -> None:
    features = strict.need_dict(value, name, _MAX_FEATURES)
    for key in features:  # a JSON object's keys are strings: only their length is checked
        strict.need_str(key, f"{name} key", 256)
    strict.need_nums(features.values(), name)


def _check_pending_interest(value: Any) -> None:
    pending = strict.need_dict(value, "interest_pending", 3)
    if not {"ranked", "candidates"} <= set(pending) <= {"ts", "ranked", "candidates"}:
        raise strict.fail("interest_pending needs ranked and candidates (and ts)")
    strict.opt_int(pending.get("ts"), "interest_pending ts")
    for category in strict.need_list(pending["ranked"], "ranked", 1_000):
        strict.need_str(category, "a ranked category")
    candidates = strict.need_dict(pending["candidates"], "candidates", _MAX_CANDIDATES)
    for category, features in candidates.items():
        strict.need_str(category, "a candidate category")
        _check_features(features, "candidate features")


def _check_pending_offer(value: Any) -> None:
    offer = strict.need_dict(value, "offer_pending", 5)
    if not {"ts", "arm", "propensity", "context"} <= set(offer) <= {
        "ts", "arm", "propensity", "context", "cost",
    }:  # fmt: skip
        raise strict.fail("offer_pending needs ts, arm, propensity and context (and cost)")
    strict.need_int(offer["ts"], "offer ts", 0, strict.MAX_TS)
    if offer["arm"] not in DEFAULT_ARMS:
        raise strict.fail("offer_pending names an unknown arm")
    strict.need_num(offer["propensity"], "offer propensity", 0.0, 1.0)
    _check_features(offer["context"], "offer context")
    if "cost" in offer:
        strict.need_num(offer["cost"], "offer cost")
