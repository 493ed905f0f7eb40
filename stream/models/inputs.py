"""How a user's state becomes the models' input tensors: one definition for training and serving.

``offline_train`` builds its training sets with these functions and the scoring agents call the
very same ones on live state, so a model is always fed what it was trained on (design
principle 1, extended from features to tensors). Pure Python and numpy: no onnxruntime, no
TensorFlow, no Faust.

Catalogue identities (categories, items) are *hashed* into fixed vocabularies, so a shop whose
catalogue the models never saw still maps onto the same tensor shapes; ``0`` is reserved for
padding ("nothing here"), which keeps missing sequence positions explicit.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from stream.features.profile import Profile, ProfileConfig
from stream.models.popularity import ItemPopularity

__all__ = [
    "CART_LEN",
    "CATEGORY_BUCKETS",
    "ITEM_BUCKETS",
    "PAIR_FEATURES",
    "SEQ_LEN",
    "Candidates",
    "cart_candidates",
    "category_bucket",
    "category_sequence",
    "feature_matrix",
    "item_bucket",
    "rank_categories",
]

_NO_CONFIG = ProfileConfig()  # ``Profile.top_categories`` reads no knob of it

#: Length of the recent-category sequence fed to the interest model (``ProfileConfig.recent``).
SEQ_LEN = 20
#: Cart items fed to the recommendation model (the most recently added ones when more).
CART_LEN = 10
#: Hash vocabularies. Categories: few per shop, so collisions are rare; items: many, and an
#: item's bucket is only one of its inputs (popularity and affinity carry over anyway).
CATEGORY_BUCKETS = 256
ITEM_BUCKETS = 8192

#: Dense per-candidate inputs of the cart recommendation model, in order.
PAIR_FEATURES: tuple[str, ...] = (
    "log_popularity",  # log1p of the item's decayed add/order count in the shop
    "category_popularity_share",  # the item's share of its category's popularity
    "category_affinity_share",  # the user's decayed affinity share of the item's category
    "category_in_cart",  # 1 when a cart item has the same category
    "item_recent",  # 1 when the item is among the user's recent items
    "category_recent_share",  # share of the user's recent categories equal to the item's
    "category_is_last",  # 1 when the user's latest action was in the item's category
    "log_cart_items",  # log1p of the number of distinct items in the cart
)


def _bucket(text: str, buckets: int, salt: bytes) -> int:
    """Stable across processes and platforms (crc32, not ``hash``), never 0 (padding)."""
    return 1 + zlib.crc32(salt + text.encode("utf-8")) % (buckets - 1)


@functools.lru_cache(maxsize=4096)
def category_bucket(category: str) -> int:
    """The category's id in the interest/recs vocabulary.

    >>> category_bucket("books") == category_bucket("books"), 0 < category_bucket("x") < 256
    (True, True)
    """
    return _bucket(category, CATEGORY_BUCKETS, b"c:")


@functools.lru_cache(maxsize=65536)
def item_bucket(item_id: str) -> int:
    """The item's id in the recommendation vocabulary (1..ITEM_BUCKETS-1)."""
    return _bucket(item_id, ITEM_BUCKETS, b"i:")


def category_sequence(profile: Profile) -> list[int]:
    """The user's recent categories (``Profile.recent_categories``: clicks, cart adds and order
    lines, oldest first) as buckets, left-padded with 0 to ``SEQ_LEN``: newest is last.

    >>> p = Profile(recent_categories=["books", "music"])
    >>> seq = category_sequence(p)
    >>> len(seq), seq[:-2] == [0] * 18, seq[-1] == category_bucket("music")
    (20, True, True)
    """
    recent = profile.recent_categories[-SEQ_LEN:]
    return [0] * (SEQ_LEN - len(recent)) + [category_bucket(c) for c in recent]


def feature_matrix(vectors: Iterable[Sequence[float]]) -> np.ndarray:
    """``feature_vector`` rows as the models' ``features`` input (float32, ``[N, n_features]``)."""
    return np.asarray(list(vectors), dtype=np.float32)


def rank_categories(
    probs: np.ndarray, categories: Iterable[str], k: int = 5
) -> list[tuple[str, float]]:
    """The interest model's bucket probabilities (one row) read for named categories.

    ``categories`` are the names the caller can publish (e.g. the user's own categories and the
    shop's known ones); each gets its bucket's probability, renormalised over those names.

    >>> probs = np.zeros(CATEGORY_BUCKETS, np.float32)
    >>> probs[category_bucket("books")], probs[category_bucket("music")] = 0.6, 0.2
    >>> rank_categories(probs, ["music", "books", "toys"], k=2)
    [('books', 0.75), ('music', 0.25)]
    """
    names = sorted(set(categories))
    scored = [(c, float(probs[category_bucket(c)])) for c in names]
    total = sum(p for _c, p in scored)
    if total <= 0:
        return []
    scored.sort(key=lambda cp: (-cp[1], cp[0]))
    return [(c, round(p / total, 6)) for c, p in scored[:k]]


@dataclass(frozen=True)
class Candidates:
    """Candidate items for one cart and the recommendation model's rows for them."""

    items: tuple[str, ...]
    #: ``[n, 2]`` int32: item bucket, category bucket.
    candidate: np.ndarray
    #: ``[n, CART_LEN]`` int32: the cart's item buckets (0 = empty slot), same on every row.
    cart: np.ndarray
    #: ``[n, len(PAIR_FEATURES)]`` float32.
    pair: np.ndarray

    def inputs(self) -> dict[str, np.ndarray]:
        """The ``cart_recs`` model's input feed."""
        return {"candidate": self.candidate, "cart": self.cart, "pair": self.pair}


def cart_candidates(
    profile: Profile,
    popularity: ItemPopularity,
    at_ms: int,
    *,
    per_category: int = 10,
    top_categories: int = 3,
    global_top: int = 10,
    max_candidates: int = 50,
    extra_items: Sequence[str] = (),
) -> Candidates:
    """Items worth scoring for the user's cart: the most popular items of the cart's
    categories and of the user's top categories, the shop's most popular items, and the user's
    recent items; never what is already in the cart.

    Features are relative (shares, flags, log counts), so they mean the same in another shop.
    """
    in_cart = set(profile.cart)
    cart_items = sorted(in_cart)[:CART_LEN]
    cart_cats = {popularity.category_of(i) for i in in_cart} - {None}
    user_cats = [c for c, _s in profile.top_categories(at_ms, _NO_CONFIG, k=top_categories)]
    # ``extra_items`` (e.g. the online co-occurrence model's neighbours of the cart) come first.
    wanted: list[str] = [i for i in extra_items if i not in in_cart]
    for cat in [*sorted(cart_cats), *user_cats]:
        wanted += popularity.top(per_category, category=cat, exclude=in_cart)
    wanted += popularity.top(global_top, exclude=in_cart)
    wanted += [i for i in reversed(profile.recent_items) if i not in in_cart]
    items = tuple(dict.fromkeys(wanted))[:max_candidates]

    affinity = profile.affinity
    affinity_total = sum(sorted(affinity.values())) or 1.0
    recent_items = set(profile.recent_items)
    recent_cats = profile.recent_categories
    last_cat = recent_cats[-1] if recent_cats else None
    log_cart = math.log1p(len(in_cart))
    # Rows built as Python lists and converted once (a numpy row assignment per item cost
    # more than the features), with each category's figures worked out once.
    per_category: dict[str | None, tuple[int, float, float, float, float, float]] = {}
    cand_rows: list[tuple[int, int]] = []
    pair_rows: list[tuple[float, ...]] = []
    for item in items:
        cat = popularity.category_of(item)
        figures = per_category.get(cat)
        if figures is None:
            if cat is None:
                figures = (0, 0.0, 0.0, 0.0, 0.0, 0.0)
            else:
                figures = (
                    category_bucket(cat),
                    popularity.category_total(cat),
                    affinity.get(cat, 0.0) / affinity_total,
                    float(cat in cart_cats),
                    recent_cats.count(cat) / len(recent_cats) if recent_cats and cat else 0.0,
                    float(cat == last_cat),
                )
            per_category[cat] = figures
        bucket, category_total, affinity_share, in_cart_cat, recent_share, is_last = figures
        score = popularity.score(item)
        cand_rows.append((item_bucket(item), bucket))
        pair_rows.append(
            (
                math.log1p(score),
                score / category_total if cat is not None else 0.0,
                affinity_share,
                in_cart_cat,
                float(item in recent_items),
                recent_share,
                is_last,
                log_cart,
            )
        )
    cand = np.asarray(cand_rows, np.int32).reshape(len(items), 2)
    pair = np.asarray(pair_rows, np.float32).reshape(len(items), len(PAIR_FEATURES))
    cart_row = [item_bucket(i) for i in cart_items] + [0] * (CART_LEN - len(cart_items))
    cart = np.tile(np.asarray(cart_row, np.int32), (len(items), 1))
    return Candidates(items, cand, cart.reshape(len(items), CART_LEN), pair)
