"""The image track's :class:`bat.core.protocols.Task`: noise prediction of a diffusion UNet.

It builds training batches from stored examples (:meth:`DiffusionTask.prepare`), drawing the
noise and timesteps there from a ``torch.Generator``, so a batch is a fixed value that can be
scored twice (by a selector, then by the optimizer step) and replayed after a resume, and the
examples two regimes' batches share get the same draws.
Losses use only per-example arithmetic, so ``torch.func.vmap`` over single examples (each a batch
of one) gives the same numbers as the whole batch.
"""

from __future__ import annotations

import torch
from torch import nn

from bat.errors import ConfigError
from bat.core.protocols import Batch
from bat.core.runtime import model_dtype


def diffusion_batch(latents: torch.Tensor, encoder_hidden_states: torch.Tensor,
                    noise: torch.Tensor, timesteps: torch.Tensor,
                    loss_weight: torch.Tensor | None = None) -> Batch:
    """The batch :class:`DiffusionTask` trains on: ``latents`` [B, C, H, W], their text
    conditioning [B, tokens, dim], ``noise`` shaped as ``latents``, ``timesteps`` [B] (long) and,
    when given, per-example ``loss_weight`` [B]."""
    batch = {"latents": latents, "encoder_hidden_states": encoder_hidden_states,
             "noise": noise, "timesteps": timesteps}
    if loss_weight is not None:
        batch["loss_weight"] = loss_weight
    return batch


def make_diffusion_batch(latents: torch.Tensor, encoder_hidden_states: torch.Tensor,
                         generator: torch.Generator, num_train_timesteps: int) -> Batch:
    """A diffusion training batch whose noise and timesteps ``generator`` draws as two batch
    tensors (the backbone's pre-training, which pairs no regimes)."""
    return diffusion_batch(
        latents, encoder_hidden_states,
        torch.randn(latents.shape, generator=generator, dtype=latents.dtype),
        torch.randint(0, num_train_timesteps, (latents.shape[0],), generator=generator))


class DiffusionTask:
    """Epsilon-prediction loss of a (possibly adapted) ``UNet2DConditionModel``.

    Examples hold ``latents`` and ``encoder_hidden_states`` and optionally ``prior``, a bool
    ``[examples]`` marking DreamBooth's class images (paper eq. 27: backbone samples of the class
    prompt). With class images in a batch, :meth:`prepare` weights each example so that the batch
    mean of :meth:`batch_losses` is diffusers' ``train_dreambooth.py`` loss for any mix,

        mse(instance examples) + prior_loss_weight · mse(class examples),

    each term a mean over its own examples (diffusers chunks the batch into these two halves).
    ``prior_loss_weight`` is λ of eq. 27 (diffusers' default 1.0).
    """

    def __init__(self, noise_scheduler, prior_loss_weight: float = 1.0):
        prediction = noise_scheduler.config.prediction_type
        if prediction != "epsilon":
            raise ConfigError(f"noise_scheduler.prediction_type: {prediction!r} is not supported; "
                              "DiffusionTask trains 'epsilon' prediction")
        if not prior_loss_weight >= 0:
            raise ConfigError(f"prior_loss_weight: {prior_loss_weight!r} is not allowed; use a number ≥ 0")
        self.noise_scheduler = noise_scheduler
        self.prior_loss_weight = float(prior_loss_weight)

    def prepare(self, examples: Batch, generator: torch.Generator) -> Batch:
        """A training batch of ``examples``: each example draws its noise, then its timestep, in
        turn from ``generator``.

        Drawn one example at a time, not as one batch tensor, so that two batches that begin
        with the same examples, prepared from the same generator state, give those examples the
        same noise and timesteps: a ``bat`` step (D^A, then D^B') and the ``plain`` step of the
        same seed (D^A alone) train D^A on the same noise (``bat.core.train`` reseeds per step).
        """
        latents, steps = examples["latents"], self.noise_scheduler.config.num_train_timesteps
        noise, timesteps = [], []
        for _ in range(len(latents)):
            noise.append(torch.randn(latents.shape[1:], generator=generator, dtype=latents.dtype))
            timesteps.append(torch.randint(0, steps, (), generator=generator))
        return diffusion_batch(latents, examples["encoder_hidden_states"], torch.stack(noise),
                               torch.stack(timesteps),
                               self.prior_weights(examples["prior"]) if "prior" in examples else None)

    def prior_weights(self, prior: torch.Tensor) -> torch.Tensor:
        """Per-example loss weights ``[examples]`` for the class-image mask ``prior`` (bool).

        Instance examples get ``B / n_instance``, class examples ``λ · B / n_class``, so that the
        mean over the ``B`` examples is mse(instance) + λ · mse(class). A batch without class
        images gets weight 1 everywhere (the plain mean).
        """
        prior = prior.bool()
        size, classes = prior.numel(), int(prior.sum())
        instances = size - classes
        instance_weight = size / instances if instances else 0.0
        class_weight = self.prior_loss_weight * size / classes if classes else 0.0
        return torch.where(prior, class_weight, instance_weight).float()

    def batch_outputs(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The predicted noise: the network output that Gauss-Newton products differentiate.

        The UNet's inputs are cast to its weights' dtype (:func:`bat.core.runtime.model_dtype`), so
        a bfloat16 backbone runs under CPU autocast too; the noise target stays as drawn.
        """
        noisy = self.noise_scheduler.add_noise(batch["latents"], batch["noise"], batch["timesteps"])
        dtype = model_dtype(model)
        return model(noisy.to(dtype), batch["timesteps"],
                     encoder_hidden_states=batch["encoder_hidden_states"].to(dtype)).sample

    def output_losses(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        squared = (outputs.float() - batch["noise"].float()) ** 2
        losses = squared.mean(dim=tuple(range(1, squared.ndim)))
        if "loss_weight" in batch:
            losses = losses * batch["loss_weight"]
        return losses

    def batch_losses(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.output_losses(self.batch_outputs(model, batch), batch)

    def draw_model_targets(self, model: nn.Module, batch: Batch,
                           generator: torch.Generator) -> Batch:
        """``batch`` plus ``fisher_noise`` z ~ N(0, I) of the predicted noise's shape.

        The squared error is a Gaussian likelihood centred on the prediction, so a drawn target
        differs from it by noise only and the model need not run (``sampled_fisher``).
        """
        z = torch.randn(batch["noise"].shape, generator=generator, dtype=torch.float32)
        return {**batch, "fisher_noise": z.to(batch["noise"].device)}

    def model_target_losses(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """ℓ̃_i = √(2w_i/D) Σ_j f_ij z_ij, shape [batch].

        Its gradient √(2w_i/D) J_iᵀ z_i has second moment (2w_i/D) J_iᵀJ_i, the Gauss-Newton
        matrix of w_i · mean_j (f_ij − ε_ij)² over the D outputs (w_i the prior weight).
        """
        outputs = self.batch_outputs(model, batch).float()
        weight = batch.get("loss_weight", torch.ones(len(outputs), device=outputs.device))
        scale = (2 * weight.float() / outputs[0].numel()).sqrt()
        return (outputs * batch["fisher_noise"]).flatten(1).sum(1) * scale
