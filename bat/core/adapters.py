"""One registry of adapters: what is trained on the backbone, and how it is saved and loaded.

``dreambooth``
    every UNet weight (full fine-tuning); saved with ``save_pretrained``, loaded with
    ``UNet2DConditionModel.from_pretrained(dir)``.
``locon``
    peft LoRA on the UNet's convolutions and attention/linear layers (LyCORIS LoCon); saved in
    diffusers' LoRA format, loaded with ``StableDiffusionPipeline.load_lora_weights(dir)``.
``loha``, ``lokr``
    peft LoHa / LoKr on the same layers. Diffusers has no format for them, so they are saved in
    peft's (``adapter_config.json`` + ``adapter_model.safetensors``) and loaded with
    ``PeftModel.from_pretrained(unet, dir)``.
``lora``, ``dora``
    peft LoRA / DoRA, r=8, α=32, dropout 0.1 on ``q_proj`` and ``v_proj`` of the LM (App. B);
    saved in peft's format, loaded with ``PeftModel.from_pretrained(lm, dir)``.

LoRA-type adapters of a diffusers model always take the diffusers format, so ``lora`` with UNet
target modules also loads with ``load_lora_weights``. Every saved folder also holds
``bat_adapter.json`` naming the kind, so loading a checkpoint of another kind fails clearly.
DreamBooth's prior preservation is a data matter (class images marked ``prior``, see
``bat.image.task.DiffusionTask``), as is its rare-token identifier :data:`DREAMBOOTH_IDENTIFIER`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import (LoHaConfig, LoKrConfig, LoraConfig, PeftModel, get_peft_model,
                  get_peft_model_state_dict)
from torch import nn

from bat import validate
from bat.core.curvature import adapter_parameters
from bat.io import atomic_directory
from bat.errors import ConfigError

DREAMBOOTH_IDENTIFIER = "sks"  # rare token naming the subject in prompts ("a sks dog"), Ruiz et al.
MARKER = "bat_adapter.json"

# Layers LyCORIS adapts in a Stable Diffusion UNet: attention projections, feed-forward, the
# transformer's in/out convs, and the ResNet and resampler convs ("conv" = {down,up}samplers.0.conv).
UNET_LAYERS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
               "ff.net.2", "conv1", "conv2", "conv_shortcut", "time_emb_proj", "conv")
LM_QUERY_VALUE = ("q_proj", "v_proj")  # paper App. B


@dataclass(frozen=True)
class AdapterKind:
    peft_config: type | None  # None: full fine-tuning
    rank: int | None
    alpha: float | None
    dropout: float | None
    target_modules: tuple[str, ...]
    use_dora: bool = False


# The UNet kinds use r = α (scale 1), so one learning rate means the same step size at any rank.
ADAPTERS = {
    "dreambooth": AdapterKind(None, None, None, None, ()),
    "locon": AdapterKind(LoraConfig, 8, 8, 0.0, UNET_LAYERS),
    "loha": AdapterKind(LoHaConfig, 8, 8, 0.0, UNET_LAYERS),
    "lokr": AdapterKind(LoKrConfig, 8, 8, 0.0, UNET_LAYERS),
    "lora": AdapterKind(LoraConfig, 8, 32, 0.1, LM_QUERY_VALUE),  # r, α, dropout of App. B
    "dora": AdapterKind(LoraConfig, 8, 32, 0.1, LM_QUERY_VALUE, use_dora=True),
}


@dataclass(frozen=True)
class AdapterConfig:
    """An adapter by kind; fields left ``None`` take the kind's defaults from :data:`ADAPTERS`.

    ``dropout`` is LoRA's dropout for the LoRA kinds and peft's ``rank_dropout`` for LoHa/LoKr
    (peft has no input dropout for them). ``dreambooth`` trains everything and takes none of them.
    """

    kind: str
    rank: int | None = None
    alpha: float | None = None
    dropout: float | None = None
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self):
        validate.choice("adapter.kind", self.kind, ADAPTERS)
        defaults = ADAPTERS[self.kind]
        if defaults.peft_config is None:
            for name in ("rank", "alpha", "dropout", "target_modules"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"adapter.{name}: {getattr(self, name)!r} is not used by "
                                      f"{self.kind!r}, which trains every weight; leave it unset")
            return
        for name in ("rank", "alpha", "dropout", "target_modules"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, getattr(defaults, name))
        targets = self.target_modules
        if isinstance(targets, str) or not targets or not all(isinstance(t, str) for t in targets):
            raise ConfigError(f"adapter.target_modules: {targets!r} must be a non-empty list of "
                              "module names")
        object.__setattr__(self, "target_modules", tuple(targets))
        validate.positive("adapter.rank", self.rank, integer=True)
        validate.positive("adapter.alpha", self.alpha)
        validate.closed_interval("adapter.dropout", self.dropout, 0.0, 0.99)

    def to_peft(self, for_lm: bool):
        """The peft config of this adapter (not for dreambooth, which has none)."""
        kind = ADAPTERS[self.kind]
        common = {"r": self.rank, "target_modules": list(self.target_modules)}
        if kind.peft_config is LoraConfig:
            return LoraConfig(**common, lora_alpha=self.alpha, lora_dropout=self.dropout,
                              use_dora=kind.use_dora, task_type="CAUSAL_LM" if for_lm else None)
        return kind.peft_config(**common, alpha=self.alpha, rank_dropout=self.dropout)


def _is_diffusers_model(model: nn.Module) -> bool:
    from diffusers import ModelMixin

    return isinstance(model, ModelMixin)


def _check_targets(model: nn.Module, targets: tuple[str, ...]) -> None:
    """Every target must name some module, by peft's rule (whole name or a ``.``-suffix of it)."""
    names = [name for name, _ in model.named_modules()]
    unmatched = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if unmatched:
        layers = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, (nn.Linear, nn.Conv2d))})
        raise ConfigError(f"adapter.target_modules: {unmatched} match no module of "
                          f"{type(model).__name__}; its layer names include {layers[:16]}")


# Largest chance, per training forward, that peft's LoHa rank dropout gives NaN (see below).
RANK_DROPOUT_NAN_CHANCE = 1e-6


def rank_dropout_nan_chance(model: nn.Module, config: AdapterConfig) -> float:
    """Probability that one training forward of ``model`` with adapter ``config`` is NaN.

    peft's LoHa divides the kept-row mask by its mean (``drop /= drop.mean()``), which is 0/0 when
    every output row of a layer is dropped: probability p^rows per targeted layer and forward.
    0 for the other kinds: LoKr only rescales with ``rank_dropout_scale``, which bat leaves off,
    and LoRA's dropout acts on inputs.
    """
    if ADAPTERS[config.kind].peft_config is not LoHaConfig:
        return 0.0
    rows = [module.weight.shape[0] for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d))
            and any(name == t or name.endswith(f".{t}") for t in config.target_modules)]
    return 1.0 - math.prod(1.0 - config.dropout ** k for k in rows)


def _check_rank_dropout(model: nn.Module, config: AdapterConfig) -> None:
    """Refuse a dropout under which training forwards are NaN with more than a tiny chance."""
    chance = rank_dropout_nan_chance(model, config)
    if chance <= RANK_DROPOUT_NAN_CHANCE:
        return
    low, high = 0.0, config.dropout  # the largest safe dropout, by bisection
    for _ in range(40):
        middle = (low + high) / 2
        if rank_dropout_nan_chance(model, dataclasses.replace(config, dropout=middle)) \
                <= RANK_DROPOUT_NAN_CHANCE:
            low = middle
        else:
            high = middle
    raise ConfigError(
        f"adapter.dropout: {config.dropout} is LoHa's rank dropout, and peft rescales the kept "
        f"rows by their mean, 0/0 = NaN when every row of a layer is dropped: on this "
        f"{type(model).__name__} a training forward is NaN with probability {chance:.2g}. "
        f"Choose dropout in [0, {math.floor(low * 1000) / 1000}] (NaN chance at most "
        f"{RANK_DROPOUT_NAN_CHANCE:g} per forward)")


def storage_format(backbone: nn.Module, kind: str) -> str:
    """How ``kind`` on ``backbone`` is trained and saved: ``full``, ``diffusers-lora`` or ``peft``."""
    peft_config = ADAPTERS[kind].peft_config
    if peft_config is None:
        return "full"
    return "diffusers-lora" if _is_diffusers_model(backbone) and peft_config is LoraConfig else "peft"


def attach_adapter(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Freeze ``model`` and add the adapter; only the adapter's parameters require grad.

    Raises :class:`ConfigError` for targets that match no module and for a LoHa rank dropout
    that would make training forwards NaN (:func:`rank_dropout_nan_chance`).

    Returns the model to train: ``model`` itself for dreambooth and for LoRA-type adapters of a
    diffusers model (diffusers' own ``add_adapter``), otherwise a ``PeftModel`` wrapping it.
    The trainable parameters are float32 on a float16/bfloat16 backbone too (peft creates them in
    the layer's dtype), as diffusers' ``cast_training_params`` leaves them: a half-precision
    optimizer step would round small updates away.
    """
    form = storage_format(model, config.kind)
    if form == "full":
        trained = model.requires_grad_(True)
    else:
        _check_targets(model, config.target_modules)
        _check_rank_dropout(model, config)
        model.requires_grad_(False)
        if form == "diffusers-lora":
            model.add_adapter(config.to_peft(for_lm=False))
            trained = model
        else:
            from transformers import GenerationMixin

            trained = get_peft_model(model, config.to_peft(for_lm=isinstance(model, GenerationMixin)))
    for param in trainable_parameters(trained).values():
        if param.dtype != torch.float32:
            param.data = param.data.float()
    return trained


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters training changes (θ_A), by name, in ``named_parameters`` order; as one
    vector: :func:`bat.core.curvature.flat_parameters`."""
    return dict(zip(*adapter_parameters(model)))


def save_adapter(model: nn.Module, config: AdapterConfig, folder: str | os.PathLike) -> None:
    """Write the adapter of ``model`` (as returned by :func:`attach_adapter`) to ``folder``."""
    backbone = model.get_base_model() if isinstance(model, PeftModel) else model
    form = storage_format(backbone, config.kind)
    with atomic_directory(folder) as tmp:
        if form == "diffusers-lora":
            from diffusers import StableDiffusionPipeline

            StableDiffusionPipeline.save_lora_weights(
                tmp, unet_lora_layers=get_peft_model_state_dict(model),
                unet_lora_adapter_metadata=model.peft_config["default"].to_dict())
        else:
            model.save_pretrained(tmp)
        marker = {"format": form, **dataclasses.asdict(config)}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")


def saved_config(folder: str | os.PathLike, kind: str | None = None) -> AdapterConfig:
    """The :class:`AdapterConfig` saved in ``folder``; if ``kind`` is given, it must match."""
    path = Path(folder) / MARKER
    if not path.exists():
        raise ConfigError(f"{folder}: no {MARKER}, so not an adapter saved by bat.core.adapters")
    saved = json.loads(path.read_text(encoding="utf-8"))
    saved.pop("format")
    if kind is not None and saved["kind"] != kind:
        raise ConfigError(f"{folder} holds a {saved['kind']!r} adapter, not {kind!r}")
    return AdapterConfig(**saved)


def load_adapter(backbone: nn.Module, folder: str | os.PathLike, kind: str | None = None) -> nn.Module:
    """``backbone`` with the adapter saved in ``folder``, via the ecosystem's own loader."""
    form = storage_format(backbone, saved_config(folder, kind).kind)
    if form == "full":
        return type(backbone).from_pretrained(folder)
    if form == "diffusers-lora":
        backbone.load_lora_adapter(str(folder), prefix="unet", use_safetensors=True)
        return backbone
    return PeftModel.from_pretrained(backbone, folder)
