"""DreamBooth's class images: the prior-preservation data of paper eq. 27.

They are the backbone's own samples of the class prompts, marked ``prior`` so that
:class:`bat.image.task.DiffusionTask` weights them as diffusers' ``train_dreambooth.py`` does
(mse(instance) + λ·mse(class), whatever the mix of the two in a batch).
"""

from __future__ import annotations

import numpy as np
import torch

from bat.core.protocols import Batch
from bat.errors import ConfigError
from bat.image.backbone import encode_captions, encode_images, generate
from bat.image.data import images_to_tensor

# The class prompt drops the identifier, as DreamBooth's "a dog" for "a sks dog": for a style that
# leaves the concept alone, which is what the backbone draws without the style.
CLASS_TEMPLATE = "{caption}"


def class_prompts(captions: list[str], template: str = CLASS_TEMPLATE) -> list[str]:
    """The class prompt of each style prompt's concept: ``template`` filled with the caption."""
    return [template.format(caption=caption) for caption in captions]


def class_images(pipe, prompts: list[str], count: int, seed: int, steps: int,
                 guidance_scale: float) -> tuple[np.ndarray, list[str]]:
    """``count`` backbone samples for DreamBooth's prior preservation, uint8 ``[count, H, W, 3]``,
    and the prompt of each: image ``i`` is drawn for ``prompts[i % len(prompts)]`` with the
    generator seeded ``seed + i`` (:func:`bat.image.backbone.generate`), so a seed fixes the set
    and each image does not depend on how many others are drawn.

    Raises :class:`ConfigError` for an empty ``prompts`` or ``count < 1``.
    """
    if not prompts:
        raise ConfigError("prompts: no class prompt given; pass at least one (see class_prompts)")
    if count < 1:
        raise ConfigError(f"count: {count!r} is not allowed; draw at least one class image")
    used = [prompts[i % len(prompts)] for i in range(count)]
    return generate(pipe, used, seed, steps=steps, guidance_scale=guidance_scale), used


@torch.no_grad()
def class_examples(pipe, images: np.ndarray, prompts: list[str]) -> Batch:
    """Class images (uint8 ``[N, H, W, 3]``) with their prompts as training examples:
    ``{"latents", "encoder_hidden_states", "prior"}``, ``prior`` all True (bool ``[N]``)."""
    if len(prompts) != len(images):
        raise ConfigError(f"prompts: {len(prompts)} prompts for {len(images)} class images; give one each")
    return {"latents": encode_images(pipe, images_to_tensor(images)),
            "encoder_hidden_states": encode_captions(pipe, prompts),
            "prior": torch.ones(len(images), dtype=torch.bool)}
