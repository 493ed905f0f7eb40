"""Synthetic shop event log with known ground truth, so model quality can be measured honestly.

Generative model (every user has private random streams derived from ``(seed, user index)``,
so the log is byte-identical for the same arguments and users can be generated in any order):

* Catalogue: 12 categories of 50-300 items; prices are lognormal around a per-category level
  and popularity inside a category is Zipf-like. Spendier users lean towards pricier items.
* Users: some are present from the start, the rest arrive during the period (their first session
  is their arrival). Three correlated latent traits set the activity rate (sessions per week,
  lognormal, heavy-tailed), the spend level (order probability, basket size, price tier) and
  the cart-abandonment propensity. Category interests start Dirichlet (a few favourites) and
  drift: a log-space random walk plus occasional switches of the favourite category.
* Sessions arrive as a Poisson process modulated by time of day. A session is a burst of clicks
  seconds-to-minutes apart; some clicks lead to cart adds (a few are removed again) and the
  session ends with an order, an abandoned cart (sometimes ordered in a later session) or nothing.
* Churn: a constant hazard per user that falls with activity and spend and rises with
  abandonment. Activity fades over the week before the churn time, no order follows it, and at
  most a couple of click-only "ghost" sessions do.
* Planted change (``change_day``): from then on the hazard rises with activity instead (loyal
  heavy clickers start leaving), item popularity reshuffles and interests are pulled towards a
  new category mix, and users who stop ordering keep browsing ("window shoppers": click-only
  sessions at half their old rate) instead of going quiet, so recent clicks no longer say that
  a user stays.
* Dirt (invalid events, duplicates, ISO-8601 timestamps) comes from separate streams, so the
  valid events are the same whatever the dirt settings.

The file is ordered by arrival: valid events by ``(ts, event_id)``; a duplicate arrives up to
two minutes after its original (same payload, same ``ts``); an invalid event right after the
valid event it was derived from.
"""

from stream.tools.generator.config import (
    CATEGORIES,
    DEFAULT_START,
    DEFAULT_START_MS,
    GeneratorConfig,
    truth_path,
)
from stream.tools.generator.dirt import DEFECTS
from stream.tools.generator.log import generate_events, write_log

__all__ = [
    "CATEGORIES",
    "DEFAULT_START",
    "DEFAULT_START_MS",
    "DEFECTS",
    "GeneratorConfig",
    "generate_events",
    "truth_path",
    "write_log",
]
