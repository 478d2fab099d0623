"""Oracle stages: a plain run per dataset whose final weights later runs measure against."""

import pytest
import torch

from bat import paths
from bat.core.checkpoint import trained_vector
from bat.config import build
from bat.errors import ConfigError
from bat.stages.oracle import OracleRun, load_run, track_options, train_oracle


@pytest.fixture
def smoke_paths(smoke_root, monkeypatch):
    monkeypatch.setattr(paths, "PREPARED", smoke_root / "data" / "prepared")


def test_oracle_trains_saves_and_is_not_retrained(smoke_paths, smoke_image_backbone, smoke_params, tmp_path):
    run = load_run("noto_locon", smoke_params)
    result = train_oracle("noto_locon", run, smoke_image_backbone.parent, tmp_path / "noto_locon")
    assert [row["step"] for row in result.log] == list(range(1, run.steps + 1))
    oracle = trained_vector(tmp_path / "noto_locon")
    # A finished run is resumed at its end: nothing more is trained, the vector is the same.
    again = train_oracle("noto_locon", run, smoke_image_backbone.parent, tmp_path / "noto_locon")
    assert len(again.log) == run.steps
    assert torch.equal(trained_vector(tmp_path / "noto_locon"), oracle)


def test_text_oracle_trains_a_lora_on_the_lm(smoke_paths, smoke_text_backbone, smoke_params, tmp_path):
    run = load_run("word_definition_lora", smoke_params)
    result = train_oracle("word_definition_lora", run, smoke_text_backbone.parent, tmp_path / "lora",
                          **track_options("text", smoke_params))
    assert len(result.log) == run.steps
    assert trained_vector(tmp_path / "lora").numel() > 0


def test_unknown_run_names_the_runs(smoke_params):
    with pytest.raises(ConfigError, match=r"oracles has no run 'x'; runs: \['emojione_dreambooth'"):
        load_run("x", smoke_params)


@pytest.mark.parametrize("field, value, message", [
    ("adapter", "loda", r"oracles.image.adapter: 'loda' is not allowed"),
    ("dataset", "noto_train", r"oracles.image.dataset: 'noto_train' is not allowed; choose one of \['noto_oracle'"),
    ("dataset", "word_definition_oracle", r"oracles.image.dataset: 'word_definition_oracle' is not allowed"),
])
def test_bad_runs_are_refused(smoke_params, field, value, message):
    values = {"track": "image", **smoke_params["oracles"]["image"]["noto_dreambooth"], field: value}
    with pytest.raises(ConfigError, match=message):
        build(OracleRun, values, "oracles.image.noto_dreambooth")
