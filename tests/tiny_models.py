"""Minuscule real backbones for tests: a Stable Diffusion pipeline and a LLaMA, built offline.

Everything is made from configs with a fixed seed, so two processes that call the same builder
get the same weights; nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT_LENGTH = 16  # tokens per prompt; also the text encoder's number of positions
CROSS_DIM = 16  # text embedding width the UNet attends to
LATENT_CHANNELS = 4
LATENT_SIZE = 8


def tiny_unet(seed: int = 0, channels: tuple[int, int] = (8, 16)):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        block_out_channels=channels, layers_per_block=1, norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_DIM, attention_head_dim=4)


def tiny_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=100, clip_sample=False, steps_offset=1)


def write_clip_vocab(folder: Path) -> None:
    """A character-level CLIP vocabulary (letters and digits, with and without end-of-word)."""
    symbols = list("abcdefghijklmnopqrstuvwxyz0123456789")
    tokens = symbols + [f"{s}</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def tiny_pipeline(folder: Path, seed: int = 0):
    """A complete ``StableDiffusionPipeline`` whose UNet is :func:`tiny_unet`."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    write_clip_vocab(folder / "vocab")
    tokenizer = CLIPTokenizer(str(folder / "vocab" / "vocab.json"),
                              str(folder / "vocab" / "merges.txt"), model_max_length=TEXT_LENGTH)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=CROSS_DIM, intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=TEXT_LENGTH,
        projection_dim=CROSS_DIM))
    vae = AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=LATENT_CHANNELS,
                        norm_num_groups=4, sample_size=LATENT_SIZE)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=tiny_unet(seed),
        scheduler=tiny_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def tiny_llama(seed: int = 0, hidden: int = 32):
    """Eager attention: SDPA's mask builder branches on mask values, which vmap cannot trace."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=64, max_position_embeddings=64, attn_implementation="eager"))


def diffusion_examples(count: int, seed: int, prior: list[bool] | None = None,
                       size: int = LATENT_SIZE) -> dict:
    """``count`` random latent/text-embedding pairs, the form the diffusion data is trained in."""
    generator = torch.Generator().manual_seed(seed)
    examples = {
        "latents": torch.randn(count, LATENT_CHANNELS, size, size, generator=generator),
        "encoder_hidden_states": torch.randn(count, TEXT_LENGTH, CROSS_DIM, generator=generator)}
    if prior is not None:  # DreamBooth class images (prior preservation)
        examples["prior"] = torch.tensor(prior, dtype=torch.bool)
    return examples


def text_examples(count: int, seed: int, length: int = 12) -> dict:
    """Random token sequences of varied lengths, right-padded, with the first tokens unlabelled."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 64, (count, length), generator=generator)
    lengths = torch.randint(4, length + 1, (count,), generator=generator)
    attention_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :2] = -100  # the prompt part, as in instruction tuning
    return {"input_ids": input_ids * attention_mask, "attention_mask": attention_mask,
            "labels": labels}


UNET_KINDS = ("dreambooth", "locon", "loha", "lokr")


def adapter_setting(kind: str, backbone_size: int = 24) -> dict:
    """Backbone builder, task, D^A, D^B (``backbone_size`` examples) and the mixing scheme the
    paper uses for the family of adapter ``kind``: UNet adapters train on diffusion examples, the
    rest on an LM."""
    from bat.image.task import DiffusionTask
    from bat.text.task import CausalLMTask

    if kind in UNET_KINDS:
        return {"build": tiny_unet, "task": DiffusionTask(tiny_scheduler()),
                "adaptation": diffusion_examples(6, seed=0),
                "backbone": diffusion_examples(backbone_size, seed=1), "mixing": "per_batch"}
    return {"build": tiny_llama, "task": CausalLMTask(), "adaptation": text_examples(6, seed=0),
            "backbone": text_examples(backbone_size, seed=1), "mixing": "regular_interval"}
