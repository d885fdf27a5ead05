"""The statistics of the ablation table: mean and standard error over seeds, t intervals, and the paired test
of each arm against the reference arm.

The unit of replication is the training seed. For seed s every arm starts from seed s (initialisation, data
order) and is scored on the same prompts with the same sampling noise, so arm and reference are paired by
seed: the test is a two-sided paired t-test over seeds on the per-seed difference in overall score, with
Holm's correction across the arms compared with the reference. A bootstrap over prompts would treat the few
trained models as the whole population and count one seed's luck as an effect; seed-to-seed swings at toy
scale are larger than the prompt sampling noise (one config scored 0.30 and 0.12 on counting with two seeds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean, s / sqrt(n) with the n - 1 sample deviation (nan for n < 2)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), se


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided t interval for the mean, mean +- t_(1 - alpha/2, n - 1) * SE (nan for n < 2)."""
    mean, se = mean_and_stderr(values)
    if math.isnan(se):
        return math.nan, math.nan
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * se
    return mean - half, mean + half


@dataclass
class PairedTest:
    """Arm minus reference, paired by seed: mean difference, its t interval, two-sided p (and Holm's)."""

    seeds: list[int]
    difference: float
    low: float
    high: float
    p: float
    p_holm: float = math.nan

    @property
    def n(self) -> int:
        return len(self.seeds)

    def verdict(self, alpha: float = ALPHA) -> str:
        """'higher' / 'lower' when the Holm-adjusted p is below alpha, 'no' if not, 'n/a' without 2 seeds."""
        if math.isnan(self.p_holm):
            return "n/a"
        if self.p_holm >= alpha:
            return "no"
        return "higher" if self.difference > 0 else "lower"


def paired_t_test(arm: dict[int, float], reference: dict[int, float]) -> PairedTest:
    """Paired t-test over the seeds both arms have, on arm - reference (identical pairs: p = 1)."""
    seeds = sorted(set(arm) & set(reference))
    d = np.array([arm[s] - reference[s] for s in seeds], dtype=float)
    if d.size < 2:
        return PairedTest(seeds, float(d.mean()) if d.size else math.nan, math.nan, math.nan, math.nan)
    mean, se = mean_and_stderr(d)
    low, high = t_interval(d)
    if se == 0:  # every seed moved by the same amount: no spread to test against
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(mean / se), d.size - 1))
    return PairedTest(seeds, mean, low, high, p)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment (family-wise error rate); nan entries stay nan and do not count."""
    order = sorted((i for i, p in enumerate(p_values) if not math.isnan(p)), key=lambda i: p_values[i])
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
