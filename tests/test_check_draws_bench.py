"""benchmarks/bench_check_draws.py: a Proposition-2 check scored again with other draws."""

import pandas as pd
import pytest
import torch

from bat.core.curvature import flat_parameters
from bat.core.protocols import SelectionContext
from bat.core.selection import SelectionConfig
from bat.text.task import CausalLMTask
from bat.core.prop2 import Prop2Scores
from benchmarks.bench_check_draws import (RedrawingSelector, committed_match, ratio, scores_ratio,
                                         summary)
from benchmarks.bench_curvature import lm_batch, tiny_lm


def selector_and_context(draws=3):
    torch.manual_seed(0)
    model = tiny_lm()
    config = SelectionConfig(score_adaptation_every=2, score_bat_every=2, curvature_examples=4)
    selector = RedrawingSelector(config, target=flat_parameters(model) * 0.9, draws=draws,
                                 pooled_draws=2)

    def context(step):
        return SelectionContext(model=model, task=CausalLMTask(), adaptation_batch=lm_batch(6, 16, 1),
                                candidate_batch=lm_batch(8, 16, 2 + step),
                                candidate_ids=list(range(8)), step=step)

    return selector, context


def test_redraws_happen_at_checks_of_a_kept_set_only():
    selector, context = selector_and_context()
    for step in range(5):
        selector.select(context(step), 3)
    assert set(selector.redraws) == {2, 4}  # step 0 selected the first D^B': nothing to re-check
    assert not selector._selecting
    for redraw in selector.redraws.values():
        assert len(redraw["single_ratios"]) == 3 and redraw["pooled_holds"] == (redraw["pooled_ratio"] <= 1)
        assert len(set(redraw["single_ratios"])) == 3  # each draw is a different curvature


def test_scoring_again_with_the_checks_own_draw_gives_its_ratio():
    selector, context = selector_and_context()
    selector.select(context(0), 3)
    check = context(2)
    adaptation = check.adaptation_batch
    problem = selector._problem(check, adaptation)
    own = ratio(problem, selector.config)
    again = selector.score_again(check, adaptation, problem, 1, selector._draw_seed(2))
    assert again == pytest.approx(own, rel=1e-6)
    other = selector.score_again(check, adaptation, problem, 1, selector._draw_seed(2) + 1)
    assert other != pytest.approx(own, rel=1e-6)


def test_summary_counts_single_draws_that_disagree_with_the_pooled_check():
    def check(share, pooled_holds):
        return {"single_share_holding": share, "pooled_holds": pooled_holds, "grid_holds": False,
                "single_ratio_sd": 0.1, "single_ratio_mean": 1.0, "pooled_minus_single_mean": -0.02}

    runs = [{"track": "image", "checks": [check(0.25, True), check(0.0, False)]},
            {"track": "text", "checks": [check(1.0, True)]}]
    rows = summary(runs)
    assert rows["image"]["single_disagrees_with_pooled"] == pytest.approx((0.75 + 0.0) / 2)
    assert rows["image"]["checks_with_split_single_verdicts"] == 1
    assert rows["image"]["pooled_holding"] == 1 and rows["text"]["checks"] == 1
    assert rows["image"]["grid_agrees_with_pooled"] == 1  # the grid's draw failed both checks
    assert rows["text"]["single_disagrees_with_pooled"] == 0.0


def test_committed_match_pairs_a_0_based_check_with_the_1_based_table_row(tmp_path):
    (tmp_path / "runs" / "g").mkdir(parents=True)
    rows = [{"regime": "bat", "dataset": "noto", "adapter": "lora", "seed": 0, "step": step,
             "score_adaptation": score, "score_bat": 2 * score} for step, score in ((3, 1.0), (5, 4.0))]
    rows.append({**rows[1], "regime": "plain"})
    pd.DataFrame(rows).to_csv(tmp_path / "runs" / "g" / "steps.csv", index=False)
    check = {"step": 4, "score_adaptation": 4.0 * (1 + 1e-6), "score_bat": 8.0}
    assert committed_match("g", "noto", "lora", 0, [check], tmp_path) == pytest.approx(1e-6)
    with pytest.raises(ValueError, match="no check .* at step 4"):
        committed_match("g", "noto", "lora", 0, [{**check, "step": 3}], tmp_path)
    with pytest.raises(ValueError, match="no check of a kept"):
        committed_match("g", "noto", "lora", 0, [], tmp_path)


@pytest.mark.parametrize("inequality", ["norms", "mean_squares"])
def test_the_ratio_is_the_margin_of_eq_12(inequality):
    for score_bat in (1.9, 2.1, 2.9, 3.1):
        scores = Prop2Scores(1.0, score_bat, 0.25, inequality, {})
        assert (scores_ratio(scores) <= 1) == scores.holds
