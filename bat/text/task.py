"""The text track's :class:`bat.core.protocols.Task`: next-token prediction of a causal LM.

Losses use only per-example arithmetic, so ``torch.func.vmap`` over single examples (each a batch
of one) gives the same numbers as the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bat.core.protocols import Batch

IGNORE_INDEX = -100  # label of tokens that are not trained on (prompt, padding), as in transformers


class CausalLMTask:
    """Mean cross-entropy over each example's labelled tokens (labels ``-100`` are ignored).

    Under ``vmap`` the LM needs ``attn_implementation="eager"``: transformers' SDPA mask builder
    branches on the mask's values, which vmap cannot trace.
    """

    # What right-pads a trimmed batch to a wider one (bat.core.protocols.concat_batches): the
    # padded tokens are masked and unlabelled, so no loss or gradient sees them.
    padding = {"input_ids": 0, "attention_mask": 0, "labels": IGNORE_INDEX}

    def prepare(self, examples: Batch, generator: torch.Generator) -> Batch:
        """Drop the padding columns that no example in this batch attends to (saves compute)."""
        attended = examples["attention_mask"].any(dim=0).nonzero()
        end = int(attended.max()) + 1 if len(attended) else 1
        return {name: values[:, :end] for name, values in examples.items()}

    def batch_outputs(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The logits: the network output that Gauss-Newton products differentiate."""
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def output_losses(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        # Position i predicts token i + 1, as the labels of a transformers causal LM are meant.
        labels = batch["labels"][:, 1:]
        token_losses = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), labels,
                                       ignore_index=IGNORE_INDEX, reduction="none")
        counts = (labels != IGNORE_INDEX).sum(dim=1).clamp(min=1)
        return token_losses.sum(dim=1) / counts

    def batch_losses(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.output_losses(self.batch_outputs(model, batch), batch)

    def draw_model_targets(self, model: nn.Module, batch: Batch,
                           generator: torch.Generator) -> Batch:
        """``batch`` plus ``model_labels``: each labelled token replaced by a draw from the LM's
        own next-token distribution (``sampled_fisher``); ignored positions stay ignored."""
        logits = self.batch_outputs(model, batch)[:, :-1].float()
        probabilities = torch.softmax(logits, dim=-1).cpu()
        drawn = torch.multinomial(probabilities.flatten(0, 1), 1, generator=generator)
        labels = batch["labels"].clone()
        drawn = drawn.view(probabilities.shape[:2]).to(labels)
        labels[:, 1:] = torch.where(labels[:, 1:] == IGNORE_INDEX, IGNORE_INDEX, drawn)
        return {**batch, "model_labels": labels}

    def model_target_losses(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """ℓ̃_i = Σ_t CE(f_it, ŷ_it) / √T_i over the T_i labelled tokens, shape [batch].

        Its gradient (1/√T_i) Σ_t J_itᵀ (p_it − e_ŷ) has second moment (1/T_i) Σ_t J_itᵀ
        (diag p_it − p_it p_itᵀ) J_it, the Gauss-Newton matrix of the mean cross-entropy (the
        tokens' draws are independent, so cross terms vanish in expectation).
        """
        losses = self.output_losses(self.batch_outputs(model, batch),
                                    {"labels": batch["model_labels"]})
        counts = (batch["model_labels"][:, 1:] != IGNORE_INDEX).sum(dim=1).clamp(min=1)
        return losses * counts.sqrt()
