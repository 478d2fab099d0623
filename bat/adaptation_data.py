"""Stored examples for the training loop: prepared sets → tensors the tasks consume.

Image examples are the frozen VAE's latents and the frozen text encoder's caption states, computed
once (the backbone is frozen for every adapter but DreamBooth, whose UNet alone trains), so an
adaptation step costs only the UNet. Prompts put the rare identifier before the style, as
DreamBooth does for subjects: ``"grinning face in sks style"``.
"""

from __future__ import annotations

import torch

from bat.adapters import DREAMBOOTH_IDENTIFIER
from bat.errors import ConfigError
from bat.image_backbone import encode_captions, encode_images, images_to_tensor
from bat.image_data import ImageSet
from bat.protocols import Batch

STYLE_TEMPLATE = "{caption} in {identifier} style"


def style_prompts(captions: list[str], identifier: str = DREAMBOOTH_IDENTIFIER,
                  template: str = STYLE_TEMPLATE) -> list[str]:
    """``"<caption> in <identifier> style"`` for each caption: prompts for a personalized style."""
    if not isinstance(identifier, str) or not identifier.strip():
        raise ConfigError(f"identifier: {identifier!r} must be a non-empty word, e.g. 'sks'")
    return [template.format(caption=caption, identifier=identifier) for caption in captions]


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
