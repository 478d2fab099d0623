"""Stored examples for the training loop: prepared sets → tensors the tasks consume.

Image examples are the frozen VAE's latents and the frozen text encoder's caption states, computed
once (the backbone is frozen for every adapter but DreamBooth, whose UNet alone trains), so an
adaptation step costs only the UNet. Prompts put the rare identifier before the style, as
DreamBooth does for subjects: ``"grinning face in sks style"``. DreamBooth's class images (the
prior-preservation data of paper eq. 27) are the backbone's own samples of the class prompts,
marked ``prior`` so that :class:`bat.tasks.DiffusionTask` weights them as diffusers does.
"""

from __future__ import annotations

import numpy as np
import torch

from bat.adapters import DREAMBOOTH_IDENTIFIER
from bat.errors import ConfigError
from bat.image_backbone import encode_captions, encode_images, generate, images_to_tensor
from bat.image_data import ImageSet
from bat.protocols import Batch

STYLE_TEMPLATE = "{caption} in {identifier} style"
# The class prompt drops the identifier, as DreamBooth's "a dog" for "a sks dog": for a style that
# leaves the concept alone, which is what the backbone draws without the style.
CLASS_TEMPLATE = "{caption}"


def style_prompts(captions: list[str], identifier: str = DREAMBOOTH_IDENTIFIER,
                  template: str = STYLE_TEMPLATE) -> list[str]:
    """``"<caption> in <identifier> style"`` for each caption: prompts for a personalized style."""
    if not isinstance(identifier, str) or not identifier.strip():
        raise ConfigError(f"identifier: {identifier!r} must be a non-empty word, e.g. 'sks'")
    return [template.format(caption=caption, identifier=identifier) for caption in captions]


def class_prompts(captions: list[str], template: str = CLASS_TEMPLATE) -> list[str]:
    """The class prompt of each style prompt's concept: ``template`` filled with the caption."""
    return [template.format(caption=caption) for caption in captions]


def class_images(pipe, prompts: list[str], count: int, seed: int, steps: int,
                 guidance_scale: float) -> tuple[np.ndarray, list[str]]:
    """``count`` backbone samples for DreamBooth's prior preservation, uint8 ``[count, H, W, 3]``,
    and the prompt of each: image ``i`` is drawn for ``prompts[i % len(prompts)]`` with the
    generator seeded ``seed + i`` (:func:`bat.image_backbone.generate`), so a seed fixes the set
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


@torch.no_grad()
def image_examples(pipe, image_set: ImageSet, prompts: list[str] | None = None) -> Batch:
    """``{"latents", "encoder_hidden_states"}`` of ``image_set``; captions as prompts by default."""
    prompts = list(image_set.captions) if prompts is None else prompts
    if len(prompts) != len(image_set):
        raise ValueError(f"{len(prompts)} prompts for {len(image_set)} images")
    return {"latents": encode_images(pipe, images_to_tensor(image_set.images)),
            "encoder_hidden_states": encode_captions(pipe, prompts)}


def text_examples(tokenizer, records: list[dict], max_length: int) -> Batch:
    """Instruction records → right-padded ``{"input_ids", "attention_mask", "labels"}``.

    Formatted exactly as the text backbone was fine-tuned (chat template, prompt masked);
    records whose prompt alone fills ``max_length`` are dropped, as in that fine-tune. Every set
    is padded to ``max_length``, so that D^A and D^B examples can share a batch (the task trims
    the padding no example of a batch uses).
    """
    from bat.text_backbone import collate, encode_records

    encoded, _ = encode_records(tokenizer, records, max_length)
    if not encoded:
        raise ValueError(f"no record fits in max_length={max_length} tokens")
    return collate(encoded, tokenizer.pad_token_id, max_length)
