"""Statistics over seeds (scipy.stats): a :class:`Stat` keeps its per-seed values and seeds, so two figures that
share their seeds (the same initialisation, the same baseline) compare seed by seed; otherwise with Welch's test."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as sps


def is_number(value: object) -> bool:
    """An int or a float (a :class:`Stat` too), not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Stat(float):
    """A mean that remembers its spread: ``values`` (and their ``seeds``), ``n``, ``std`` and ``ci95``."""

    std: float
    n: int
    values: list[float]
    seeds: list[int | None]

    def __new__(cls, values: Sequence[float], seeds: Sequence[int | None] | None = None) -> Stat:
        mean = sum(values) / len(values)
        self = super().__new__(cls, mean)
        self.n, self.values = len(values), list(values)
        self.seeds = list(seeds) if seeds is not None else [None] * len(values)
        self.std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        return self

    @property
    def ci95(self) -> float:
        """Half-width of the 95 % confidence interval of the mean (Student t, n - 1 degrees of freedom)."""
        return float(sps.t.ppf(0.975, self.n - 1) * self.std / math.sqrt(self.n)) if self.n > 1 else math.nan

    @property
    def upper(self) -> float:
        return float(self) + self.ci95


def per_seed(value: float) -> dict[int | None, float]:
    seeds = getattr(value, "seeds", [None])
    return dict(zip(seeds, getattr(value, "values", [float(value)])))


def difference(a: float, b: float) -> Stat | float:
    """``a - b``: seed by seed when each of ``b``'s seeds has a partner in ``a``, else the difference of the means
    (its spread is ``b``'s)."""
    seeds = shared_seeds(a, b)
    if len(seeds) == len(per_seed(b)) and len(seeds) >= 2:
        sa, sb = per_seed(a), per_seed(b)
        return Stat([sa[s] - sb[s] for s in seeds], seeds)
    values = getattr(b, "values", None)
    if values and len(values) > 1:
        return Stat([float(a) - v for v in values], getattr(b, "seeds", None))
    return float(a) - float(b)


@dataclass
class Comparison:
    """``a`` against ``b``: the difference (mean, 95 % CI), the test that was used, its two-sided p-value and that
    p corrected for the family of comparisons it belongs to (Holm; ``p_holm`` = ``p`` until a family sets it)."""

    difference: float
    ci95: float
    test: str
    p: float
    n: tuple[int, int]
    p_holm: float | None = None
    family: int = 1

    @property
    def p_corrected(self) -> float:
        return self.p if self.p_holm is None else self.p_holm


def holm(ps: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): the family-wise error stays at alpha over all of ``ps``."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    adjusted, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def shared_seeds(a: float, b: float) -> list[int]:
    """The recorded seeds both figures have (each pair of runs of one seed started from the same baseline)."""
    sa, sb = per_seed(a), per_seed(b)
    return sorted(s for s in sa if s is not None and s in sb)


def compare(a: float, b: float) -> Comparison | None:
    """Paired t-test (``ttest_rel``) on the seeds ``a`` and ``b`` share when they share two or more, else Welch's
    (``ttest_ind``): a comparison never mixes paired and unpaired seeds, and runs that pair are always paired."""
    va, vb = getattr(a, "values", [float(a)]), getattr(b, "values", [float(b)])
    if len(va) < 2 or len(vb) < 2:
        return None
    seeds = shared_seeds(a, b)
    if len(seeds) >= 2:
        sa, sb = per_seed(a), per_seed(b)
        xs, ys = [sa[s] for s in seeds], [sb[s] for s in seeds]
        result = sps.ttest_rel(xs, ys)
        diff = Stat([x - y for x, y in zip(xs, ys)])
        test = "paired t" if len(seeds) == len(va) == len(vb) else "paired t, shared seeds"
        return Comparison(float(diff), diff.ci95, test, float(result.pvalue), (len(xs), len(ys)))
    result = sps.ttest_ind(va, vb, equal_var=False)
    ci = result.confidence_interval(0.95)
    mean = sum(va) / len(va) - sum(vb) / len(vb)
    return Comparison(mean, float(ci.high - mean), "Welch t", float(result.pvalue), (len(va), len(vb)))
