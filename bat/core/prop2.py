"""Proposition 2's scores, the candidate score that drives selection, and weight-difference metrics.

With D^bat = D^A ∪ D^B' (n adaptation and m backbone examples) mixed at γ, the configured share
of D^A in D^bat (Def. 2; a selector passes the training's γ, never the measured n/(n + m) of the
scoring sets; ``gamma=None`` gives n/(n + m) for fits that train every example once, as
``bat.convex.check``'s do), Proposition 2 asks for

    γ · Score_bat ≤ Score_A,                                                    (eq. 12)
    Score_A   = ‖(H^{bat|A} − H^{bat} + λI)⁻¹ Σ_{D^A}   ∇ℓ‖,
    Score_bat = ‖(H^{bat|A}           + λI)⁻¹ Σ_{D^bat} ∇ℓ‖,

all at the model's current θ. D^bat is the mixture training sees: a selector scores all n
examples of D^A but only the m backbone examples of one step, so each of those stands for
n(1 − γ)/(γ m) examples of D^bat. Then D^bat has k = n/γ examples' weight, Σ_{D^bat} ∇ℓ =
Σ_{D^A} ∇ℓ + n(1 − γ)/(γ m) Σ_{D^B'} ∇ℓ, and H^{bat|A} = γ H̄^A + (1 − γ) H̄^{B'}, the mean
curvature over D^bat. Without the weights (every example once), a selector's D^bat would be
n/(n + m) ≈ 0.97 D^A and Score_bat ≈ Score_A whatever D^B' holds, so eq. 12 could not fail.
Two readings of H^{bat}:

- ``"share"`` (default): the proof's (App. A.5) H^{bat|A} − H^{bat} = H^A, the mean curvature
  over D^A. Then, with Δ_D = (H̄_D + λI)⁻¹ mean_D ∇ℓ the Newton step of data D from θ,
  Score_A = n‖Δ_A‖ and Score_bat = k‖Δ_bat‖: n and k times the distance from θ to the one-step
  estimates θ̂_A, θ̂_bat (eqs. 24-25; exact for a quadratic loss, see tests/test_convex.py).
  The mean over D^A, not D^B''s share Σ_{D^A} C_i / k = γ H̄^A of the D^bat mean, is what makes
  Score_A / n the length of D^A's own Newton step; the share would test ‖Δ_bat‖ ≤ ‖Δ_A‖ / γ.
- ``"conditional"``: the statement read literally, H^{bat} the mean over D^B', so the
  difference is γ (H̄^A − H̄^{B'}), possibly indefinite (a solver policy decides).

Which inequality is tested (``inequality``), under ``share`` (k = n/γ):

- ``"norms"``: γ·Score_bat ≤ Score_A  ⇔  ‖Δ_bat‖ ≤ ‖Δ_A‖, eq. 23 as the proof writes it;
- ``"mean_squares"``: √γ·Score_bat ≤ Score_A  ⇔  k‖Δ_bat‖² ≤ n‖Δ_A‖², the sample version of
  ρ_bat|A ≤ ρ_A (eq. 9 against ρ_A, S = I), which is the proposition's conclusion.

Why these choices make the check discriminate:

- **Curvature.** Use ``gauss_newton`` (or ``hessian`` for a convex loss), or its unbiased
  estimate ``sampled_fisher`` (gradients of targets drawn from the model, K-FAC's "true
  Fisher"), which is as cheap as the empirical Fisher: one hooked pass, rank ≤ k·draws, inverted
  exactly by Woodbury; the grids use it. With the empirical Fisher F̄ = mean g gᵀ the "Newton
  step" (F̄ + λI)⁻¹ Σ g depends only on the Gram matrix of the gradients and shrinks as 1/‖g‖
  when they grow, so a D^B' whose gradients are 100× larger than D^A's makes Score_bat
  *smaller* and eq. 12 "holds" (tests/test_prop2.py shows it). The Gauss-Newton curvature and
  its sampled estimate do not grow with the residuals, so large or conflicting gradients give
  a long step and the check fails. With d ≫ k·draws most of Σ g lies outside the rows' span,
  where the step is Σ g / λ: the check then weighs the D^bat gradient sum against D^A's outside
  the sampled curvature's directions, and more draws widen the span.
- **Damping.** λ = ``damping`` × the largest eigenvalue of H^{bat|A} (:func:`relative_damping`),
  the same λ in both scores: an absolute λ = 1e-3 is negligible for one model and dominant for
  another (a direction dominated by D^B' gets multiplied by 1/λ when clipped to λ).
- **Point.** The proof linearises at θ^{A*}: there Δ_A = θ^{A*} − θ̂_A and Δ_bat = θ^{A*} − θ̂_bat
  are the two estimators' errors, and the check compares them. At any other θ it compares how far
  the two Newton targets lie from θ, which a D^B' that cancels D^A's gradient sum passes with
  Score_bat = 0; so evaluate it at (an estimate of) θ^{A*} when one exists (``bat.convex.check`` does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from bat import validate
from bat.core.curvature import (ROW_CURVATURES, CurvatureOperator, FisherOperator,
                                curvature_operators, gradient_sums, per_sample_grads_hooks,
                                sampled_fisher_rows)
from bat.core.mixing import derived_seed
from bat.core.protocols import Batch, Task, concat_batches, take_examples
from bat.core.solvers import CurvatureReport, SolveOptions, _power_norm, solve, solve_norm

BACKBONE_CURVATURES = ("share", "conditional")
INEQUALITIES = ("norms", "mean_squares")


@dataclass
class Prop2Scores:
    score_adaptation: float
    score_bat: float
    gamma: float  # γ of eq. 12: D^bat's share of D^A (Prop2Problem.gamma)
    inequality: str  # "norms" or "mean_squares", see the module docstring
    reports: dict[str, dict]

    @property
    def holds(self) -> bool:
        """Eq. 12 without its o_P(1) term: γ·Score_bat ≤ Score_A (norms), √γ·… (mean squares)."""
        factor = self.gamma if self.inequality == "norms" else math.sqrt(self.gamma)
        return factor * self.score_bat <= self.score_adaptation


def relative_damping(operator: CurvatureOperator, options: SolveOptions) -> SolveOptions:
    """``options`` with λ = options.damping × the largest |eigenvalue| of ``operator``.

    Exact for an operator made of rows (:meth:`FisherOperator.top_eigenvalue`, from its small
    kernel); otherwise 20 power iterations (within a few per cent, enough for a scale). A zero
    operator keeps λ = options.damping, so the solve stays defined.
    """
    if isinstance(operator, FisherOperator):
        top = operator.top_eigenvalue()
    else:
        top = _power_norm(operator, 0.0, torch.zeros(operator.dim, dtype=torch.float64,
                                                     device=operator.device))
    return replace(options, damping=options.damping * top if top > 0 else options.damping)


def bat_share(n: int, m: int, gamma: float | None) -> float:
    """The share of D^A in a D^bat of n adaptation and m backbone examples mixed at ``gamma``.

    ``gamma`` when D^B' has examples (the training's mixture); 1 when it has none (D^bat is D^A,
    e.g. before a first selection); n/(n + m), every example once, when ``gamma`` is None.
    """
    if m == 0:
        return 1.0
    return n / (n + m) if gamma is None else gamma


def curvature_subsample(n: int, k: int, count: int | None, seed: int,
                        gamma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples whose curvature stands for the mean over D^bat, and their weights.

    D^bat holds n adaptation examples then k − n backbone examples, mixed at γ =
    :func:`bat_share` (n, k − n, ``gamma``). Indices [≤ k]: ``count`` of the first n (D^A; a
    seeded draw, in order) and all of the k − n after them (D^B'); None: all k. Weights [same
    length, float64]: γ/count for each D^A example (γ/n without a subsample), (1 − γ)/(k − n)
    for each D^B' one, so that Σ weight·C_i estimates γ H̄^A + (1 − γ) H̄^{B'} without bias.
    """
    share = bat_share(n, k - n, gamma)
    drawn = n if count is None or count >= n else count
    if drawn == n:
        index = torch.arange(k)
    else:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        index = torch.cat([order[:count].sort().values, torch.arange(n, k)])
    backbone_weight = (1 - share) / (k - n) if k > n else 0.0
    weights = torch.full(index.shape, backbone_weight, dtype=torch.float64)
    weights[index < n] = share / drawn  # float64 throughout: float32 weights move scores by 1e-8
    return index, weights


class Prop2Problem:
    """D^bat at the model's current θ, with the two curvatures and two sums of Proposition 2."""

    def __init__(self, model: nn.Module, task: Task, adaptation_batch: Batch,
                 backbone_batch: Batch | None, curvature: str, *, gamma: float | None = None,
                 backbone_curvature: str = "share", chunk_size: int | None = None,
                 grads: torch.Tensor | None = None, draws: int = 1, seed: int = 0,
                 curvature_examples: int | None = None,
                 sums: tuple[torch.Tensor, torch.Tensor] | None = None,
                 rows: torch.Tensor | None = None):
        """``gamma``: the share of D^A in D^bat as training mixes it (module docstring); each
        D^B' example then counts n(1 − γ)/(γ m) times. None: every example once (γ = n/(n + m)).
        ``backbone_batch`` None: D^bat is D^A (m = 0, γ = 1; both readings of H^{bat|A} − H^{bat}
        are then H^A), as before a selector's first selection.

        ``grads``: per-sample gradients of D^A then D^B' at the current θ, if known [k, d].
        ``sums``: (Σ_{D^A} ∇ℓ, Σ_{D^B'} ∇ℓ) [d] each, if known (else from ``grads`` or a pass).
        ``rows``: a row curvature's rows of the curvature examples, if known
        (:attr:`rows`; :meth:`replace_backbone` passes them).
        ``draws``, ``seed``: targets per example and their seed for ``sampled_fisher``.
        ``curvature_examples``: the curvatures use this many examples of D^A (a subsample drawn
        with ``seed``, reweighted to stand for all n) and all of D^B'; None: all of D^A. The
        gradient sums always use every example. Raises ConfigError for a ``gamma`` outside (0, 1),
        ValueError for ``rows`` of another count or curvature.
        """
        validate.choice("backbone_curvature", backbone_curvature, BACKBONE_CURVATURES)
        if gamma is not None:
            validate.open_interval("gamma", gamma, 0.0, 1.0)
        self.model, self.task, self.curvature = model, task, curvature
        self.chunk_size, self.draws, self.seed = chunk_size, draws, seed
        self._settings = {"gamma": gamma, "backbone_curvature": backbone_curvature,
                          "chunk_size": chunk_size, "draws": draws, "seed": seed,
                          "curvature_examples": curvature_examples}
        self.adaptation_batch = adaptation_batch
        if backbone_batch is None:
            backbone_batch = take_examples(adaptation_batch, [])
        self.batch = concat_batches(adaptation_batch, backbone_batch,
                                    getattr(task, "padding", None))
        self.n = len(next(iter(adaptation_batch.values())))
        self.m = len(next(iter(backbone_batch.values())))
        k = self.n + self.m
        self.gamma = bat_share(self.n, self.m, gamma)
        if grads is None and sums is None and curvature == "fisher":
            grads = per_sample_grads_hooks(model, task, self.batch, chunk_size=chunk_size)
        self.grads = grads
        if sums is not None:
            self.sum_adaptation, sum_backbone = sums
        elif grads is not None:
            self.sum_adaptation, sum_backbone = grads[:self.n].sum(0), grads[self.n:].sum(0)
        else:
            self.sum_adaptation, sum_all = gradient_sums(model, task, self.batch, self.n,
                                                         chunk_size=chunk_size)
            sum_backbone = sum_all - self.sum_adaptation
        # Σ_{D^bat} ∇ℓ over k = n/γ examples' weight: each D^B' example counts n(1 − γ)/(γ m).
        backbone_count = self.n * (1 - self.gamma) / (self.gamma * self.m) if self.m else 0.0
        self.sum_bat = self.sum_adaptation + backbone_count * sum_backbone
        # The curvatures' examples and the weights of their mean over D^bat (the D^A subsample
        # stands for all n); the difference H^{bat|A} − H^{bat} is reweighted alike.
        self.curvature_index, self.bat_weights = curvature_subsample(
            self.n, k, curvature_examples, seed, gamma)
        is_backbone = self.curvature_index >= self.n
        if backbone_curvature == "share" or not self.m:  # H^{bat|A} − H^{bat} = H^A, mean over D^A
            self.difference_weights = torch.where(is_backbone, 0.0, self.bat_weights / self.gamma)
        else:  # H^{bat|A} − mean over D^B'
            self.difference_weights = self.bat_weights - is_backbone.to(torch.float64) / self.m
        if rows is not None:
            expected = len(self.curvature_index) * (draws if curvature == "sampled_fisher" else 1)
            if curvature not in ROW_CURVATURES or len(rows) != expected:
                raise ValueError(f"rows: {len(rows)} rows given for curvature {curvature!r}; a "
                                 f"row curvature ({list(ROW_CURVATURES)}) here has {expected}")
        self._rows = rows
        self._operators: list[CurvatureOperator] | None = None

    @property
    def rows(self) -> torch.Tensor:
        """The rows of a row curvature over the curvature examples, D^A's subsample then D^B':
        per-sample gradients for ``fisher`` [len(curvature_index), d], ``draws`` drawn-target
        gradients per example for ``sampled_fisher`` [len(curvature_index)·draws, d] (d: the
        width of θ_A, or of the ``grads``/``rows`` given); computed once. Raises ValueError for
        other curvatures."""
        if self.curvature not in ROW_CURVATURES:
            raise ValueError(f"curvature {self.curvature!r} has no rows; "
                             f"rows exist for {list(ROW_CURVATURES)}")
        if self._rows is None:
            index = self.curvature_index
            if self.curvature == "sampled_fisher":
                self._rows = sampled_fisher_rows(self.model, self.task,
                                                 take_examples(self.batch, index), draws=self.draws,
                                                 seed=self.seed, chunk_size=self.chunk_size)
            elif self.grads is not None:
                self._rows = self.grads[index]
            else:
                self._rows = per_sample_grads_hooks(self.model, self.task,
                                                    take_examples(self.batch, index),
                                                    chunk_size=self.chunk_size)
        return self._rows

    def replace_backbone(self, backbone_batch: Batch, backbone_grads: torch.Tensor) -> Prop2Problem:
        """The problem at the same θ with the same D^A and ``backbone_batch`` as D^B'.

        What a selector needs right after it selected D^B' again: D^A's gradient sum and, for a
        row curvature, D^A's rows are this problem's, so only the new D^B' costs a pass.
        ``backbone_grads`` [m, d]: its per-sample gradients at this θ (the selector ranked the
        candidates with them), which give its gradient sum and, for ``fisher``, its rows;
        ``sampled_fisher`` draws its targets with ``derived_seed(seed, 1)``, a stream apart from
        D^A's. So with ``sampled_fisher`` the scores are not those of a fresh problem built with
        this seed (that one would draw D^A's targets again, over another batch), only as
        accurate: each is one draw of the same estimator. Raises ValueError when
        ``backbone_grads`` does not hold one row per example of ``backbone_batch`` over θ_A.
        """
        m = len(next(iter(backbone_batch.values())))
        if backbone_grads.shape != (m, self.sum_adaptation.numel()):
            raise ValueError(f"backbone_grads: shape {tuple(backbone_grads.shape)}, want "
                             f"({m}, {self.sum_adaptation.numel()}): one row per example of "
                             "backbone_batch over θ_A")
        device = next(iter(self.adaptation_batch.values())).device
        backbone_batch = {key: value.to(device) for key, value in backbone_batch.items()}
        sums = (self.sum_adaptation, backbone_grads.sum(0).to(self.sum_adaptation))
        rows = None
        if self.curvature in ROW_CURVATURES:
            per_example = self.draws if self.curvature == "sampled_fisher" else 1
            adaptation_rows = self.rows[:int((self.curvature_index < self.n).sum()) * per_example]
            backbone_rows = (backbone_grads if self.curvature == "fisher" else sampled_fisher_rows(
                self.model, self.task, backbone_batch, draws=self.draws,
                seed=derived_seed(self.seed, 1), chunk_size=self.chunk_size))
            rows = torch.cat([adaptation_rows, backbone_rows.to(adaptation_rows)])
        return Prop2Problem(self.model, self.task, self.adaptation_batch, backbone_batch,
                            self.curvature, sums=sums, rows=rows, **self._settings)

    def operators(self) -> tuple[CurvatureOperator, CurvatureOperator]:
        """H^{bat|A} − H^{bat} and H^{bat|A}, from one forward pass (built once)."""
        if self._operators is None:
            index = self.curvature_index
            self._operators = curvature_operators(
                self.curvature, self.model, self.task, take_examples(self.batch, index),
                [self.difference_weights, self.bat_weights],
                rows=self.rows if self.curvature in ROW_CURVATURES else None,
                chunk_size=self.chunk_size, draws=self.draws, seed=self.seed)
            factor = getattr(self._operators[0], "factor", None)
            if factor is not None:  # both scores' right-hand sides in the Gram's pass over G
                factor.prefetch([self.sum_adaptation, self.sum_bat])
        return self._operators[0], self._operators[1]

    def solve_options(self, options: SolveOptions, relative: bool) -> SolveOptions:
        """``options``, with λ scaled by the top eigenvalue of H^{bat|A} when ``relative``."""
        return relative_damping(self.operators()[1], options) if relative else options

    def score_adaptation(self, options: SolveOptions) -> tuple[float, CurvatureReport]:
        """‖(H^{bat|A} − H^{bat} + λI)⁻¹ Σ_{D^A} ∇ℓ‖ with λ = options.damping."""
        return solve_norm(self.operators()[0], self.sum_adaptation, options)

    def score_bat(self, options: SolveOptions) -> tuple[float, CurvatureReport]:
        """‖(H^{bat|A} + λI)⁻¹ Σ_{D^bat} ∇ℓ‖ with λ = options.damping."""
        return solve_norm(self.operators()[1], self.sum_bat, options)

    def scores(self, options: SolveOptions, *, inequality: str = "norms",
               relative: bool = False) -> Prop2Scores:
        """Both sides of eq. 12, with the problem's γ.

        ``relative``: λ = options.damping × top eigenvalue of H^{bat|A}, the same in both scores.
        Raises ConfigError for an unknown ``inequality``.
        """
        validate.choice("inequality", inequality, INEQUALITIES)
        options = self.solve_options(options, relative)
        score_a, report_a = self.score_adaptation(options)
        score_bat, report_bat = self.score_bat(options)
        return Prop2Scores(score_a, score_bat, self.gamma, inequality,
                           {"adaptation": report_a.as_dict(), "bat": report_bat.as_dict()})


def candidate_benefits(operator: CurvatureOperator, candidate_grads: torch.Tensor,
                       target_gradient: torch.Tensor, options: SolveOptions, *,
                       relative: bool = False) -> tuple[torch.Tensor, CurvatureReport]:
    """Predicted decrease of a target T(θ) when each candidate joins the training set.

    Up-weighting candidate j (per-sample gradient g_j, a row of ``candidate_grads`` [c, d]) by ε
    in the training objective whose curvature is ``operator`` (H) moves its minimiser by
    −ε (H + λI)⁻¹ g_j, so T changes by −ε ∇Tᵀ (H + λI)⁻¹ g_j
    (the influence function of Koh & Liang, 2017). The benefit

        b_j = g_jᵀ z,   z = (H + λI)⁻¹ ∇T,

    needs one shared solve for all candidates; b_j > 0 means the candidate's preconditioned
    step −(H + λI)⁻¹ g_j goes down T. The approximation is first order in the candidate's
    weight (1/k) and holds H fixed, which a single example changes by O(1/k) only.
    With T = ½‖θ − θ^{A*}‖², ∇T = θ − θ^{A*} (oracle); with T the loss on held-out
    adaptation data, ∇T is its gradient (oracle-free). A selector passes H^{bat|A} of the
    current D^bat (:meth:`Prop2Problem.operators`), the curvature its scores use.
    ``relative``: λ scaled as in :func:`relative_damping`. Returns the benefits [c] and the
    solve's report.
    """
    options = relative_damping(operator, options) if relative else options
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
    grads = per_sample_grads_hooks(model, task, batch, chunk_size=chunk_size)
    operator = curvature_operators(curvature, model, task, batch,
                                   [torch.full((k,), 1.0 / k, dtype=torch.float64)],
                                   rows=grads, chunk_size=chunk_size)[0]
    return solve_norm(operator, grads.sum(0), options)


def parameter_distance(theta: torch.Tensor, theta_star: torch.Tensor) -> float:
    """‖θ − θ*‖ (Euclidean)."""
    return float(torch.linalg.vector_norm(theta - theta_star))


def weighted_squared_distance(theta: torch.Tensor, theta_star: torch.Tensor,
                              weight: CurvatureOperator | torch.Tensor) -> float:
    """‖θ − θ*‖²_S = (θ − θ*)ᵀ S (θ − θ*) of Definition 3, S a matrix or a curvature operator."""
    delta = theta - theta_star
    product = weight.matvec(delta) if isinstance(weight, CurvatureOperator) else weight @ delta
    return float(delta @ product.to(delta.dtype))
