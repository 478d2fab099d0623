"""Layer-hook per-sample gradients, their random projection and the float32 Woodbury solve,
each against a second computation of the same thing."""

import pytest
import torch
from torch import nn

from bat.core import curvature
from bat.core.adapters import AdapterConfig, attach_adapter
from bat.core.curvature import (FisherOperator, GradientProjector, RowFactor, per_sample_grads,
                           per_sample_grads_hooks, per_sample_grads_loop,
                           projected_per_sample_grads)
from bat.core.prop2 import Prop2Problem
from bat.core.solvers import SolveOptions, solve
from bat.image.task import DiffusionTask
from bat.text.task import CausalLMTask
from tests.tiny_models import diffusion_examples, text_examples, tiny_llama, tiny_scheduler, tiny_unet

SETTINGS = {
    "locon": (tiny_unet, lambda: DiffusionTask(tiny_scheduler()), lambda: diffusion_examples(6, 1)),
    "lora_unet": (tiny_unet, lambda: DiffusionTask(tiny_scheduler()), lambda: diffusion_examples(6, 1)),
    "dreambooth": (tiny_unet, lambda: DiffusionTask(tiny_scheduler()), lambda: diffusion_examples(4, 1)),
    "lora": (tiny_llama, CausalLMTask, lambda: text_examples(6, 1)),
    "dora": (tiny_llama, CausalLMTask, lambda: text_examples(6, 1)),
}


def scored(kind):
    """A model with its adapter moved off the zero init (so every factor has a gradient)."""
    build, task, examples = SETTINGS[kind]
    torch.manual_seed(0)
    config = (AdapterConfig("lora", target_modules=("to_q", "to_k", "to_v", "to_out.0"))
              if kind == "lora_unet" else AdapterConfig(kind))
    model = attach_adapter(build(), config)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    task = task()
    return model, task, task.prepare(examples(), torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", list(SETTINGS))
def test_hook_gradients_equal_the_per_example_loop(kind, monkeypatch):
    """Every setting by hooks alone (DoRA's magnitude by its own rule): no vmap fallback."""
    model, task, batch = scored(kind)
    monkeypatch.setattr(curvature, "per_sample_grads", None)  # a fallback would call it
    loop = per_sample_grads_loop(model, task, batch)
    hooks = per_sample_grads_hooks(model, task, batch)
    scale = float(loop.abs().max())
    assert scale > 0
    torch.testing.assert_close(hooks, loop, atol=1e-5 * scale, rtol=1e-4)
    torch.testing.assert_close(per_sample_grads_hooks(model, task, batch, chunk_size=4), hooks,
                               atol=1e-6 * scale, rtol=1e-5)


class DirectWeight(nn.Module):
    """A Linear whose weight is also read outside its forward, which hooks cannot see."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x) + x[:, :2] * self.linear.weight.sum()


class SquaredTask:
    def batch_losses(self, model, batch):
        return (model(batch["x"]) ** 2).sum(1)


def test_a_weight_used_outside_its_layer_falls_back_to_vmap():
    torch.manual_seed(0)
    model, batch = DirectWeight(), {"x": torch.randn(5, 3)}
    torch.testing.assert_close(per_sample_grads_hooks(model, SquaredTask(), batch),
                               per_sample_grads_loop(model, SquaredTask(), batch))


class SharedProbe(nn.Module):
    """A Linear also applied to a fixed matrix whose output the loss uses: no hook rule fits."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.register_buffer("probe", torch.randn(4, 3))

    def forward(self, x):
        return self.linear(x) * self.linear(self.probe).sum()


def test_a_layer_called_on_other_inputs_the_loss_uses_falls_back_to_vmap(monkeypatch):
    torch.manual_seed(0)
    model, batch = SharedProbe(), {"x": torch.randn(5, 3)}
    expected = per_sample_grads_loop(model, SquaredTask(), batch)
    torch.testing.assert_close(per_sample_grads_hooks(model, SquaredTask(), batch), expected)
    monkeypatch.setattr(curvature, "per_sample_grads", None)
    with pytest.raises(TypeError):  # the fallback was needed
        per_sample_grads_hooks(model, SquaredTask(), batch)


def test_unprojected_layers_give_the_exact_rows():
    """A projection wider than every layer projects nothing: the rows are the exact gradients."""
    model, task, batch = scored("lora")
    projector = GradientProjector(model, dim=10_000)
    torch.testing.assert_close(projected_per_sample_grads(model, task, batch, projector),
                               per_sample_grads_hooks(model, task, batch))


@pytest.mark.parametrize("kind", ["locon", "lora"])
def test_projected_scores_approach_the_exact_ones_as_the_projection_widens(kind):
    """The Gram matrix, and with it Proposition 2's Woodbury scores, from projected gradients
    against the exact ones: the error shrinks with k (averaged over seeds) and is small at the
    widest k."""
    model, task, batch = scored(kind)
    exact = per_sample_grads_hooks(model, task, batch).double()
    gram = exact @ exact.T
    options = SolveOptions(solver="woodbury", damping=1e-3 * float(gram.diagonal().mean()),
                           indefinite="abs")
    n = exact.shape[0]
    adaptation = {key: value[:n // 2] for key, value in batch.items()}
    backbone = {key: value[n // 2:] for key, value in batch.items()}

    def scores(grads):
        problem = Prop2Problem(model, task, adaptation, backbone, "fisher", gamma=0.5, grads=grads)
        result = problem.scores(options)
        return torch.tensor([result.score_adaptation, result.score_bat], dtype=torch.float64)

    reference = scores(exact)
    errors = {}
    for dim in (2, 6, 16):  # 16 < the LM's width 32: every side is projected
        gram_errors, score_errors = [], []
        for seed in range(3):
            rows = projected_per_sample_grads(model, task, batch,
                                              GradientProjector(model, dim, seed)).double()
            gram_errors.append(float((rows @ rows.T - gram).norm() / gram.norm()))
            score_errors.append(float(((scores(rows) - reference) / reference).abs().max()))
        errors[dim] = (sum(gram_errors) / 3, sum(score_errors) / 3)
    assert errors[2][0] > errors[6][0] > errors[16][0]
    assert errors[16][0] < 0.1 and errors[16][1] < 0.05, errors


def test_projection_of_theta_matches_the_rows_coordinates():
    """⟨P g_i, P v⟩ for v = g_j is ⟨P g_i, P g_j⟩: flat() maps a θ-vector as the rows are mapped."""
    model, task, batch = scored("locon")
    projector = GradientProjector(model, dim=4)
    rows = projected_per_sample_grads(model, task, batch, projector)
    exact = per_sample_grads_hooks(model, task, batch)
    torch.testing.assert_close(projector.flat(model, exact[2]), rows[2], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("weights", ["positive", "signed"])
def test_blocked_woodbury_on_float32_rows_matches_a_dense_float64_solve(weights):
    """float32 rows, d a few blocks long with a partial last one: the factor built block by
    block in float64 solves as the dense float64 eigendecomposition of M does, at damping
    absolute and relative to the spectrum, and finds the same negative curvature."""
    generator = torch.Generator().manual_seed(0)
    n, d = 24, 1500
    scales = torch.logspace(0, -2, d, dtype=torch.float64)
    grads = (torch.randn(n, d, generator=generator, dtype=torch.float64) * scales).float()
    w = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if weights == "signed":
        w[n // 2:] *= -0.5
    operator = FisherOperator(grads, w, factor=RowFactor(grads, block=400))
    v = grads[:8].sum(0) + 0.1 * torch.randn(d, generator=generator).float()
    norm = float(torch.linalg.matrix_norm(grads.double(), ord=2) ** 2 / n)
    for damping in (1e-1 * norm, 1e-3 * norm, 1e-3):
        options = [SolveOptions(solver=solver, damping=damping, indefinite="clip")
                   for solver in ("dense", "woodbury")]
        reference, blocked = (solve(operator, v, option) for option in options)
        error = float((blocked.x.double() - reference.x.double()).norm() / reference.x.double().norm())
        assert error < 1e-5, (damping / norm, error)
        assert (blocked.report.negative_eigenvalues, blocked.report.indefinite) == (
            reference.report.negative_eigenvalues, reference.report.indefinite)
