"""Set-level selection: Woodbury greedy against dense solves, projected curvature against dense
operators, and the oracle target against the exact ridge fit."""

import numpy as np
import pytest
import torch
from torch import nn

from bat.convex import glm
from bat.convex.check import ConvexConfig, laws
from bat.core.curvature import curvature_operators, projected_curvatures, set_flat_parameters
from bat.errors import ConfigError
from bat.core.protocols import SelectionContext, Selector
from bat.core.selection import (NewtonTargets, SetSelectionConfig, SetSelector,
                           greedy_newton_selection)


def random_targets(seed, folds=3, r=6, candidates=12, rank=2):
    g = torch.Generator().manual_seed(seed)

    def psd(*shape, k):
        u = torch.randn(*shape, r, k, generator=g, dtype=torch.float64)
        return u @ u.transpose(-1, -2)

    return NewtonTargets(psd(folds, k=r) + 0.1 * torch.eye(r, dtype=torch.float64),
                         torch.randn(folds, r, generator=g, dtype=torch.float64),
                         psd(folds, k=r), torch.randn(folds, r, generator=g, dtype=torch.float64),
                         psd(candidates, k=rank), torch.randn(candidates, r, generator=g,
                                                              dtype=torch.float64))


def eligible_values(targets, chosen, every_fold):
    """Target of each further candidate that improves (every fold, if asked), by dense solves."""
    now = targets.fold_values(targets.dense_step(chosen))
    values = {}
    for j in range(len(targets.gradients)):
        if j in chosen:
            continue
        folds = targets.fold_values(targets.dense_step(chosen + [j]))
        if folds.mean() < now.mean() and (not every_fold or bool((folds < now).all())):
            values[j] = float(folds.mean())
    return values


@pytest.mark.parametrize("every_fold", [False, True])
@pytest.mark.parametrize("rank", [1, 2, 6])
def test_woodbury_greedy_matches_dense_solves_at_every_step(rank, every_fold):
    targets = random_targets(0, rank=rank)
    chosen, trace = greedy_newton_selection(targets, limit=5, every_fold=every_fold)
    assert chosen, "this problem has improving candidates"
    for i in range(len(chosen) + 1):
        assert trace[i] == pytest.approx(float(targets.value(targets.dense_step(chosen[:i]))),
                                         rel=1e-9, abs=1e-12)
    for i, pick in enumerate(chosen):  # each pick is the best eligible addition
        values = eligible_values(targets, chosen[:i], every_fold)
        assert pick == min(values, key=values.get)
    if len(chosen) < 5:  # stopped: nothing eligible is left
        assert not eligible_values(targets, chosen, every_fold)


def test_empty_set_when_every_candidate_hurts():
    targets = random_targets(1)
    targets.base_gradient.zero_()  # the base step is δ = 0, the target's minimum when b = 0
    targets.target_gradient.zero_()
    assert greedy_newton_selection(targets, limit=5) == ([], [0.0])


class LinearRegressionTask:
    def batch_outputs(self, model, batch):
        return model(batch["x"])

    def output_losses(self, outputs, batch):
        return (outputs[:, 0] - batch["y"]) ** 2 / 2 + torch.tanh(outputs[:, 0]) ** 2

    def batch_losses(self, model, batch):
        return self.output_losses(self.batch_outputs(model, batch), batch)


@pytest.mark.parametrize("kind", ["hessian", "gauss_newton", "fisher"])
def test_projected_curvature_is_the_dense_curvature_in_the_subspace(kind):
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(8, 1, bias=False).double()
    set_flat_parameters(model, torch.randn(8, generator=g, dtype=torch.float64))
    batch = {"x": torch.randn(5, 8, generator=g, dtype=torch.float64),
             "y": torch.randn(5, generator=g, dtype=torch.float64)}
    basis = torch.linalg.qr(torch.randn(8, 3, generator=g, dtype=torch.float64))[0]
    task = LinearRegressionTask()
    projected = projected_curvatures(kind, model, task, batch, basis)
    operators = curvature_operators(kind, model, task, batch, list(torch.eye(5, dtype=torch.float64)))
    for i, operator in enumerate(operators):
        torch.testing.assert_close(projected[i], basis.T @ operator.dense() @ basis)


def ridge_context(seed=0, n=12, pool=20):
    sources, rng = laws(ConvexConfig()), np.random.default_rng(seed)
    x_a, y_a = glm.sample("ridge", sources["A"], n, 1.0, rng)
    x_p, y_p = glm.sample("ridge", sources["B"], pool, 1.0, rng)
    theta_plain = glm.fit("ridge", x_a, y_a, 0.01)
    context = SelectionContext(model=glm.LinearModel(theta_plain), task=glm.GLMTask("ridge", 0.01),
                               adaptation_batch=glm.as_batch(x_a, y_a),
                               candidate_batch=glm.as_batch(x_p, y_p),
                               candidate_ids=list(range(100, 100 + pool)), step=0)
    return context, (x_a, y_a, x_p, y_p)


def test_oracle_target_is_the_exact_ridge_error_of_each_chosen_set():
    """Ridge: one Newton step from θ̂_A is the fit on D^A ∪ S, so the trace is ½‖θ̂ − θ*‖² − ½‖θ̂_A − θ*‖²."""
    context, (x_a, y_a, x_p, y_p) = ridge_context()
    theta_star = np.linspace(-1, 1, 5)
    selector = SetSelector(SetSelectionConfig(mode="oracle", curvature="hessian", damping=1e-12),
                           target=torch.as_tensor(theta_star))
    targets = selector.newton_targets(context)
    chosen, trace = greedy_newton_selection(targets, limit=6)
    offset = 0.5 * np.sum((glm.fit("ridge", x_a, y_a, 0.01) - theta_star) ** 2)
    for i in range(len(chosen) + 1):
        subset = chosen[:i]
        fitted = glm.fit("ridge", np.concatenate([x_a, x_p[subset]]),
                         np.concatenate([y_a, y_p[subset]]), 0.01)
        assert trace[i] + offset == pytest.approx(0.5 * np.sum((fitted - theta_star) ** 2),
                                                  rel=1e-7)
    assert selector.select(context, 6) == [100 + j for j in chosen]
    assert selector.records[-1]["targets"] == pytest.approx(trace)


def test_oracle_free_cross_validates_and_implements_the_selector_protocol():
    context, _ = ridge_context()
    selector = SetSelector(SetSelectionConfig(curvature="hessian", folds=3))
    assert isinstance(selector, Selector)
    targets = selector.newton_targets(context)
    assert targets.base_curvature.shape[0] == 3 and targets.target_gradient.shape == (3, 5)
    chosen = selector.select(context, 4)
    assert len(chosen) <= 4 and set(chosen) <= set(context.candidate_ids)
    context.step = 1  # reselect_every = 1: a new greedy run, same θ, same answer
    assert selector.select(context, 4) == chosen and len(selector.records) == 2
    quiet = SetSelector(SetSelectionConfig(curvature="hessian", folds=3, reselect_every=10))
    quiet.select(context, 4)
    context.step = 2
    quiet.select(context, 4)
    assert len(quiet.records) == 1  # kept between re-selections


def test_a_step_needing_fewer_takes_a_prefix_of_the_greedy_order_and_more_selects_again():
    """per_batch mixing alternates counts such as 10 and 11: a smaller count is served from the
    kept greedy order (what the greedy rule picks with that limit), only a larger one re-selects."""
    context, _ = ridge_context()
    selector = SetSelector(SetSelectionConfig(curvature="hessian", folds=3, reselect_every=100))
    chosen = selector.select(context, 4)
    context.step = 1
    assert selector.select(context, 2) == chosen[:2] and len(selector.records) == 1
    context.step = 2
    selector.select(context, 5)
    assert [record["limit"] for record in selector.records] == [4, 5]


@pytest.mark.parametrize("kwargs, field", [
    (dict(mode="oracel"), "mode"), (dict(curvature="kfac"), "curvature"),
    (dict(damping=0), "damping"), (dict(folds=1), "folds"), (dict(reselect_every=0), "reselect_every"),
])
def test_set_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        SetSelectionConfig(**kwargs)


def test_target_rules_and_too_few_examples_for_the_folds():
    with pytest.raises(ConfigError, match="target"):
        SetSelector(SetSelectionConfig(mode="oracle"))
    with pytest.raises(ConfigError, match="target"):
        SetSelector(SetSelectionConfig(), target=torch.zeros(5))
    context, _ = ridge_context(n=3)
    with pytest.raises(ConfigError, match="folds"):
        SetSelector(SetSelectionConfig(curvature="hessian", folds=4)).select(context, 2)


def test_set_selector_drives_the_bat_regime_of_the_training_loop(tmp_path):
    from tests.test_bat_regime import run

    selector = SetSelector(SetSelectionConfig(curvature="fisher", folds=2, reselect_every=2))
    result = run("lora", "bat", tmp_path / "bat", selector=selector)
    assert [row["step"] for row in result.log] == [1, 2, 3, 4]
    assert [record["step"] for record in selector.records] == [0, 2]
    assert all(len(record["selected_ids"]) <= record["limit"] for record in selector.records)
