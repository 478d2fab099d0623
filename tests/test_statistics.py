"""Paired comparisons: our interval and MDE against scipy, and a hand case for each verdict."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bat.errors import ConfigError
from bat.analysis.statistics import compare, minimum_detectable_effect, paired_differences, summarize, verdict


def test_interval_matches_scipy_ttest_rel_and_t_interval():
    rng = np.random.default_rng(0)
    regime, reference = rng.normal(1.0, 1.0, 6), rng.normal(0.3, 1.0, 6)
    result = compare(regime - reference)
    expected = stats.ttest_rel(regime, reference).confidence_interval(0.95)
    assert result.low == pytest.approx(expected.low, rel=1e-12)
    assert result.high == pytest.approx(expected.high, rel=1e-12)
    sem = stats.sem(regime - reference)
    low, high = stats.t.interval(0.95, 5, loc=np.mean(regime - reference), scale=sem)
    assert (result.low, result.high) == pytest.approx((low, high), rel=1e-12)
    assert result.seeds == 6 and result.sd == pytest.approx(np.std(regime - reference, ddof=1))


@pytest.mark.parametrize("seeds", [3, 8])
def test_mde_is_the_effect_a_paired_t_test_detects_with_80_percent_power(seeds):
    # Simulate: with a true mean difference equal to the MDE, a two-sided paired t-test at
    # α = 0.05 on s seeds rejects 80 % of the time (standard error of the simulated power: 0.003).
    sd = 1.0
    mde = minimum_detectable_effect(sd, seeds)
    rng = np.random.default_rng(1)
    draws = rng.normal(mde, sd, size=(20000, seeds))
    power = (stats.ttest_1samp(draws, 0.0, axis=1).pvalue < 0.05).mean()
    assert power == pytest.approx(0.8, abs=0.01)
    # the shortcut that drops non-centrality understates the MDE: its exact power is below 0.8
    dof, critical = seeds - 1, stats.t.ppf(0.975, seeds - 1)
    shortcut = critical + stats.t.ppf(0.8, dof)
    assert mde > shortcut * sd / math.sqrt(seeds)
    assert stats.nct.sf(critical, dof, shortcut) + stats.nct.sf(critical, dof, -shortcut) < 0.8


def test_summary_and_values_give_the_same_comparison():
    values = [0.3, -0.1, 0.5, 0.2]
    assert summarize(np.mean(values), np.std(values, ddof=1), 4) == compare(values)


def test_one_seed_is_inconclusive_with_undefined_interval():
    result = compare([0.7])
    assert (result.sd, result.low, result.high, result.mde) == (None, None, None, None)
    decided = verdict(result, "higher")
    assert decided.label == "inconclusive" and "1 seed" in decided.reason


@pytest.mark.parametrize("differences, direction, paper_effect, label", [
    ([-0.30, -0.20, -0.25, -0.35], "lower", None, "held"),
    ([0.30, 0.20, 0.25, 0.35], "higher", None, "held"),
    ([0.30, 0.20, 0.25, 0.35], "lower", None, "contradicted"),  # excludes zero the other way
    ([-0.30, 0.20, -0.05, 0.10], "lower", None, "inconclusive"),
    # Below zero as claimed, but the interval [-0.32, -0.18] excludes the paper's -1.0.
    ([-0.30, -0.20, -0.25, -0.25], "lower", -1.0, "contradicted"),
    # The paper's -0.2 lies inside: held.
    ([-0.30, -0.20, -0.25, -0.25], "lower", -0.2, "held"),
    # A larger effect than the paper's does not contradict a claimed benefit.
    ([-0.30, -0.20, -0.25, -0.25], "lower", -0.01, "held"),
    ([0.0, 0.0, 0.0], "lower", None, "inconclusive"),  # a point interval at zero
])
def test_verdicts_by_hand(differences, direction, paper_effect, label):
    result = verdict(compare(differences), direction, paper_effect)
    assert result.label == label, result.reason
    if label == "inconclusive":
        assert "MDE" in result.reason


def test_held_needs_the_interval_not_just_the_mean():
    # Mean below zero in 3 of 3 seeds but the t-interval with 2 dof still crosses zero.
    result = compare([-0.01, -0.02, -0.30])
    assert result.mean < 0 < result.high
    assert verdict(result, "lower").label == "inconclusive"


def test_paired_differences_pair_by_seed_and_drop_unmatched_seeds():
    frame = pd.DataFrame({
        "regime": ["bat", "bat", "bat", "plain", "plain", "plain", "plain"],
        "seed": [0, 1, 2, 0, 1, 2, 3],
        "step": [4, 4, 4, 4, 4, 4, 4],
        "loss": [1.0, 2.0, 3.5, 1.5, 1.0, 3.0, 9.0]})
    differences = paired_differences(frame, "loss", "bat", "plain", step=4)
    assert differences.to_dict() == {0: -0.5, 1: 1.0, 2: 0.5}


def test_paired_differences_refuse_ambiguous_rows_and_unknown_names():
    frame = pd.DataFrame({"regime": ["bat", "bat", "plain"], "seed": [0, 0, 0],
                          "step": [1, 2, 2], "loss": [1.0, 2.0, 3.0]})
    with pytest.raises(ConfigError, match="several rows"):
        paired_differences(frame, "loss", "bat", "plain")
    with pytest.raises(ConfigError, match="'random' has no rows"):
        paired_differences(frame, "loss", "random", "plain", step=2)
    with pytest.raises(ConfigError, match=r"\['heldout_loss'\] are missing"):
        paired_differences(frame, "heldout_loss", "bat", "plain")


@pytest.mark.parametrize("call, field", [
    (lambda: verdict(compare([1.0, 2.0]), "down"), "direction"),
    (lambda: verdict(compare([1.0, 2.0]), "lower", paper_effect=0.5), "paper_effect"),
    (lambda: compare([]), "differences"),
    (lambda: compare([1.0, float("nan")]), "differences"),
    (lambda: summarize(0.1, 0.2, 0), "seeds"),
    (lambda: minimum_detectable_effect(-1.0, 3), "sd"),
    (lambda: minimum_detectable_effect(1.0, 3, power=1.5), "power"),
    (lambda: minimum_detectable_effect(1.0, 3, power=0.04), "power"),
])
def test_bad_input_names_the_field(call, field):
    with pytest.raises(ConfigError, match=field):
        call()


def test_identical_differences_are_no_interval_to_judge():
    """Every seed giving the same difference (sd 0) makes a point, not an interval: inconclusive
    whatever its sign, however far from zero."""
    for value in (1e-12, -3.0):
        for direction in ("lower", "higher"):
            result = verdict(compare(np.full(4, value)), direction)
            assert result.label == "inconclusive" and "sd 0" in result.reason
