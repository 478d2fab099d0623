"""The claims table: README matches what the committed run tables give, each alignment pairs the
steps it says, and the verdicts agree with scipy's paired t-test on hand-built run tables."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bat import paths
from bat.analysis.claims import (CLAIMS, TEXT_TASKS, Claim, ConvexControl, RunComparison, classify,
                                 compare_regimes, render, results_frame, summary_metrics)
from bat.analysis.outputs import difference_curves, flat_metrics, write_plot
from bat.errors import ConfigError
from bat.text.data import ADAPTATION_TASKS

KEYS = {"dataset": "noto", "adapter": "dreambooth", "batch_size": 2}


def write_grid(root, name, rows):
    """``runs/<name>/steps.csv`` and ``evaluations.csv`` from rows holding both tables' columns."""
    folder = root / "runs" / name
    folder.mkdir(parents=True)
    frame = pd.DataFrame(rows)
    frame[[c for c in frame if c != "heldout_loss"]].to_csv(folder / "steps.csv", index=False)
    frame.drop(columns=["n_adaptation", "weight_difference"]).to_csv(folder / "evaluations.csv", index=False)


def synthetic_runs(root, seeds=(0, 1, 2, 3), effect=-0.05, plain_steps=(0, 2, 4), bat_steps=(0, 2, 4, 6)):
    """A grid where BAT's held-out loss is plain's plus ``effect`` plus seed noise at every step
    after 0; BAT sees one D^A example a step, plain two (regular-interval mixing)."""
    rng = np.random.default_rng(5)
    rows = []
    for seed in seeds:
        for step in sorted(set(plain_steps) | set(bat_steps)):
            base = 1.0 - 0.01 * step + rng.normal(0, 0.01)
            for regime, steps, per_step in (("plain", plain_steps, 2), ("bat", bat_steps, 1)):
                if step in steps:
                    shift = effect + rng.normal(0, 0.01) if regime == "bat" and step else 0.0
                    rows.append({**KEYS, "seed": seed, "gamma": 0.5 if regime == "bat" else None,
                                 "regime": regime, "step": step, "heldout_loss": base + shift,
                                 "weight_difference": 0.1 * step, "n_adaptation": per_step * step})
    write_grid(root, "g", rows)
    return pd.DataFrame(rows)


def claim(align="steps", **source):
    return Claim("c", "Fig. 4", "BAT lowers held-out loss", "held-out loss", "bat", "plain", "lower",
                 RunComparison("g", "heldout_loss", align=align, **source))


def scipy_interval(runs, bat_step, plain_step):
    bat = runs[(runs["regime"] == "bat") & (runs["step"] == bat_step)].set_index("seed")["heldout_loss"]
    plain = runs[(runs["regime"] == "plain") & (runs["step"] == plain_step)].set_index("seed")["heldout_loss"]
    interval = stats.ttest_rel(bat, plain.loc[bat.index]).confidence_interval(0.95)
    return (bat - plain.loc[bat.index]).mean(), (interval.low, interval.high)


def test_equal_steps_is_the_last_step_both_regimes_measured(tmp_path):
    # BAT ran to step 6, plain to 4: the comparison is at 4, matching scipy's paired t-test.
    runs = synthetic_runs(tmp_path)
    [result] = classify((claim(),), tmp_path, gate=False)
    mean, interval = scipy_interval(runs, 4, 4)
    comparison = result.verdict.comparison
    assert result.step == "4" and comparison.seeds == 4
    assert comparison.mean == pytest.approx(mean, abs=1e-12)
    assert (comparison.low, comparison.high) == pytest.approx(interval, abs=1e-12)
    assert result.label == "held"


def test_backbone_alignment_pairs_a_regimes_last_step_with_step_0(tmp_path):
    # The premise of a retention control: one regime's end against the backbone it started from.
    runs = synthetic_runs(tmp_path)
    premise = Claim("p", "control", "plain moves", "held-out loss", "plain", "plain", "lower",
                    RunComparison("g", "heldout_loss", align="backbone"))
    [result] = classify((premise,), tmp_path, gate=False)
    plain = runs[runs["regime"] == "plain"]
    end, start = (plain[plain["step"] == step].set_index("seed")["heldout_loss"] for step in (4, 0))
    interval = stats.ttest_rel(end, start).confidence_interval(0.95)
    comparison = result.verdict.comparison
    assert result.step == "plain 4 / plain 0" and comparison.seeds == 4
    assert comparison.mean == pytest.approx((end - start).mean(), abs=1e-12)
    assert (comparison.low, comparison.high) == pytest.approx((interval.low, interval.high), abs=1e-12)
    assert result.label == "held"
    late = runs[(runs["step"] > 0) | (runs["seed"] != 2)]  # seed 2 lost its backbone row
    write_grid(tmp_path, "late", late.to_dict("records"))
    [missing] = classify((replace(premise, source=replace(premise.source, grid="late")),), tmp_path)
    assert missing.verdict is None and missing.reason == "plain has no step 0 (seeds [2])"
    write_grid(tmp_path, "start", runs[runs["step"] == 0].to_dict("records"))  # nothing trained
    [untrained] = classify((replace(premise, source=replace(premise.source, grid="start")),), tmp_path)
    assert untrained.verdict is None and "no measured step after 0 (seeds [0, 1, 2, 3])" in untrained.reason


def test_equal_exposure_pairs_plain_where_it_saw_as_many_adaptation_examples(tmp_path):
    # BAT ends at step 6 with 6 D^A examples; plain has seen 6 at step 3 (not measured), 8 at step 4.
    runs = synthetic_runs(tmp_path, plain_steps=(0, 2, 4, 6), bat_steps=(0, 2, 4, 6))
    [result] = classify((claim("exposure"),), tmp_path, gate=False)
    mean, interval = scipy_interval(runs, 6, 4)
    assert result.step == "bat 6 / plain 4"
    assert result.verdict.comparison.mean == pytest.approx(mean, abs=1e-12)
    assert (result.verdict.comparison.low, result.verdict.comparison.high) == pytest.approx(interval, abs=1e-12)


def test_final_alignment_takes_each_runs_last_step(tmp_path):
    runs = synthetic_runs(tmp_path)
    [result] = classify((claim("final"),), tmp_path, gate=False)
    assert result.step == "bat 6 / plain 4"
    assert result.verdict.comparison.mean == pytest.approx(scipy_interval(runs, 6, 4)[0], abs=1e-12)


def test_budget_alignment_gives_the_reference_its_best_measured_step(tmp_path):
    # plain's held-out loss falls to step 4 in these runs; make its step 2 the best for seed 0
    # only: the reference side is then step 2 for seed 0 and 4 for the others, BAT its last step.
    runs = synthetic_runs(tmp_path)
    best = (runs["regime"] == "plain") & (runs["seed"] == 0) & (runs["step"] == 2)
    runs.loc[best, "heldout_loss"] = 0.0
    (tmp_path / "runs" / "g").rename(tmp_path / "runs" / "old")
    write_grid(tmp_path, "g", runs.to_dict("records"))
    [result] = classify((claim("budget"),), tmp_path, gate=False)
    assert result.step == "bat 6 / plain 2–4"
    bat = runs[(runs["regime"] == "bat") & (runs["step"] == 6)].set_index("seed")["heldout_loss"]
    plain = runs[(runs["regime"] == "plain") & (runs["step"] > 0)].groupby("seed")["heldout_loss"].min()
    assert result.verdict.comparison.mean == pytest.approx((bat - plain).mean(), abs=1e-12)


def test_the_two_sides_must_share_their_settings(tmp_path):
    # a reference grid whose plain runs trained at another batch size cannot be paired silently
    rows = synthetic_runs(tmp_path).to_dict("records")
    write_grid(tmp_path, "other", [{**row, "batch_size": 4} for row in rows])
    with pytest.raises(ConfigError, match="batch_size"):
        classify((claim(reference_grid="other"),), tmp_path, gate=False)


@pytest.mark.parametrize("random_effect, label, reason", [
    (-0.05, "held", "interval excludes zero"),
    (0.0, "inconclusive", "control control-x not held (inconclusive)"),
    (0.05, "inconclusive", "control control-x not held (contradicted)")])
def test_a_claim_has_a_verdict_only_when_its_tracks_controls_hold(tmp_path, monkeypatch, random_effect,
                                                                   label, reason):
    """A claim on a grid of the image track is held only when the image controls are; otherwise
    inconclusive, naming the control and the ungated verdict."""
    from bat.analysis import claims as claims_module

    runs = synthetic_runs(tmp_path, seeds=tuple(range(8)))
    (tmp_path / "runs" / "g").rename(tmp_path / "runs" / "old")
    plain = runs[runs["regime"] == "plain"]
    random = plain.assign(regime="random", gamma=0.5,
                          heldout_loss=plain["heldout_loss"] + np.where(plain["step"] > 0, random_effect, 0.0)
                          + np.random.default_rng(3).normal(0, 0.01, len(plain)))
    write_grid(tmp_path, "g", pd.concat([runs, random]).to_dict("records"))
    (tmp_path / "runs" / "g" / "grid.json").write_text(json.dumps({"config": {"track": "image"}}))
    control = Claim("control-x", "control", "", "", "random", "plain", "lower",
                    RunComparison("g", "heldout_loss"), control=True)
    monkeypatch.setattr(claims_module, "CLAIMS_BY_ID", {control.id: control})
    monkeypatch.setattr(claims_module, "CONTROLS", {"image": ("control-x",), "text": ()})
    [result] = classify((claim(),), tmp_path)
    assert result.label == label and reason in result.verdict.reason
    assert classify((claim(),), tmp_path, gate=False)[0].label == "held"
    # a control is never gated, by itself or another: a failed one reads as it came out
    assert classify((control,), tmp_path)[0].label == classify((control,), tmp_path, gate=False)[0].label
    (tmp_path / "runs" / "g" / "grid.json").write_text(json.dumps({"config": {"track": "text"}}))
    assert classify((claim(),), tmp_path)[0].label == "held"  # the text track needs no control-x


@pytest.mark.parametrize("effect, label", [(-0.05, "held"), (0.05, "contradicted"), (0.0, "inconclusive")])
def test_verdict_follows_the_sign_of_a_known_effect(tmp_path, effect, label):
    synthetic_runs(tmp_path, seeds=tuple(range(8)), effect=effect)
    assert classify((claim(),), tmp_path, gate=False)[0].label == label


def test_what_is_missing_is_not_tested_with_the_reason(tmp_path):
    synthetic_runs(tmp_path)
    absent = [claim(), Claim("r", "", "", "", "random", "plain", "lower", RunComparison("g", "heldout_loss")),
              Claim("m", "", "", "", "bat", "plain", "lower", RunComparison("g", "retention_loss")),
              Claim("x", "", "", "", "bat", "plain", "lower", RunComparison("nowhere", "heldout_loss")),
              Claim("d", "", "", "", "bat", "plain", "lower",
                    RunComparison("g", "heldout_loss", where={"dataset": "emojione"}))]
    results = classify(tuple(absent), tmp_path / "empty", gate=False)
    assert {r.label for r in results} == {"not tested"}
    results = classify(tuple(absent), tmp_path, gate=False)
    assert [r.label == "not tested" for r in results] == [False, True, True, True, True]
    reasons = [r.reason for r in results[1:]]
    assert "no 'random' runs" in reasons[0] and "no 'retention_loss'" in reasons[1]
    assert "runs/nowhere" in reasons[2] and "emojione" in reasons[3]
    table = render(results)
    assert all(reason in table for reason in reasons)
    assert {line.count("|") for line in table.splitlines()} == {10}


def test_claims_that_cannot_pin_one_run_per_seed_or_name_bad_fields_raise(tmp_path):
    rows = synthetic_runs(tmp_path).to_dict("records")
    (tmp_path / "runs" / "g").rename(tmp_path / "runs" / "old")
    write_grid(tmp_path, "g", rows + [{**row, "batch_size": 4} for row in rows])
    with pytest.raises(ConfigError, match="where"):
        classify((claim(),), tmp_path, gate=False)
    with pytest.raises(ConfigError, match="where"):
        RunComparison("g", "heldout_loss", where={"step": 4})
    with pytest.raises(ConfigError, match="table"):
        RunComparison("g", "heldout_loss", table="samples")
    with pytest.raises(ConfigError, match="align"):
        RunComparison("g", "heldout_loss", align="wall")


def convex_rows(random_shift):
    rng = np.random.default_rng(2)
    rows = []
    for n in (16, 64):
        for seed in range(6):
            plain = 5 + rng.normal(0, 0.1)
            rows += [{"model": "ridge", "n": n, "seed": seed, "method": "plain", "n_error": plain},
                     {"model": "ridge", "n": n, "seed": seed, "method": "random",
                      "n_error": plain + random_shift[n] + rng.normal(0, 0.1)}]
    return rows


@pytest.mark.parametrize("shift, label, step", [({16: -1.0, 64: -1.0}, "held", None),
                                                ({16: -1.0, 64: 1.0}, "contradicted", "n = 64")])
def test_convex_control_holds_only_when_it_holds_at_every_n(tmp_path, shift, label, step):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "prop2_convex.json").write_text(json.dumps({"seeds": convex_rows(shift)}))
    control = Claim("k", "control (i)", "", "", "random", "plain", "lower", ConvexControl("ridge"), control=True)
    [result] = classify((control,), tmp_path)
    assert result.label == label
    if step:
        assert result.step == step
    (tmp_path / "metrics" / "prop2_convex.json").write_text(json.dumps({"summary": []}))
    assert "per-seed rows" in classify((control,), tmp_path)[0].reason
    (tmp_path / "plots" / "prop2_convex").mkdir(parents=True)  # the flat-metrics home of the rows
    pd.DataFrame(convex_rows(shift)).to_csv(tmp_path / "plots" / "prop2_convex" / "seeds.csv", index=False)
    assert classify((control,), tmp_path)[0].label == label


def test_controls_come_first_and_are_counted():
    assert len({c.id for c in CLAIMS}) == len(CLAIMS)  # controls are looked up by id
    assert [c.control for c in CLAIMS] == sorted((c.control for c in CLAIMS), reverse=True)
    controls = classify(tuple(c for c in CLAIMS if c.control), paths.ROOT)
    counts = summary_metrics(controls)
    # a held control is not a held claim: the verdict counts are over claims only
    assert sum(counts[k] for k in ("held", "inconclusive", "contradicted", "not_tested")) == 0
    assert counts["controls"] == len(controls)
    assert counts["controls_held"] == sum(r.label == "held" for r in controls)
    claim = next(c for c in CLAIMS if not c.control)
    counts = summary_metrics(controls + classify((claim,), paths.ROOT))
    assert sum(counts[k] for k in ("held", "inconclusive", "contradicted", "not_tested")) == 1


def test_figure_comparisons_and_flat_metrics(tmp_path, monkeypatch):
    runs = synthetic_runs(tmp_path)
    frame = results_frame(compare_regimes("g", "heldout_loss", ["bat"], root=tmp_path, gate=False,
                                          settings=[{"dataset": "noto"}]))
    assert frame.loc[0, "step"] == "4" and frame.loc[0, "verdict"] == "held"
    [result] = classify((claim(),), tmp_path, gate=False)
    metrics = flat_metrics(result.metrics(), {"effect": np.float64(0.5), "verdict": np.int64(-1)})
    assert metrics["verdict"] == 1 and metrics["seeds"] == 4 and metrics["secondary_verdict"] == -1
    assert all(type(v) in (int, float) for v in metrics.values())
    untested = classify((claim(where={"dataset": "emojione"}),), tmp_path, gate=False)[0].metrics()
    assert flat_metrics(untested) == dict.fromkeys(untested)  # same keys, every value None
    with pytest.raises(ConfigError, match="schema"):
        flat_metrics({**result.metrics(), "curve": 1.0})
    with pytest.raises(ConfigError, match="effect"):
        flat_metrics({**result.metrics(), "effect": [1.0, 2.0]})
    # The plotted interval at step 4 is the claim's interval.
    curves = difference_curves(runs, "heldout_loss", ["bat"])
    at4 = curves[curves["step"] == 4].iloc[0]
    assert (at4["low"], at4["high"]) == pytest.approx(scipy_interval(runs, 4, 4)[1], abs=1e-12)
    monkeypatch.setattr(paths, "PLOTS", tmp_path / "plots")
    write_plot("s", "gap", curves)
    assert list(pd.read_csv(tmp_path / "plots" / "s" / "gap.csv").columns) == list(curves.columns)


def test_gamma_selects_one_bat_run_and_keeps_the_gamma_free_reference(tmp_path):
    # Two BAT runs per seed (γ 0.5 and 0.25) beside one plain run: where={"gamma": 0.25} pairs
    # the γ = 0.25 run with plain, and D^A exposure is read from that run's own steps.
    runs = synthetic_runs(tmp_path)
    (tmp_path / "runs" / "g").rename(tmp_path / "runs" / "old")
    other = runs[runs["regime"] == "bat"].assign(gamma=0.25, heldout_loss=lambda f: f["heldout_loss"] + 1.0)
    write_grid(tmp_path, "g", pd.concat([runs, other]).to_dict("records"))
    [low, high] = classify((claim(where={"gamma": 0.5}), claim(where={"gamma": 0.25}, align="exposure")), tmp_path,
                           gate=False)
    assert low.verdict.comparison.mean == pytest.approx(scipy_interval(runs, 4, 4)[0], abs=1e-12)
    assert high.step == "bat 6 / plain 4" and high.label == "contradicted"


def test_each_text_task_has_its_own_claims(tmp_path):
    """The paper profile trains LoRA/DoRA on three tasks: every task's claim reads its own runs
    (an effect given to one task only shows in that task's verdict); a task absent from the runs
    is not tested, with the reason."""
    rng = np.random.default_rng(2)
    rows = []
    for dataset, effect in (("word_definition", -0.05), ("example_cloze", 0.05)):
        for seed in range(8):
            for step in (0, 2):
                base = 1.0 - 0.01 * step + rng.normal(0, 0.01)
                for regime in ("plain", "bat"):
                    shift = effect + rng.normal(0, 0.01) if regime == "bat" and step else 0.0
                    rows.append({"dataset": dataset, "adapter": "lora", "batch_size": 4, "seed": seed,
                                 "gamma": 0.5 if regime == "bat" else None, "regime": regime,
                                 "step": step, "heldout_loss": base + shift,
                                 "weight_difference": 0.1 * step, "n_adaptation": step})
    write_grid(tmp_path, "lora_dora", rows)
    text = [c for c in CLAIMS if c.id.startswith("fig05-lora-") and c.id.endswith("-steps")]
    labels = {result.claim.id: result.label for result in classify(tuple(text), tmp_path, gate=False)}
    assert labels == {"fig05-lora-word_definition-steps": "held",
                      "fig05-lora-example_cloze-steps": "contradicted",
                      "fig05-lora-wiki_summary-steps": "not tested"}


def test_text_claims_cover_the_text_tracks_tasks():
    """claims.TEXT_TASKS is the analysis package's copy of the text track's task table (analysis
    imports no track); a task added to the track without a claim would go unreported."""
    assert TEXT_TASKS == ADAPTATION_TASKS


def test_each_track_is_gated_by_a_retention_control_on_a_grid_of_its_own():
    """Besides the convex controls, each track's claims wait for a random-vs-plain retention
    control trained by that track's own pipeline, on a grid params.yaml gives that track, and for
    its premise on the same runs: plain's retention loss rose from the backbone's."""
    from bat.analysis.claims import CLAIMS_BY_ID, CONTROLS
    from bat.config import read_yaml

    grids = read_yaml(paths.PARAMS)["grids"]
    for track, controls in CONTROLS.items():
        runs = [CLAIMS_BY_ID[name] for name in controls if isinstance(CLAIMS_BY_ID[name].source, RunComparison)]
        own = {control.source.align: control for control in runs}
        assert len(runs) == 2 and sorted(own) == ["backbone", "steps"], track
        control, premise = own["steps"], own["backbone"]
        assert control.control and premise.control, track
        source = control.source
        assert source.measure == "retention_loss" and source.grid in grids[track], track
        assert (control.regime, control.reference, control.direction) == ("random", "plain", "lower")
        assert {"random", "plain"} <= set(grids[track][source.grid]["regimes"]), track
        assert (premise.regime, premise.reference, premise.direction) == ("plain", "plain", "higher")
        assert replace(premise.source, align="steps") == source, track
