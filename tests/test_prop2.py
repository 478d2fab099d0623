"""Proposition 2's check discriminates: verdicts on constructed D^B' sets, and closed forms on ridge."""

import numpy as np
import pytest
import torch

from bat.convex import glm
from bat.errors import ConfigError
from bat.core.prop2 import Prop2Problem, Prop2Scores
from bat.core.solvers import SolveOptions, solve

D, N, M, RIDGE = 6, 8, 4, 1e-6
GAMMA = N / (N + M)


def setting(seed=0):
    """D^A: N noisy samples around θ^{A*}; M backbone inputs; e = θ̂_A − θ^{A*}; u ⟂ e."""
    rng = np.random.default_rng(seed)
    theta_star = rng.standard_normal(D)
    x_a = rng.standard_normal((N, D))
    y_a = x_a @ theta_star + rng.standard_normal(N)
    e = glm.fit("ridge", x_a, y_a, RIDGE) - theta_star
    x_b = rng.standard_normal((M, D))
    u = rng.standard_normal(D)
    u -= (u @ e) / (e @ e) * e
    return theta_star, x_a, y_a, x_b, e, np.linalg.norm(e) * u / np.linalg.norm(u)


# D^B' labelled noise-free by its own optimum θ_B; at θ^{A*} its gradients are
# x xᵀ(θ^{A*} − θ_B), so each kind below is a kind of gradient set relative to D^A's sum
# Σ_A ∇ℓ = H_A (θ^{A*} − θ̂_A) = −H_A e.
KINDS = {
    "aligned": (lambda e, u: 0 * e, True),  # shares θ^{A*}: gradients ≈ 0, only curvature added
    "small_unrelated": (lambda e, u: 0.1 * u, True),  # pulls ⟂ to D^A's error, weakly
    "unrelated": (lambda e, u: 5 * u, False),  # the same direction, strongly
    "opposed": (lambda e, u: -10 * e, False),  # gradients against Σ_A ∇ℓ, overshooting θ^{A*}
    "huge": (lambda e, u: 100 * e, False),  # along Σ_A ∇ℓ and 100× D^A's mean gradient
}


def problem(kind, curvature="hessian", reading="share", seed=0, gamma=GAMMA, **kwargs):
    theta_star, x_a, y_a, x_b, e, u = setting(seed)
    theta_b = theta_star + KINDS[kind][0](e, u)
    return Prop2Problem(glm.LinearModel(theta_star), glm.GLMTask("ridge", RIDGE),
                        glm.as_batch(x_a, y_a), glm.as_batch(x_b, x_b @ theta_b), curvature,
                        gamma=gamma, backbone_curvature=reading, **kwargs)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("inequality", ["norms", "mean_squares"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_check_holds_only_for_backbone_samples_that_agree_with_the_optimum(kind, inequality, seed):
    scores = problem(kind, seed=seed).scores(SolveOptions(solver="dense", damping=1e-8),
                                             inequality=inequality, relative=True)
    assert scores.holds is KINDS[kind][1]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", list(KINDS))
def test_sampled_fisher_check_gives_the_hessian_verdicts(kind, seed):
    """The grids' curvature: drawn-target rows (400 per example here) inverted by Woodbury."""
    scores = problem(kind, "sampled_fisher", seed=seed, draws=400)
    scores = scores.scores(SolveOptions(solver="woodbury", damping=1e-8), relative=True)
    assert scores.holds is KINDS[kind][1]


def test_row_curvatures_share_one_factor_and_give_the_dense_solution():
    p = problem("unrelated", "sampled_fisher", draws=3)
    difference, bat = p.operators()
    assert difference.factor is bat.factor
    for operator in (difference, bat):
        woodbury = solve(operator, p.sum_bat, SolveOptions(solver="woodbury", damping=1e-2)).x
        dense = solve(operator, p.sum_bat, SolveOptions(solver="dense", damping=1e-2)).x
        torch.testing.assert_close(woodbury, dense, rtol=1e-9, atol=1e-12)
        top = float(torch.linalg.eigvalsh(operator.dense()).abs().max())
        assert operator.top_eigenvalue() == pytest.approx(top, rel=1e-9)


def test_curvature_examples_reweight_a_subsample_of_the_adaptation_set():
    full, part = problem("unrelated"), problem("unrelated", curvature_examples=4)
    assert part.curvature_index.tolist()[4:] == list(range(N, N + M))
    # weights sum as before: the subsample stands for all of D^A
    assert len(part.bat_weights) == len(part.difference_weights) == len(part.curvature_index)
    assert float(part.bat_weights.sum()) == pytest.approx(1.0)
    assert float(part.difference_weights.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(part.sum_bat, full.sum_bat)


def test_empirical_fisher_passes_what_it_should_fail():
    """The previous grid setting: Fisher, Woodbury, clip at λ = 1e-3, conditional reading."""
    options = SolveOptions(solver="woodbury", damping=1e-3, indefinite="clip")
    for kind in ("huge", "opposed", "unrelated"):
        scores = problem(kind, "fisher", "conditional").scores(options)
        assert scores.holds  # (F̄ + λI)⁻¹ Σ g shrinks as the gradients grow


def weighted_ridge(x, y, weights):
    """argmin_θ Σ w_i ℓ_i / Σ w_i + ridge ‖θ‖²/2 for ℓ_i = (x_iᵀθ − y_i)²/2, in closed form."""
    total = weights.sum()
    return np.linalg.solve((x.T * weights) @ x / total + RIDGE * np.eye(x.shape[1]),
                           x.T @ (weights * y) / total)


@pytest.mark.parametrize("gamma", [GAMMA, 0.3, 0.9])
def test_ridge_scores_are_n_and_k_times_the_newton_errors(gamma):
    """Quadratic loss: one Newton step is the fit, so at θ^{A*} (share reading)
    Score_A = n‖θ^{A*} − θ̂_A‖ and Score_bat = k‖θ^{A*} − θ̂_bat‖ with k = n/γ and θ̂_bat the fit
    of D^bat mixed at γ (each D^B' example weighs n(1 − γ)/(γ m)); so "norms" is
    ‖err_bat‖ ≤ ‖err_A‖ (eq. 23) and "mean_squares" is k‖err_bat‖² ≤ n‖err_A‖², at every γ."""
    theta_star, x_a, y_a, x_b, e, u = setting()
    y_b = x_b @ (theta_star + 1.25 * u)  # at γ = n/(n + m): err_bat / err_a ≈ 0.85, in (√γ, 1)
    p = Prop2Problem(glm.LinearModel(theta_star), glm.GLMTask("ridge", RIDGE),
                     glm.as_batch(x_a, y_a), glm.as_batch(x_b, y_b), "hessian", gamma=gamma)
    err_a = np.linalg.norm(glm.fit("ridge", x_a, y_a, RIDGE) - theta_star)
    weights = np.concatenate([np.ones(N), np.full(M, N * (1 - gamma) / (gamma * M))])
    err_bat = np.linalg.norm(weighted_ridge(np.concatenate([x_a, x_b]),
                                            np.concatenate([y_a, y_b]), weights) - theta_star)
    options = SolveOptions(solver="dense", damping=1e-12)
    norms = p.scores(options, relative=True)
    squares = p.scores(options, inequality="mean_squares", relative=True)
    assert norms.gamma == squares.gamma == gamma
    assert norms.score_adaptation == pytest.approx(N * err_a, rel=1e-8)
    assert norms.score_bat == pytest.approx(N / gamma * err_bat, rel=1e-8)
    assert norms.holds == (err_bat <= err_a)
    assert squares.holds == (N / gamma * err_bat ** 2 <= N * err_a ** 2)
    if gamma == GAMMA:  # every example once: the unweighted fit
        unweighted = glm.fit("ridge", np.concatenate([x_a, x_b]), np.concatenate([y_a, y_b]), RIDGE)
        assert err_bat == pytest.approx(np.linalg.norm(unweighted - theta_star), rel=1e-8)
        assert norms.holds != squares.holds  # this D^B' lies between the two inequalities
        assert Prop2Problem(glm.LinearModel(theta_star), glm.GLMTask("ridge", RIDGE),
                            glm.as_batch(x_a, y_a), glm.as_batch(x_b, y_b),
                            "hessian").gamma == pytest.approx(GAMMA)


def test_a_few_backbone_examples_stand_for_their_share_of_the_mixture():
    """A selector scores all of D^A against one step's few D^B' examples. Counted once each,
    D^bat is n/(n + m) = 8/9 D^A and Score_bat stays near Score_A whatever D^B' holds, so eq. 12
    at the training's γ = 0.5 (γ·Score_bat ≤ Score_A) passes an example that pulls away from
    θ^{A*}; weighted as the 50/50 mixture training sees, it fails, and an aligned one passes."""
    theta_star, x_a, y_a, x_b, e, u = setting()
    options = SolveOptions(solver="dense", damping=1e-8)

    def scores(offset, gamma):
        return Prop2Problem(glm.LinearModel(theta_star), glm.GLMTask("ridge", RIDGE),
                            glm.as_batch(x_a, y_a), glm.as_batch(x_b[:1], x_b[:1] @ (theta_star + offset)),
                            "hessian", gamma=gamma).scores(options, relative=True)

    once = scores(2 * u, None)
    assert once.gamma == pytest.approx(N / (N + 1))
    assert Prop2Scores(once.score_adaptation, once.score_bat, 0.5, "norms", {}).holds
    assert not scores(2 * u, 0.5).holds
    assert scores(0 * u, 0.5).holds


def test_relative_damping_scales_with_the_spectrum():
    p = problem("aligned")
    options = SolveOptions(solver="dense", damping=1e-3)
    top = float(np.linalg.eigvalsh(p.operators()[1].dense().numpy()).max())
    assert p.solve_options(options, relative=True).damping == pytest.approx(1e-3 * top, rel=0.05)
    assert p.solve_options(options, relative=False).damping == 1e-3


def test_bad_gamma_or_inequality_names_the_field():
    with pytest.raises(ConfigError, match="gamma"):
        problem("aligned", gamma=1.0)
    with pytest.raises(ConfigError, match="inequality"):
        problem("aligned").scores(SolveOptions(solver="dense"), inequality="l1")


def test_rows_that_are_all_zero_give_the_damped_identity():
    """No curvature at all (e.g. every gradient zero): relative damping falls back to λ itself."""
    from bat.core.curvature import FisherOperator
    from bat.core.prop2 import relative_damping

    operator = FisherOperator(torch.zeros(3, 10), torch.full((3,), 1 / 3, dtype=torch.float64))
    options = relative_damping(operator, SolveOptions(solver="woodbury", damping=1e-3))
    assert operator.top_eigenvalue() == 0.0 and options.damping == 1e-3
    torch.testing.assert_close(solve(operator, torch.ones(10), options).x, torch.full((10,), 1e3))
