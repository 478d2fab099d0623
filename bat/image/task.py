"""The image track's :class:`bat.core.protocols.Task`: noise prediction of a diffusion UNet.

It builds training batches from stored examples (:meth:`DiffusionTask.prepare`), drawing the
noise and timesteps there from a ``torch.Generator``, so a batch is a fixed value that can be
scored twice (by a selector, then by the optimizer step) and replayed after a resume.
Losses use only per-example arithmetic, so ``torch.func.vmap`` over single examples (each a batch
of one) gives the same numbers as the whole batch.
"""

from __future__ import annotations

import torch
from torch import nn

from bat.errors import ConfigError
from bat.core.protocols import Batch


def make_diffusion_batch(latents: torch.Tensor, encoder_hidden_states: torch.Tensor,
                         generator: torch.Generator, num_train_timesteps: int,
                         loss_weight: torch.Tensor | None = None) -> Batch:
    """A diffusion training batch whose noise and timesteps come from ``generator``."""
    batch = {
        "latents": latents,
        "encoder_hidden_states": encoder_hidden_states,
        "noise": torch.randn(latents.shape, generator=generator, dtype=latents.dtype),
        "timesteps": torch.randint(0, num_train_timesteps, (latents.shape[0],), generator=generator),
    }
    if loss_weight is not None:
        batch["loss_weight"] = loss_weight
    return batch


class DiffusionTask:
    """Epsilon-prediction loss of a (possibly adapted) ``UNet2DConditionModel``.

    Examples hold ``latents`` and ``encoder_hidden_states`` and optionally ``loss_weight``: DreamBooth's
    prior preservation (paper eq. 27) is class images with weight λ_prior in the same batch.
    """

    def __init__(self, noise_scheduler):
        prediction = noise_scheduler.config.prediction_type
        if prediction != "epsilon":
            raise ConfigError(f"noise_scheduler.prediction_type: {prediction!r} is not supported; "
                              "DiffusionTask trains 'epsilon' prediction")
        self.noise_scheduler = noise_scheduler

    def prepare(self, examples: Batch, generator: torch.Generator) -> Batch:
        return make_diffusion_batch(examples["latents"], examples["encoder_hidden_states"], generator,
                                    self.noise_scheduler.config.num_train_timesteps,
                                    examples.get("loss_weight"))

    def batch_outputs(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The predicted noise: the network output that Gauss-Newton products differentiate."""
        noisy = self.noise_scheduler.add_noise(batch["latents"], batch["noise"], batch["timesteps"])
        return model(noisy, batch["timesteps"], encoder_hidden_states=batch["encoder_hidden_states"]).sample

    def output_losses(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        squared = (outputs.float() - batch["noise"].float()) ** 2
        losses = squared.mean(dim=tuple(range(1, squared.ndim)))
        if "loss_weight" in batch:
            losses = losses * batch["loss_weight"]
        return losses

    def batch_losses(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.output_losses(self.batch_outputs(model, batch), batch)
