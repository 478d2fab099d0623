"""Per-sample gradients, curvature products and solvers, each against a second computation."""

import types

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.func import functional_call, hessian, jacrev
from transformers import LlamaConfig, LlamaForCausalLM

from bat.core.curvature import (FisherOperator, MatrixOperator, OutputTask, adapter_parameters,
                           curvature_operators, eager_attention, flat_parameters,
                           per_sample_grads, per_sample_grads_loop, unflatten)
from bat.errors import ConfigError
from bat.core.solvers import IndefiniteCurvatureError, NonFiniteError, SolveOptions, solve
from bat.text.task import CausalLMTask
from tests.tiny_models import text_examples


class LMTask:
    """Next-token cross-entropy, mean over each sequence's tokens."""

    def batch_outputs(self, model, batch):
        return model(input_ids=batch["input_ids"]).logits

    def output_losses(self, logits, batch):
        ids = batch["input_ids"]
        tokens = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(),
                                 reduction="none")
        return tokens.view(ids.shape[0], -1).mean(1)

    def batch_losses(self, model, batch):
        return self.output_losses(self.batch_outputs(model, batch), batch)


class RegressionTask:
    """Squared error of a network's vector output against a target."""

    def batch_outputs(self, model, batch):
        return model(batch["x"])

    def output_losses(self, outputs, batch):
        return ((outputs - batch["y"]) ** 2).sum(1) / 2

    def batch_losses(self, model, batch):
        return self.output_losses(self.batch_outputs(model, batch), batch)


@pytest.fixture(scope="module")
def lora_lm():
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                         max_position_embeddings=32, attn_implementation="eager")
    # init_lora_weights=False: B ≠ 0, so the gradients of A are not all zero.
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_dropout=0.1,
                      init_lora_weights=False)
    model = get_peft_model(LlamaForCausalLM(config), lora).double()
    batch = {"input_ids": torch.randint(0, 64, (5, 8), generator=torch.Generator().manual_seed(1))}
    return model, batch


def mlp_problem(seed=0, n=6):
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(0.2), nn.Linear(4, 2)).double()
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=generator, dtype=torch.float64)
    model[0].bias.requires_grad_(False)  # a frozen part, as the backbone is
    model.train()  # the library must switch dropout off itself
    batch = {"x": torch.randn(n, 3, generator=generator, dtype=torch.float64),
             "y": torch.randn(n, 2, generator=generator, dtype=torch.float64)}
    return model, batch


def functional_mean_loss(model, task, batch, weights):
    """Weighted loss as a function of the flat θ_A, for torch.func.hessian."""
    names, params = adapter_parameters(model)
    model.eval()

    def loss(theta):
        swapped = dict(zip(names, unflatten(theta, params)))
        outputs = functional_call(model, swapped, (batch["x"],))
        return (weights * task.output_losses(outputs, batch)).sum()
    return loss


def random_weights(n, seed=0):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- per-sample gradients ---------------------------------------------------------------------

def test_vmap_matches_loop_on_lora_lm_with_dropout(lora_lm):
    model, batch = lora_lm
    model.train()  # dropout active: scores must still be deterministic and mode restored
    vmapped = per_sample_grads(model, LMTask(), batch, chunk_size=2)
    looped = per_sample_grads_loop(model, LMTask(), batch)
    assert model.training
    assert vmapped.shape == (5, flat_parameters(model).numel())
    assert vmapped.abs().sum() > 0
    torch.testing.assert_close(vmapped, looped, atol=1e-10, rtol=1e-8)


def test_vmap_matches_loop_on_mlp_and_sums_to_batch_gradient():
    model, batch = mlp_problem()
    task = RegressionTask()
    vmapped = per_sample_grads(model, task, batch)
    torch.testing.assert_close(vmapped, per_sample_grads_loop(model, task, batch))
    params = adapter_parameters(model)[1]
    model.eval()
    total = torch.autograd.grad(task.batch_losses(model, batch).sum(), params)
    torch.testing.assert_close(vmapped.sum(0), torch.cat([g.reshape(-1) for g in total]))


def test_frozen_parameters_are_left_out():
    model, _ = mlp_problem()
    frozen = model[0].bias.numel()
    assert flat_parameters(model).numel() == sum(p.numel() for p in model.parameters()) - frozen


# --- curvature products -----------------------------------------------------------------------

def test_hessian_products_match_dense_hessian():
    model, batch = mlp_problem()
    task, weights = RegressionTask(), random_weights(6)
    operator, = curvature_operators("hessian", model, task, batch, [weights])
    dense = hessian(functional_mean_loss(model, task, batch, weights))(flat_parameters(model))
    v = torch.randn(operator.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(operator.matvec(v), dense @ v)
    torch.testing.assert_close(operator.dense(), dense)


def test_gauss_newton_matches_jacobian_form():
    model, batch = mlp_problem()
    task, weights = RegressionTask(), random_weights(6)
    operator, = curvature_operators("gauss_newton", model, task, batch, [weights])
    names, params = adapter_parameters(model)
    model.eval()

    def outputs(theta):
        return functional_call(model, dict(zip(names, unflatten(theta, params))), (batch["x"],))
    jacobian = jacrev(outputs)(flat_parameters(model))  # [n, 2, d]; ∂²ℓ/∂f² = I
    expected = torch.einsum("i,iod,ioe->de", weights, jacobian, jacobian)
    torch.testing.assert_close(operator.dense(), expected)


def test_gauss_newton_equals_hessian_for_linear_model_with_squared_loss():
    model = nn.Linear(4, 3).double()
    generator = torch.Generator().manual_seed(0)
    batch = {"x": torch.randn(7, 4, generator=generator, dtype=torch.float64),
             "y": torch.randn(7, 3, generator=generator, dtype=torch.float64)}
    weights = [torch.full((7,), 1 / 7, dtype=torch.float64)]
    gn, = curvature_operators("gauss_newton", model, RegressionTask(), batch, weights)
    h, = curvature_operators("hessian", model, RegressionTask(), batch, weights)
    torch.testing.assert_close(gn.dense(), h.dense())


def test_gauss_newton_on_lora_lm_is_psd_and_differences_share_products(lora_lm):
    model, batch = lora_lm
    w_all = torch.full((5,), 0.2, dtype=torch.float64)
    w_part = torch.tensor([0, 0, 0.2, 0.2, 0.2], dtype=torch.float64)
    full, part, difference = curvature_operators("gauss_newton", model, LMTask(), batch,
                                                 [w_all, w_part, w_all - w_part])
    v = torch.randn(full.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(v @ full.matvec(v)) > 0
    torch.testing.assert_close(difference.matvec(v), full.matvec(v) - part.matvec(v))


def test_hessian_on_lora_lm_matches_forward_over_reverse(lora_lm):
    model, batch = lora_lm
    weights = torch.full((5,), 0.2, dtype=torch.float64)
    operator, = curvature_operators("hessian", model, LMTask(), batch, [weights])
    names, params = adapter_parameters(model)
    task = LMTask()
    model.eval()

    def mean_loss(theta):
        swapped = dict(zip(names, unflatten(theta, params)))
        logits = functional_call(model, swapped, (), {"input_ids": batch["input_ids"]}).logits
        return (weights * task.output_losses(logits, batch)).sum()
    v = torch.randn(operator.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, expected = torch.func.jvp(torch.func.grad(mean_loss), (flat_parameters(model),), (v,))
    # rotary embeddings are computed in float32 inside the double model, hence the tolerance
    torch.testing.assert_close(operator.matvec(v), expected, rtol=1e-5, atol=1e-6)


def test_fisher_operator_is_weighted_outer_products():
    grads = torch.randn(5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weights = random_weights(5)
    expected = sum(w * torch.outer(g, g) for w, g in zip(weights, grads))
    torch.testing.assert_close(FisherOperator(grads, weights).dense(), expected)


def test_gauss_newton_without_outputs_is_a_config_error():
    class LossOnly:
        def batch_losses(self, model, batch):
            return RegressionTask().batch_losses(model, batch)
    model, batch = mlp_problem()
    assert isinstance(RegressionTask(), OutputTask) and not isinstance(LossOnly(), OutputTask)
    with pytest.raises(ConfigError, match="gauss_newton"):
        curvature_operators("gauss_newton", model, LossOnly(), batch, [random_weights(6)])


# --- solvers ----------------------------------------------------------------------------------

def psd_fisher(d=30, n=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return FisherOperator(torch.randn(n, d, generator=generator, dtype=torch.float64),
                          torch.full((n,), 1 / n, dtype=torch.float64))


def rhs(d, seed=1):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("solver", ["cg", "lissa", "woodbury"])
def test_solvers_match_dense_on_psd_fisher(solver):
    operator, v = psd_fisher(), rhs(30)
    reference = solve(operator, v, SolveOptions(solver="dense", damping=0.1)).x
    options = SolveOptions(solver=solver, damping=0.1, tol=1e-10, max_iter=5000,
                           indefinite="raise")
    solution = solve(operator, v, options)
    assert solution.report.converged and not solution.report.indefinite
    assert solution.report.residual < 1e-8
    torch.testing.assert_close(solution.x, reference, rtol=1e-7, atol=1e-9)
    assert solution.report.solver == solver and solution.report.curvature == "fisher"


def test_woodbury_matches_dense_for_more_rows_than_dimensions():
    operator, v = psd_fisher(d=6, n=15), rhs(6)
    dense = solve(operator, v, SolveOptions(solver="dense", damping=1e-3)).x
    torch.testing.assert_close(solve(operator, v, SolveOptions(
        solver="woodbury", damping=1e-3, indefinite="raise")).x, dense)


@pytest.mark.parametrize("policy", ["raise", "clip"])
def test_solve_norm_takes_the_norm_from_the_factor_without_expanding(policy, monkeypatch):
    """Fewer rows than weights, float32 rows as the grids have them: the norm and the residual
    come from the rows' coordinates (no product by Q), and equal those of the dense solution."""
    from bat.core.curvature import RowFactor
    from bat.core.solvers import solve_norm

    generator = torch.Generator().manual_seed(3)
    grads, v = torch.randn(6, 4000, generator=generator), torch.randn(4000, generator=generator)
    # PSD weights, or signed ones as H^{bat|A} − H^{bat} has, whose negative curvature clip lifts
    weights = [0.3, 0.2, 0.2, 0.1, 0.05, 0.0] if policy == "raise" else [0.3, 0.2, 0.2, 0.1, -0.15, -0.05]
    operator = FisherOperator(grads, torch.tensor(weights, dtype=torch.float64))
    options = SolveOptions(solver="woodbury", damping=1e-2, indefinite=policy)
    matrix, v64 = operator.dense(), v.double()
    x = solve(MatrixOperator(matrix), v64, SolveOptions(solver="dense", damping=1e-2, indefinite=policy)).x
    residual = float(torch.linalg.vector_norm(matrix @ x + 1e-2 * x - v64) / torch.linalg.vector_norm(v64))
    explicit = solve(operator, v, options)
    monkeypatch.setattr(RowFactor, "expand", lambda self, y: pytest.fail("x was expanded"))
    norm, report = solve_norm(operator, v, options)
    assert norm == pytest.approx(float(torch.linalg.vector_norm(x)), rel=1e-10)
    assert report.residual == pytest.approx(residual, rel=1e-6, abs=1e-10) == explicit.report.residual
    assert (report.residual > 1e-3) is (policy == "clip")  # clipping changed what was solved


def test_solve_norm_expands_a_right_hand_side_in_the_rows_span(monkeypatch):
    """The empirical Fisher's own gradient sum lies in its rows' span: ‖v‖² − ‖Qᵀv‖² would be
    round-off, so x is expanded; the norm still matches the dense one."""
    from bat.core.curvature import RowFactor
    from bat.core.solvers import solve_norm

    operator = psd_fisher(d=300, n=8)
    v = operator.grads.sum(0)
    dense = solve(operator, v, SolveOptions(solver="dense", damping=1e-4)).x
    expanded = []
    expand = RowFactor.expand
    monkeypatch.setattr(RowFactor, "expand", lambda self, y: expanded.append(y) or expand(self, y))
    norm, _ = solve_norm(operator, v, SolveOptions(solver="woodbury", damping=1e-4))
    assert expanded and norm == pytest.approx(float(torch.linalg.vector_norm(dense)), rel=1e-9)


def test_prefetched_projections_come_from_the_grams_pass(monkeypatch):
    """Vectors given to ``prefetch`` are projected in the pass over G that forms the Gram (block
    size 1000 of 4000 columns: four blocks, not eight), and give the same Qᵀv as a pass of their
    own; a vector not prefetched, or prefetched too late, takes its own pass."""
    from bat.core.curvature import RowFactor

    generator = torch.Generator().manual_seed(5)
    grads = torch.randn(6, 4000, generator=generator)
    v, w, late = (torch.randn(4000, generator=generator) for _ in range(3))
    reference = RowFactor(grads, block=1000)
    expected = [reference.project(u) for u in (v, w, late)]
    passes = []
    blocks = RowFactor._blocks
    monkeypatch.setattr(RowFactor, "_blocks", lambda self: passes.append(1) or blocks(self))
    factor = RowFactor(grads, block=1000)
    factor.prefetch([v, w])
    got = [factor.project(v), factor.project(w)]
    assert len(passes) == 1  # the Gram's pass served both
    factor.prefetch([late])  # the Gram exists: nothing is prefetched any more
    got.append(factor.project(late))
    assert len(passes) == 2
    for value, reference_value in zip(got, expected):
        torch.testing.assert_close(value, reference_value, rtol=1e-12, atol=1e-12)
    assert factor.project(v.clone()) is not None and len(passes) == 3  # identity, not equality


def test_cg_matches_dense_on_hessian_products():
    model, batch = mlp_problem(n=20)
    operator, = curvature_operators("gauss_newton", model, RegressionTask(), batch,
                                    [torch.full((20,), 1 / 20, dtype=torch.float64)])
    v = rhs(operator.dim)
    dense = solve(operator, v, SolveOptions(solver="dense", damping=1e-2)).x
    cg = solve(operator, v, SolveOptions(solver="cg", damping=1e-2, tol=1e-10))
    assert cg.report.converged and cg.report.iterations <= 2 * operator.dim
    torch.testing.assert_close(cg.x, dense)


def indefinite_matrix(d=8):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0),
                                       dtype=torch.float64))
    eigenvalues = torch.linspace(-2.0, 3.0, d, dtype=torch.float64)
    return MatrixOperator(q @ torch.diag(eigenvalues) @ q.T, kind="hessian"), q, eigenvalues


@pytest.mark.parametrize("solver", ["dense", "cg", "lissa"])
def test_indefinite_raises_under_raise_policy(solver):
    operator, _, _ = indefinite_matrix()
    with pytest.raises(IndefiniteCurvatureError) as caught:
        solve(operator, rhs(8), SolveOptions(solver=solver, damping=0.1, indefinite="raise",
                                             max_iter=500))
    assert caught.value.report.indefinite


@pytest.mark.parametrize("solver", ["cg", "lissa"])
def test_truncated_iterations_flag_negative_curvature_without_nan(solver):
    operator, _, _ = indefinite_matrix()
    solution = solve(operator, rhs(8), SolveOptions(solver=solver, damping=0.1,
                                                    indefinite="truncate", max_iter=500))
    assert solution.report.indefinite and not solution.report.converged
    assert torch.isfinite(solution.x).all()


def test_dense_clip_and_abs_policies_change_only_negative_eigenvalues():
    operator, q, eigenvalues = indefinite_matrix()
    v = rhs(8)
    clip = solve(operator, v, SolveOptions(solver="dense", damping=0.1, indefinite="clip",
                                           eig_floor=0.5))
    absolute = solve(operator, v, SolveOptions(solver="dense", damping=0.1, indefinite="abs"))
    coefficients = q.T @ v
    torch.testing.assert_close(clip.x, q @ (coefficients / (eigenvalues + 0.1).clamp(min=0.5)))
    torch.testing.assert_close(absolute.x, q @ (coefficients / (eigenvalues.abs() + 0.1)))
    assert clip.report.indefinite and clip.report.negative_eigenvalues == 3
    assert clip.report.min_eigenvalue == pytest.approx(-2.0)


def test_woodbury_with_signed_weights_detects_indefinite_difference():
    grads = torch.randn(6, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    signed = torch.tensor([0.3, 0.3, 0.3, -0.2, -0.2, -0.2], dtype=torch.float64)
    operator, v = FisherOperator(grads, signed), rhs(20)
    woodbury = solve(operator, v, SolveOptions(solver="woodbury", damping=0.1, indefinite="abs"))
    dense = solve(operator, v, SolveOptions(solver="dense", damping=0.1, indefinite="abs"))
    assert woodbury.report.indefinite and woodbury.report.negative_eigenvalues == 3
    torch.testing.assert_close(woodbury.x, dense.x)


def test_solve_options_name_field_and_allowed_values():
    with pytest.raises(ConfigError, match=r"indefinite.*'raise', 'truncate'"):
        SolveOptions(solver="cg", indefinite="clip")
    with pytest.raises(ConfigError, match="solver"):
        SolveOptions(solver="newton")
    with pytest.raises(ConfigError, match="damping"):
        SolveOptions(damping=0.0)
    with pytest.raises(ConfigError, match="woodbury"):
        solve(MatrixOperator(torch.eye(3)), torch.ones(3), SolveOptions(solver="woodbury",
                                                                        indefinite="clip"))


def diagonal_problem(diagonal: list[float], solver: str):
    """diag(diagonal) as ``solver`` takes it: for woodbury, a Fisher with signed weights."""
    entries = torch.tensor(diagonal, dtype=torch.float64)
    if solver == "woodbury":
        return FisherOperator(torch.eye(len(diagonal), dtype=torch.float64), entries)
    return MatrixOperator(torch.diag(entries))


@pytest.mark.parametrize("solver", ["dense", "woodbury", "cg", "lissa"])
def test_damping_that_lifts_every_eigenvalue_cures_indefiniteness(solver):
    # diag(1, -0.5) + 1·I = diag(2, 0.5): positive definite, so x = [0.5, 2.0].
    operator = diagonal_problem([1.0, -0.5], solver)
    solution = solve(operator, torch.ones(2, dtype=torch.float64),
                     SolveOptions(solver=solver, damping=1.0, tol=1e-12, max_iter=500))
    torch.testing.assert_close(solution.x, torch.tensor([0.5, 2.0], dtype=torch.float64))
    assert solution.report.converged and not solution.report.indefinite


@pytest.mark.parametrize("solver", ["dense", "woodbury", "cg", "lissa"])
def test_non_finite_right_hand_side_is_refused_by_every_solver(solver):
    operator = diagonal_problem([1.0, 1.0], solver)
    with pytest.raises(NonFiniteError, match=r"the right-hand side v has 1 non-finite entries "
                                             r"\(first at index 1\); nothing was solved"):
        solve(operator, torch.tensor([1.0, float("nan")], dtype=torch.float64),
              SolveOptions(solver=solver))


@pytest.mark.parametrize("solver, what", [
    ("dense", "the matrix curvature matrix M"), ("cg", "the matrix curvature product M v"),
    ("lissa", "the matrix curvature product M v"),
    ("woodbury", "the per-sample gradients G of the Fisher")])
def test_non_finite_products_are_refused_by_every_solver(solver, what):
    matrix = torch.eye(2, dtype=torch.float64)
    matrix[1, 0] = float("inf")
    operator = (FisherOperator(matrix, torch.ones(2, dtype=torch.float64)) if solver == "woodbury"
                else MatrixOperator(matrix))
    with pytest.raises(NonFiniteError, match=rf"^{what} has \d+ non-finite entries"):
        solve(operator, torch.ones(2, dtype=torch.float64), SolveOptions(solver=solver))


def test_vmap_on_an_sdpa_lm_switches_to_eager_attention_for_the_call():
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=64,
                         max_position_embeddings=64, attn_implementation="sdpa")
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(LlamaForCausalLM(config), lora).double()
    task = CausalLMTask()
    batch = task.prepare(text_examples(3, seed=0), torch.Generator().manual_seed(0))  # padded
    torch.testing.assert_close(per_sample_grads(model, task, batch),
                               per_sample_grads_loop(model, task, batch))
    assert model.config._attn_implementation == "sdpa"  # given back after the call


def test_a_model_that_cannot_switch_attention_is_told_to_load_eager():
    class Stuck(nn.Linear):  # as transformers leaves a model without AttentionInterface support
        config = types.SimpleNamespace(_attn_implementation="sdpa")

        def set_attn_implementation(self, implementation):
            pass

    with pytest.raises(ConfigError, match=r"^model: Stuck cannot switch to eager attention, which "
                                          r"per-sample gradients \(vmap\) need; load it with "
                                          r'attn_implementation="eager"$'):
        with eager_attention(Stuck(2, 2)):
            pass
