"""The partition-wide steps of ``Scorer.finish`` (``stream.scoring.engine``), between the users'
labels and their scores: refit each partition's BTYD expert when due, read its view of the
batch's customers, and predict the churn blend's experts for the whole partition at once.

Each runs once per partition and batch, with numpy over the partition's users; a partition
whose step raises leaves its users without that step's figures (the expert left out, or the
churn blend predicted per user in ``score_user``), never the batch failed.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from stream.scoring.batch import DAY_MS, Inferred, Prepared, ScoringConfig, UserInput
from stream.scoring.churn_input import BTYD_INPUT_NAMES, CHURN_INPUT_NAMES, btyd_input_matrix
from stream.scoring.state import Learners
from stream.scoring.user_scores import UserScores
from stream.scoring.user_steps import BtydView, horizon_label

__all__ = ["Labelled", "btyd_views", "by_partition", "churn_figures", "refit_btyd"]


@dataclasses.dataclass
class Labelled:
    """A user of ``finish`` between its passes: labels learned, not yet scored."""

    index: int
    user: UserInput
    learners: Learners
    #: The working copy of the user's scoring state (labels delivered).
    work: UserScores
    #: A copy of ``work`` right after the labels were revealed, when there were any: what is
    #: written back if scoring then fails.
    after_labels: UserScores | None


def by_partition(labelled: list[Labelled]) -> list[tuple[Learners, list[Labelled]]]:
    """The labelled users grouped by their partition's learners, in batch order."""
    groups: dict[int, tuple[Learners, list[Labelled]]] = {}
    for step in labelled:
        groups.setdefault(id(step.learners), (step.learners, []))[1].append(step)
    return list(groups.values())


_BLEND_COLUMNS = (*CHURN_INPUT_NAMES, *BTYD_INPUT_NAMES)
_NO_VIEW = (math.nan, math.nan, math.nan)


def churn_figures(
    partitions: list[tuple[Learners, list[Labelled]]],
    prepared: Prepared,
    inferred: Inferred,
    btyd: dict[int, BtydView],
) -> dict[int, list[float | None]]:
    """The published churn probability of every labelled user (by batch index) and what each
    expert of the blend said (``PendingChurn.said``): one ``ChurnBlend.experts_matrix`` per
    partition. A partition whose call raises gets none here, and its users are predicted one
    by one in ``score_user``, so a failure there is theirs."""
    out: dict[int, list[float | None]] = {}
    for learners, steps in partitions:
        rows = [step.index for step in steps]
        blend = learners.churn
        try:
            p_onnx = inferred.churn[rows].astype(np.float64)
            views = np.array(
                [btyd[i].blend_input if i in btyd else _NO_VIEW for i in rows], dtype=np.float64
            ).reshape(len(rows), len(BTYD_INPUT_NAMES))
            X = np.hstack([prepared.churn_inputs()[rows], btyd_input_matrix(views)])
            experts = blend.experts_matrix(X, _BLEND_COLUMNS, p_onnx, views[:, 0])
            published = blend.combine_matrix(experts, p_onnx)
        except Exception:
            continue
        for n, index in enumerate(rows):
            calibrated, online, expert = experts[n].tolist()
            figures = [float(published[n]), calibrated, online, expert]
            out[index] = [None if v != v else v for v in figures]  # NaN: no BTYD view
    return out


def refit_btyd(partitions: list[tuple[Learners, list[Labelled]]]) -> None:
    """Refit each partition's BTYD expert that has seen enough orders since its last fit, at
    the partition's latest event time in the batch: once per batch at most."""
    for learners, steps in partitions:
        if learners.btyd.due():
            learners.btyd.refit(max(step.user.at_ms for step in steps))


def btyd_views(
    partitions: list[tuple[Learners, list[Labelled]]], prepared: Prepared, config: ScoringConfig
) -> dict[int, BtydView]:
    """Each labelled user's BTYD figures (by batch index), one vectorised prediction per
    partition; a user who never ordered gets none. Expected orders and lifetime value are
    computed for full scores only (they feed ``scores.purchase_power``)."""
    horizons = [ms / DAY_MS for ms in config.churn_horizons_ms]
    labels = [horizon_label(ms) for ms in config.churn_horizons_ms]
    period = config.clv_period_ms / DAY_MS
    primary = config.churn_horizon_ms / DAY_MS
    out: dict[int, BtydView] = {}
    for learners, steps in partitions:
        rows = [step.index for step in steps]
        vectors = [prepared.vectors[i] for i in rows]
        try:
            view = learners.btyd.predict(
                vectors,
                horizons,
                period,
                value=not prepared.churn_only,
                blend_horizon_days=primary,
            )
            assert view.blend is not None
            blend_input = view.blend.tolist()
        except Exception:
            continue  # the expert is left out of these users' blend and messages
        for n, index in enumerate(rows):
            # NaN: not a customer yet (and a figure gone non-finite is no view either: it would
            # be stored with the user's pending prediction).
            if not all(map(math.isfinite, (view.p_alive[n], *blend_input[n]))):
                continue
            out[index] = BtydView(
                float(view.p_alive[n]),
                {
                    label: float(view.p_no_order[h][n])
                    for label, h in zip(labels, horizons, strict=True)
                },
                None if prepared.churn_only else float(view.expected_orders[n]),
                None if prepared.churn_only else float(view.clv[n]),
                tuple(blend_input[n]),  # type: ignore[arg-type]
            )
    return out
