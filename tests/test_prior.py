"""DreamBooth's class images: drawn from the backbone, fixed by a seed, trained as prior examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bat.image.prior import class_examples, class_images, class_prompts
from bat.image.track import style_prompts
from bat.errors import ConfigError
from bat.image.backbone import encode_images, generate
from bat.image.data import images_to_tensor
from bat.image.task import DiffusionTask
from tests.tiny_models import tiny_pipeline, tiny_scheduler

STEPS, GUIDANCE = 2, 3.0


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    pipe = tiny_pipeline(tmp_path_factory.mktemp("pipe"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_class_prompts_drop_the_identifier():
    captions = ["dove", "old man"]
    assert class_prompts(captions) == captions
    assert all("sks" in p for p in style_prompts(captions)) and not any("sks" in p for p in class_prompts(captions))


def test_class_images_are_fixed_by_the_seed_image_by_image(pipe):
    prompts = ["dove", "moai"]
    images, used = class_images(pipe, prompts, 3, seed=5, steps=STEPS, guidance_scale=GUIDANCE)
    again, _ = class_images(pipe, prompts, 3, seed=5, steps=STEPS, guidance_scale=GUIDANCE)
    other, _ = class_images(pipe, prompts, 3, seed=6, steps=STEPS, guidance_scale=GUIDANCE)
    assert used == ["dove", "moai", "dove"]
    assert images.dtype == np.uint8 and images.shape[0] == 3 and images.shape[-1] == 3
    assert np.array_equal(images, again) and not np.array_equal(images, other)
    # The third image alone, drawn by the backbone with its own seed, is the same picture.
    alone = generate(pipe, ["dove"], seed=7, steps=STEPS, guidance_scale=GUIDANCE)
    assert np.array_equal(images[2], alone[0])


def test_class_examples_train_as_prior_with_diffusers_weighting(pipe):
    images, used = class_images(pipe, ["dove"], 3, seed=0, steps=STEPS, guidance_scale=GUIDANCE)
    prior = class_examples(pipe, images, used)
    assert prior["prior"].tolist() == [True, True, True]
    torch.testing.assert_close(prior["latents"], encode_images(pipe, images_to_tensor(images)))
    instance = {key: value[:1] for key, value in prior.items() if key != "prior"}
    instance["prior"] = torch.zeros(1, dtype=torch.bool)
    mixed = {key: torch.cat([instance[key], prior[key]]) for key in prior}  # 1 instance + 3 class
    task = DiffusionTask(tiny_scheduler(), prior_loss_weight=1.0)
    batch = task.prepare(mixed, torch.Generator().manual_seed(0))
    with torch.no_grad():
        predicted = task.batch_outputs(pipe.unet, batch)
        loss = task.batch_losses(pipe.unet, batch).mean()
    expected = F.mse_loss(predicted[:1], batch["noise"][:1]) + F.mse_loss(predicted[1:], batch["noise"][1:])
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)


def test_bad_class_image_requests_name_the_field(pipe):
    with pytest.raises(ConfigError, match="prompts"):
        class_images(pipe, [], 2, seed=0, steps=STEPS, guidance_scale=GUIDANCE)
    with pytest.raises(ConfigError, match="count"):
        class_images(pipe, ["dove"], 0, seed=0, steps=STEPS, guidance_scale=GUIDANCE)
    with pytest.raises(ConfigError, match="prompts"):
        class_examples(pipe, np.zeros((2, 8, 8, 3), np.uint8), ["dove"])
