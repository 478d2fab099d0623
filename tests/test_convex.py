"""The convex check: closed forms against sampling, Prop-2 scores against exact Newton steps."""

import numpy as np
import pytest
import torch

from bat.convex import glm
from bat.convex.check import (CONTROL_METHODS, METHODS, ConvexConfig, backbone_count, controls, laws,
                        paired_excess, run_convex, summarise)
from bat.errors import ConfigError

SMOKE = ConvexConfig(sample_sizes=(16, 32), seeds=(0, 1), population_samples=20_000)


def test_ridge_closed_form_moments_match_sampled_moments():
    config = ConvexConfig()
    sources = laws(config)
    theta = np.linspace(-1, 1, config.dim)
    exact = glm.Population("ridge", sources, 1.0, 0.01, 0, np.random.default_rng(0))
    sampled = glm.Population("ridge", sources, 1.0, 0.01, 400_000, np.random.default_rng(1),
                             closed_form=False)
    for name in ("A", "B"):
        a, b = exact.moments(name, theta), sampled.moments(name, theta)
        for field in ("gradient", "hessian", "covariance"):
            scale = np.abs(getattr(a, field)).max()
            np.testing.assert_allclose(getattr(b, field), getattr(a, field), atol=0.03 * scale)


def test_ridge_population_minimizer_is_the_normal_equations():
    config = ConvexConfig()
    sources = laws(config)
    population = glm.Population("ridge", sources, 1.0, 0.01, 0, np.random.default_rng(0))
    a, b = sources["A"], sources["B"]
    expected = np.linalg.solve(0.3 * a.covariance + 0.7 * b.covariance + 0.01 * np.eye(5),
                               0.3 * a.covariance @ a.theta + 0.7 * b.covariance @ b.theta)
    np.testing.assert_allclose(population.minimizer({"A": 0.3, "B": 0.7}), expected)


@pytest.mark.parametrize("model", glm.MODELS)
def test_fit_is_a_stationary_point_of_the_torch_loss(model):
    rng = np.random.default_rng(0)
    x, y = glm.sample(model, laws(ConvexConfig())["A"], 40, 1.0, rng)
    theta = glm.fit(model, x, y, 0.01)
    linear = glm.LinearModel(theta)
    loss = glm.GLMTask(model, 0.01).batch_losses(linear, glm.as_batch(x, y)).mean()
    gradient, = torch.autograd.grad(loss, linear.theta)
    assert float(gradient.norm()) < 1e-10


def test_plain_and_random_errors_follow_their_predictions():
    plain = run_convex(ConvexConfig(models=("ridge",), methods=("plain",), sample_sizes=(200,),
                                    seeds=tuple(range(400))))
    assert plain.n_error.mean() == pytest.approx(plain.predicted_n_error.iloc[0], rel=0.1)
    both = run_convex(ConvexConfig(models=("ridge",), methods=("plain", "random"),
                                   sample_sizes=(200,), seeds=tuple(range(40))))
    random = both[both.method == "random"]
    assert random.n_error.mean() == pytest.approx(random.predicted_n_error.iloc[0], rel=0.1)


def test_smoke_run_has_every_method_and_a_summary():
    results = run_convex(SMOKE)
    assert len(results) == 2 * 2 * 2 * len(METHODS)
    assert np.isfinite(results[["sq_error", "n_error", "k_error"]].to_numpy()).all()
    m = backbone_count(16, 0.5) * results.n // 16
    fixed = results.method.isin(["random", "bat", "bat_oracle_free"])
    assert results[fixed].condition_share.isin([True, False]).all()
    assert (results[fixed].k == (results.n + m)[fixed]).all()
    sets = results.method.str.startswith("bat_set")
    assert (results[sets].k >= results[sets].n).all() and (results[sets].k <= (results.n + m)[sets]).all()
    assert (results[results.method == "plain"].k == results[results.method == "plain"].n).all()
    summary = summarise(results)
    assert len(summary) == 2 * 2 * len(METHODS)
    assert summary[summary.method == "plain"].rho_le_rho_a.all()


SMOKE_CONTROL = dict(sample_sizes=(16,), seeds=(0, 1, 2), population_samples=5_000,
                     methods=CONTROL_METHODS)
CONTROL = dict(sample_sizes=(16, 64), seeds=tuple(range(16)), population_samples=20_000,
               methods=CONTROL_METHODS)


def test_random_augmentation_beats_plain_at_every_n_when_optima_agree():
    """Positive control: at shift 0, D^B shares θ*, so more data must help."""
    excess, _ = paired_excess(run_convex(ConvexConfig(shift=0.0, **CONTROL)), "random", "plain")
    assert (excess < 0).all(), excess


def test_set_level_rule_no_worse_than_random_when_optima_agree():
    excess, _ = paired_excess(run_convex(ConvexConfig(shift=0.0, **CONTROL)), "bat_set", "random")
    assert (excess <= 0).all(), excess


@pytest.mark.parametrize("method", ["bat_set", "bat_set_oracle_free"])
def test_set_level_rule_never_worse_than_plain_by_two_standard_errors_when_shifted(method):
    excess, se = paired_excess(run_convex(ConvexConfig(shift=0.5, **CONTROL)), method, "plain")
    assert (excess <= 2 * se).all(), (excess, se)


def test_control_table_has_each_check_and_its_verdict():
    agreeing = run_convex(ConvexConfig(shift=0.0, **SMOKE_CONTROL))
    shifted = run_convex(ConvexConfig(shift=0.5, **SMOKE_CONTROL))
    table = controls(agreeing, shifted)
    assert len(table) == 5 * 2 * 1  # five checks, two models, one n
    # One metric-name key per check, distinct across checks.
    assert table.groupby("check").key.nunique().eq(1).all() and table.key.nunique() == 5
    excess, se = paired_excess(shifted, "bat_set", "plain")
    row = table[(table.check == "bat_set <= plain + 2 s.e. when shifted") & (table.model == "ridge")]
    assert row.passed.item() == (excess[("ridge", 16)] <= 2 * se[("ridge", 16)])


def test_runs_are_deterministic():
    small = ConvexConfig(models=("logistic",), sample_sizes=(16,), seeds=(3,),
                         population_samples=5_000)
    first, second = run_convex(small), run_convex(small)
    assert first.equals(second)


@pytest.mark.parametrize("kwargs, field", [
    (dict(models=("lasso",)), "models"),
    (dict(methods=("random",)), "methods"),
    (dict(gamma=1.0), "gamma"),
    (dict(weight="fisher"), "weight"),
    (dict(folds=1), "folds"),
    (dict(inequality="max"), "inequality"),
    (dict(sample_sizes=(0,)), "sample_sizes"),
    (dict(seeds=()), "seeds"),
])
def test_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ConvexConfig(**kwargs)
