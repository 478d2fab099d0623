"""Stored examples for the training loop: prepared sets → tensors the tasks consume.

Image examples are the frozen VAE's latents and the frozen text encoder's caption states, computed
once (the backbone is frozen for every adapter but DreamBooth, whose UNet alone trains), so an
adaptation step costs only the UNet. Prompts put the rare identifier before the style, as
DreamBooth does for subjects: ``"grinning face in sks style"``.
"""

from __future__ import annotations

import torch

from bat.adapters import DREAMBOOTH_IDENTIFIER
from bat.image_backbone import encode_captions, encode_images, images_to_tensor
from bat.image_data import ImageSet
from bat.protocols import Batch

STYLE_TEMPLATE = "{caption} in {identifier} style"


def style_prompts(captions: list[str], template: str = STYLE_TEMPLATE,
                  identifier: str = DREAMBOOTH_IDENTIFIER) -> list[str]:
    return [template.format(caption=caption, identifier=identifier) for caption in captions]


@torch.no_grad()
def image_examples(pipe, image_set: ImageSet, prompts: list[str] | None = None) -> Batch:
    """``{"latents", "encoder_hidden_states"}`` of ``image_set``; captions as prompts by default."""
    prompts = list(image_set.captions) if prompts is None else prompts
    if len(prompts) != len(image_set):
        raise ValueError(f"{len(prompts)} prompts for {len(image_set)} images")
    return {"latents": encode_images(pipe, images_to_tensor(image_set.images)),
            "encoder_hidden_states": encode_captions(pipe, prompts)}
