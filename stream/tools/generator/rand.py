"""Seeded scalar random draws, stable across Python versions, and two small maths helpers."""

from __future__ import annotations

import bisect
import math
import random

__all__ = ["Rand", "sigmoid", "softmax"]


class Rand:
    """Scalar draws built only on ``random.Random.random``.

    That is the one method Python promises to keep stable across versions, and a Python-level
    Mersenne Twister is far cheaper per scalar draw than a numpy Generator call.
    """

    __slots__ = ("random",)

    def __init__(self, *key: int) -> None:
        # A str seed is hashed with SHA-512 by random.seed (version 2): no per-process salt.
        self.random = random.Random("shopscore.generator/" + "/".join(map(str, key))).random

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def below(self, n: int) -> int:
        return min(int(self.random() * n), n - 1)

    def normal(self) -> float:
        u1 = 1.0 - self.random()  # (0, 1]
        return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * self.random())

    def expo(self) -> float:
        return -math.log(1.0 - self.random())

    def gamma(self, alpha: float) -> float:
        """Marsaglia-Tsang; alpha < 1 by the usual boost."""
        if alpha < 1.0:
            return self.gamma(alpha + 1.0) * (1.0 - self.random()) ** (1.0 / alpha)
        d = alpha - 1.0 / 3.0
        c = 1.0 / math.sqrt(9.0 * d)
        while True:
            x = self.normal()
            v = 1.0 + c * x
            if v <= 0.0:
                continue
            v = v * v * v
            u = 1.0 - self.random()
            if u < 1.0 - 0.0331 * x**4 or math.log(u) < 0.5 * x * x + d * (1.0 - v + math.log(v)):
                return d * v

    def poisson(self, lam: float) -> int:
        """Knuth's method: lam is always small here."""
        limit = math.exp(-lam)
        k = 0
        p = self.random()
        while p > limit:
            k += 1
            p *= self.random()
        return k

    def geometric(self, mean: float) -> int:
        """Failures before a success, with the given mean (heavy-ish tail of session lengths)."""
        if mean <= 0.0:
            return 0
        q = mean / (1.0 + mean)
        return int(math.log(1.0 - self.random()) / math.log(q))

    def pick(self, cdf: list[float]) -> int:
        i = bisect.bisect_right(cdf, self.random() * cdf[-1])
        return i if i < len(cdf) else len(cdf) - 1


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    ex = [math.exp(v - top) for v in logits]
    total = sum(ex)
    return [v / total for v in ex]
