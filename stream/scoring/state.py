"""What scoring keeps: per user (latest scores, predictions awaiting their labels) and per
partition (the online learners), both small enough for a changelog-backed table.

Per-user scoring state lives beside, not inside, the feature state: a feature state is a
function of the events alone (replayable, comparable with offline training), while this one
also depends on which model versions scored the user.

Learners are kept per input partition. A partition's users, their pending labels and the
learners that learn from them move together on a rebalance, so no learner ever needs data
from another worker, and the changelog restores each one with its partition.

Both are read back from changelog topics, which anyone with write access to the broker can
write to, so both decoders are strict: ``UserScores.from_bytes`` checks every field's type and
bounds, and ``Learners.from_bytes`` never runs code (``stream.scoring.safe_pickle``), checks an
HMAC-SHA256 signature when a secret is configured (``SHOPSCORE_STATE_SECRET``), and checks the
loaded learners' shape against fresh ones. Either returns a well-formed object or raises
``CorruptState``, never another exception.

Learners checkpoint format (``Learners.to_bytes``)::

    b"SSLEARN2" b"U" <pickle>            unsigned (no secret configured)
    b"SSLEARN2" b"S" <32-byte HMAC> <pickle>   signed: HMAC-SHA256(secret, b"SSLEARN2S" + pickle)

where the pickle is ``(2, learners.__dict__)``. A checkpoint written before this format (a bare
pickle of ``(1, __dict__)``) is still read, through the same restricted unpickler, when no
secret is configured; with a secret, only a correctly signed checkpoint is read.

``UserScores`` and its decoder live in ``stream.scoring.user_scores``, the shape checks behind
``Learners.from_bytes`` in ``stream.scoring.learner_checks``; both names are re-exported here.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle
from typing import Any

from stream import strict
from stream.errors import CorruptState
from stream.models.popularity import ItemPopularity
from stream.scoring import chunked, safe_pickle
from stream.scoring.cooccurrence import CoOccurrence
from stream.scoring.learner_checks import check_learners
from stream.scoring.offers import OfferPolicy
from stream.scoring.online_btyd import BtydExpert
from stream.scoring.online_churn import ChurnBlend
from stream.scoring.online_interest import InterestBlend
from stream.scoring.tiers import SpendTiers
from stream.scoring.user_scores import MAX_SCORES_BYTES, UserScores

__all__ = ["MAX_LEARNERS_BYTES", "MAX_SCORES_BYTES", "Learners", "UserScores"]

#: Inside the ``SSLEARN2`` envelope; 1 is the bare pickle written before it.
_LEARNERS_FORMAT = 2
_LEGACY_LEARNERS_FORMAT = 1
_MAGIC = b"SSLEARN2"
_SIGNED = b"S"
_UNSIGNED = b"U"
_MAC_BYTES = hashlib.sha256().digest_size

#: The largest learners checkpoint read back (what ``stream.scoring.chunked`` inflates at most).
MAX_LEARNERS_BYTES = chunked.MAX_VALUE_BYTES


#: Learners added after checkpoints were first written: an older checkpoint without them is
#: read, and they start afresh.
_ADDED_LATER = {"btyd"}


def _mac(secret: str, signed: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).digest()


class Learners:
    """The online learners of one partition."""

    def __init__(self, seed: int = 0) -> None:
        self.churn = ChurnBlend(seed=seed)
        self.interest = InterestBlend(seed=seed)
        self.cooccurrence = CoOccurrence()
        self.popularity = ItemPopularity()
        self.offers = OfferPolicy(seed=seed)
        self.tiers = SpendTiers()
        self.btyd = BtydExpert()
        #: Labels learned since the last checkpoint to the changelog.
        self.dirty = 0

    def to_bytes(self, secret: str | None = None) -> bytes:
        """The checkpoint (see the module docstring): a pickle in a versioned envelope, signed
        with HMAC-SHA256 when ``secret`` is given."""
        self.dirty = 0
        body = pickle.dumps((_LEARNERS_FORMAT, self.__dict__), protocol=pickle.HIGHEST_PROTOCOL)
        if not secret:
            return _MAGIC + _UNSIGNED + body
        head = _MAGIC + _SIGNED
        return head + _mac(secret, head + body) + body

    @classmethod
    def from_bytes(cls, data: bytes, secret: str | None = None) -> Learners:
        """The learners ``to_bytes`` wrote, or ``CorruptState``. Reading never runs code (only
        the globals of ``safe_pickle.ALLOWED`` resolve). With ``secret``, only a checkpoint
        signed with it is read; without, a signed or unsigned one is read (the signature
        cannot be checked). The result is checked against fresh ``Learners``: the same
        attributes, of the same types, down to the River estimators inside, and the River
        learners are exercised on a copy, so a forged but loadable checkpoint is refused
        here rather than failing a batch later."""
        try:
            return cls._from_bytes(data, secret)
        except CorruptState:
            raise
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # a safety net (Rust panics included)
            raise CorruptState("learners checkpoint", f"unusable: {exc!r}"[:300]) from None

    @classmethod
    def _from_bytes(cls, data: Any, secret: str | None) -> Learners:
        what = "learners checkpoint"
        if not isinstance(data, bytes | bytearray):
            raise CorruptState(what, f"not bytes ({type(data).__name__})")
        if len(data) > MAX_LEARNERS_BYTES:
            raise CorruptState(what, f"{len(data)} bytes > {MAX_LEARNERS_BYTES}")
        data = bytes(data)
        if data.startswith(_MAGIC):
            mode = data[len(_MAGIC) : len(_MAGIC) + 1]
            head = len(_MAGIC) + 1
            if mode == _SIGNED:
                mac, body = data[head : head + _MAC_BYTES], data[head + _MAC_BYTES :]
                if len(mac) != _MAC_BYTES:
                    raise CorruptState(what, "truncated signature")
                if secret and not hmac.compare_digest(mac, _mac(secret, data[:head] + body)):
                    raise CorruptState(what, "bad signature (another secret, or forged)")
            elif mode == _UNSIGNED:
                if secret:
                    raise CorruptState(what, "unsigned, and SHOPSCORE_STATE_SECRET is set")
                body = data[head:]
            else:
                raise CorruptState(what, f"unknown envelope mode {mode!r}")
            expected = _LEARNERS_FORMAT
        elif data[:1] == b"\x80":  # a bare pickle: the format before the envelope
            if secret:
                raise CorruptState(what, "unsigned (old format), and SHOPSCORE_STATE_SECRET is set")
            body, expected = data, _LEGACY_LEARNERS_FORMAT
        else:
            raise CorruptState(what, "not a learners checkpoint")
        loaded = safe_pickle.loads(body)
        if type(loaded) is not tuple or len(loaded) != 2 or type(loaded[0]) is not int:
            raise CorruptState(what, "not a learners record")
        if loaded[0] != expected:
            raise CorruptState(what, f"not a format-{expected} learners record")
        attrs = loaded[1]
        reference = cls()
        if type(attrs) is dict and set(reference.__dict__) - set(attrs) == _ADDED_LATER:
            attrs = {**attrs, "btyd": reference.btyd}  # a checkpoint from before the expert
        if type(attrs) is not dict or set(attrs) != set(reference.__dict__):
            raise CorruptState(what, "not the attributes of Learners")
        for name, value in reference.__dict__.items():
            if type(attrs[name]) is not type(value):
                raise CorruptState(
                    what, f"{name} is a {type(attrs[name]).__name__}, not a {type(value).__name__}"
                )
        learners = cls.__new__(cls)
        learners.__dict__.update(attrs)
        strict.need_int(learners.dirty, "dirty")
        try:
            check_learners(learners, reference)
        except CorruptState as exc:
            raise CorruptState(what, exc.detail) from None
        return learners
