"""Selectors of backbone samples: Algorithm 1 (oracle and oracle-free), a set-level rule, a baseline.

:class:`Prop2Selector` keeps a selection D^B' and serves it at every step, so the expensive work
is amortised: Score_A is recomputed every ``score_adaptation_every`` steps, Score_bat every
``score_bat_every`` steps (counted from the last computation, so a check that falls on a step
without backbone examples happens at the next step with some), and D^B' is selected again only
when eq. 12, γ·Score_bat ≤ Score_A, fails (Algorithm 1, App. C: "select D^bat again"), when it
does not exist yet, or when a step needs more examples than it holds. D^B' is kept between
checks whether or not the step's candidates include it (the training loop offers a fresh random
draw of candidates at every step), so a re-selection ranks a fresh draw, not only the set it
is replacing. γ is the training's (``gamma``): the scores weigh D^B' as that mixture does
(:mod:`bat.core.prop2`). A (re)selection ranks the step's candidates with one shared solve
(:func:`bat.core.prop2.candidate_benefits`) and keeps the ``count`` best:

- ``oracle``: the target is θ^{A*} (e.g. an adapter trained long on D^A): benefit
  g_jᵀ (H + λI)⁻¹ (θ − θ^{A*}) > 0 when the candidate's preconditioned step goes toward θ^{A*};
- ``oracle_free``: a held-out split of D^A stands in for θ^{A*}: benefit
  g_jᵀ (H + λI)⁻¹ ∇L_holdout > 0 when the step lowers the held-out loss. The held-out split is
  used only for this direction; scores and curvature use the rest of D^A.

H is the curvature of the current D^bat mixed at γ (D^A alone before the first selection). Each call that
did any work appends one JSON-ready dict to ``records``.

:class:`SetSelector` chooses D^B' as a set instead (greedy forward selection on a predicted
Newton step that includes D^B''s own curvature; it may choose fewer than asked, or none).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import torch

from bat import validate
from bat.core.curvature import (CURVATURES, ROW_CURVATURES, flat_parameters, loss_gradient,
                                per_sample_grads_hooks, projected_curvatures)
from bat.errors import ConfigError
from bat.core.prop2 import (BACKBONE_CURVATURES, INEQUALITIES, Prop2Problem, Prop2Scores,
                            candidate_benefits)
from bat.core.protocols import Batch, SelectionContext, concat_batches, take_examples
from bat.core.solvers import SOLVERS, SolveOptions

MODES = ("oracle", "oracle_free")


@dataclass(frozen=True)
class SelectionConfig:
    mode: str = "oracle"
    # the sampled ("true") Fisher: unbiased for Gauss-Newton, so the check can fail, and made of
    # rows, so Woodbury inverts it exactly (bat.core.prop2's docstring)
    curvature: str = "sampled_fisher"
    solver: str = "woodbury"  # exact for row curvatures with n ≪ d; cg/lissa for hessian/GN
    fisher_draws: int = 1  # sampled_fisher: targets drawn per example
    curvature_examples: int | None = None  # examples of D^A in the curvatures; None: all
    damping: float = 1e-3  # λ, or λ / top eigenvalue of H^{bat|A} when relative_damping
    relative_damping: bool = True  # λ relative to the spectrum, see bat.core.prop2
    indefinite: str = "clip"  # policy for an indefinite H^{bat|A} − H^{bat}, see bat.core.solvers
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
    seed: int = 0  # the held-out split; with the step, the sampled Fisher's draws

    def __post_init__(self):
        validate.choice("mode", self.mode, MODES)
        validate.choice("curvature", self.curvature, CURVATURES)
        validate.choice("solver", self.solver, SOLVERS)
        if self.solver == "woodbury" and self.curvature not in ROW_CURVATURES:
            raise ConfigError(f"solver: 'woodbury' needs curvature one of {list(ROW_CURVATURES)}, "
                              f"not {self.curvature!r}; choose one of "
                              f"{[s for s in SOLVERS if s != 'woodbury']}")
        validate.positive("fisher_draws", self.fisher_draws, integer=True)
        if self.curvature_examples is not None:
            validate.positive("curvature_examples", self.curvature_examples, integer=True)
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


def check_target(mode: str, target: torch.Tensor | None) -> None:
    """A selector's θ^{A*} agrees with its mode: given for ``oracle``, absent for ``oracle_free``."""
    if mode == "oracle" and target is None:
        raise ConfigError("target: mode 'oracle' needs θ^{A*} as a flat vector "
                          "(bat.core.curvature.flat_parameters of the optimal adapter)")
    if mode == "oracle_free" and target is not None:
        raise ConfigError("target: mode 'oracle_free' uses held-out D^A, not θ^{A*}; "
                          "pass no target or choose mode 'oracle'")


class FirstSelector:
    """The first ``count`` candidates: no scoring at all (a cost floor for benchmarks)."""

    def select(self, context: SelectionContext, count: int) -> list[int]:
        return list(context.candidate_ids[:count])


class Prop2Selector:
    """Algorithm 1 of the paper as a stateful :class:`bat.core.protocols.Selector`."""

    def __init__(self, config: SelectionConfig, target: torch.Tensor | None = None):
        check_target(config.mode, target)
        self.config, self.target = config, target
        self.records: list[dict] = []
        self.selected_ids: list[int] = []
        self._selected_batch: Batch | None = None
        self._score_adaptation: float | None = None
        # the steps Score_A and Score_bat were last computed at: a check falls due that many
        # steps later, at the first step with backbone examples (steps with none call no selector)
        self._score_adaptation_step: int | None = None
        self._score_bat_step: int | None = None

    def select(self, context: SelectionContext, count: int) -> list[int]:
        if count > len(context.candidate_ids):
            raise ValueError(f"count {count} exceeds the {len(context.candidate_ids)} candidates")
        if count == 0:
            return []
        start = time.perf_counter()
        config, step = self.config, context.step
        record: dict = {"step": step}
        reason = self._stale_reason(count)
        due_adaptation = _due(self._score_adaptation_step, step, config.score_adaptation_every)
        due_bat = _due(self._score_bat_step, step, config.score_bat_every)
        if reason is None and not (due_adaptation or due_bat):
            # between checks: the kept D^B', and the step's batches are never prepared
            return list(self.selected_ids[:count])
        adaptation, holdout = self._split(context.adaptation_batch)
        problem = None
        if reason is None:
            problem = self._problem(context, adaptation)
        if problem is not None and (due_adaptation or self._score_adaptation is None):
            self._score_adaptation, report = problem.score_adaptation(self._options(problem))
            self._score_adaptation_step = step
            record.update(score_adaptation=self._score_adaptation,
                          reports={"adaptation": report.as_dict()})
        if problem is not None and due_bat:
            score_bat, report = problem.score_bat(self._options(problem))
            self._score_bat_step = step
            holds = Prop2Scores(self._score_adaptation, score_bat, problem.gamma,
                                config.inequality, {}).holds
            record.update(score_bat=score_bat, gamma=problem.gamma, condition=holds,
                          score_adaptation=self._score_adaptation)
            record.setdefault("reports", {})["bat"] = report.as_dict()
            if not holds:
                reason = "condition_failed"
        if reason is not None:
            self._reselect(context, adaptation, holdout, count, record, problem)
            # the new set's scores were just computed: the next checks count from here
            self._score_adaptation_step = self._score_bat_step = step
            record["reason"] = reason
        if len(record) > 1:
            record["seconds"] = time.perf_counter() - start
            self.records.append(record)
        # Kept in benefit order: a step that needs fewer (per_batch mixing alternates counts
        # such as 10 and 11) takes the best of the kept ones instead of rescoring.
        return list(self.selected_ids[:count])

    def state_dict(self) -> dict:
        """What a resumed run needs to continue as if never stopped (``bat.core.train`` checkpoints it).

        The selection D^B' (ids and examples, as prepared when selected), the last Score_A and
        every record so far, with the config for :meth:`load_state_dict` to check against.
        Only tensors, numbers, strings, lists and dicts, so it loads with
        ``torch.load(weights_only=True)``. The oracle target is not stored: it is a constructor
        argument, as large as θ_A.
        """
        return {"config": dataclasses.asdict(self.config),
                "selected_ids": list(self.selected_ids),
                "selected_batch": (None if self._selected_batch is None else
                                   {key: value.clone() for key, value in
                                    self._selected_batch.items()}),
                "score_adaptation": self._score_adaptation,
                "score_adaptation_step": self._score_adaptation_step,
                "score_bat_step": self._score_bat_step,
                "records": copy.deepcopy(self.records)}

    def load_state_dict(self, state: dict | None) -> None:
        """Restore what :meth:`state_dict` saved.

        Raises :class:`ConfigError` when ``state`` is None (a checkpoint written without
        selector state: resuming would select again and differ from the uninterrupted run),
        lacks a key :meth:`state_dict` writes (an older version's checkpoint) or was saved under
        another :class:`SelectionConfig`.
        """
        if state is None:
            raise ConfigError("selector: the checkpoint holds no selector state, so a resumed "
                              "run would select again and differ from an uninterrupted one; "
                              "start the run in a fresh folder")
        missing = sorted(set(self.state_dict()) - set(state))
        if missing:
            raise ConfigError(f"selector: the checkpoint's selector state lacks {missing}; it was "
                              "written by an older version of Prop2Selector, so start the run in "
                              "a fresh folder")
        now = dataclasses.asdict(self.config)
        changed = [key for key in now if state["config"].get(key) != now[key]]
        if changed:
            raise ConfigError(f"selector: cannot resume with {changed[0]} = "
                              f"{now[changed[0]]!r}; the checkpoint used "
                              f"{state['config'].get(changed[0])!r}")
        self.selected_ids = list(state["selected_ids"])
        self._selected_batch = state["selected_batch"]
        self._score_adaptation = state["score_adaptation"]
        self._score_adaptation_step = state["score_adaptation_step"]
        self._score_bat_step = state["score_bat_step"]
        self.records = copy.deepcopy(state["records"])

    def _stale_reason(self, count: int) -> str | None:
        if len(self.selected_ids) < count:
            return "initial" if not self.selected_ids else "count_changed"
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

    def _problem(self, context: SelectionContext, adaptation: Batch) -> Prop2Problem:
        """The current D^bat: D^A and the kept D^B' (D^A alone before the first selection)."""
        config = self.config
        return Prop2Problem(context.model, context.task, adaptation, self._selected_batch,
                            config.curvature, gamma=config.gamma, chunk_size=config.chunk_size,
                            backbone_curvature=config.backbone_curvature,
                            draws=config.fisher_draws, seed=self._draw_seed(context.step),
                            curvature_examples=config.curvature_examples)

    def _draw_seed(self, step: int) -> int:
        """The sampled Fisher's targets: fresh at every check, the same on a resumed run."""
        return self.config.seed * 1_000_003 + step

    def _options(self, problem: Prop2Problem) -> SolveOptions:
        return problem.solve_options(self.config.solve_options, self.config.relative_damping)

    def _reselect(self, context: SelectionContext, adaptation: Batch, holdout: Batch | None,
                  count: int, record: dict, problem: Prop2Problem | None) -> None:
        """Select D^B' from the step's candidates. ``problem``: the current D^bat's, built by a
        check at this step (None: no check ran, build it): its H^{bat|A} is the benefits'
        curvature, and the new D^bat's scores reuse its D^A parts (:meth:`Prop2Problem.replace_backbone`)."""
        config = self.config
        if holdout is None:
            theta = flat_parameters(context.model)
            if self.target.shape != theta.shape:
                raise ValueError(f"target has shape {tuple(self.target.shape)}, θ_A has "
                                 f"{tuple(theta.shape)}")
            target_gradient = theta - self.target.to(theta)
        else:
            target_gradient = loss_gradient(context.model, context.task, holdout)
        if problem is None:
            problem = self._problem(context, adaptation)
        candidate_grads = per_sample_grads_hooks(context.model, context.task,
                                                 context.candidate_batch, chunk_size=config.chunk_size)
        benefits, report = candidate_benefits(problem.operators()[1], candidate_grads,
                                              target_gradient, config.solve_options,
                                              relative=config.relative_damping)
        order = torch.argsort(benefits, descending=True, stable=True)[:count]
        self.selected_ids = [context.candidate_ids[i] for i in order.tolist()]
        self._selected_batch = {key: value.detach().clone() for key, value in
                                take_examples(context.candidate_batch, order).items()}
        scores = problem.replace_backbone(self._selected_batch, candidate_grads[order]).scores(
            config.solve_options, inequality=config.inequality, relative=config.relative_damping)
        self._score_adaptation = scores.score_adaptation
        selected = {"score_adaptation": scores.score_adaptation, "score_bat": scores.score_bat,
                    "gamma": scores.gamma, "condition": scores.holds}
        record.update(reselected=True, selected_ids=list(self.selected_ids),
                      positive_benefits=int((benefits[order] > 0).sum()),
                      candidates=len(context.candidate_ids))
        # A check that failed keeps what it measured (it is why D^B' changed) and has the new
        # set's scores beside it; a selection with no check before it (the first, or a step
        # needing more examples) has only the new set's scores.
        if "condition" in record:
            record["after_reselection"] = {**selected, "reports": scores.reports}
        else:
            record.update(selected)
        reports = record.setdefault("reports", {})
        reports["benefit"] = report.as_dict()
        for name, value in scores.reports.items():
            reports.setdefault(name, value)


# --- set-level selection: greedy forward selection by a predicted Newton step ---------------

@dataclass(frozen=True)
class SetSelectionConfig:
    """Settings of :class:`SetSelector`; every field is checked, errors name it."""

    mode: str = "oracle_free"
    curvature: str = "gauss_newton"  # the per-example curvature C_i (bat.core.curvature)
    damping: float = 1e-6  # λ / the largest eigenvalue of D^A's summed curvature
    folds: int = 4  # oracle_free: cross-validation folds of D^A
    every_fold: bool = True  # oracle_free: an addition must lower every fold's held-out loss
    reselect_every: int = 1  # steps between greedy selections (Algorithm 1's k)
    chunk_size: int | None = None  # examples per vmap chunk
    seed: int = 0  # the folds

    def __post_init__(self):
        validate.choice("mode", self.mode, MODES)
        validate.choice("curvature", self.curvature, CURVATURES)
        validate.positive("damping", self.damping)
        if not (isinstance(self.folds, int) and self.folds >= 2):
            raise ConfigError(f"folds: {self.folds!r} is not allowed; use an integer >= 2")
        validate.positive("reselect_every", self.reselect_every, integer=True)
        if self.chunk_size is not None:
            validate.positive("chunk_size", self.chunk_size, integer=True)
        validate.non_negative("seed", self.seed, integer=True)


@dataclass
class NewtonTargets:
    """The quadratic targets ½δᵀA_fδ + b_fᵀδ of one greedy selection, one per fold f.

    In r coordinates of a subspace: ``base_curvature`` [F, r, r] = Σ_{train_f} C_i + λI,
    ``base_gradient`` [F, r] = Σ_{train_f} g_i, ``target_curvature`` A_f [F, r, r] and
    ``target_gradient`` b_f [F, r]; candidates have ``curvatures`` [c, r, r] and ``gradients``
    [c, r]. The step of a set S is δ_f(S) = −(K_f + Σ_S C_j)⁻¹ (s_f + Σ_S g_j): one Newton
    step on train_f ∪ S from the current θ (sums, so the 1/k of the mean loss cancels).
    """

    base_curvature: torch.Tensor
    base_gradient: torch.Tensor
    target_curvature: torch.Tensor
    target_gradient: torch.Tensor
    curvatures: torch.Tensor
    gradients: torch.Tensor

    def fold_values(self, step: torch.Tensor) -> torch.Tensor:
        """½δ_fᵀA_fδ_f + b_fᵀδ_f for steps [..., F, r], shape [..., F]."""
        quadratic = torch.einsum("...fr,frs,...fs->...f", step, self.target_curvature, step)
        return quadratic / 2 + (step * self.target_gradient).sum(-1)

    def value(self, step: torch.Tensor) -> torch.Tensor:
        """The target: mean over folds of :meth:`fold_values`."""
        return self.fold_values(step).mean(-1)

    def dense_step(self, chosen: list[int]) -> torch.Tensor:
        """δ_f(S) [F, r] by a direct solve (the reference for the Woodbury updates)."""
        curvature = self.base_curvature + self.curvatures[chosen].sum(0)
        gradient = self.base_gradient + self.gradients[chosen].sum(0)
        return -torch.linalg.solve(curvature, gradient)


def _factors(curvatures: torch.Tensor, tol: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """C_j = U_j diag(σ_j) U_jᵀ, truncated to the largest numerical rank; padding has σ = 0."""
    sigma, vectors = torch.linalg.eigh(curvatures)
    # relative to each candidate's own scale; the clamp keeps a zero curvature at rank zero
    keep = sigma.abs() > tol * sigma.abs().amax(-1, keepdim=True).clamp(min=1e-300)
    rank = max(int(keep.sum(-1).max()), 1)
    order = torch.argsort(sigma.abs(), dim=-1, descending=True)[..., :rank]
    sigma = torch.gather(sigma, -1, order)
    vectors = torch.gather(vectors, -1, order[..., None, :].expand(*vectors.shape[:-1], rank))
    return vectors, torch.where(torch.gather(keep, -1, order), sigma, torch.zeros_like(sigma))


def greedy_newton_selection(targets: NewtonTargets, limit: int, *, every_fold: bool = False,
                            ) -> tuple[list[int], list[float]]:
    """Greedy forward selection of at most ``limit`` candidates minimising the predicted target.

    Starts from the empty set (a valid answer) and adds, one at a time, the candidate whose
    addition gives the lowest target, while that is strictly below the current one; with
    ``every_fold`` only candidates that lower the target of every fold are eligible. Each
    candidate's own curvature enters through a Woodbury update of the kept inverse
    K_f⁻¹ = (K_f + Σ_S C_j)⁻¹:
        (K + UΣUᵀ)⁻¹ v = K⁻¹v − W (I + ΣUᵀW)⁻¹ Σ Wᵀ v,   W = K⁻¹U,
    which is rank one for ``fisher`` or a scalar-output Gauss-Newton, and serves all candidates
    in one batched solve of their ranks. Returns the chosen indices in order and the target
    after each addition (the first entry: the empty set).
    """
    inverse = torch.linalg.inv(targets.base_curvature)  # [F, r, r]
    gradient = targets.base_gradient.clone()
    vectors, sigma = _factors(targets.curvatures)  # [c, r, q], [c, q]
    current = targets.fold_values(-(inverse @ gradient[..., None])[..., 0])
    chosen, trace = [], [float(current.mean())]
    remaining = torch.ones(len(targets.gradients), dtype=torch.bool, device=sigma.device)
    eye = torch.eye(sigma.shape[-1], dtype=sigma.dtype, device=sigma.device)
    while len(chosen) < limit and bool(remaining.any()):
        w = inverse[None] @ vectors[:, None]  # [c, F, r, q]
        core = eye + sigma[:, None, :, None] * (vectors[:, None].transpose(-1, -2) @ w)
        v = gradient[None] + targets.gradients[:, None]  # [c, F, r]
        base = (inverse[None] @ v[..., None])[..., 0]
        correction = torch.linalg.solve(core, sigma[:, None] * (w.transpose(-1, -2)
                                                                 @ v[..., None])[..., 0])
        steps = -(base - (w @ correction[..., None])[..., 0])
        folds = targets.fold_values(steps)  # [c, F]
        values = folds.mean(-1)
        eligible = remaining & (values < current.mean())
        if every_fold:
            eligible &= (folds < current).all(-1)
        if not bool(eligible.any()):
            break
        best = int(torch.argmin(values.masked_fill(~eligible, float("inf"))))
        w_best = w[best]  # update the kept inverses with the same identity
        core_best = core[best]
        inverse = inverse - w_best @ torch.linalg.solve(
            core_best, sigma[best][None, :, None] * w_best.transpose(-1, -2))
        gradient = gradient + targets.gradients[best]
        remaining[best] = False
        chosen.append(best)
        current = folds[best]
        trace.append(float(values[best]))
    return chosen, trace


class SetSelector:
    """D^B' chosen as a set (|D^B'| ≤ count, possibly empty) by :func:`greedy_newton_selection`.

    The ranking of :class:`Prop2Selector` scores each candidate alone, to first order, and then
    takes the ``count`` best together; here the target is predicted for the set by one Newton
    step on D^A ∪ D^B' that includes D^B''s own curvature, so candidates that pull the same way
    do not all get in, and none gets in when no addition improves the target:

    - ``oracle``: T(δ) = ½‖θ + δ − θ^{A*}‖² (``target`` = θ^{A*}, flat [d]); one fold, all of D^A;
    - ``oracle_free``: T(δ) = held-out loss of D^A to second order, ∇L_h ᵀδ + ½ δᵀ H_h δ, averaged
      over ``folds`` cross-validation folds (each step from the other folds ∪ D^B'), and with
      ``every_fold`` a candidate must lower the held-out loss of every fold, so that one small
      split does not decide alone.

    Everything lives in the span Q of the per-sample gradients of D^A and the candidates (and
    θ − θ^{A*}), or in all of θ_A when d is no larger: the step is the Newton step restricted to
    that subspace (exact when d ≤ r, and for curvature that maps the span into itself).
    λ = ``damping`` × the largest eigenvalue of D^A's summed projected curvature.
    Re-selects from the step's candidates every ``reselect_every`` steps or when a step needs
    more examples than the last selection asked for, and keeps its choice in between (whether or
    not the step's candidates include it); each selection appends a JSON-ready record to
    ``records``.
    """

    def __init__(self, config: SetSelectionConfig, target: torch.Tensor | None = None):
        check_target(config.mode, target)
        self.config, self.target = config, target
        self.records: list[dict] = []
        self.selected_ids: list[int] | None = None
        self._count: int | None = None

    def select(self, context: SelectionContext, count: int) -> list[int]:
        if count > len(context.candidate_ids):
            raise ValueError(f"count {count} exceeds the {len(context.candidate_ids)} candidates")
        # A step that needs fewer takes a prefix of the greedy order, which is what the greedy
        # rule would choose with that limit; only a step that needs more selects again.
        stale = (self.selected_ids is None or count > self._count
                 or context.step % self.config.reselect_every == 0)
        if stale and count > 0:
            start = time.perf_counter()
            targets = self.newton_targets(context)
            chosen, trace = greedy_newton_selection(targets, count,
                                                    every_fold=self.config.every_fold)
            self.selected_ids = [context.candidate_ids[i] for i in chosen]
            self._count = count
            self.records.append({"step": context.step, "selected_ids": list(self.selected_ids),
                                 "targets": trace, "candidates": len(context.candidate_ids),
                                 "limit": count, "seconds": time.perf_counter() - start})
        return list(self.selected_ids or [])[:count]

    def newton_targets(self, context: SelectionContext) -> NewtonTargets:
        """The folds' curvatures, gradients and targets in the subspace at the current θ."""
        config, model, task = self.config, context.model, context.task
        adaptation, candidates = context.adaptation_batch, context.candidate_batch
        n = len(next(iter(adaptation.values())))
        grads = per_sample_grads_hooks(model, task, concat_batches(adaptation, candidates),
                                       chunk_size=config.chunk_size).to(torch.float64)
        theta = flat_parameters(model).to(torch.float64)
        extra = []
        if config.mode == "oracle":
            if self.target.shape != theta.shape:
                raise ValueError(f"target has shape {tuple(self.target.shape)}, θ_A has "
                                 f"{tuple(theta.shape)}")
            extra = [theta - self.target.to(theta)]
        basis = _span_basis(torch.cat([grads, *(e[None] for e in extra)]))
        curvatures = projected_curvatures(config.curvature, model, task,
                                          concat_batches(adaptation, candidates), basis,
                                          grads=grads, chunk_size=config.chunk_size)
        curvatures = (curvatures + curvatures.transpose(-1, -2)) / 2
        projected = grads @ basis
        folds = self._folds(n)
        train = torch.stack([~f for f in folds]).to(grads)  # [F, n], float64 as grads
        held = torch.stack(folds).to(grads)
        held = held / held.sum(1, keepdim=True)
        a_curv, a_grad = curvatures[:n], projected[:n]
        top = float(torch.linalg.eigvalsh(a_curv.sum(0)).abs().max())
        damping = config.damping * (top if top > 0 else 1.0)  # zero curvature: λ stays defined
        eye = torch.eye(basis.shape[1], dtype=torch.float64, device=basis.device)
        base_curvature = torch.einsum("fn,nrs->frs", train, a_curv) + damping * eye
        if config.mode == "oracle":
            target_curvature, target_gradient = eye[None], (basis.T @ extra[0])[None]
        else:
            target_curvature = torch.einsum("fn,nrs->frs", held, a_curv)
            target_gradient = held @ a_grad
        return NewtonTargets(base_curvature, train @ a_grad, target_curvature, target_gradient,
                             curvatures[n:], projected[n:])

    def _folds(self, n: int) -> list[torch.Tensor]:
        """Masks of the held-out part of D^A per fold (oracle: one fold, nothing held out)."""
        if self.config.mode == "oracle":
            return [torch.zeros(n, dtype=torch.bool)]
        if n < self.config.folds:
            raise ConfigError(f"folds: {self.config.folds} folds need at least as many "
                              f"adaptation examples, got {n}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed))
        masks = []
        for part in torch.tensor_split(order, self.config.folds):
            mask = torch.zeros(n, dtype=torch.bool)
            mask[part] = True
            masks.append(mask)
        return masks


def _due(last: int | None, step: int, every: int) -> bool:
    return last is None or step - last >= every


def _span_basis(vectors: torch.Tensor, tol: float = 1e-10) -> torch.Tensor:
    """Orthonormal columns spanning the rows of ``vectors`` [p, d]; the identity when p ≥ d."""
    d = vectors.shape[1]
    if vectors.shape[0] >= d:
        return torch.eye(d, dtype=vectors.dtype, device=vectors.device)
    u, s, _ = torch.linalg.svd(vectors.T, full_matrices=False)
    return u[:, s > tol * s.max().clamp(min=1e-300)]
