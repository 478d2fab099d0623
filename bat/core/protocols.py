"""The two small interfaces that connect models, the training loop and data selection.

A :class:`Task` knows how to turn a batch into per-example losses for one model family (noise
prediction for the diffusion UNet, next-token cross-entropy for the LM). Everything else — the
training loop, per-sample gradients, Hessian products, Proposition-2 scores — is written once
against it. A batch is a ``dict`` of tensors whose first dimension is the example, so that
``torch.func.vmap`` can slice it; any randomness a loss needs (diffusion noise and timesteps) is
drawn when the batch is built, not inside the loss, so the same batch always gives the same loss.

A :class:`Selector` picks which backbone samples join the adaptation batch (the ``random`` and
``bat`` regimes of the training loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


def take_examples(batch: Batch, indices) -> Batch:
    """The examples ``indices`` of a batch (or of stored examples), in that order."""
    indices = torch.as_tensor(list(indices) if not torch.is_tensor(indices) else indices, dtype=torch.long)
    return {key: value[indices] for key, value in batch.items()}


def concat_batches(first: Batch, second: Batch) -> Batch:
    """``first``'s examples, then ``second``'s, on ``first``'s device (a selector's kept D^B'
    comes back on the CPU from a checkpoint while the run's batches are on its GPU)."""
    return {key: torch.cat([first[key], second[key].to(first[key].device)]) for key in first}


@runtime_checkable
class Task(Protocol):
    def batch_losses(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Loss of each example in ``batch``, shape ``[batch_size]``; their mean is trained on."""
        ...


@dataclass
class SelectionContext:
    """What a selector may look at when it is asked for backbone samples at a training step."""

    model: nn.Module  # backbone with adapter; only the adapter's parameters require grad
    task: Task
    adaptation_batch: Batch  # examples of D^A used to score (the whole D^A when it is small)
    candidate_batch: Batch  # candidate examples of D^B
    candidate_ids: list[int]  # ids of the candidates in the backbone pool, same order
    step: int


@runtime_checkable
class Selector(Protocol):
    def select(self, context: SelectionContext, count: int) -> list[int]:
        """Return ``count`` ids out of ``context.candidate_ids`` to add to this step's batch."""
        ...
