"""The text-to-image backbone: a real ``StableDiffusionPipeline``, pre-trained here on D^B.

Tiny profile (``source: train``): a small ``AutoencoderKL`` (32×32 RGB ↔ 8×8×4 latents in
params.yaml) and a small ``UNet2DConditionModel`` are built from configs; the text encoder is the
real, frozen all-MiniLM-L6-v2 (a BERT, 384-d token states as cross-attention context). The VAE is
trained on the OpenMoji images first, then the UNet with the standard epsilon-prediction loss on
the frozen VAE's latents (cached once), with 10 % empty captions so that classifier-free guidance
works when sampling; optionally with diffusers' learning-rate schedules, EMA weights and
min-SNR-γ weighting. ``benchmarks/bench_backbone_image_sweep.py`` measures what each setting buys
per CPU-minute: 8×8 latents lose reconstruction detail (PSNR ~19 dB against ~23 at 16×16) but
make a UNet step cheap enough for a few thousand steps, and that is what made samples follow
their prompt; self-attention over 32×32 pixels would cost several times more per step.

Paper profile (``source: pretrained``): the same loader opens ``CompVis/stable-diffusion-v1-4``
(or any local folder in that format) and no training happens.

Where: the run's :class:`bat.core.runtime.RuntimeConfig`. Pre-training computes on its device with
float32 weights (the weights being trained) under its mixed precision (through Accelerate, as the
adapters train: :func:`bat.core.runtime.make_accelerator`) and gradient checkpointing; the saved
pipeline is loaded back in its ``dtype``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from bat import paths, validate
from bat.core.runtime import DEVICES, DTYPES, RuntimeConfig, make_accelerator, to_device, update
from bat.errors import ConfigError
from bat.core.mixing import epoch_batches
from bat.io import atomic_directory
from bat.image.data import images_to_tensor
from bat.image.task import DiffusionTask, make_diffusion_batch

BACKBONE_SOURCES = ("train", "pretrained")
LR_SCHEDULES = ("constant_with_warmup", "cosine", "linear")  # diffusers.optimization.get_scheduler names


@dataclass(frozen=True)
class ImageBackboneConfig:
    source: str  # "train": build and pre-train on D^B; "pretrained": load model_id
    model_id: str  # hub id or folder, read when source == "pretrained"
    text_encoder: str  # folder of the frozen text encoder (BERT or CLIP text model + tokenizer)
    resolution: int  # pixels
    vae_channels: tuple[int, ...]  # one entry per VAE level; latents are resolution / 2**(levels-1)
    unet_channels: tuple[int, ...]
    unet_attention: tuple[bool, ...]  # per UNet level: transformer (self- and cross-attention) blocks or plain ResNet ones
    max_caption_tokens: int  # captions are short CLDR names; 77 (CLIP's) would waste attention
    vae_steps: int
    vae_learning_rate: float
    unet_steps: int
    unet_learning_rate: float
    unet_lr_schedule: str  # after a warm-up of min(50, unet_steps / 10) steps; LR_SCHEDULES
    ema_decay: float  # 0: keep the last UNet weights; else diffusers' EMAModel with this decay, in [0, 1)
    snr_gamma: float  # 0: plain mean loss; else min-SNR-γ weights min(SNR, γ) / SNR (Hang et al. 2023)
    batch_size: int
    caption_dropout: float  # share of empty captions, for classifier-free guidance
    seed: int

    def __post_init__(self):
        object.__setattr__(self, "vae_channels", tuple(self.vae_channels))
        object.__setattr__(self, "unet_channels", tuple(self.unet_channels))
        object.__setattr__(self, "unet_attention", tuple(self.unet_attention))
        validate.choice("backbone_image.source", self.source, BACKBONE_SOURCES)
        for name in ("resolution", "max_caption_tokens", "vae_steps", "unet_steps", "batch_size"):
            validate.positive(f"backbone_image.{name}", getattr(self, name), integer=True)
        validate.non_negative("backbone_image.seed", self.seed, integer=True)
        validate.positive("backbone_image.vae_learning_rate", self.vae_learning_rate)
        validate.positive("backbone_image.unet_learning_rate", self.unet_learning_rate)
        validate.closed_interval("backbone_image.caption_dropout", self.caption_dropout, 0, 1)
        validate.choice("backbone_image.unet_lr_schedule", self.unet_lr_schedule, LR_SCHEDULES)
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"backbone_image.ema_decay: {self.ema_decay!r} is not allowed; use 0 (off) "
                              "or a decay in (0, 1), e.g. 0.995")
        validate.non_negative("backbone_image.snr_gamma", self.snr_gamma)
        if not self.vae_channels or not self.unet_channels:
            raise ConfigError("backbone_image.vae_channels and unet_channels need at least one level")
        if len(self.unet_attention) != len(self.unet_channels) or not all(
                isinstance(flag, bool) for flag in self.unet_attention):
            raise ConfigError(f"backbone_image.unet_attention: {list(self.unet_attention)!r} needs one true or false "
                              f"per entry of unet_channels ({len(self.unet_channels)})")
        if not any(self.unet_attention):
            raise ConfigError("backbone_image.unet_attention: at least one level needs attention, or the UNet "
                              "never reads the caption's tokens")
        if self.source == "train":
            check_resolution(self.resolution, self.vae_channels, self.unet_channels)

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** (len(self.vae_channels) - 1)


def check_resolution(resolution: int, vae_channels, unet_channels) -> None:
    """The VAE halves the image per extra level and the UNet halves the latent per extra level."""
    factor = 2 ** (len(vae_channels) - 1) * 2 ** (len(unet_channels) - 1)
    if resolution % factor:
        allowed = [factor * k for k in range(1, 5)]
        raise ConfigError(f"backbone_image.resolution: {resolution} is not a multiple of {factor}, which "
                          f"the VAE and UNet levels need; e.g. {allowed}")


def norm_groups(channels) -> int:
    """GroupNorm groups for these widths: 32 as in SD where the widths allow it."""
    return min(32, *channels) if min(channels) % 8 else min(32, min(channels) // 2)


def build_unet(config: ImageBackboneConfig, cross_attention_dim: int):
    """The untrained UNet of :func:`build_pipeline`, for captions of ``cross_attention_dim``-wide
    token states; its samples are ``[4, latent_size, latent_size]`` latents."""
    from diffusers import UNet2DConditionModel

    # The pooled caption is added to the time embedding (addition_embed_type="text") so every
    # ResNet block sees the prompt, attention or not: with a few hundred CPU steps, a UNet with
    # cross-attention on the coarse level alone and no pooled caption learnt to ignore its prompt.
    down = tuple("CrossAttnDownBlock2D" if flag else "DownBlock2D" for flag in config.unet_attention)
    up = tuple("CrossAttnUpBlock2D" if flag else "UpBlock2D" for flag in reversed(config.unet_attention))
    return UNet2DConditionModel(sample_size=config.latent_size, in_channels=4, out_channels=4,
                                layers_per_block=1, block_out_channels=config.unet_channels,
                                down_block_types=down, up_block_types=up,
                                cross_attention_dim=cross_attention_dim, attention_head_dim=8,
                                addition_embed_type="text", addition_embed_type_num_heads=8,
                                norm_num_groups=norm_groups(config.unet_channels))


def build_pipeline(config: ImageBackboneConfig):
    """An untrained tiny pipeline around the real frozen text encoder."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import AutoModel, AutoTokenizer

    folder = paths.ROOT / config.text_encoder  # relative paths are the project's
    if not (folder / "config.json").exists():
        raise ConfigError(f"backbone_image.text_encoder: {folder} holds no model (config.json missing); "
                          "run `make data` to fetch all-MiniLM-L6-v2")
    tokenizer = AutoTokenizer.from_pretrained(folder, model_max_length=config.max_caption_tokens)
    text_encoder = AutoModel.from_pretrained(folder).eval().requires_grad_(False)
    torch.manual_seed(config.seed)
    levels = len(config.vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels,
                        block_out_channels=config.vae_channels, norm_num_groups=norm_groups(config.vae_channels),
                        sample_size=config.resolution, mid_block_add_attention=False)
    unet = build_unet(config, text_encoder.config.hidden_size)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def tensor_to_images(tensor: torch.Tensor) -> np.ndarray:
    return ((tensor.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def encode_captions(pipe, captions: list[str]) -> torch.Tensor:
    """Caption embeddings exactly as the pipeline computes them when it generates, as float32 on
    the CPU (where examples are kept) whatever the text encoder's device and dtype."""
    device = pipe.text_encoder.device
    return pipe.encode_prompt(captions, device, 1, False)[0].to("cpu", torch.float32)


def noise_task(pipe, prior_loss_weight: float = 1.0) -> DiffusionTask:
    """The epsilon-prediction task on ``pipe``'s UNet, with the DDPM view of its noise schedule;
    ``prior_loss_weight``: λ of eq. 27 for examples marked ``prior`` (DreamBooth's class images)."""
    from diffusers import DDPMScheduler

    return DiffusionTask(DDPMScheduler.from_config(pipe.scheduler.config), prior_loss_weight)


def train_vae(pipe, pixels: torch.Tensor, config: ImageBackboneConfig,
              runtime: RuntimeConfig) -> tuple[list[dict], torch.Tensor]:
    """Reconstruction + a small KL term, then set ``scaling_factor`` so latents have unit variance.

    Returns the log and the scaled latents of ``pixels``, encoded once for the UNet's training.
    ``runtime``: its mixed precision (through Accelerate) and gradient checkpointing.
    """
    vae = pipe.vae.train().requires_grad_(True)
    if runtime.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    accelerator = make_accelerator(runtime)
    optimizer = accelerator.prepare(torch.optim.AdamW(vae.parameters(), lr=config.vae_learning_rate))
    generator = torch.Generator().manual_seed(config.seed)
    log = []
    progress = tqdm(epoch_batches(len(pixels), config.batch_size, config.vae_steps, generator,
                                  carry_remainder=True),
                    total=config.vae_steps, desc="vae")
    for step, index in enumerate(progress, start=1):
        batch = pixels[index].to(vae.device)
        with accelerator.autocast():
            posterior = vae.encode(batch).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=generator)  # drawn on the CPU: any device, same run
            latents = posterior.mean + posterior.std * noise.to(vae.device, posterior.mean.dtype)
            reconstruction = torch.nn.functional.mse_loss(vae.decode(latents).sample.float(), batch)
            # A weak KL keeps latents near N(0, 1) without blurring 32-pixel images.
            loss = reconstruction + 1e-6 * posterior.kl().float().mean()
        update(accelerator, optimizer, loss, vae.parameters())
        progress.set_postfix(loss=f"{loss.item():.4f}")
        log.append({"step": step, "loss": loss.item(), "reconstruction": reconstruction.item()})
    vae.eval().requires_grad_(False)
    means = encode_images(pipe, pixels, scaled=False)
    vae.register_to_config(scaling_factor=float(1 / means.std()))
    return log, means * vae.config.scaling_factor


@torch.no_grad()
def encode_images(pipe, pixels: torch.Tensor, scaled: bool = True, batch_size: int = 256) -> torch.Tensor:
    """Posterior means (deterministic), times the VAE's scaling factor unless ``scaled`` is False;
    computed on the VAE's device and dtype, returned as float32 on the CPU (where examples are kept)."""
    vae = pipe.vae
    means = torch.cat([vae.encode(pixels[i:i + batch_size].to(vae.device, vae.dtype)).latent_dist.mean
                       .to("cpu", torch.float32) for i in range(0, len(pixels), batch_size)])
    return means * pipe.vae.config.scaling_factor if scaled else means


def train_unet(pipe, latents: torch.Tensor, caption_embeddings: torch.Tensor,
               config: ImageBackboneConfig, runtime: RuntimeConfig) -> list[dict]:
    """Epsilon prediction on cached ``latents`` ``[N, 4, h, w]`` and caption states ``[N, T, 384]``.

    With ``ema_decay`` the UNet ends with diffusers' EMA of its weights; with ``snr_gamma`` each
    example's loss is weighted by diffusers' ``compute_snr`` of its timestep. ``runtime``: its mixed
    precision (through Accelerate) and gradient checkpointing. Returns the log of
    ``{step, loss, learning_rate}`` (the loss is the weighted one that is optimised).
    """
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel, compute_snr

    unet = pipe.unet.train().requires_grad_(True)
    if runtime.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    task = noise_task(pipe)
    empty = encode_captions(pipe, [""])
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.unet_learning_rate, weight_decay=1e-2)
    schedule = get_scheduler(config.unet_lr_schedule, optimizer, num_warmup_steps=min(50, config.unet_steps // 10),
                             num_training_steps=config.unet_steps)
    # The schedule before prepare: Accelerate wraps (and under fp16 restores) the step it finds,
    # which must be the one the schedule counts.
    accelerator = make_accelerator(runtime)
    optimizer = accelerator.prepare(optimizer)
    ema = EMAModel(unet.parameters(), decay=config.ema_decay) if config.ema_decay else None
    generator = torch.Generator().manual_seed(config.seed + 1)
    log = []
    progress = tqdm(epoch_batches(len(latents), config.batch_size, config.unet_steps, generator,
                                  carry_remainder=True),
                    total=config.unet_steps, desc="unet")
    for step, index in enumerate(progress, start=1):
        context = caption_embeddings[index].clone()
        dropped = torch.rand(len(index), generator=generator) < config.caption_dropout
        context[dropped] = empty
        batch = make_diffusion_batch(latents[index], context, generator, task.noise_scheduler.config.num_train_timesteps)
        if config.snr_gamma:
            snr = compute_snr(task.noise_scheduler, batch["timesteps"])
            batch["loss_weight"] = snr.clamp(max=config.snr_gamma) / snr
        batch = to_device(batch, unet.device)
        with accelerator.autocast():
            loss = task.batch_losses(unet, batch).mean()
        learning_rate = schedule.get_last_lr()[0]
        update(accelerator, optimizer, loss, unet.parameters(), max_grad_norm=1.0)
        if not optimizer.step_was_skipped:  # as a prepared scheduler: not after an overflowed fp16 step
            schedule.step()
        if ema is not None:
            ema.step(unet.parameters())
        progress.set_postfix(loss=f"{loss.item():.4f}")
        log.append({"step": step, "loss": loss.item(), "learning_rate": learning_rate})
    if ema is not None:
        ema.copy_to(unet.parameters())
    unet.eval().requires_grad_(False)
    return log


def pretrain(config: ImageBackboneConfig, images: np.ndarray, captions: list[str],
             runtime: RuntimeConfig | None = None):
    """Build and pre-train the tiny pipeline on D^B on ``runtime``'s device, float32 weights under
    its mixed precision and gradient checkpointing (None: the CPU, float32); return it with both
    loss logs and timings. Examples stay on the CPU and each batch is moved when used."""
    if config.source != "train":
        raise ConfigError("backbone_image.source is 'pretrained': load it with load_image_backbone")
    started = time.perf_counter()
    runtime = runtime or RuntimeConfig()
    pipe = build_pipeline(config).to(runtime.torch_device)
    pixels = images_to_tensor(images)
    if pixels.shape[-1] != config.resolution:
        raise ConfigError(f"backbone_image.resolution: {config.resolution} but the prepared images are "
                          f"{pixels.shape[-1]} pixels; set prepare.image_size to the same value")
    vae_log, latents = train_vae(pipe, pixels, config, runtime)
    vae_seconds = time.perf_counter() - started
    unet_log = train_unet(pipe, latents, encode_captions(pipe, captions), config, runtime)
    timings = {"vae_seconds": vae_seconds, "total_seconds": time.perf_counter() - started}
    return pipe, {"vae": vae_log, "unet": unet_log, "timings": timings}


def build_or_load(config: ImageBackboneConfig, backbone, folder: Path, runtime: RuntimeConfig | None = None):
    """Tiny profile: pre-train on D^B; paper profile: load ``model_id``. Either way save to ``folder``.

    Later stages read the backbone from ``folder`` only, whichever profile made it, and the
    pipeline returned is the one loaded back from there, so what is evaluated is what they read.
    ``runtime`` (None: float32 on the CPU) says where it trains and the dtype it is loaded in.
    The log is ``None`` when nothing was trained.
    """
    runtime = runtime or RuntimeConfig()
    device = runtime.device_name
    if config.source == "pretrained":
        pipe, log = load_image_backbone(config.model_id, runtime.dtype, device), None
    else:
        pipe, log = pretrain(config, backbone.images, backbone.captions, runtime)
    save_image_backbone(pipe, folder)
    return load_image_backbone(folder, runtime.dtype, device), log


def prompt_fidelity(pipe, image_set, seed: int, steps: int, guidance_scale: float, encoders,
                    other_images: np.ndarray, backbone) -> dict:
    """Sample every caption of ``image_set``: do the samples look like their own prompt's reference?

    In two feature spaces, ``thumbnail`` (:func:`bat.image.features.pixel_features`, 8×8 colour
    layout) and ``encoder`` (``encoders.image_features``, the trained stand-in for DINO):
    ``<space>_preference``, how often a sample is nearer (cosine) its own reference than another
    caption's (chance 0.5), and ``<space>_accuracy``, how often its own reference is the nearest of
    all (chance 1/N). ``kid``: :func:`bat.image.metrics.kernel_distance` between samples and
    references in encoder space; ``kid_floor``: the same between ``other_images`` (uint8
    ``[M, H, W, 3]`` real renders of other concepts) and the references, what real images score.
    ``vae_psnr``: dB of the references encoded and decoded by the VAE (peak 255).
    ``nearest_caption_<space>_preference`` and ``_accuracy``: the same scores for
    :func:`nearest_caption_renders` from ``backbone`` (the D^B :class:`~bat.image.data.ImageSet`)
    in place of samples, what looking captions up in D^B achieves without drawing anything new.
    """
    from bat.image.features import pixel_features
    from bat.image.metrics import kernel_distance, pairwise_preference, retrieval_accuracy

    samples = generate(pipe, list(image_set.captions), seed, steps, guidance_scale)
    measured = {"samples": samples, "count": len(image_set), "preference_chance": 0.5,
                "accuracy_chance": 1 / len(image_set)}
    looked_up = nearest_caption_renders(pipe, image_set, backbone)
    for space, features in (("thumbnail", pixel_features), ("encoder", encoders.image_features)):
        sample_features, reference_features = features(samples), features(image_set.images)
        measured[f"{space}_preference"] = pairwise_preference(sample_features, reference_features)
        measured[f"{space}_accuracy"] = retrieval_accuracy(sample_features, reference_features)
        measured[f"nearest_caption_{space}_preference"] = pairwise_preference(features(looked_up), reference_features)
        measured[f"nearest_caption_{space}_accuracy"] = retrieval_accuracy(features(looked_up), reference_features)
        if space == "encoder":
            measured["kid"] = kernel_distance(sample_features, reference_features)
            measured["kid_floor"] = kernel_distance(features(other_images), reference_features)
    measured["vae_psnr"] = reconstruction_psnr(pipe, image_set.images)
    return measured


@torch.no_grad()
def sentence_embeddings(pipe, captions: list[str]) -> torch.Tensor:
    """Unit-length ``[N, D]`` caption embeddings: the text encoder's token states mean-pooled over
    real tokens, as sentence-transformers pools all-MiniLM-L6-v2."""
    tokens = pipe.tokenizer(list(captions), padding=True, truncation=True, return_tensors="pt")
    states = pipe.text_encoder(**tokens.to(pipe.text_encoder.device)).last_hidden_state.to("cpu", torch.float32)
    mask = tokens["attention_mask"].to("cpu", torch.float32)[..., None]
    return torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)


def nearest_caption_renders(pipe, image_set, backbone) -> np.ndarray:
    """uint8 ``[N, H, W, 3]``: for each caption of ``image_set``, the render of the D^B
    (``backbone``) caption nearest to it by cosine of :func:`sentence_embeddings`, the concept's own
    D^B entries left out. A model that only looks its prompt up in D^B draws these; one that
    generalises from D^B should do at least as well on concepts D^B lacks."""
    similarity = sentence_embeddings(pipe, image_set.captions) @ sentence_embeddings(pipe, backbone.captions).T
    own = np.equal.outer(np.asarray(image_set.emoji), np.asarray(backbone.emoji))
    similarity[torch.from_numpy(own)] = -torch.inf
    return backbone.images[similarity.argmax(dim=1).numpy()]


@torch.no_grad()
def reconstruction_psnr(pipe, images: np.ndarray) -> float:
    """PSNR in dB (peak 255) of uint8 ``images`` ``[N, H, W, 3]`` through the VAE's posterior mean."""
    vae = pipe.vae  # the posterior means come back as float32 on the CPU; decode where the VAE is
    means = encode_images(pipe, images_to_tensor(images), scaled=False).to(vae.device, vae.dtype)
    decoded = tensor_to_images(vae.decode(means).sample.to("cpu", torch.float32))
    mse = np.mean((decoded.astype(np.float64) - images.astype(np.float64)) ** 2)
    return float(10 * np.log10(255 ** 2 / max(mse, 1e-12)))


def save_image_backbone(pipe, folder: Path) -> Path:
    """``save_pretrained`` into a temporary folder beside ``folder``, then swap it in."""
    with atomic_directory(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return folder


def load_image_backbone(path_or_id: str | Path, torch_dtype: str = "float32", device: str = "cpu"):
    """One loader for the local tiny backbone and the paper's hub model alike, in ``torch_dtype``
    (a key of :data:`bat.core.runtime.DTYPES`) on ``device`` (``cpu``, ``cuda``, ``cuda:N``)."""
    from diffusers import StableDiffusionPipeline

    validate.choice("torch_dtype", torch_dtype, DTYPES)
    validate.device("device", device, DEVICES)
    local = Path(path_or_id)
    if local.exists() and not (local / "model_index.json").exists():
        raise ConfigError(f"{local} holds no diffusers pipeline (model_index.json missing); "
                          "run `dvc repro pretrain_image` or give a hub id")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            path_or_id, dtype=DTYPES[torch_dtype], safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError) as error:
        raise ConfigError(f"could not load a StableDiffusionPipeline from {path_or_id!r}: "
                          f"{str(error).splitlines()[0]}") from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def with_unet(pipe, unet):
    """A pipeline sharing every component of ``pipe`` but its UNet (e.g. one with an adapter)."""
    return type(pipe)(**{**pipe.components, "unet": unet})


@torch.no_grad()
def generate(pipe, prompts: list[str], seed: int, steps: int = 25, guidance_scale: float = 3.0,
             batch_size: int = 64) -> np.ndarray:
    """uint8 images, one per prompt; prompt i always uses the generator seeded ``seed + i``."""
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        output = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance_scale,
                      generator=generators, output_type="np").images
        images.append((np.asarray(output) * 255).round().astype(np.uint8))
    return np.concatenate(images)
