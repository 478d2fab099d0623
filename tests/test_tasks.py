"""Per-example losses: a batch, a loop over single examples and vmap over them agree."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch.func import functional_call, vmap

from bat.errors import ConfigError
from bat.image.task import DiffusionTask, make_diffusion_batch
from bat.text.task import CausalLMTask
from tests.tiny_models import diffusion_examples, text_examples, tiny_llama, tiny_scheduler, tiny_unet

ATOL = 1e-5


class LossModule(torch.nn.Module):
    """``task.batch_losses`` as a module, so ``functional_call`` can swap its parameters."""

    def __init__(self, model, task):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, batch):
        return self.task.batch_losses(self.model, batch)


def per_example_losses(model, task, batch):
    """The way per-sample gradient code calls a task: vmap over batches of one example."""
    module = LossModule(model, task)
    state = (dict(module.named_parameters()), dict(module.named_buffers()))

    def one(example):
        return functional_call(module, state, ({k: v.unsqueeze(0) for k, v in example.items()},))[0]

    return vmap(one)(batch)


def check_equivalence(model, task, batch):
    model.eval()
    whole = task.batch_losses(model, batch)
    size = len(batch[next(iter(batch))])
    looped = torch.cat([task.batch_losses(model, {k: v[i:i + 1] for k, v in batch.items()})
                        for i in range(size)])
    assert whole.shape == (size,)
    torch.testing.assert_close(looped, whole, atol=ATOL, rtol=0)
    torch.testing.assert_close(per_example_losses(model, task, batch), whole, atol=ATOL, rtol=0)


def test_diffusion_losses_batch_equals_single_examples():
    task = DiffusionTask(tiny_scheduler())
    batch = task.prepare(diffusion_examples(3, seed=0, prior=[False, True, True]), torch.Generator().manual_seed(1))
    check_equivalence(tiny_unet(), task, batch)


def test_causal_lm_losses_batch_equals_single_examples():
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    task = CausalLMTask()
    check_equivalence(model, task, task.prepare(text_examples(3, seed=0), None))


def test_diffusion_batch_is_fixed_by_its_generator():
    examples = diffusion_examples(4, seed=0)
    first, second = (make_diffusion_batch(examples["latents"], examples["encoder_hidden_states"],
                                          torch.Generator().manual_seed(7), 100) for _ in range(2))
    for name in first:
        assert torch.equal(first[name], second[name])
    assert first["timesteps"].dtype == torch.long and int(first["timesteps"].max()) < 100


def test_loss_weight_scales_each_example():
    task, unet = DiffusionTask(tiny_scheduler()), tiny_unet()
    batch = task.prepare(diffusion_examples(2, seed=0), torch.Generator().manual_seed(0))
    weighted = dict(batch, loss_weight=torch.tensor([1.0, 0.25]))
    with torch.no_grad():
        plain, prior = task.batch_losses(unet, batch), task.batch_losses(unet, weighted)
    torch.testing.assert_close(prior, plain * torch.tensor([1.0, 0.25]))


@pytest.mark.parametrize("prior", [[False, True, True, True], [True, False, True, False]])
def test_prior_preservation_matches_diffusers_train_dreambooth_by_hand(prior):
    # diffusers' examples/dreambooth/train_dreambooth.py: loss = mse(instance predictions) +
    # prior_loss_weight * mse(class predictions), each F.mse_loss over its own examples only.
    task, unet = DiffusionTask(tiny_scheduler(), prior_loss_weight=0.7), tiny_unet()
    batch = task.prepare(diffusion_examples(4, seed=0, prior=prior), torch.Generator().manual_seed(0))
    is_class = torch.tensor(prior)
    with torch.no_grad():
        predicted = task.batch_outputs(unet, batch)
        ours = task.batch_losses(unet, batch).mean()  # how bat.core.train reduces a batch
    instance = F.mse_loss(predicted[~is_class], batch["noise"][~is_class])
    prior_loss = F.mse_loss(predicted[is_class], batch["noise"][is_class])
    torch.testing.assert_close(ours, instance + 0.7 * prior_loss, atol=1e-6, rtol=1e-6)


def test_batch_without_class_images_is_the_plain_mean():
    task, unet = DiffusionTask(tiny_scheduler(), prior_loss_weight=0.7), tiny_unet()
    examples = diffusion_examples(3, seed=0)
    marked = task.prepare(dict(examples, prior=torch.zeros(3, dtype=torch.bool)), torch.Generator().manual_seed(2))
    plain = task.prepare(examples, torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(task.batch_losses(unet, marked), task.batch_losses(unet, plain))


def test_prior_loss_weight_must_be_non_negative():
    with pytest.raises(ConfigError, match="prior_loss_weight"):
        DiffusionTask(tiny_scheduler(), prior_loss_weight=-1.0)


def test_lm_prepare_trims_shared_padding_without_changing_losses():
    task, model = CausalLMTask(), tiny_llama().eval()
    examples = text_examples(3, seed=0, length=12)
    padded = {k: torch.cat([v, torch.zeros(3, 5, dtype=v.dtype)], dim=1) for k, v in examples.items()}
    padded["labels"][:, 12:] = -100
    trimmed = task.prepare(padded, None)
    assert trimmed["input_ids"].shape[1] == int(examples["attention_mask"].sum(1).max())
    with torch.no_grad():
        torch.testing.assert_close(task.batch_losses(model, trimmed),
                                   task.batch_losses(model, padded), atol=ATOL, rtol=0)


def test_only_epsilon_prediction_is_accepted():
    from diffusers import DDPMScheduler

    with pytest.raises(ConfigError, match="prediction_type"):
        DiffusionTask(DDPMScheduler(prediction_type="v_prediction"))
