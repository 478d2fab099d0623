"""Selectors of backbone samples: Algorithm 1 (oracle and oracle-free) and a trivial baseline.

:class:`Prop2Selector` keeps a selection D^B' and serves it at every step, so the expensive work
is amortised: Score_A is recomputed every ``score_adaptation_every`` steps, Score_bat every
``score_bat_every`` steps, and D^B' is selected again only when eq. 12, γ·Score_bat ≤ Score_A,
fails (Algorithm 1, App. C), when it does not exist yet, or when its samples are no longer among
the candidates the training loop offers. A (re)selection ranks all candidates with one shared
solve (:func:`bat.prop2.candidate_benefits`) and keeps the ``count`` best:

- ``oracle``: the target is θ^{A*} (e.g. an adapter trained long on D^A): benefit
  g_jᵀ (H + λI)⁻¹ (θ − θ^{A*}) > 0 when the candidate's preconditioned step goes toward θ^{A*};
- ``oracle_free``: a held-out split of D^A stands in for θ^{A*}: benefit
  g_jᵀ (H + λI)⁻¹ ∇L_holdout > 0 when the step lowers the held-out loss. The held-out split is
  used only for this direction; scores and curvature use the rest of D^A.

H is the curvature of the current D^bat (D^A alone before the first selection). Each call that
did any work appends one JSON-ready dict to ``records``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from bat import validate
from bat.curvature import CURVATURES, flat_parameters, loss_gradient, per_sample_grads
from bat.errors import ConfigError
from bat.prop2 import (BACKBONE_CURVATURES, INEQUALITIES, Prop2Problem, Prop2Scores,
                        candidate_benefits)
from bat.protocols import Batch, SelectionContext, concat_batches, take_examples
from bat.solvers import SOLVERS, SolveOptions

MODES = ("oracle", "oracle_free")


@dataclass(frozen=True)
class SelectionConfig:
    mode: str = "oracle"
    curvature: str = "fisher"  # PSD, and the only one Woodbury inverts exactly
    solver: str = "woodbury"  # exact for the Fisher with n ≪ d; cg/lissa for hessian/GN
    damping: float = 1e-3  # λ, or λ / top eigenvalue of H^{bat|A} when relative_damping
    relative_damping: bool = True  # λ relative to the spectrum, see bat.prop2
    indefinite: str = "clip"  # policy for an indefinite H^{bat|A} − H^{bat}, see bat.solvers
    eig_floor: float | None = None  # eigenvalue floor for "clip"; None: the damping
    tol: float = 1e-5  # float32 products rarely give a relative residual below ~1e-6
    max_iter: int = 100
    lissa_scale: float | None = None
    gamma: float = 0.5  # γ in eq. 12: must be the training's configured γ (TrainConfig.gamma)
    inequality: str = "norms"  # eq. 12 as written, or "mean_squares" (ρ_bat|A ≤ ρ_A)
    backbone_curvature: str = "share"  # H^{bat|A} − H^{bat}: the proof's H^A, or "conditional"
    score_adaptation_every: int = 1  # n in Algorithm 1
    score_bat_every: int = 1  # k in Algorithm 1
    holdout_fraction: float = 0.25  # oracle_free: part of D^A that stands in for θ^{A*}
    chunk_size: int | None = None  # examples per vmap chunk for per-sample gradients
    seed: int = 0  # the held-out split

    def __post_init__(self):
        validate.choice("mode", self.mode, MODES)
        validate.choice("curvature", self.curvature, CURVATURES)
        validate.choice("solver", self.solver, SOLVERS)
        if self.solver == "woodbury" and self.curvature != "fisher":
            raise ConfigError(f"solver: 'woodbury' needs curvature 'fisher', not "
                              f"{self.curvature!r}; choose one of "
                              f"{[s for s in SOLVERS if s != 'woodbury']}")
        self.solve_options  # validates damping, indefinite, eig_floor, tol, max_iter, lissa_scale
        validate.open_interval("gamma", self.gamma, 0.0, 1.0)
        validate.choice("inequality", self.inequality, INEQUALITIES)
        validate.choice("backbone_curvature", self.backbone_curvature, BACKBONE_CURVATURES)
        validate.positive("score_adaptation_every", self.score_adaptation_every, integer=True)
        validate.positive("score_bat_every", self.score_bat_every, integer=True)
        validate.open_interval("holdout_fraction", self.holdout_fraction, 0.0, 1.0)
        if self.chunk_size is not None:
            validate.positive("chunk_size", self.chunk_size, integer=True)
        validate.non_negative("seed", self.seed, integer=True)

    @property
    def solve_options(self) -> SolveOptions:
        return SolveOptions(solver=self.solver, damping=self.damping, indefinite=self.indefinite,
                            eig_floor=self.eig_floor, tol=self.tol, max_iter=self.max_iter,
                            lissa_scale=self.lissa_scale)


class FirstSelector:
    """The first ``count`` candidates: no scoring at all (a cost floor for benchmarks)."""

    def select(self, context: SelectionContext, count: int) -> list[int]:
        return list(context.candidate_ids[:count])


class Prop2Selector:
    """Algorithm 1 of the paper as a stateful :class:`bat.protocols.Selector`."""

    def __init__(self, config: SelectionConfig, target: torch.Tensor | None = None):
        if config.mode == "oracle" and target is None:
            raise ConfigError("target: mode 'oracle' needs θ^{A*} as a flat vector "
                              "(bat.curvature.flat_parameters of the optimal adapter)")
        if config.mode == "oracle_free" and target is not None:
            raise ConfigError("target: mode 'oracle_free' uses held-out D^A, not θ^{A*}; "
                              "pass no target or choose mode 'oracle'")
        self.config, self.target = config, target
        self.records: list[dict] = []
        self.selected_ids: list[int] = []
        self._selected_batch: Batch | None = None
        self._score_adaptation: float | None = None

    def select(self, context: SelectionContext, count: int) -> list[int]:
        if count > len(context.candidate_ids):
            raise ValueError(f"count {count} exceeds the {len(context.candidate_ids)} candidates")
        if count == 0:
            return []
        start = time.perf_counter()
        config, step = self.config, context.step
        adaptation, holdout = self._split(context.adaptation_batch)
        record: dict = {"step": step}
        reason = self._stale_reason(context, count)
        due_adaptation = step % config.score_adaptation_every == 0
        problem = None
        if reason is None and (due_adaptation or step % config.score_bat_every == 0):
            problem = self._problem(context, adaptation)
        if problem is not None and (due_adaptation or self._score_adaptation is None):
            self._score_adaptation, report = problem.score_adaptation(self._options(problem))
            record.update(score_adaptation=self._score_adaptation,
                          reports={"adaptation": report.as_dict()})
        if problem is not None and step % config.score_bat_every == 0:
            score_bat, report = problem.score_bat(self._options(problem))
            holds = Prop2Scores(self._score_adaptation, score_bat, config.gamma,
                                config.inequality, {}).holds
            record.update(score_bat=score_bat, gamma=config.gamma, condition=holds,
                          score_adaptation=self._score_adaptation)
            record.setdefault("reports", {})["bat"] = report.as_dict()
            if not holds:
                reason = "condition_failed"
        if reason is not None:
            self._reselect(context, adaptation, holdout, count, record)
            record["reason"] = reason
        if len(record) > 1:
            record["seconds"] = time.perf_counter() - start
            self.records.append(record)
        # Kept in benefit order: a step that needs fewer (per_batch mixing alternates counts
        # such as 10 and 11) takes the best of the kept ones instead of rescoring.
        return list(self.selected_ids[:count])

    def _stale_reason(self, context: SelectionContext, count: int) -> str | None:
        if len(self.selected_ids) < count:
            return "initial" if not self.selected_ids else "count_changed"
        offered = set(context.candidate_ids)
        if any(i not in offered for i in self.selected_ids):
            return "candidates_changed"
        return None

    def _split(self, batch: Batch) -> tuple[Batch, Batch | None]:
        if self.config.mode == "oracle":
            return batch, None
        n = len(next(iter(batch.values())))
        held = round(self.config.holdout_fraction * n)
        if not 0 < held < n:
            raise ConfigError(f"holdout_fraction: {self.config.holdout_fraction} of {n} "
                              f"adaptation examples leaves no held-out or no training part")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed))
        return take_examples(batch, order[held:]), take_examples(batch, order[:held])

    def _problem(self, context: SelectionContext, adaptation: Batch,
                 grads: torch.Tensor | None = None) -> Prop2Problem:
        return Prop2Problem(context.model, context.task, adaptation, self._selected_batch,
                            self.config.curvature, chunk_size=self.config.chunk_size,
                            backbone_curvature=self.config.backbone_curvature, grads=grads)

    def _options(self, problem: Prop2Problem) -> SolveOptions:
        return problem.solve_options(self.config.solve_options, self.config.relative_damping)

    def _reselect(self, context: SelectionContext, adaptation: Batch, holdout: Batch | None,
                  count: int, record: dict) -> None:
        config = self.config
        if holdout is None:
            theta = flat_parameters(context.model)
            if self.target.shape != theta.shape:
                raise ValueError(f"target has shape {tuple(self.target.shape)}, θ_A has "
                                 f"{tuple(theta.shape)}")
            target_gradient = theta - self.target.to(theta)
        else:
            target_gradient = loss_gradient(context.model, context.task, holdout)
        training = (adaptation if self._selected_batch is None
                    else concat_batches(adaptation, self._selected_batch))
        # One pass per set at this θ serves the benefits, the Fisher and both scores below.
        training_grads = per_sample_grads(context.model, context.task, training,
                                          chunk_size=config.chunk_size)
        candidate_grads = per_sample_grads(context.model, context.task,
                                           context.candidate_batch, chunk_size=config.chunk_size)
        benefits, report = candidate_benefits(
            context.model, context.task, training, candidate_grads, target_gradient,
            config.curvature, config.solve_options, training_grads=training_grads,
            relative=config.relative_damping)
        order = torch.argsort(benefits, descending=True, stable=True)[:count]
        self.selected_ids = [context.candidate_ids[i] for i in order.tolist()]
        self._selected_batch = {key: value.detach().clone() for key, value in
                                take_examples(context.candidate_batch, order).items()}
        n = len(next(iter(adaptation.values())))
        grads = torch.cat([training_grads[:n], candidate_grads[order]])
        scores = self._problem(context, adaptation, grads).scores(
            config.solve_options, config.gamma, inequality=config.inequality,
            relative=config.relative_damping)
        self._score_adaptation = scores.score_adaptation
        record.update(
            reselected=True, selected_ids=list(self.selected_ids),
            positive_benefits=int((benefits[order] > 0).sum()),
            candidates=len(context.candidate_ids),
            score_adaptation=scores.score_adaptation, score_bat=scores.score_bat,
            gamma=scores.gamma, condition=scores.holds,
            reports={"benefit": report.as_dict(), **scores.reports})
