"""The image backbone: validation before training, determinism, loading without bat."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from bat.config import build
from bat.errors import ConfigError
from bat.image.backbone import (ImageBackboneConfig, generate, load_image_backbone, pretrain,
                                save_image_backbone)
from bat.image.data import load_image_set

SMOKE = dict(source="train", model_id="unused", text_encoder="data/raw/minilm", resolution=16,
             vae_channels=[8, 16], unet_channels=[16, 32], unet_attention=[False, True], max_caption_tokens=8, vae_steps=2,
             vae_learning_rate=1e-3, unet_steps=2, unet_learning_rate=1e-3, unet_lr_schedule="cosine",
             ema_decay=0.9, snr_gamma=5.0, batch_size=4, caption_dropout=0.5, seed=0)


@pytest.fixture(scope="module")
def backbone_set(smoke_root):
    return load_image_set(smoke_root / "data" / "prepared" / "images" / "backbone.npz")


@pytest.fixture(scope="module")
def trained(backbone_set, tmp_path_factory):
    config = build(ImageBackboneConfig, SMOKE, "backbone_image")
    pipe, log = pretrain(config, backbone_set.images[:8], backbone_set.captions[:8])
    folder = save_image_backbone(pipe, tmp_path_factory.mktemp("models") / "backbone_image")
    return pipe, log, folder


@pytest.mark.parametrize("attention, match", [([True], "needs one true or false per entry of unet_channels"),
                                               ([True, "yes"], "needs one true or false"),
                                               ([False, False], "at least one level needs attention")])
def test_unet_attention_must_name_each_level(attention, match):
    with pytest.raises(ConfigError, match=rf"backbone_image.unet_attention: .*{match}"):
        build(ImageBackboneConfig, {**SMOKE, "unet_attention": attention}, "backbone_image")


def test_unet_levels_without_attention_are_plain_resnet_blocks(trained):
    unet = trained[0].unet
    assert unet.config.down_block_types == ("DownBlock2D", "CrossAttnDownBlock2D")
    assert unet.config.up_block_types == ("CrossAttnUpBlock2D", "UpBlock2D")


def test_resolution_the_levels_cannot_take_is_refused():
    with pytest.raises(ConfigError, match=r"backbone_image.resolution: 18 is not a multiple of 4"):
        build(ImageBackboneConfig, {**SMOKE, "resolution": 18}, "backbone_image")


@pytest.mark.parametrize("field, value", [("source", "download"), ("unet_lr_schedule", "step")])
def test_bad_choices_name_the_allowed_values(field, value):
    with pytest.raises(ConfigError, match=rf"backbone_image.{field}: '{value}' is not allowed; choose one of"):
        build(ImageBackboneConfig, {**SMOKE, field: value}, "backbone_image")


def test_images_of_another_size_are_refused_before_training(backbone_set):
    config = build(ImageBackboneConfig, {**SMOKE, "resolution": 32}, "backbone_image")
    with pytest.raises(ConfigError, match="set prepare.image_size to the same value"):
        pretrain(config, backbone_set.images[:4], backbone_set.captions[:4])


def test_pretraining_is_deterministic(trained, backbone_set):
    pipe, log, _ = trained
    config = build(ImageBackboneConfig, SMOKE, "backbone_image")
    again, log_again = pretrain(config, backbone_set.images[:8], backbone_set.captions[:8])
    assert [row["loss"] for row in log["unet"]] == [row["loss"] for row in log_again["unet"]]
    for model, other in ((pipe.unet, again.unet), (pipe.vae, again.vae)):
        for (name, tensor), (_, other_tensor) in zip(model.state_dict().items(), other.state_dict().items()):
            assert torch.equal(tensor, other_tensor), name


def test_saved_pipeline_loads_and_generates_without_bat(trained, tmp_path):
    pipe, _, folder = trained
    prompts = ["grinning face", "red heart"]
    expected = generate(load_image_backbone(folder), prompts, seed=3, steps=3)
    script = f"""
import numpy as np, torch
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained({str(folder)!r})
pipe.set_progress_bar_config(disable=True)
generators = [torch.Generator().manual_seed(3 + i) for i in range(2)]
images = pipe({prompts!r}, num_inference_steps=3, guidance_scale=3.0, generator=generators, output_type="np").images
np.save({str(tmp_path / "images.npy")!r}, (np.asarray(images) * 255).round().astype(np.uint8))
assert "bat" not in __import__("sys").modules
"""
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, cwd=tmp_path)
    np.testing.assert_array_equal(np.load(tmp_path / "images.npy"), expected)
    assert expected.shape == (2, 16, 16, 3)


def test_folder_without_a_pipeline_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="holds no diffusers pipeline"):
        load_image_backbone(tmp_path)


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="could not load a StableDiffusionPipeline from 'nobody/no-such-model'"):
        load_image_backbone("nobody/no-such-model")


def test_pretrained_source_is_loaded_and_saved_where_later_stages_read(trained, tmp_path, backbone_set):
    """The paper profile loads a pipeline by id (here: a local folder) and writes it to models/."""
    from bat.image.backbone import build_or_load

    _, _, folder = trained
    config = build(ImageBackboneConfig, {**SMOKE, "source": "pretrained", "model_id": str(folder)},
                   "backbone_image")
    pipe, log = build_or_load(config, backbone_set, tmp_path / "backbone_image")
    assert log is None
    assert (tmp_path / "backbone_image" / "model_index.json").exists()
    for name, tensor in pipe.unet.state_dict().items():
        assert torch.equal(tensor, trained[0].unet.state_dict()[name]), name


@pytest.mark.parametrize("field, value", [("ema_decay", 1.0), ("ema_decay", -0.1), ("snr_gamma", -1.0)])
def test_bad_training_levers_name_their_key(field, value):
    with pytest.raises(ConfigError, match=rf"backbone_image.{field}"):
        build(ImageBackboneConfig, {**SMOKE, field: value}, "backbone_image")


def test_ema_weights_are_what_the_unet_ends_with(backbone_set):
    """With EMA the saved UNet is the average, not the last step's weights."""
    images, captions = backbone_set.images[:8], backbone_set.captions[:8]
    plain, _ = pretrain(build(ImageBackboneConfig, {**SMOKE, "ema_decay": 0}, "backbone_image"), images, captions)
    averaged, _ = pretrain(build(ImageBackboneConfig, SMOKE, "backbone_image"), images, captions)
    name, tensor = next(iter(plain.unet.state_dict().items()))
    assert not torch.equal(tensor, averaged.unet.state_dict()[name])


class _Identity:
    """An "encoder" whose features are the flattened pixels."""

    @staticmethod
    def image_features(images):
        return images.reshape(len(images), -1).astype(np.float64) + 1


def test_fidelity_of_samples_that_are_the_references_is_perfect(trained, backbone_set, monkeypatch):
    """Samples equal to the real renders: preference 1 and top-1 for all in both spaces, KID ≈ 0 and
    below the floor of other real renders."""
    import bat.image.backbone as backbone

    pipe = trained[0]
    shown = backbone_set.spread(8)
    monkeypatch.setattr(backbone, "generate", lambda *args, **kwargs: shown.images.copy())
    measured = backbone.prompt_fidelity(pipe, shown, 0, 2, 3.0, _Identity(), backbone_set.images[-8:],
                                        backbone_set)
    for space in ("thumbnail", "encoder"):
        assert measured[f"{space}_preference"] == 1.0 and measured[f"{space}_accuracy"] == 1.0
        assert 0 <= measured[f"nearest_caption_{space}_preference"] <= 1
    assert measured["kid"] < measured["kid_floor"]
    assert np.isfinite(measured["vae_psnr"])


def test_nearest_caption_lookup_leaves_the_concept_out_and_finds_an_identical_caption(trained, backbone_set):
    from bat.image.backbone import nearest_caption_renders
    from bat.image.data import ImageSet

    pipe, shown = trained[0], backbone_set.spread(8)
    found = nearest_caption_renders(pipe, shown, backbone_set)
    own = {emoji: image for emoji, image in zip(backbone_set.emoji, backbone_set.images)}
    assert not any(np.array_equal(image, own[emoji]) for image, emoji in zip(found, shown.emoji))
    # The same captions under other concepts' names, with other images: found exactly.
    twins = ImageSet(255 - shown.images, [f"twin {emoji}" for emoji in shown.emoji], shown.captions, shown.source)
    np.testing.assert_array_equal(nearest_caption_renders(pipe, shown, twins), 255 - shown.images)
