"""Where a run computes and in what precision: the ``runtime`` section of params.yaml.

Every stage that loads a model reads it (:func:`runtime_config`): the pre-training and encoder
stages, the oracles and the grids; no stage has a device or precision key of its own.

==========================  ====================================================================
key                         meaning
==========================  ====================================================================
``device``                  ``cpu``, ``cuda`` (the current GPU) or ``cuda:N``
``dtype``                   storage dtype of the frozen backbone: float32, float16, bfloat16
``mixed_precision``         Accelerate's autocast: ``no``, ``fp16``, ``bf16``
``gradient_checkpointing``  recompute activations in the backward pass: less memory, more time
==========================  ====================================================================

Trainable (adapter) weights are float32 whatever ``dtype`` is, as diffusers' and peft's training
scripts keep them (:func:`bat.core.adapters.attach_adapter` casts them): a half-precision update
would round small steps away. A half-precision backbone therefore computes under autocast of its
own type, which casts the adapter's float32 activations where they meet half-precision weights;
``dtype: bfloat16`` goes with ``mixed_precision: bf16``, ``float16`` with ``fp16``.

Examples stay float32 on the CPU where the tracks keep them; :func:`to_device` moves each batch to
the model (:func:`model_device`) when it is used, and a task gives the network its floating-point
inputs in the backbone's dtype (:func:`model_dtype`), as diffusers' scripts feed a half-precision
backbone: CPU autocast leaves layer and group norms to the dtype of their input.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.state import AcceleratorState, PartialState
from torch import nn

from bat import validate
from bat.config import build, section
from bat.errors import ConfigError

DEVICES = ("cpu", "cuda", validate.GPU_INDEX)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MIXED_PRECISIONS = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}  # Accelerate's names
AUTOCAST_FOR_DTYPE = {"float16": "fp16", "bfloat16": "bf16"}  # a half-precision backbone's autocast


@dataclass(frozen=True)
class RuntimeConfig:
    """Device and precision of a run (module docstring), checked on construction.

    Each error names its ``runtime.<key>`` and the allowed values: an unknown value, a GPU that is
    not here, ``fp16`` on the CPU (torch's CPU autocast and Accelerate support bf16 only; Accelerate
    would silently train in float32) and a half-precision ``dtype`` without its autocast.
    """

    device: str = "cpu"
    dtype: str = "float32"
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False

    def __post_init__(self):
        validate.device("runtime.device", self.device, DEVICES)
        validate.choice("runtime.dtype", self.dtype, DTYPES)
        if self.mixed_precision is False:  # PyYAML reads an unquoted `no` as false
            raise ConfigError("runtime.mixed_precision: false is not allowed; write \"no\" in quotes "
                              "(YAML reads a bare no as false), or 'fp16' or 'bf16'")
        validate.choice("runtime.mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        if not isinstance(self.gradient_checkpointing, bool):
            raise ConfigError(f"runtime.gradient_checkpointing: {self.gradient_checkpointing!r} "
                              "must be true or false")
        if self.mixed_precision == "fp16" and self.device == "cpu":
            raise ConfigError("runtime.mixed_precision: 'fp16' needs a CUDA device (torch's CPU "
                              "autocast supports bfloat16 only); with runtime.device 'cpu' choose "
                              "one of ['no', 'bf16']")
        needed = AUTOCAST_FOR_DTYPE.get(self.dtype)
        if needed is not None and self.mixed_precision != needed:
            raise ConfigError(f"runtime.mixed_precision: {self.mixed_precision!r} with runtime.dtype "
                              f"{self.dtype!r}: the float32 adapter meets {self.dtype} weights only "
                              f"under autocast of that type; set it to {needed!r} (or runtime.dtype "
                              "to 'float32')")

    @property
    def torch_device(self) -> torch.device:
        """``device``; ``cuda`` under ``torchrun`` / ``accelerate launch`` is this process's own GPU,
        as Accelerate assigns it (local rank modulo the GPUs), so a backbone is loaded there."""
        if self.device == "cuda" and "LOCAL_RANK" in os.environ:
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
        return torch.device(self.device)

    @property
    def device_name(self) -> str:
        """:attr:`torch_device` as the loaders take it (``cpu``, ``cuda:N``)."""
        return str(self.torch_device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        """torch's autocast of ``mixed_precision`` on ``device`` (nothing with ``no``), for code
        that does not train (evaluation, sampling, scoring); the mixed-precision training loops
        take Accelerate's (:func:`make_accelerator`)."""
        dtype = MIXED_PRECISIONS[self.mixed_precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.torch_device.type, dtype=dtype)


def make_accelerator(runtime: RuntimeConfig):
    """An ``accelerate.Accelerator`` for ``runtime``: its mixed precision, on the CPU or a GPU.

    Every loop that trains under the runtime's precision goes through it (the adapters'
    :func:`bat.core.train.train`, the backbones' pre-training; the encoder stand-ins, which only
    score, train in float32): Accelerate's autocast, loss scaling under fp16, clipping of the unscaled
    gradients and skipping of steps whose fp16 gradients overflowed. With the default runtime
    (CPU, float32) it is the plain PyTorch loop, bit for bit. Device placement is left to the
    caller, so that ``cuda:N`` means GPU N in one process. Accelerate keeps one state per
    process and refuses to change its precision or device once set; one process may train runs
    of different runtimes in turn (tests, notebooks, a backbone then its adapters), so outside a
    distributed launch that state is reset first (an Accelerator made elsewhere in the process is
    then stale).
    """
    cpu = runtime.torch_device.type == "cpu"
    if not PartialState(cpu=cpu).use_distributed:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=runtime.mixed_precision, device_placement=False, cpu=cpu)


def update(accelerator, optimizer, loss: torch.Tensor, parameters, max_grad_norm: float | None = None
           ) -> None:
    """One optimiser update through ``accelerator`` (:func:`make_accelerator`): zero the gradients
    (also those a selector's scoring left behind), back-propagate ``loss`` (scaled under fp16),
    clip the unscaled gradients of ``parameters`` to ``max_grad_norm`` (None or 0: no clipping)
    and step ``optimizer``, which ``accelerator.prepare`` returned (under fp16 a step whose
    gradients overflowed is skipped; its ``step_was_skipped`` says so). Raises TypeError for an
    optimizer ``accelerator`` did not prepare: under fp16 it would apply the scaled gradients."""
    if not isinstance(optimizer, AcceleratedOptimizer):
        raise TypeError(f"update: the optimizer must be the one accelerator.prepare returned, "
                        f"not a bare {type(optimizer).__name__}")
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    if max_grad_norm:
        accelerator.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()


def runtime_config(params: dict) -> RuntimeConfig:
    """The ``runtime`` section of ``params`` (the whole params.yaml), checked; a bad key or value
    raises :class:`ConfigError` naming ``runtime.<key>``."""
    return build(RuntimeConfig, section(params, "runtime"), "runtime")


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (its input embeddings, for an LM): where inputs go."""
    return next(model.parameters()).device


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of ``model``'s first parameter: a frozen backbone's storage dtype (an adapter's
    weights come after the layer they adapt), float32 when every weight trains."""
    return next(model.parameters()).dtype


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """``batch`` with every tensor on ``device`` (the same tensors when they are there already)."""
    return {name: values.to(device) for name, values in batch.items()}


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on activation checkpointing of ``model`` (or of the backbone a ``PeftModel`` wraps).

    diffusers models take ``enable_gradient_checkpointing()``, transformers models
    ``activation_checkpointing_enable()`` (their non-reentrant default, under which a frozen
    backbone's adapter still gets gradients); anything else raises :class:`ConfigError`.
    """
    backbone = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(backbone, "enable_gradient_checkpointing"):
        backbone.enable_gradient_checkpointing()
    elif hasattr(backbone, "activation_checkpointing_enable"):
        backbone.activation_checkpointing_enable()
    else:
        raise ConfigError(f"runtime.gradient_checkpointing: {type(backbone).__name__} supports "
                          "neither diffusers' nor transformers' checkpointing; set it to false")
