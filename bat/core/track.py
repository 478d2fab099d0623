"""A track: one model family (image or text) behind one small protocol the stages share.

The oracle and grid stages are written once against :class:`Track`; each track package
(:mod:`bat.image.track`, :mod:`bat.text.track`) implements it, and :func:`track_module` imports
only the track asked for, so an image stage never loads (or depends on) the text track's code.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from bat import validate
from bat.core.protocols import Batch, Task
from bat.core.runtime import model_device, to_device

TRACKS = ("image", "text")
HELDOUT_NOISE_SEED = 0  # the fixed noise / timestep draws of every held-out loss


@runtime_checkable
class Track(Protocol):
    """A backbone, its task, its D^B pool and its adaptation datasets, loaded from ``models/``.

    A track module also defines ``datasets(params)`` (names of the D^A datasets that ``prepare``
    writes under a params.yaml), ``ADAPTERS`` (adapter
    kinds it trains), ``MIXING`` (how D^B joins a batch, :mod:`bat.core.mixing`),
    ``SEEDED_EVALUATION`` (whether an evaluation draws with the run's seed) and
    ``load(models, runtime=None, **options)``, which places the backbone on ``runtime.device`` in
    ``runtime.dtype`` (:class:`bat.core.runtime.RuntimeConfig`; None: CPU, float32). Examples are
    float32 CPU tensors whatever the runtime; :meth:`evaluate` computes under the runtime's autocast.
    """

    start_model: nn.Module  # the backbone network adapters attach to (UNet or LM)
    task: Task

    def examples(self, split: str) -> Batch:
        """The examples of a prepared split of D^A (e.g. ``"noto_train"``, ``"word_definition_oracle"``)."""
        ...

    def backbone_size(self) -> int:
        """How many examples the backbone pool (D^B, or the out-of-backbone set) holds."""
        ...

    def backbone_examples(self, indices: list[int] | None = None) -> Batch:
        """Examples ``indices`` of the backbone pool (all of it when None)."""
        ...

    def evaluation_data(self, dataset: str, eval_size: int) -> dict:
        """What :meth:`evaluate` needs for ``dataset``: its training and held-out examples."""
        ...

    def evaluate(self, model: nn.Module, data: dict, seed: int,
                 with_benchmarks: bool) -> tuple[dict, np.ndarray | None]:
        """One evaluation row (``heldout_loss`` first) and the samples it scored, if any."""
        ...


def track_module(name: str) -> ModuleType:
    """``bat.<name>.track``, imported on demand; ``ConfigError`` names the tracks otherwise."""
    validate.choice("track", name, TRACKS)
    return importlib.import_module(f"bat.{name}.track")


@torch.no_grad()
def heldout_loss(model: nn.Module, task: Task, examples: Batch, batch_size: int = 64,
                 draws: int = 1) -> float:
    """Mean task loss on ``examples`` over ``draws`` fixed draws of the task's randomness.

    A diffusion loss depends on the noise and timestep drawn for each example; ``draws`` fixed
    draws per example (the same for every model scored) make the noise of this endpoint small
    against the differences between regimes. A task that draws nothing (the LM) needs one.
    The draws are made on the CPU, so they are the same on every device; each batch is then
    moved to the model's device.
    """
    validate.positive("draws", draws, integer=True)
    model.eval()
    device = model_device(model)
    count = len(next(iter(examples.values())))
    total = 0.0
    for draw in range(draws):
        for start in range(0, count, batch_size):
            chunk = {name: values[start:start + batch_size] for name, values in examples.items()}
            seed = HELDOUT_NOISE_SEED + draw * (count + batch_size) + start
            batch = to_device(task.prepare(chunk, torch.Generator().manual_seed(seed)), device)
            total += float(task.batch_losses(model, batch).sum())
    return total / (count * draws)
