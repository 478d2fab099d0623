"""Grids of runs (bat.stages.grid, bat.analysis.runs): config checks and every smoke-sized grid."""

import copy

import numpy as np
import pandas as pd
import pytest

from bat import paths
from bat.config import build
from bat.errors import ConfigError
from bat.stages.grid import GridConfig, load_grid, run_grid
from bat.analysis.runs import (band_summary, compare_final, final_rows, paired_difference,
                              read_grid, selection_summary)

VALID = {"name": "test", "track": "image", "datasets": ["noto"], "adapters": ["dreambooth"],
         "seeds": [0, 1], "regimes": ["plain", "bat", "random_matched"], "gammas": [0.5],
         "batch_sizes": [4], "steps": 2, "learning_rate": 0.0001, "log_every": 1,
         "evaluate_every": 1, "pool": "backbone", "pool_size": 4, "candidates": 0,
         "selection": {"score_adaptation_every": 1, "score_bat_every": 1, "damping": 0.001},
         "class_images": 4, "prior_loss_weight": 1.0,
         "eval_size": 2, "sample_steps": 2, "guidance_scale": 7.5, "benchmark_items": 0}


def test_every_grid_of_each_profile_is_valid(smoke_params):
    from bat.config import profile_params

    for params in (smoke_params, profile_params("tiny"), profile_params("paper")):
        for track in ("image", "text"):
            for name in params["grids"][track]:
                assert load_grid(name, params).track == track


@pytest.mark.parametrize("field, value, message", [
    ("datasets", "noto", r"datasets: 'noto' must be a list, e.g. \[noto\]"),
    ("adapters", ["lora"], r"adapters: 'lora' is not allowed"),
    ("seeds", [0, 0], r"seeds: \[0, 0\] lists an entry twice"),
    ("regimes", ["plain", "random_matched"], r"'random_matched' is matched to a 'bat' run"),
    ("regimes", ["bogus"], r"regimes: 'bogus' is not allowed"),
    ("gammas", [1.0], r"gammas: 1.0 must lie strictly between 0.0 and 1.0"),
    ("steps", 0, r"steps: 0 must be a positive integer"),
    ("pool", "laion", r"pool: 'laion' is not allowed; choose one of \['backbone', 'out_of_backbone'\]"),
    ("pool_size", 3, r"pool_size: 3 is fewer than the 4 backbone examples"),
    ("candidates", 3, r"candidates: 3 must lie between the 4 backbone examples a step may take "
                      r"and pool_size 4, or be 0"),
    ("candidates", -1, r"candidates: -1"),
    ("benchmark_items", 4, r"benchmark_items: the multiple-choice sets score LMs"),
    ("selection", {"solver": "qr"}, r"solver: 'qr' is not allowed"),
    ("regimes", ["plain", "bogus"], r"regimes: 'bogus' is not allowed"),
    ("prior_loss_weight", -1.0, r"prior_loss_weight: -1.0"),
    ("selection", {"seed": 3}, r"grids.image.test.selection.seed is set per run"),
    ("selection", {"bogus": 1}, r"unknown parameter grids.image.test.selection.bogus"),
])
def test_bad_values_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        build(GridConfig, {**VALID, field: value}, "grids.image.test")


def test_a_dataset_that_prepare_does_not_write_is_refused(smoke_params):
    params = copy.deepcopy(smoke_params)
    name = next(iter(params["grids"]["image"]))
    params["grids"]["image"][name]["datasets"] = ["openmoji"]
    with pytest.raises(ConfigError, match=rf"grids.image.{name}.datasets: 'openmoji' is not allowed; "
                                          r"choose one of \['noto', 'emojione'\]"):
        load_grid(name, params)


def test_text_grid_takes_text_tasks_and_adapters():
    values = {**VALID, "track": "text", "datasets": ["word_definition"], "adapters": ["lora"]}
    assert build(GridConfig, values, "grids.text.test").mixing == "regular_interval"
    with pytest.raises(ConfigError, match=r"'prior_preservation' exists for image grids only"):
        build(GridConfig, {**values, "regimes": ["plain", "prior_preservation"]}, "grids.text.test")
    with pytest.raises(ConfigError, match=r"grids.text.test.pool: 'out_of_backbone' exists for images only"):
        build(GridConfig, {**values, "pool": "out_of_backbone"}, "grids.text.test")


def test_a_grid_seed_may_not_be_an_oracle_seed(smoke_params):
    import copy

    params = copy.deepcopy(smoke_params)
    params["oracles"]["image"]["noto_dreambooth"]["seed"] = params["grids"]["image"]["dreambooth"]["seeds"][0]
    with pytest.raises(ConfigError, match=r"grids.image.dreambooth.seeds: 0 is also the seed of an oracle"):
        load_grid("dreambooth", params)


def test_unknown_grid_lists_the_grids(smoke_params):
    with pytest.raises(ConfigError, match=r"grids has no grid 'bogus'; grids: \['batch_size'"):
        load_grid("bogus", smoke_params)


def test_evaluation_steps_end_at_the_last_step():
    assert build(GridConfig, {**VALID, "steps": 10, "evaluate_every": 4}, "g").evaluation_steps == [4, 8, 10]
    assert build(GridConfig, {**VALID, "steps": 10, "evaluate_every": 0}, "g").evaluation_steps == [10]
    # a longer run (compute_matched) goes on being evaluated at the same interval
    assert build(GridConfig, {**VALID, "steps": 10, "evaluate_every": 4}, "g").evaluation_steps_until(17) \
        == [4, 8, 12, 16, 17]
    assert build(GridConfig, {**VALID, "steps": 10, "evaluate_every": 0}, "g").evaluation_steps_until(25) \
        == [10, 20, 25]


def test_missing_oracle_names_its_entry(smoke_root, smoke_image_backbone, smoke_encoders, tmp_path,
                                        monkeypatch):
    monkeypatch.setattr(paths, "PREPARED", smoke_root / "data" / "prepared")
    models = tmp_path / "models"
    models.mkdir()
    for name in ("backbone_image", "encoders"):
        (models / name).symlink_to(smoke_root / "models" / name)
    with pytest.raises(ConfigError, match=r"add 'noto_dreambooth' to oracles.image"):
        run_grid(build(GridConfig, VALID, "g"), tmp_path / "runs" / "test", models)
    assert not (tmp_path / "runs" / "test").exists()  # nothing half-written


def test_dreambooth_grid_matches_its_baselines(smoke_grids, smoke_params):
    grid = read_grid(smoke_grids / "dreambooth")
    config = load_grid("dreambooth", smoke_params)
    all_steps = grid.steps
    runs = all_steps.groupby(["seed", "regime"]).size()
    assert len(runs) == len(config.seeds) * len(config.regimes)
    # compute_matched: plain, plus the steps that BAT's selection time would have paid for
    assert (runs.xs("compute_matched", level="regime") >= config.steps + 1).all()
    steps = all_steps[all_steps["regime"] != "compute_matched"]
    assert (steps.groupby(["seed", "regime"]).size() == config.steps + 1).all()
    assert steps["weight_difference"].notna().all()  # log_every 1, and step 0
    assert steps[steps["step"] == 0]["weight_difference"].nunique() == 1  # all start at the backbone
    assert steps[steps["regime"] == "plain"]["gamma"].isna().all()  # plain has no γ
    for seed in config.seeds:  # random_matched took as many backbone examples as bat, step by step
        bat = steps[(steps["seed"] == seed) & (steps["regime"] == "bat")]["n_backbone"].tolist()
        matched = steps[(steps["seed"] == seed) & (steps["regime"] == "random_matched")]["n_backbone"].tolist()
        assert bat == matched and bat[-1] > 0
    selection = selection_summary(steps)  # one row per selecting regime and dataset
    assert selection["checks"].iloc[0] == len(config.seeds) * config.steps
    assert set(selection["regime"]) == set(config.regimes) & {"bat", "bat_oracle_free"}
    matched = grid.evaluations[grid.evaluations["regime"] == "compute_matched"]
    for seed, group in matched.groupby("seed"):  # evaluated along its extra steps as well
        last = runs[(seed, "compute_matched")] - 1
        assert sorted(group["step"].unique()) == [0, *config.evaluation_steps_until(last)]

    evaluations = grid.evaluations[grid.evaluations["regime"] != "compute_matched"]
    assert sorted(evaluations["step"].unique()) == [0, *config.evaluation_steps]
    assert evaluations[["heldout_loss", "cosine", "vendi", "clip_cosine"]].notna().all().all()
    start = evaluations[evaluations["step"] == 0].groupby("seed")["cosine"].nunique()
    assert (start == 1).all()  # one backbone evaluation per seed, shared by the regimes
    images = grid.samples("noto", "dreambooth", 0, 0.5, 2, "bat", config.steps)
    assert images.dtype == np.uint8 and images.shape[0] == config.eval_size
    assert len(grid.info["captions"]["noto"]) == config.eval_size

    summary = band_summary(steps, "weight_difference")
    assert (summary["min"] <= summary["mean"] + 1e-9).all() and (summary["mean"] <= summary["max"] + 1e-9).all()
    difference = paired_difference(steps, "weight_difference", "bat")
    assert len(difference) == len(config.seeds) * (config.steps + 1)
    assert np.allclose(difference["difference"],
                       difference["weight_difference"] - difference["weight_difference_reference"])
    final = compare_final(evaluations, ("cosine", "heldout_loss")).set_index("regime")
    assert "cosine_better_share" not in final.columns or pd.isna(final.loc["plain", "cosine_better_share"])
    assert 0.0 <= final.loc["bat", "cosine_better_share"] <= 1.0


def test_sweeps_cover_every_setting(smoke_grids, smoke_params):
    ratio = read_grid(smoke_grids / "ratio").steps
    assert set(ratio[ratio["regime"] == "bat"]["gamma"]) == set(smoke_params["grids"]["image"]["ratio"]["gammas"])
    assert ratio[ratio["regime"] == "plain"]["gamma"].isna().all()  # one plain run, not one per γ
    batch = read_grid(smoke_grids / "batch_size").steps
    assert set(batch["batch_size"]) == set(smoke_params["grids"]["image"]["batch_size"]["batch_sizes"])
    out = read_grid(smoke_grids / "out_of_backbone")
    assert set(out.steps["regime"]) == {"plain", "bat"} and out.info["config"]["pool"] == "out_of_backbone"


def test_text_grid_scores_final_models_on_the_benchmarks(smoke_grids, smoke_params):
    grid = read_grid(smoke_grids / "lora_dora")
    evaluations = grid.evaluations
    assert set(evaluations["adapter"]) == {"lora", "dora"}
    final = final_rows(evaluations)
    assert final["acc:mean"].between(0, 1).all() and final["heldout_loss"].notna().all()
    assert evaluations[evaluations["step"] == 0]["acc:mean"].nunique() == 1  # the backbone, once
    assert not (smoke_grids / "lora_dora" / "samples.npz").exists()


def test_a_grid_is_deterministic(smoke_grids, smoke_root, smoke_params, tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "PREPARED", smoke_root / "data" / "prepared")
    run_grid(load_grid("locon", smoke_params), tmp_path / "locon", smoke_root / "models")
    again, first = read_grid(tmp_path / "locon"), read_grid(smoke_grids / "locon")
    columns = ["dataset", "seed", "regime", "step", "loss", "weight_difference", "n_backbone"]
    pd.testing.assert_frame_equal(again.steps[columns], first.steps[columns])
    pd.testing.assert_frame_equal(again.evaluations, first.evaluations)


def test_only_the_bat_regimes_draw_candidates(smoke_root, smoke_encoders, smoke_oracles, smoke_params,
                                             tmp_path, monkeypatch):
    """Algorithm 1 ranks a fresh draw of ``candidates`` per step; the baselines take their
    examples at random from all they are given (random_matched: BAT's pool), so a draw would
    only shrink what they sample from."""
    import dataclasses

    import bat.core.train

    monkeypatch.setattr(paths, "PREPARED", smoke_root / "data" / "prepared")
    offered, original = [], bat.core.train.train

    def recording(*args, **kwargs):
        offered.append((args[5].regime, args[5].candidates))  # args[5]: the TrainConfig
        return original(*args, **kwargs)
    monkeypatch.setattr(bat.core.train, "train", recording)
    config = dataclasses.replace(load_grid("dreambooth", smoke_params), seeds=(0,), evaluate_every=0)
    assert config.candidates == 3 and "random_matched" in config.regimes
    run_grid(config, tmp_path / "dreambooth", smoke_root / "models")
    assert len(offered) == len(config.regimes)  # bat, bat_oracle_free: "bat"; the rest plain/random
    assert set(offered) == {("plain", 0), ("random", 0), ("bat", 3)}


def test_a_grid_without_pool_regimes_neither_checks_nor_draws_a_pool(smoke_root, smoke_text_oracles,
                                                                     smoke_params, tmp_path, monkeypatch):
    """pool_size and candidates matter to bat, bat_oracle_free and random_matched only: a grid of
    plain and random runs accepts a pool too small for its steps, and no cell draws one."""
    import dataclasses

    from bat.stages.grid import GridRunner
    from bat.stages.oracle import track_options

    short = {**VALID, "regimes": ["plain", "random"], "pool_size": 1, "candidates": 1}
    assert not build(GridConfig, short, "grids.image.test").uses_pool
    with pytest.raises(ConfigError, match=r"pool_size: 1 is fewer than the 4 backbone examples"):
        build(GridConfig, {**short, "regimes": ["plain", "bat_oracle_free"]}, "grids.image.test")

    monkeypatch.setattr(paths, "PREPARED", smoke_root / "data" / "prepared")

    def refuse(self, seed):
        raise AssertionError(f"a grid of {self.config.regimes} drew BAT's pool of seed {seed}")
    monkeypatch.setattr(GridRunner, "pool", refuse)
    config = dataclasses.replace(load_grid("forgetting", smoke_params), pool_size=1, candidates=1)
    assert set(config.regimes) == {"plain", "random"}
    grid = read_grid(run_grid(config, tmp_path / "forgetting", smoke_root / "models",
                              **track_options("text", smoke_params)))
    assert grid.info["pools"] == {}
    assert set(grid.evaluations["regime"]) == {"plain", "random"}


def test_mean_sd_table_keeps_the_means_precision():
    from bat.analysis.runs import mean_sd_table

    comparison = pd.DataFrame({"regime": ["plain", "bat"], "score_mean": [7379.2, 0.22131],
                               "score_sd": [834.1, 0.0013]})
    table = mean_sd_table(comparison, ("score",), ("regime",))
    assert table["score"].tolist() == ["7379 ± 834", "0.2213 ± 0.0013"]


def test_better_share_pairs_runs_of_the_same_dataset_and_seed():
    rows = []
    for dataset, offset in (("noto", 0.0), ("emojione", 10.0)):
        for seed in (0, 1):
            rows.append({"dataset": dataset, "adapter": "dreambooth", "seed": seed, "batch_size": 4,
                         "gamma": None, "regime": "plain", "step": 8, "cosine": offset + 0.5})
            rows.append({"dataset": dataset, "adapter": "dreambooth", "seed": seed, "batch_size": 4,
                         "gamma": 0.5, "regime": "bat", "step": 8, "cosine": offset + 0.6})
    final = compare_final(pd.DataFrame(rows), ("cosine",), by=("adapter", "regime")).set_index("regime")
    assert final.loc["bat", "cosine_better_share"] == 1.0  # pooled over styles, paired within them


def test_a_grid_refuses_a_data_parallel_launch(monkeypatch, capsys):
    """Under ``accelerate launch`` / ``torchrun`` every process would run every cell and write the
    tables: the stage stops with one line that points at the Ray executor, before reading params."""
    from bat.stages.grid import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["dreambooth"]) == 2
    assert "grids: a grid is not launched data-parallel" in capsys.readouterr().err
