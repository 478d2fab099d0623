"""benchmarks/bench_grid_selection.py: BAT's wall time against random_matched's in one grid run."""

import pandas as pd
import pytest

from benchmarks.bench_grid_selection import grid_ratios


def steps(regime, seed, seconds, selection, checks):
    return [{"regime": regime, "dataset": "noto", "seed": seed, "step": step, "seconds": seconds,
             "selection_seconds": selection if step == 1 else 0.0,
             "score_bat": 1.0 if step <= checks else None,
             "reason": "initial" if step == 1 and selection else ""} for step in (1, 2, 3, 4)]


def test_ratio_sums_training_and_selection_seconds_over_runs():
    frame = pd.DataFrame(steps("bat", 0, 1.0, 4.0, 2) + steps("bat", 1, 1.0, 2.0, 2)
                         + steps("random_matched", 0, 1.0, 0.0, 0)
                         + steps("random_matched", 1, 1.0, 0.0, 0))
    row = grid_ratios(frame)["bat"]
    assert row["bat_s"] == 14.0 and row["random_matched_s"] == 8.0
    assert row["ratio"] == pytest.approx(1.75) and not row["meets_goal"]
    assert row["runs"] == 2 and row["checks_per_run"] == 2.0 and row["selection_s"] == 6.0
    assert row["first_selection_s"] == 6.0 and row["ratio_without_first_selection"] == 1.0


def test_a_grid_without_the_baseline_is_refused():
    with pytest.raises(ValueError, match="random_matched"):
        grid_ratios(pd.DataFrame(steps("bat", 0, 1.0, 1.0, 1)))
