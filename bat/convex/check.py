"""Proposition 2 checked on convex models, where θ*, H and ρ are known.

The adaptation law A and the backbone law B differ in input covariance (a rotation) and in
the true parameter (θ_B = θ_A + shift·‖θ_A‖·u). For each model, adaptation size n and seed:

- ``plain``:           θ̂^A fitted on n samples of A;
- ``random``:          θ̂ fitted on those plus m = n(1−γ)/γ samples drawn at random from a pool
                       of B (so n/k = γ);
- ``bat``:             the same, with the m chosen from the pool by :class:`Prop2Selector`
                       (oracle: θ* = θ^{A*} is the population optimum of A), standing at θ̂^A;
                       its benefit is first order in one sample's weight, while all m join
                       at once here and the fit runs to convergence;
- ``bat_oracle_free``: chosen with a held-out quarter of D^A instead of θ*;
- ``bat_set``:         at most m chosen as a set by :class:`SetSelector` (greedy forward
                       selection on one Newton step from θ̂^A, oracle θ*; may choose none);
- ``bat_set_oracle_free``: the same with the cross-validated held-out loss of D^A as target.

The oracle methods are told θ*, the very point the error is measured against: with the pool's
freedom (4m candidates in dim 5) the set-level oracle can steer θ̂ onto θ*, so its error says
how much a selection *could* gain, not what a method without θ* gains.

Measured: ‖θ̂ − θ*‖²_S, reported as n·error (error at a given amount of adaptation data) and
k·error (the normalisation of ρ_bat|A, eq. 9). Predicted from population moments:
n·E error → ρ_A = tr(S H_A⁻¹ C_A H_A⁻¹) for ``plain``; for ``random`` the estimator tends to the
mixture optimum θ_mix, so n·E error ≈ n‖θ_mix − θ*‖²_S + (n/k) ρ_mix. No prediction exists
for data-dependent selection. Eq. 12 is evaluated at θ* on each augmented D^bat, under both
readings of H^{bat} (``share`` and ``conditional``, see :mod:`bat.core.prop2`), with exact dense
Hessians, the configured γ and ``inequality`` (default ``mean_squares``: k‖err_bat‖² ≤ n‖err_A‖²
under ``share``, the sample version of ρ_bat|A ≤ ρ_A).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from bat import validate
from bat.convex import glm
from bat.errors import ConfigError
from bat.core.prop2 import BACKBONE_CURVATURES, INEQUALITIES, Prop2Problem
from bat.core.protocols import SelectionContext
from bat.core.selection import Prop2Selector, SelectionConfig, SetSelectionConfig, SetSelector
from bat.core.solvers import SolveOptions

METHODS = ("plain", "random", "bat", "bat_oracle_free", "bat_set", "bat_set_oracle_free")
WEIGHTS = ("identity", "hessian")


@dataclass(frozen=True)
class ConvexConfig:
    models: tuple[str, ...] = glm.MODELS
    methods: tuple[str, ...] = METHODS
    dim: int = 5
    sample_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    seeds: tuple[int, ...] = tuple(range(16))
    gamma: float = 0.5  # n/k
    pool_multiple: int = 4  # the selector sees pool_multiple·m backbone candidates
    folds: int = 8  # cross-validation folds of bat_set_oracle_free (every one must improve)
    shift: float = 0.5  # ‖θ_B − θ_A‖ / ‖θ_A‖
    signal: float = 1.5  # ‖θ_A‖
    noise: float = 1.0  # ridge label noise σ
    ridge: float = 1e-2  # λ in every example's loss
    weight: str = "identity"  # S: identity, or the adaptation Hessian H_A
    damping: float = 1e-8  # × the top eigenvalue: dense solves, so only keeps zeros invertible
    inequality: str = "mean_squares"  # eq. 12's reading that ρ_bat|A ≤ ρ_A needs (bat.core.prop2)
    population_samples: int = 200_000  # inputs per source for the logistic moments
    problem_seed: int = 0  # draws the laws; ``seeds`` draw the samples

    def __post_init__(self):
        for model in self.models:
            validate.choice("models", model, glm.MODELS)
        for method in self.methods:
            validate.choice("methods", method, METHODS)
        if "plain" not in self.methods:
            raise ConfigError(f"methods: {list(self.methods)} must include 'plain', "
                                       f"the reference every other method is compared with")
        validate.positive("dim", self.dim, integer=True)
        for n in self.sample_sizes:
            validate.positive("sample_sizes", n, integer=True)
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed")
        for seed in self.seeds:
            validate.non_negative("seeds", seed, integer=True)
        validate.open_interval("gamma", self.gamma, 0.0, 1.0)
        validate.positive("pool_multiple", self.pool_multiple, integer=True)
        SetSelectionConfig(folds=self.folds)  # validates folds
        validate.non_negative("shift", self.shift)
        validate.positive("signal", self.signal)
        validate.positive("noise", self.noise)
        validate.positive("ridge", self.ridge)
        validate.choice("weight", self.weight, WEIGHTS)
        validate.positive("damping", self.damping)
        validate.choice("inequality", self.inequality, INEQUALITIES)
        validate.positive("population_samples", self.population_samples, integer=True)
        validate.non_negative("problem_seed", self.problem_seed, integer=True)


def laws(config: ConvexConfig) -> dict[str, glm.Source]:
    """The adaptation law A and the related but different backbone law B."""
    rng = np.random.default_rng(config.problem_seed)
    spectrum = np.diag(np.linspace(0.5, 1.5, config.dim))
    rotation = np.linalg.qr(rng.standard_normal((config.dim, config.dim)))[0]
    theta_a = rng.standard_normal(config.dim)
    theta_a *= config.signal / np.linalg.norm(theta_a)
    direction = rng.standard_normal(config.dim)
    direction /= np.linalg.norm(direction)
    return {"A": glm.Source(spectrum, theta_a),
            "B": glm.Source(rotation @ spectrum @ rotation.T,
                            theta_a + config.shift * config.signal * direction)}


def backbone_count(n: int, gamma: float) -> int:
    return max(1, round(n * (1 - gamma) / gamma))


def run_convex(config: ConvexConfig) -> pd.DataFrame:
    """One row per model, n, seed and method: measured error, prediction, eq. 12 at θ*."""
    rows = []
    sources = laws(config)
    for model_index, model in enumerate(config.models):
        population = glm.Population(model, sources, config.noise, config.ridge,
                                    config.population_samples,
                                    np.random.default_rng([config.problem_seed, 1, model_index]))
        theta_star = population.minimizer({"A": 1.0})
        moments_a = population.moments("A", theta_star)
        weight = np.eye(config.dim) if config.weight == "identity" else moments_a.hessian
        rho_a = glm.asymptotic_coefficient(moments_a, weight)
        for n in config.sample_sizes:
            m = backbone_count(n, config.gamma)
            k = n + m
            mixture = {"A": n / k, "B": m / k}
            theta_mix = population.minimizer(mixture)
            bias = (theta_mix - theta_star) @ weight @ (theta_mix - theta_star)
            predicted = {"plain": rho_a, "random": n * bias + n / k * glm.asymptotic_coefficient(
                population.mixture(mixture, theta_mix), weight)}
            for seed in config.seeds:
                rng = np.random.default_rng([config.problem_seed, 2, model_index, n, seed])
                for row in _replicate(config, model, sources, theta_star, weight, n, m, rng):
                    rows.append(dict(model=model, n=n, seed=seed,
                                     predicted_n_error=predicted.get(row["method"]), **row))
    return pd.DataFrame(rows)


def _replicate(config, model, sources, theta_star, weight, n, m, rng):
    x_a, y_a = glm.sample(model, sources["A"], n, config.noise, rng)
    x_pool, y_pool = glm.sample(model, sources["B"], config.pool_multiple * m, config.noise, rng)
    theta_plain = glm.fit(model, x_a, y_a, config.ridge)
    task = glm.GLMTask(model, config.ridge)
    adaptation, pool = glm.as_batch(x_a, y_a), glm.as_batch(x_pool, y_pool)
    for method in config.methods:
        if method == "plain":
            chosen, theta = None, theta_plain
        else:
            chosen = (list(range(m)) if method == "random"  # the pool is i.i.d.: a random subset
                      else _select(config, method, task, theta_plain, theta_star, adaptation,
                                   pool, m))
            theta = glm.fit(model, np.concatenate([x_a, x_pool[chosen]]),
                            np.concatenate([y_a, y_pool[chosen]]), config.ridge)
        error = float((theta - theta_star) @ weight @ (theta - theta_star))
        k = n + (len(chosen) if chosen is not None else 0)
        row = dict(method=method, k=k, sq_error=error, n_error=n * error, k_error=k * error)
        if chosen:  # eq. 12 needs a non-empty D^B' (Def. 1)
            row.update(_condition_at_optimum(config, task, theta_star, adaptation, pool, chosen))
        yield row


def _select(config, method, task, theta_plain, theta_star, adaptation, pool, m) -> list[int]:
    oracle = method in ("bat", "bat_set")
    context = SelectionContext(model=glm.LinearModel(theta_plain), task=task,
                               adaptation_batch=adaptation, candidate_batch=pool,
                               candidate_ids=list(range(len(pool["y"]))), step=0)
    target = torch.as_tensor(theta_star) if oracle else None
    if method.startswith("bat_set"):
        return SetSelector(SetSelectionConfig(mode="oracle" if oracle else "oracle_free",
                                              curvature="hessian", damping=config.damping,
                                              folds=config.folds, seed=0),
                           target=target).select(context, m)
    selection = SelectionConfig(mode="oracle" if oracle else "oracle_free", curvature="hessian",
                                solver="dense", indefinite="abs", damping=config.damping,
                                gamma=config.gamma)
    return Prop2Selector(selection, target=target).select(context, m)


def _condition_at_optimum(config, task, theta_star, adaptation, pool, chosen) -> dict:
    """Eq. 12 at θ = θ*, with the configured inequality, for both readings of H^{bat}.

    γ is D^A's share n/(n + |D^B'|): the fits above train on every example once (gamma=None),
    not on a mixture weighted to the configured γ as the grids' batches are.
    """
    model = glm.LinearModel(theta_star)
    backbone = {key: value[chosen] for key, value in pool.items()}
    options = SolveOptions(solver="dense", damping=config.damping, indefinite="abs")
    result = {}
    for reading in BACKBONE_CURVATURES:
        scores = Prop2Problem(model, task, adaptation, backbone, "hessian", gamma=None,
                              backbone_curvature=reading).scores(
            options, inequality=config.inequality, relative=True)
        result.update({f"score_adaptation_{reading}": scores.score_adaptation,
                       f"score_bat_{reading}": scores.score_bat,
                       f"condition_{reading}": scores.holds,
                       f"indefinite_{reading}": scores.reports["adaptation"]["indefinite"]})
    return result


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Per model, n and method: mean ± s.e. over seeds, prediction, eq. 12 rate, ρ comparison.

    ``rho_le_rho_a`` compares the paper's normalisations, k·E error (ρ_bat|A) against
    n·E error of ``plain`` (ρ_A); ``below_plain`` compares the errors themselves.
    """
    group = results.groupby(["model", "n", "method"], sort=False)
    summary = group.agg(n_error=("n_error", "mean"), n_error_se=("n_error", "sem"),
                        k_error=("k_error", "mean"), sq_error=("sq_error", "mean"),
                        predicted_n_error=("predicted_n_error", "first"),
                        seeds=("seed", "count")).reset_index()
    for reading in BACKBONE_CURVATURES:
        column = f"condition_{reading}"
        if column in results:
            rate = group[column].agg(lambda c: c.dropna().astype(float).mean())
            summary[f"condition_rate_{reading}"] = rate.to_numpy()
    plain = summary[summary.method == "plain"].set_index(["model", "n"])
    reference = plain.loc[list(zip(summary.model, summary.n))]
    summary["rho_le_rho_a"] = summary.k_error.to_numpy() <= reference.n_error.to_numpy()
    summary["below_plain"] = summary.sq_error.to_numpy() < reference.sq_error.to_numpy()
    return summary


def paired_excess(results: pd.DataFrame, method: str, reference: str
                  ) -> tuple[pd.Series, pd.Series]:
    """Mean and standard error over seeds of n·error(method) − n·error(reference), per model, n.

    Paired by seed (both methods see the same D^A), so the standard error is the difference's.
    """
    wide = results.pivot_table(index=["model", "n", "seed"], columns="method", values="n_error")
    difference = (wide[method] - wide[reference]).groupby(["model", "n"])
    return difference.mean(), difference.sem()


CONTROL_METHODS = ("plain", "random", "bat_set", "bat_set_oracle_free")


def controls(agreeing: pd.DataFrame, shifted: pd.DataFrame) -> pd.DataFrame:
    """The controls of a selection rule, one row per check, model and n.

    ``agreeing``: results at shift 0 (D^B shares θ*); ``shifted``: at the configured shift.
    Checks: random beats plain at shift 0 (positive control: augmentation must help); each
    set-level method is no worse than random at shift 0; and no worse than plain by more than
    two paired standard errors at the shift. ``passed`` is the verdict of each row; ``key`` names
    the check in a metric name.
    """
    rows = []
    checks = [("random < plain at shift 0", "random_below_plain_shift0", agreeing, "random", "plain", 0.0)]
    for method in ("bat_set", "bat_set_oracle_free"):
        checks += [(f"{method} <= random at shift 0", f"{method}_le_random_shift0", agreeing, method,
                    "random", 0.0),
                   (f"{method} <= plain + 2 s.e. when shifted", f"{method}_le_plain_shifted", shifted, method,
                    "plain", 2.0)]
    for check, key, results, method, reference, margin in checks:
        if not {method, reference} <= set(results.method):
            continue
        excess, se = paired_excess(results, method, reference)
        for (model, n), value in excess.items():
            bound = margin * se[(model, n)]
            passed = value < 0 if check.startswith("random") else value <= bound
            rows.append(dict(check=check, key=key, model=model, n=n, excess_n_error=value,
                             se=se[(model, n)], passed=bool(passed)))
    return pd.DataFrame(rows)
