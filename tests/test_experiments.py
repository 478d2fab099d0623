"""Fig. 4 grid (bat.experiments): config checks, a smoke-sized grid, and its notebook at smoke size."""


import pandas as pd
import pytest

from bat import paths
from bat.config import build
from bat.errors import ConfigError
from bat.experiments import (InitialStepsConfig, band_summary, final_comparison, initial_steps_runs,
                             oracle_run)

STEM = "fig04_dreambooth_initial_steps"
# The smoke profile's section (profiles/smoke.yaml overrides these keys of params.yaml).
SMOKE = {"styles": ["noto"], "seeds": [0, 1], "regimes": ["plain", "bat", "random_matched"],
         "adapter": "dreambooth", "steps": 2, "batch_size": 2, "learning_rate": 0.0001,
         "gamma": 0.5, "log_every": 1, "pool_size": 4, "score_every": 1, "damping": 0.001}


def test_defaults_are_valid():
    assert InitialStepsConfig().backbone_per_step == 4


@pytest.mark.parametrize("field, value, message", [
    ("styles", ["noto", "openmoji"], r"styles: 'openmoji' is not allowed; choose one of \['noto', 'emojione'\]"),
    ("styles", "noto", r"styles: 'noto' must be a non-empty list"),
    ("seeds", [], r"seeds: \[\] must be a non-empty list"),
    ("seeds", [0, 0], r"seeds: \[0, 0\] lists an entry twice"),
    ("regimes", ["plain", "random_matched"], r"'random_matched' is matched to a 'bat' run"),
    ("regimes", ["random"], r"regimes: 'random' is not allowed"),
    ("adapter", "lora", r"adapter: 'lora' is not allowed"),
    ("steps", 0, r"steps: 0 must be a positive integer"),
    ("gamma", 1.0, r"gamma: 1.0 must lie strictly between 0.0 and 1.0"),
    ("pool_size", 3, r"pool_size: 3 is fewer than the 4 backbone examples a step takes"),
])
def test_bad_values_are_refused(field, value, message):
    values = {**SMOKE, "batch_size": 4, field: value}
    with pytest.raises(ConfigError, match=message):
        build(InitialStepsConfig, values, STEM)


def test_missing_oracle_names_its_stage(smoke_root, tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "PREPARED", smoke_root / "data" / "prepared")
    config = build(InitialStepsConfig, SMOKE, STEM)
    with pytest.raises(ConfigError, match=r"run the stage oracle_image@noto_dreambooth first"):
        initial_steps_runs(config, tmp_path / "runs", oracles_folder=tmp_path / "none")


def test_grid_runs_matches_baselines_and_is_not_retrained(smoke_root, smoke_image_backbone,
                                                          smoke_oracles, tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "PREPARED", smoke_root / "data" / "prepared")
    config = build(InitialStepsConfig, SMOKE, STEM)
    frame = initial_steps_runs(config, tmp_path / "runs", smoke_image_backbone, smoke_oracles)
    assert len(frame) == 1 * 2 * 3 * (config.steps + 1)
    assert frame["weight_difference"].notna().all()  # log_every 1, and step 0
    start = frame[frame["step"] == 0]
    assert start["weight_difference"].nunique() == 1  # every run starts from the backbone
    last = frame[frame["step"] == config.steps].set_index(["seed", "regime"])
    assert (last.loc[(0, "plain"), "n_backbone"]) == 0
    # random_matched took exactly as many backbone examples as bat, step by step.
    for seed in SMOKE["seeds"]:
        bat = frame[(frame["seed"] == seed) & (frame["regime"] == "bat")]["n_backbone"].tolist()
        matched = frame[(frame["seed"] == seed) & (frame["regime"] == "random_matched")]["n_backbone"].tolist()
        assert bat == matched and bat[-1] == config.steps * config.backbone_per_step
    assert frame[(frame["regime"] == "bat") & (frame["step"] == 1)]["reselected"].all()
    assert last["heldout_loss"].notna().all()

    summary = band_summary(frame)
    assert set(summary["regime"]) == set(SMOKE["regimes"])
    assert (summary["min"] <= summary["mean"] + 1e-9).all() and (summary["mean"] <= summary["max"] + 1e-9).all()
    comparison = final_comparison(frame).set_index("regime")
    assert pd.isna(comparison.loc["plain", "share_below_plain"])  # plain is the reference
    assert 0.0 <= comparison.loc["bat", "share_below_plain"] <= 1.0

    # Finished runs are resumed at their end: the same numbers, nothing retrained.
    again = initial_steps_runs(config, tmp_path / "runs", smoke_image_backbone, smoke_oracles)
    columns = ["style", "seed", "regime", "step", "loss", "weight_difference", "n_backbone"]
    assert again[columns].equals(frame[columns])

