"""Ridge and logistic regression: the two convex models of the exact Proposition-2 check.

Both are canonical GLMs with per-example loss ℓ(θ; x, y) = b(xᵀθ) − y xᵀθ + ½λ‖θ‖², where
b(η) = η²/2 (ridge, Gaussian labels of variance σ²) or log(1 + e^η) (logistic, Bernoulli labels).
With μ = b' the mean response,

    ∇ℓ = x (μ(xᵀθ) − y) + λθ,        ∇²ℓ = μ'(xᵀθ) x xᵀ + λI.

A data law ("source") is x ~ N(0, Σ) and E[y | x] = μ(xᵀθ_s). Its population quantities at θ
are the mean gradient, the Hessian and the gradient covariance

    C(θ) = E[x xᵀ ((μ(xᵀθ) − μ(xᵀθ_s))² + Var(y | x))] − E[∇ℓ − λθ] E[∇ℓ − λθ]ᵀ,

in closed form for ridge (Gaussian fourth moments, c = θ − θ_s):
    E∇ℓ = Σc + λθ,   H = Σ + λI,   C = Σ (cᵀΣc + σ²) + Σ c cᵀ Σ,
and for logistic by averaging the same formulas over a large fixed sample of x (labels are
integrated out exactly, so only x is sampled).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import expit
from torch import nn

from bat.core.protocols import Batch

MODELS = ("ridge", "logistic")


@dataclass(frozen=True)
class Source:
    """x ~ N(0, covariance), E[y | x] = μ(xᵀθ)."""

    covariance: np.ndarray
    theta: np.ndarray


def mean_response(model: str, eta: np.ndarray) -> np.ndarray:
    return eta if model == "ridge" else expit(eta)


def response_slope(model: str, eta: np.ndarray) -> np.ndarray:
    if model == "ridge":
        return np.ones_like(eta)
    p = expit(eta)
    return p * (1 - p)


def sample(model: str, source: Source, count: int, noise: float,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((count, len(source.theta))) @ np.linalg.cholesky(source.covariance).T
    eta = x @ source.theta
    if model == "ridge":
        return x, eta + noise * rng.standard_normal(count)
    return x, (rng.random(count) < expit(eta)).astype(float)


def fit(model: str, x: np.ndarray, y: np.ndarray, ridge: float, iterations: int = 50) -> np.ndarray:
    """argmin_θ mean ℓ by Newton's method (one step is exact for ridge)."""
    theta = np.zeros(x.shape[1])
    for _ in range(iterations):
        eta = x @ theta
        gradient = x.T @ (mean_response(model, eta) - y) / len(y) + ridge * theta
        hessian = (x.T * response_slope(model, eta)) @ x / len(y) + ridge * np.eye(len(theta))
        step = np.linalg.solve(hessian, gradient)
        theta = theta - step
        if np.linalg.norm(step) <= 1e-12 * (1 + np.linalg.norm(theta)):
            break
    return theta


@dataclass(frozen=True)
class Moments:
    """Population mean gradient, Hessian and gradient covariance of one source at θ."""

    gradient: np.ndarray
    hessian: np.ndarray
    covariance: np.ndarray


def closed_form_moments(source: Source, theta: np.ndarray, noise: float,
                        ridge: float) -> Moments:
    """Ridge only: Gaussian moments in closed form."""
    sigma, c = source.covariance, theta - source.theta
    sigma_c = sigma @ c
    return Moments(gradient=sigma_c + ridge * theta,
                   hessian=sigma + ridge * np.eye(len(theta)),
                   covariance=sigma * (c @ sigma_c + noise ** 2) + np.outer(sigma_c, sigma_c))


def sampled_moments(model: str, x: np.ndarray, source: Source, theta: np.ndarray, noise: float,
                    ridge: float) -> Moments:
    """Any model: the same expectations over a fixed sample x of the source's inputs."""
    eta, eta_true = x @ theta, x @ source.theta
    residual = mean_response(model, eta) - mean_response(model, eta_true)
    label_variance = (np.full_like(eta, noise ** 2) if model == "ridge"
                      else response_slope(model, eta_true))
    mean = x.T @ residual / len(x)
    second = (x.T * (residual ** 2 + label_variance)) @ x / len(x)
    return Moments(gradient=mean + ridge * theta,
                   hessian=(x.T * response_slope(model, eta)) @ x / len(x)
                   + ridge * np.eye(len(theta)),
                   covariance=second - np.outer(mean, mean))


class Population:
    """Population moments of a model under each source: closed form for ridge, else sampled."""

    def __init__(self, model: str, sources: dict[str, Source], noise: float, ridge: float,
                 samples: int, rng: np.random.Generator, closed_form: bool = True):
        self.model, self.sources, self.noise, self.ridge = model, sources, noise, ridge
        self.closed_form = closed_form and model == "ridge"
        self.inputs = {} if self.closed_form else {
            name: sample(model, source, samples, noise, rng)[0] for name, source in sources.items()}

    def moments(self, name: str, theta: np.ndarray) -> Moments:
        if self.closed_form:
            return closed_form_moments(self.sources[name], theta, self.noise, self.ridge)
        return sampled_moments(self.model, self.inputs[name], self.sources[name], theta,
                               self.noise, self.ridge)

    def mixture(self, weights: dict[str, float], theta: np.ndarray) -> Moments:
        """Moments of a stratified sample with fraction ``weights[name]`` from each source."""
        parts = [(w, self.moments(name, theta)) for name, w in weights.items() if w > 0]
        return Moments(*(sum(w * getattr(m, field) for w, m in parts)
                         for field in ("gradient", "hessian", "covariance")))

    def minimizer(self, weights: dict[str, float], iterations: int = 50) -> np.ndarray:
        """The population optimum of the mixture risk, by Newton's method."""
        theta = np.zeros(len(next(iter(self.sources.values())).theta))
        for _ in range(iterations):
            m = self.mixture(weights, theta)
            step = np.linalg.solve(m.hessian, m.gradient)
            theta = theta - step
            if np.linalg.norm(step) <= 1e-12 * (1 + np.linalg.norm(theta)):
                break
        return theta


def asymptotic_coefficient(moments: Moments, weight: np.ndarray) -> float:
    """ρ(S) = tr(S H⁻¹ C H⁻¹): the limit of k E‖θ̂ − θ_∞‖²_S for an M-estimator (eq. 26)."""
    h_inverse = np.linalg.inv(moments.hessian)
    return float(np.trace(weight @ h_inverse @ moments.covariance @ h_inverse))


# --- the same models for the torch library (selection, Proposition-2 scores) ----------------

class LinearModel(nn.Module):
    def __init__(self, theta: np.ndarray):
        super().__init__()
        self.theta = nn.Parameter(torch.as_tensor(theta, dtype=torch.float64).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.theta


class GLMTask:
    """Per-example ℓ_i for :class:`LinearModel`, regulariser included, so ∇²ℓ_i matches above."""

    def __init__(self, model: str, ridge: float):
        self.model, self.ridge = model, ridge

    def batch_losses(self, model: LinearModel, batch: Batch) -> torch.Tensor:
        eta = model(batch["x"])
        b = eta ** 2 / 2 if self.model == "ridge" else nn.functional.softplus(eta)
        return b - batch["y"] * eta + self.ridge * (model.theta ** 2).sum() / 2

    def draw_model_targets(self, model: LinearModel, batch: Batch,
                           generator: torch.Generator) -> Batch:
        """``batch`` plus ``model_y`` ~ the model's distribution at η: N(η, 1) or Bernoulli(σ(η))."""
        eta = model(batch["x"]).detach().cpu()
        if self.model == "ridge":
            drawn = eta + torch.randn(eta.shape, generator=generator, dtype=eta.dtype)
        else:
            drawn = torch.bernoulli(torch.sigmoid(eta), generator=generator)
        return {**batch, "model_y": drawn.to(batch["x"])}

    def model_target_losses(self, model: LinearModel, batch: Batch) -> torch.Tensor:
        """b(η) − ŷη: gradient (b'(η) − ŷ) x with second moment b''(η) x xᵀ, the Hessian without
        the ridge term (a parameter-space regulariser has no output distribution to sample)."""
        eta = model(batch["x"])
        b = eta ** 2 / 2 if self.model == "ridge" else nn.functional.softplus(eta)
        return b - batch["model_y"] * eta


def as_batch(x: np.ndarray, y: np.ndarray) -> Batch:
    return {"x": torch.as_tensor(x, dtype=torch.float64),
            "y": torch.as_tensor(y, dtype=torch.float64)}
