"""Paired comparisons of two regimes over seeds, and the verdict a comparison supports.

Runs of the same seed share data order, noise and initialisation, so a comparison is the
per-seed difference ``regime − reference`` of one measure at one step. It is reported as the
mean difference with a 95 % Student-t interval and the minimum detectable effect

    MDE = δ · sd_diff / √s,   δ the non-centrality at which a two-sided paired t-test on ``s``
                              seeds (α = 0.05) rejects with probability ``power`` (0.8),

the true mean difference that test would detect 80 % of the time, computed exactly from the
non-central t distribution (as G*Power and statsmodels' ``TTestPower`` do); the usual shortcut
δ ≈ t_{1−α/2, s−1} + t_{power, s−1} understates it by about 5 % at three seeds.

With fewer than two seeds there is no estimate of the spread: the interval and the MDE are
undefined (``None``) and the verdict is *inconclusive*, saying so.

Pandas and scipy only: the notebooks import this without loading torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from bat.errors import ConfigError

DIRECTIONS = ("lower", "higher")  # the claimed sign of regime − reference
VERDICTS = ("held", "contradicted", "inconclusive")
CONFIDENCE = 0.95
POWER = 0.8


@dataclass(frozen=True)
class PairedComparison:
    """Summary of per-seed differences ``regime − reference`` (units of the measure compared).

    ``sd`` is the sample standard deviation (ddof = 1) of the differences; ``low``/``high`` the
    ``confidence`` t-interval of their mean; ``mde`` the minimum detectable effect at ``power``.
    ``sd``, ``low``, ``high`` and ``mde`` are ``None`` when ``seeds < 2`` (undefined).
    """

    seeds: int
    mean: float
    sd: float | None
    low: float | None
    high: float | None
    mde: float | None
    confidence: float = CONFIDENCE
    power: float = POWER

    @property
    def defined(self) -> bool:
        """Whether the interval exists (at least two seeds)."""
        return self.low is not None


@dataclass(frozen=True)
class Verdict:
    """What a comparison says about a claimed direction: ``label`` in :data:`VERDICTS`, and why."""

    label: str
    reason: str
    comparison: PairedComparison


def _check_level(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise ConfigError(f"{name}: {value!r} is not allowed; use a probability in (0, 1)")


def minimum_detectable_effect(sd: float, seeds: int, confidence: float = CONFIDENCE,
                              power: float = POWER) -> float | None:
    """MDE = δ · sd / √s in the units of ``sd`` (module docstring): δ solves
    P(|T| > t_{(1+confidence)/2, s−1}) = ``power`` for T non-central t with s − 1 degrees of
    freedom and non-centrality δ (the lower tail included, as a two-sided test has it).

    ``None`` when ``seeds < 2`` (no degrees of freedom). Raises :class:`ConfigError` for a
    negative ``sd`` or a ``confidence``/``power`` outside (0, 1), and for a ``power`` at or
    below ``1 − confidence``, which a test reaches with no effect at all.
    """
    _check_level("confidence", confidence)
    _check_level("power", power)
    if sd < 0 or not math.isfinite(sd):
        raise ConfigError(f"sd: {sd!r} is not allowed; a standard deviation is finite and ≥ 0")
    if seeds < 2:
        return None
    if power <= 1 - confidence:
        raise ConfigError(f"power: {power!r} is not allowed; a test at confidence {confidence} "
                          f"already rejects with probability {1 - confidence:.3g} when there is "
                          "no effect, so use a power above that")
    dof = seeds - 1
    critical = stats.t.ppf((1 + confidence) / 2, dof)

    def shortfall(noncentrality: float) -> float:
        # the lower tail as the upper one of −T: scipy's nct.cdf turns NaN far out in that tail
        rejects = (stats.nct.sf(critical, dof, noncentrality)
                   + stats.nct.sf(critical, dof, -noncentrality))
        return rejects - power

    # the shortcut δ ≈ t_crit + t_power lies below the root: bracket from zero to past it
    upper = 2 * (critical + abs(stats.t.ppf(power, dof))) + 1
    while shortfall(upper) < 0:
        upper *= 2
    noncentrality = optimize.brentq(shortfall, 0.0, upper, xtol=1e-10)
    return float(noncentrality * sd / math.sqrt(seeds))


def summarize(mean: float, sd: float, seeds: int, confidence: float = CONFIDENCE,
              power: float = POWER) -> PairedComparison:
    """A :class:`PairedComparison` from the mean, sample sd (ddof = 1) and count of per-seed
    differences, as the notebooks store them (``grid_results.band_summary`` of a
    ``paired_difference``). ``sd`` is ignored when ``seeds < 2``; raises :class:`ConfigError`
    for ``seeds < 1`` or a non-finite mean."""
    seeds = int(seeds)
    if seeds < 1:
        raise ConfigError(f"seeds: {seeds!r} is not allowed; a comparison needs at least one seed")
    if not math.isfinite(mean):
        raise ConfigError(f"mean: {mean!r} is not allowed; the mean difference must be finite")
    mde = minimum_detectable_effect(sd if seeds > 1 else 0.0, seeds, confidence, power)
    if seeds < 2:
        return PairedComparison(seeds, float(mean), None, None, None, None, confidence, power)
    half = stats.t.ppf((1 + confidence) / 2, seeds - 1) * sd / math.sqrt(seeds)
    return PairedComparison(seeds, float(mean), float(sd), float(mean - half), float(mean + half),
                            mde, confidence, power)


def compare(differences, confidence: float = CONFIDENCE, power: float = POWER) -> PairedComparison:
    """A :class:`PairedComparison` of per-seed differences (1-D, one value per seed).

    Raises :class:`ConfigError` when ``differences`` is empty, not 1-D or holds NaN/inf.
    """
    values = np.asarray(differences, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ConfigError(f"differences: shape {values.shape} is not allowed; give one value per seed")
    if not np.isfinite(values).all():
        raise ConfigError("differences: NaN or inf is not allowed; drop the seeds that were not measured")
    sd = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return summarize(float(values.mean()), sd, values.size, confidence, power)


def paired_differences(frame: pd.DataFrame, value: str, regime: str, reference: str,
                       pair_on: tuple[str, ...] = ("seed",), **where) -> pd.Series:
    """``value`` of ``regime`` minus that of ``reference``, one entry per ``pair_on`` key (a seed).

    ``frame`` is a run table with a ``regime`` column, ``pair_on`` columns and ``value`` (one row
    per run, or per run and step when ``where`` fixes the step); ``where`` selects rows by column
    equality first (``None`` selects NaN, as plain runs' γ). Keys present in only one regime are
    left out. Raises :class:`ConfigError` for a missing column, an unknown regime, or several rows
    of one regime per key (``where`` does not pin down one row per run).
    """
    missing = [c for c in ("regime", value, *pair_on, *where) if c not in frame]
    if missing:
        raise ConfigError(f"columns {missing} are missing from the run table; it has {list(frame.columns)}")
    selected = frame
    for name, wanted in where.items():
        selected = selected[selected[name].isna() if wanted is None else selected[name] == wanted]
    sides = []
    for name in (regime, reference):
        rows = selected[selected["regime"] == name]
        if rows.empty:
            present = sorted(map(str, selected["regime"].unique()))
            raise ConfigError(f"regime: {name!r} has no rows{' where ' + str(where) if where else ''}; "
                              f"present: {present}")
        if rows.duplicated(list(pair_on)).any():
            raise ConfigError(f"regime {name!r} has several rows per {list(pair_on)}; fix the other "
                              f"columns with where= (e.g. step=...)")
        sides.append(rows.set_index(list(pair_on))[value].astype(float))
    left, right = sides
    common = left.index.intersection(right.index).sort_values()
    return (left.loc[common] - right.loc[common]).rename("difference")


def verdict(comparison: PairedComparison, direction: str, paper_effect: float | None = None) -> Verdict:
    """Classify a comparison against a claim that ``regime − reference`` is ``direction`` of zero.

    - *contradicted*: the interval lies wholly on the other side of zero, or (``paper_effect``
      given, a signed difference in the claimed direction) wholly between zero's side and the
      paper's effect, i.e. it excludes the paper's effect size as too large. An interval beyond
      the paper's effect in the claimed direction does not contradict a claimed benefit.
    - *held*: the interval lies wholly on the claimed side of zero (and is not contradicted).
    - *inconclusive*: otherwise, with the MDE; always when fewer than two seeds or when every
      seed gives the same difference (sd 0: a point, not an interval).

    Raises :class:`ConfigError` for a ``direction`` outside :data:`DIRECTIONS` or a
    ``paper_effect`` whose sign disagrees with ``direction``.
    """
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction: {direction!r} is not allowed; use one of {DIRECTIONS}")
    sign = -1.0 if direction == "lower" else 1.0
    if paper_effect is not None and not sign * paper_effect > 0:
        raise ConfigError(f"paper_effect: {paper_effect!r} is not allowed for direction {direction!r}; "
                          f"it is the paper's signed difference, {'< 0' if sign < 0 else '> 0'}")
    c = comparison
    if not c.defined:
        return Verdict("inconclusive", f"{c.seeds} seed: no interval or MDE without a second seed", c)
    if c.sd == 0:  # identical differences: the seeds did not replicate anything, the interval is a point
        return Verdict("inconclusive", "every seed gives the same difference (sd 0, so MDE 0): the seeds are not "
                       "replicates, so there is no interval to judge", c)
    # Work in the claimed orientation: positive means "as claimed".
    low, high = sorted((sign * c.low, sign * c.high))
    if high < 0:
        return Verdict("contradicted", "the interval excludes zero in the other direction", c)
    if paper_effect is not None and high < sign * paper_effect:
        return Verdict("contradicted", f"the interval excludes the paper's effect {paper_effect:g}", c)
    if low > 0:
        return Verdict("held", "the interval excludes zero in the claimed direction", c)
    return Verdict("inconclusive", f"the interval includes zero; MDE {c.mde:.3g} with {c.seeds} seeds", c)
