"""Proposition 2's scores, the candidate score that drives selection, and weight-difference metrics.

With D^bat = D^A ∪ D^B' (n adaptation and m backbone examples, k = n + m) and γ = n/k,
Proposition 2 asks for

    γ · Score_bat ≤ Score_A,                                                    (eq. 12)
    Score_A   = ‖(H^{bat|A} − H^{bat} + λI)⁻¹ Σ_{D^A}   ∇ℓ‖,
    Score_bat = ‖(H^{bat|A}           + λI)⁻¹ Σ_{D^bat} ∇ℓ‖,

all at the current θ_A. H^{bat|A} is the mean curvature over D^bat. For H^{bat} the paper's
statement reads as the curvature conditional on x ∈ D^B' (``backbone_curvature="conditional"``:
the mean over D^B'), which makes the difference γ(H̄^A − H̄^{B'}) and so possibly indefinite;
its proof (App. A.5) uses H^{bat|A} − H^{bat} = H^A, which holds when H^{bat} is D^B''s share of
the D^bat mean (``"share"``: Σ_{D^B'} C_i / k, difference γ H̄^A). Both are offered; the
difference is always formed from signed weights over the same examples, so one set of
products serves it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bat import validate
from bat.core.curvature import CurvatureOperator, curvature_operators, per_sample_grads
from bat.core.protocols import Batch, Task, concat_batches, take_examples
from bat.core.solvers import CurvatureReport, SolveOptions, solve

BACKBONE_CURVATURES = ("conditional", "share")


@dataclass
class Prop2Scores:
    score_adaptation: float
    score_bat: float
    gamma: float
    reports: dict[str, dict]

    @property
    def holds(self) -> bool:
        """Eq. 12 without its o_P(1) term."""
        return self.gamma * self.score_bat <= self.score_adaptation


class Prop2Problem:
    """D^bat at the model's current θ_A, with the two curvatures and two sums of Proposition 2."""

    def __init__(self, model: nn.Module, task: Task, adaptation_batch: Batch,
                 backbone_batch: Batch, curvature: str, *, backbone_curvature: str = "conditional",
                 chunk_size: int | None = None, grads: torch.Tensor | None = None):
        """``grads``: per-sample gradients of D^A then D^B' at the current θ_A, if known."""
        validate.choice("backbone_curvature", backbone_curvature, BACKBONE_CURVATURES)
        self.model, self.task, self.curvature = model, task, curvature
        self.batch = concat_batches(adaptation_batch, backbone_batch)
        self.n = len(next(iter(adaptation_batch.values())))
        self.m = len(next(iter(backbone_batch.values())))
        k = self.n + self.m
        self.grads = (grads if grads is not None
                      else per_sample_grads(model, task, self.batch, chunk_size=chunk_size))
        is_backbone = torch.arange(k) >= self.n
        self.bat_weights = torch.full((k,), 1.0 / k, dtype=torch.float64)
        per_backbone = 1.0 / (self.m if backbone_curvature == "conditional" else k)
        self.backbone_weights = is_backbone.to(torch.float64) * per_backbone

    @property
    def measured_gamma(self) -> float:
        return self.n / (self.n + self.m)

    def _operator(self, weights: torch.Tensor) -> CurvatureOperator:
        return curvature_operators(self.curvature, self.model, self.task, self.batch, [weights],
                                   grads=self.grads)[0]

    def score_adaptation(self, options: SolveOptions) -> tuple[float, CurvatureReport]:
        """‖(H^{bat|A} − H^{bat} + λI)⁻¹ Σ_{D^A} ∇ℓ‖."""
        difference = self._operator(self.bat_weights - self.backbone_weights)
        solution = solve(difference, self.grads[:self.n].sum(0), options)
        return float(torch.linalg.vector_norm(solution.x)), solution.report

    def score_bat(self, options: SolveOptions) -> tuple[float, CurvatureReport]:
        """‖(H^{bat|A} + λI)⁻¹ Σ_{D^bat} ∇ℓ‖."""
        solution = solve(self._operator(self.bat_weights), self.grads.sum(0), options)
        return float(torch.linalg.vector_norm(solution.x)), solution.report

    def scores(self, options: SolveOptions, gamma: float | None = None) -> Prop2Scores:
        """Both sides of eq. 12; ``gamma`` None means the measured n/k."""
        score_a, report_a = self.score_adaptation(options)
        score_bat, report_bat = self.score_bat(options)
        return Prop2Scores(score_a, score_bat,
                           self.measured_gamma if gamma is None else gamma,
                           {"adaptation": report_a.as_dict(), "bat": report_bat.as_dict()})


def candidate_benefits(model: nn.Module, task: Task, training_batch: Batch,
                       candidate_grads: torch.Tensor, target_gradient: torch.Tensor,
                       curvature: str, options: SolveOptions, *,
                       training_grads: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, CurvatureReport]:
    """Predicted decrease of a target T(θ) when each candidate joins the training set.

    Up-weighting candidate j (per-sample gradient g_j, a row of ``candidate_grads``) by ε in the
    training objective of ``training_batch`` (curvature H) moves its minimiser by
    −ε (H + λI)⁻¹ g_j, so T changes by −ε ∇Tᵀ (H + λI)⁻¹ g_j
    (the influence function of Koh & Liang, 2017). The benefit

        b_j = g_jᵀ z,   z = (H + λI)⁻¹ ∇T,

    needs one shared solve for all candidates; b_j > 0 means the candidate's preconditioned
    step −(H + λI)⁻¹ g_j goes down T. The approximation is first order in the candidate's
    weight (1/k) and holds H fixed, which a single example changes by O(1/k) only.
    With T = ½‖θ − θ^{A*}‖², ∇T = θ − θ^{A*} (oracle); with T the loss on held-out
    adaptation data, ∇T is its gradient (oracle-free).
    """
    k = len(next(iter(training_batch.values())))
    operator = curvature_operators(curvature, model, task, training_batch,
                                   [torch.full((k,), 1.0 / k, dtype=torch.float64)],
                                   grads=training_grads)[0]
    solution = solve(operator, target_gradient, options)
    return candidate_grads @ solution.x.to(candidate_grads.dtype), solution.report


# --- weight-difference metrics --------------------------------------------------------------

def weight_difference(model: nn.Module, task: Task, batch: Batch, curvature: str,
                      options: SolveOptions, *, chunk_size: int | None = None,
                      ) -> tuple[float, CurvatureReport]:
    """The paper's weight difference ‖(H_D + λI)⁻¹ Σ_D ∇ℓ‖ (Sec. 5.1), H_D the mean curvature.

    It is k times the length of the Newton step that the data D asks of θ_A at this point.
    """
    k = len(next(iter(batch.values())))
    grads = per_sample_grads(model, task, batch, chunk_size=chunk_size)
    operator = curvature_operators(curvature, model, task, batch,
                                   [torch.full((k,), 1.0 / k, dtype=torch.float64)],
                                   grads=grads)[0]
    solution = solve(operator, grads.sum(0), options)
    return float(torch.linalg.vector_norm(solution.x)), solution.report


def parameter_distance(theta: torch.Tensor, theta_star: torch.Tensor) -> float:
    """‖θ − θ*‖ (Euclidean)."""
    return float(torch.linalg.vector_norm(theta - theta_star))


def weighted_squared_distance(theta: torch.Tensor, theta_star: torch.Tensor,
                              weight: CurvatureOperator | torch.Tensor) -> float:
    """‖θ − θ*‖²_S = (θ − θ*)ᵀ S (θ − θ*) of Definition 3, S a matrix or a curvature operator."""
    delta = theta - theta_star
    product = weight.matvec(delta) if isinstance(weight, CurvatureOperator) else weight @ delta
    return float(delta @ product.to(delta.dtype))
