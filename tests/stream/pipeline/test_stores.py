"""A batch's view of the tables, and writes held in their changelog form (``stream.pipeline.stores``)."""

from __future__ import annotations

from stream.pipeline.stores import BatchView, Packed, Stores
from stream.scoring.state import UserScores


def test_packed_writes_read_back_decoded_and_apply_decoded() -> None:
    stores = Stores.in_memory()
    stores.scores[b"old"] = UserScores(last_offer_ts=1)
    view = BatchView(stores)
    view.put("scores", 0, b"u1", UserScores(last_offer_ts=5))
    view.put("scores", 0, b"gone", None)
    view.put("clock", 0, b"0", 7)
    view.pack("scores", [b"u1", b"gone", b"old"], UserScores.to_bytes, UserScores.from_bytes)

    writes = {(w.table, w.key): w.value for w in view.writes()}
    packed = writes["scores", b"u1"]
    assert isinstance(packed, Packed) and packed.data == UserScores(last_offer_ts=5).to_bytes()
    assert writes["scores", b"gone"] is None and writes["clock", b"0"] == 7  # others untouched
    assert view.get("scores", b"u1") == UserScores(last_offer_ts=5)  # a decoded copy
    assert view.get("scores", b"old") == UserScores(last_offer_ts=1)  # not written: the store's
    # Changed after the pack, the value is put again and held as an object until the next one.
    scores = view.get("scores", b"u1")
    scores.last_offer_ts = 9
    view.put("scores", 0, b"u1", scores)
    assert view.get("scores", b"u1") is scores

    stores.apply(view.writes())
    assert stores.scores[b"u1"] == UserScores(last_offer_ts=9) and b"gone" not in stores.scores
    view = BatchView(stores)
    view.put("scores", 0, b"u2", UserScores(last_offer_ts=3))
    view.pack("scores", [b"u2"], UserScores.to_bytes, UserScores.from_bytes)
    stores.apply(view.writes())
    assert stores.scores[b"u2"] == UserScores(last_offer_ts=3)  # dict stores get objects
