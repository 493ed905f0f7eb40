"""The four Keras models (functional API), small enough to train in seconds on two cores.

Each builder returns ``(train_model, serve_model)`` sharing layers: the training graph is what
the loss sees, the serving graph adds what only matters at inference (calibration, output
scale, named outputs) and is the one saved and exported. Every serving graph takes raw inputs
(``stream.models.inputs``) and does its own normalisation.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from offline_train.layers import (
    Column,
    CopyScores,
    FeatureNormalizer,
    LogitShift,
    MaskedMean,
    RecencyRankWeights,
    ScaledSoftplus,
)
from stream.features import FEATURE_NAMES
from stream.models.inputs import CART_LEN, CATEGORY_BUCKETS, ITEM_BUCKETS, PAIR_FEATURES, SEQ_LEN

__all__ = [
    "AGNOSTIC_COLUMNS",
    "MONETARY_FEATURES",
    "build_cart_recs",
    "build_churn",
    "build_interest",
    "build_purchase_power",
]

#: Amounts in the shop's currency and price level: meaningless in another shop.
MONETARY_FEATURES = frozenset(
    {
        "spend_1h",
        "spend_24h",
        "spend_7d",
        "spend_30d",
        "spend_total",
        "order_value_mean",
        "cart_value",
    }
)
#: Features whose meaning carries over between shops (counts, recencies, rhythms, shares).
AGNOSTIC_COLUMNS = [i for i, n in enumerate(FEATURE_NAMES) if n not in MONETARY_FEATURES]
ALL_COLUMNS = list(range(len(FEATURE_NAMES)))
N_FEATURES = len(FEATURE_NAMES)


def _features_input() -> Any:
    return keras.Input((N_FEATURES,), dtype="float32", name="features")


def _normalizer(x_train: np.ndarray, columns: list[int], name: str, log: bool = True) -> Any:
    mean, std = FeatureNormalizer.fit_stats(x_train[:, columns], log=log)
    return FeatureNormalizer(columns, mean, std, log=log, name=name)


def build_churn(x_train: np.ndarray, logit_shift: float) -> tuple[Any, Any]:
    """A small MLP over the shop-agnostic features only: churn is later judged on another
    retailer's order history, so nothing priced in this shop's currency goes in."""
    features = _features_input()
    x = _normalizer(x_train, AGNOSTIC_COLUMNS, "normalise")(features)
    h = keras.layers.Dense(32, activation="relu")(x)
    h = keras.layers.Dense(16, activation="relu")(h)
    logit = keras.layers.Dense(1, name="logit")(h)
    train = keras.Model(features, keras.layers.Activation("sigmoid")(logit), name="churn_train")
    served = keras.layers.Activation("sigmoid", name="churn_probability")(
        LogitShift(logit_shift, name="prior_correction")(logit)
    )
    return train, keras.Model(features, served, name="churn")


def build_purchase_power(x_train: np.ndarray, scale: float) -> tuple[Any, Any]:
    """An MLP regressor on all features (log-scaled); a softplus output keeps spend ≥ 0 and
    MSE makes it estimate the *expected* 30-day spend, in units of the training mean."""
    features = _features_input()
    x = _normalizer(x_train, ALL_COLUMNS, "normalise")(features)
    h = keras.layers.Dense(64, activation="relu")(x)
    h = keras.layers.Dense(32, activation="relu")(h)
    z = keras.layers.Dense(1, name="z")(h)
    train = keras.Model(features, ScaledSoftplus(1.0, name="unit_spend")(z), name="pp_train")
    served = ScaledSoftplus(scale, name="expected_spend")(z)
    return train, keras.Model(features, served, name="purchase_power")


def build_interest(x_train: np.ndarray) -> tuple[Any, Any]:
    """Next category from the last ``SEQ_LEN`` hashed categories plus the shop-agnostic
    features (how active, how focused, how deep into a session the user is).

    A small attention block rather than a GRU: a context vector (mean and latest category
    embeddings + features) weighs every recent *position* and every recency *rank* among the
    distinct recent categories, and those weights are added to the logits of the categories
    found there (``CopyScores``), next to a direct score of the whole vocabulary. Copying
    recent categories is what the strong last-category baseline does; learning by how much to
    trust each position and rank in context is how the model beats it, and it carries over to
    categories never seen in training. A GRU variant scored the same within 0.001 but trained
    1.7 times slower on the same data (docs/models.md, "Models").
    """
    sequence = keras.Input((SEQ_LEN,), dtype="int32", name="categories")
    features = _features_input()
    embedded = keras.layers.Embedding(CATEGORY_BUCKETS, 16, name="category_embedding")(sequence)
    latest = keras.layers.Embedding(CATEGORY_BUCKETS, 16, name="latest_embedding")(
        Column(SEQ_LEN - 1, name="latest_category")(sequence)
    )
    bag = MaskedMean(name="recent_mean")(embedded, sequence)
    d = keras.layers.Dense(32, activation="relu")(
        _normalizer(x_train, AGNOSTIC_COLUMNS, "normalise")(features)
    )
    # A light L2 keeps the logits moderate: calibrated probabilities, and float32 rounding
    # differences between runtimes are not amplified past the 1e-5 export parity check.
    l2 = keras.regularizers.L2(1e-4)
    h = keras.layers.Dense(64, activation="relu", kernel_regularizer=l2, name="context")(
        keras.layers.Concatenate()([bag, latest, d])
    )
    vocabulary = keras.layers.Dense(
        CATEGORY_BUCKETS, name="vocabulary_logits", kernel_regularizer=l2
    )(h)
    by_position = keras.layers.Dense(SEQ_LEN, name="position_weights", kernel_regularizer=l2)(h)
    by_rank = keras.layers.Dense(SEQ_LEN, name="rank_weights", kernel_regularizer=l2)(h)
    # Copy scores are linear in the weights: add the position and rank weights first and
    # copy once (half the work of two copies, the same model).
    weights = keras.layers.Add(name="copy_weights")(
        [by_position, RecencyRankWeights(name="rank_to_position")(sequence, by_rank)]
    )
    copied = CopyScores(CATEGORY_BUCKETS, name="copy_logits")(sequence, weights)
    logits = keras.layers.Add(name="logits")([vocabulary, copied])
    out = keras.layers.Activation("softmax", name="category_probabilities")(logits)
    model = keras.Model([sequence, features], out, name="interest")
    return model, model


def build_cart_recs(pair_train: np.ndarray) -> tuple[Any, Any]:
    """Scores one (cart, candidate) pair: relative pair features (popularity share, category
    affinity, category match with the cart) carry over between shops; hashed item/category
    embeddings and a cart-candidate dot product learn this catalogue's co-adds on top."""
    candidate = keras.Input((2,), dtype="int32", name="candidate")
    cart = keras.Input((CART_LEN,), dtype="int32", name="cart")
    pair = keras.Input((len(PAIR_FEATURES),), dtype="float32", name="pair")
    items = keras.layers.Embedding(ITEM_BUCKETS, 16, name="item_embedding")
    cats = keras.layers.Embedding(CATEGORY_BUCKETS, 8, name="category_embedding")
    item_vec = items(Column(0, name="item_id")(candidate))
    cat_vec = cats(Column(1, name="category_id")(candidate))
    cart_vec = MaskedMean(name="cart_mean")(items(cart), cart)
    affinity = keras.layers.Dot(axes=1, name="cart_affinity")([item_vec, cart_vec])
    p = _normalizer(pair_train, list(range(len(PAIR_FEATURES))), "normalise", log=False)(pair)
    h = keras.layers.Concatenate()([p, item_vec, cat_vec, cart_vec, affinity])
    h = keras.layers.Dense(32, activation="relu")(h)
    h = keras.layers.Dense(16, activation="relu")(h)
    out = keras.layers.Dense(1, activation="sigmoid", name="score")(h)
    model = keras.Model([candidate, cart, pair], out, name="cart_recs")
    return model, model
