"""The training stages (bat.stages.backbone_image, backbone_text, encoders) and their result folders.

The stages themselves run once per session, at smoke size, in the conftest fixtures
(``smoke_image_backbone``, ``smoke_text_backbone``, ``smoke_encoders``); here is what they wrote.
"""

import numpy as np
import pytest

from bat import paths
from bat.analysis.results import read_result, write_result
from bat.errors import ConfigError
from bat.io import write_npz
from bat.stages import backbone_image, backbone_text, encoders

STAGES = {"backbone_image": backbone_image, "backbone_text": backbone_text, "encoders": encoders}


def test_image_stage_writes_the_backbone_and_what_its_samples_show(smoke_image_backbone, smoke_root,
                                                                   smoke_params):
    section = smoke_params["backbone_image"]
    assert (smoke_image_backbone / "model_index.json").is_file()
    result, arrays = read_result(smoke_root / "runs" / "backbone_image", section, "backbone_image",
                                 "pretrain_image")
    assert result["params"] == section
    assert [len(result["log"][name]) for name in ("vae", "unet")] == [section["vae_steps"], section["unet_steps"]]
    assert [group["group"] for group in result["prompt_fidelity"]] == list(backbone_image.GROUPS)
    for group in result["prompt_fidelity"]:
        assert group["count"] == section["eval_prompts"]
        for space in ("thumbnail", "encoder"):
            assert 0 <= group[f"{space}_preference"] <= 1 and 0 <= group[f"{space}_accuracy"] <= 1
        assert np.isfinite([group["kid"], group["kid_floor"], group["vae_psnr"]]).all()
        samples, images = arrays[f"{group['group']}_samples"], arrays[f"{group['group']}_images"]
        size = section["resolution"]
        assert samples.shape == images.shape == (section["eval_prompts"], size, size, 3)
        assert samples.dtype == np.uint8
        assert len(arrays[f"{group['group']}_captions"]) == section["eval_prompts"]


def test_text_stage_writes_the_backbone_and_scores_before_and_after(smoke_text_backbone, smoke_root, smoke_params):
    from bat.text.backbone import pretraining_ids
    from bat.text.data import EVAL_SETS

    section = smoke_params["backbone_text"]
    result, arrays = read_result(smoke_root / "runs" / "backbone_text", section, "backbone_text", "pretrain_text")
    assert arrays == {}
    assert [row["step"] for row in result["rows"]] == list(range(1, section["steps"] + 1))
    assert result["distinct_examples_seen"] == len(set(pretraining_ids(smoke_text_backbone)))
    assert [row["set"] for row in result["scores"]] == [*EVAL_SETS, "mean"]
    assert all(row["items"] == section["eval_set_size"] for row in result["scores"][:-1])
    assert set(result["seconds"]) == {"load", "eval_before", "fine_tune", "save_and_reload", "eval_after", "total"}


def test_encoder_stage_writes_the_encoders_and_their_retrieval(smoke_encoders, smoke_root, smoke_params):
    section = smoke_params["encoders"]
    assert (smoke_encoders / "encoders.json").is_file()
    result, arrays = read_result(smoke_root / "runs" / "encoders", section, "encoders", "train_encoders")
    assert len(result["log"]["steps"]) == section["steps"]
    assert [report["group"] for report in result["retrieval"]] == [
        "D^B, seen", "OpenMoji, held out of D^B", *(f"{style}, held-out concepts" for style in section["styles"])]
    assert result["retrieval"][0]["count"] == section["seen_concepts"]
    assert len(arrays["examples"]) == len(arrays["captions"]) == len(arrays["retrieved"]) == encoders.EXAMPLES


@pytest.mark.parametrize("stem, key, value, message", [
    ("backbone_image", "eval_prompts", 0, "backbone_image.eval_prompts"),
    ("backbone_image", "bogus", 1, "unknown parameter backbone_image.bogus"),
    ("backbone_text", "steps", -1, "backbone_text.steps"),
    ("encoders", "styles", ["symbola"], "encoders.styles"),
    ("encoders", "bogus", 1, "unknown parameter encoders.bogus"),
])
def test_bad_parameter_is_one_line_naming_the_field(stem, key, value, message, smoke_params, tmp_path,
                                                   monkeypatch, capsys):
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"runtime": smoke_params["runtime"], stem: {**smoke_params[stem], key: value}}))
    monkeypatch.setattr(paths, "PARAMS", params)
    monkeypatch.setattr(paths, "MODELS", tmp_path / "models")
    monkeypatch.setattr(paths, "RUNS", tmp_path / "runs")
    assert STAGES[stem].main([]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "models").exists() and not (tmp_path / "runs").exists()


def test_a_result_measured_with_other_parameters_is_refused(tmp_path):
    folder = write_result(tmp_path / "runs" / "x", {"steps": 3, "channels": [4, 8]}, {"loss": [1.0]},
                          {"images": np.zeros((2, 4, 4, 3), np.uint8)})
    result, arrays = read_result(folder, {"steps": 3, "channels": [4, 8], "other": 1}, "x", "train_x")
    assert result == {"params": {"steps": 3, "channels": [4, 8]}, "loss": [1.0]}
    assert arrays["images"].shape == (2, 4, 4, 3)
    with pytest.raises(ConfigError, match=r"measured with x.steps = 3, not 4; run `dvc repro train_x`"):
        read_result(folder, {"steps": 4, "channels": [4, 8]}, "x", "train_x")
    with pytest.raises(ConfigError, match=r"x.channels = \[4, 8\], not None"):
        read_result(folder, {"steps": 3}, "x", "train_x")
    with pytest.raises(ConfigError, match=r"not found; run `dvc repro train_x` first"):
        read_result(tmp_path / "runs" / "missing", {}, "x", "train_x")


def test_npz_bytes_depend_on_the_arrays_only(tmp_path):
    arrays = {"images": np.arange(48, dtype=np.uint8).reshape(1, 4, 4, 3), "captions": np.array(["a", "b"])}
    write_npz(tmp_path / "one.npz", arrays)
    write_npz(tmp_path / "two.npz", arrays)
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    with np.load(tmp_path / "one.npz") as archive:
        assert archive["captions"].tolist() == ["a", "b"]
