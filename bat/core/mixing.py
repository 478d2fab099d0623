"""The D^bat mixer: which adaptation examples and how many backbone examples each step trains on.

Paper Def. 2: γ = n/k with n = |D^A| and k = |D^bat| = n + |D^B'|, γ ∈ (0, 1). Two schemes:

``per_batch`` (diffusion)
    every step takes ``batch_size`` examples of D^A and adds backbone examples so that the running
    share of D^A stays at γ: the fractional count owed is carried to the next step.
``regular_interval`` (the paper's LM recipe, App. B)
    one epoch of D^bat is D^A in a shuffled order with m = round(n(1−γ)/γ) backbone slots inserted
    at regular intervals; steps take ``batch_size`` consecutive items of that sequence.

The plan of a step is a pure function of (seed, step), so a resumed run needs no mixer state.
Which backbone examples fill the slots is the selector's choice (:class:`RandomSelector` here;
Proposition-2 selectors elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from bat import validate
from bat.core.protocols import SelectionContext

SCHEMES = ("per_batch", "regular_interval")


def derived_seed(seed: int, *keys: int) -> int:
    """An independent 32-bit seed for stream ``keys`` of run ``seed`` (no overlaps across seeds)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def epoch_batches(count: int, batch_size: int, steps: int, generator: torch.Generator, *,
                  carry_remainder: bool) -> Iterator[torch.Tensor]:
    """Index tensors of ``steps`` batches of ``batch_size`` (at most ``count``) over ``count``
    examples, a fresh ``torch.randperm`` each epoch, for the backbones' and encoders' pre-training.

    ``carry_remainder``: an epoch's leftover indices open the next batch (every example is seen
    equally often); otherwise they are dropped, so no index appears twice in one batch (what a
    contrastive loss needs). Unlike :func:`epoch_order`, the permutations come from one running
    ``generator``: these loops are never resumed mid-run, so they need no random access to epochs.
    """
    batch_size = min(batch_size, count)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:
            fresh = torch.randperm(count, generator=generator)
            order = torch.cat([order, fresh]) if carry_remainder else fresh
        yield order[:batch_size]
        order = order[batch_size:]


@lru_cache(maxsize=4)  # a step reads one or two epochs; don't reshuffle per example
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the ``n`` examples of D^A."""
    return np.random.default_rng(derived_seed(seed, 0, epoch)).permutation(n)


@dataclass(frozen=True)
class StepPlan:
    adaptation_ids: list[int]  # indices into D^A
    backbone_count: int  # backbone examples to add this step


class Mixer:
    """Plans each step of D^A ∪ D^B' at ratio ``gamma``; ``gamma=None`` plans D^A alone."""

    def __init__(self, n_adaptation: int, batch_size: int, gamma: float | None, scheme: str,
                 seed: int):
        validate.positive("n_adaptation", n_adaptation, integer=True)
        validate.positive("batch_size", batch_size, integer=True)
        validate.choice("mixing", scheme, SCHEMES)
        if gamma is not None:
            validate.open_interval("gamma", gamma, 0.0, 1.0)
        self.n, self.batch_size, self.gamma, self.seed = n_adaptation, batch_size, gamma, seed
        self.scheme = scheme if gamma is not None else "per_batch"
        # Backbone examples per adaptation example: (1 − γ)/γ.
        self.backbone_per_adaptation = 0.0 if gamma is None else (1 - gamma) / gamma
        self.epoch_backbone = round(self.n * self.backbone_per_adaptation)
        self.epoch_length = self.n + self.epoch_backbone

    def plan(self, step: int) -> StepPlan:
        """What step ``step`` (0-based) trains on."""
        if self.scheme == "per_batch":
            start = step * self.batch_size
            ids = [self._adaptation_id(p) for p in range(start, start + self.batch_size)]
            owed = self.batch_size * self.backbone_per_adaptation
            return StepPlan(ids, math.floor((step + 1) * owed) - math.floor(step * owed))
        ids, count = [], 0
        for position in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, i = divmod(position, self.epoch_length)
            # Bresenham spacing: position i is a backbone slot when floor(i·m/k) steps up there;
            # floor(i·m/k) slots precede i, so it is adaptation item i − floor(i·m/k) of the epoch.
            before = i * self.epoch_backbone // self.epoch_length
            if (i + 1) * self.epoch_backbone // self.epoch_length > before:
                count += 1
            else:
                ids.append(int(epoch_order(self.n, self.seed, epoch)[i - before]))
        return StepPlan(ids, count)

    def max_backbone_count(self) -> int:
        if self.scheme == "per_batch":
            return math.ceil(self.batch_size * self.backbone_per_adaptation)
        # A window of batch_size items holds at most ceil(b·m/k) slots, one more across epochs.
        return min(self.batch_size,
                   math.ceil(self.batch_size * self.epoch_backbone / self.epoch_length) + 1)

    def _adaptation_id(self, position: int) -> int:
        epoch, i = divmod(position, self.n)
        return int(epoch_order(self.n, self.seed, epoch)[i])


def realised_ratio(n_adaptation: int, n_backbone: int) -> float:
    """n/k of the examples trained on so far (1.0 for D^A alone)."""
    return n_adaptation / (n_adaptation + n_backbone)


class RandomSelector:
    """Random augmentation: ``count`` distinct candidates, uniformly, fixed by (seed, step)."""

    def __init__(self, seed: int):
        self.seed = seed

    def select(self, context: SelectionContext, count: int) -> list[int]:
        rng = np.random.default_rng(derived_seed(self.seed, 1, context.step))
        return [int(i) for i in rng.choice(context.candidate_ids, size=count, replace=False)]
