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

from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

Batch = dict[str, torch.Tensor]


def take_examples(batch: Batch, indices) -> Batch:
    """The examples ``indices`` of a batch (or of stored examples), in that order."""
    indices = torch.as_tensor(list(indices) if not torch.is_tensor(indices) else indices, dtype=torch.long)
    return {key: value[indices] for key, value in batch.items()}


def concat_batches(first: Batch, second: Batch,
                   padding: Mapping[str, int | float] | None = None) -> Batch:
    """``first``'s examples, then ``second``'s, on ``first``'s device (a selector's kept D^B'
    comes back on the CPU from a checkpoint while the run's batches are on its GPU).

    ``padding``: a task's ``padding`` (e.g. :attr:`bat.text.task.CausalLMTask.padding`), the
    fill value of each key [count, width] whose width the task's ``prepare`` trims per batch: the
    narrower batch is right-padded to the wider one (a D^B' kept from one offered batch meets the
    D^A of a later one). Without it, or for other keys, the shapes must agree.
    """
    def widened(key: str, values: torch.Tensor, width: int) -> torch.Tensor:
        return F.pad(values, (0, width - values.shape[1]), value=padding[key])

    joined = {}
    for key in first:
        a, b = first[key], second[key].to(first[key].device)
        if padding and key in padding and a.shape[1] != b.shape[1]:
            width = max(a.shape[1], b.shape[1])
            a, b = widened(key, a, width), widened(key, b, width)
        joined[key] = torch.cat([a, b])
    return joined


@runtime_checkable
class Task(Protocol):
    def batch_losses(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Loss of each example in ``batch``, shape ``[batch_size]``; their mean is trained on."""
        ...


class SelectionContext:
    """What a selector may look at when it is asked for backbone samples at a training step.

    ``model``: backbone with adapter (only the adapter's parameters require grad); ``task``;
    ``candidate_ids``: ids of the candidates in the backbone pool; ``step``. The batches,
    ``adaptation_batch`` (examples of D^A to score with: the whole D^A when it is small) and
    ``candidate_batch`` (the candidates, in ``candidate_ids`` order), are given, or made on
    first access by ``prepare`` () -> (adaptation_batch, candidate_batch): the training loop
    passes ``prepare``, so a selector that needs only ids (random augmentation, Algorithm 1
    between its checks) costs no preparation. Raises ValueError unless exactly one of the
    two ways is used.
    """

    def __init__(self, model: nn.Module, task: Task, candidate_ids: list[int], step: int, *,
                 adaptation_batch: Batch | None = None, candidate_batch: Batch | None = None,
                 prepare: Callable[[], tuple[Batch, Batch]] | None = None):
        given = adaptation_batch is not None and candidate_batch is not None
        if given == (prepare is not None) or (adaptation_batch is None) != (candidate_batch is None):
            raise ValueError("SelectionContext: give adaptation_batch and candidate_batch, "
                             "or prepare, not both")
        self.model, self.task, self.candidate_ids, self.step = model, task, candidate_ids, step
        self._batches = (adaptation_batch, candidate_batch) if given else None
        self._prepare = prepare

    def _prepared(self) -> tuple[Batch, Batch]:
        if self._batches is None:
            self._batches = self._prepare()
        return self._batches

    @property
    def adaptation_batch(self) -> Batch:
        return self._prepared()[0]

    @property
    def candidate_batch(self) -> Batch:
        return self._prepared()[1]


@runtime_checkable
class Selector(Protocol):
    def select(self, context: SelectionContext, count: int) -> list[int]:
        """Return at most ``count`` distinct ids of the backbone pool to add to this step's batch.

        Ids come from ``context.candidate_ids`` (this step's draw), or, for a selector that keeps
        its choice between steps (Algorithm 1 keeps D^B'), from an earlier step's draw.
        """
        ...
