"""Solvers for (M + λI) x = v, where M is a curvature operator that may be indefinite.

- ``dense``:    eigendecomposition of M built from d products (small d only).
- ``woodbury``: exact for M = Gᵀ diag(w) G with n ≪ d rows (``fisher``, ``sampled_fisher``; DataInf-style).
                With G = (QR)ᵀ and K = R diag(w) Rᵀ = U diag(μ) Uᵀ (an n×n problem),
                M = (QU) diag(μ) (QU)ᵀ, so
                (M + λI)⁻¹ v = QU diag(1/(μ+λ)) (QU)ᵀ v + (v − QU (QU)ᵀ v)/λ,
                which for w ≥ 0 is the Woodbury identity
                (λI + GᵀWG)⁻¹ = λ⁻¹ (I − Gᵀ(λW⁻¹ + GGᵀ)⁻¹ G), and also works for signed w.
                Its residual is computed in the rows' coordinates, exactly (outside their
                span it is zero by construction; inside, it is what a policy changed), not
                by a float32 product with G, whose round-off it would otherwise report.
- ``cg``:       conjugate gradient on products; stops at the first direction with pᵀ(M+λI)p ≤ 0.
- ``lissa``:    the Neumann series x ← x + (v − (M+λI)x)/s of LiSSA (Agarwal et al., 2017),
                deterministic here; converges when 0 < eig(M+λI) < 2s.

Proposition 2 inverts H^{bat|A} − H^{bat}, which need not be positive definite. The policy for
an indefinite damped matrix M + λI (damping that lifts every eigenvalue of M above zero cures
indefiniteness, for every solver) is explicit:

- ``raise``:    raise :class:`IndefiniteCurvatureError` (every solver),
- ``clip``:     replace each eigenvalue μ+λ by max(μ+λ, floor) (``dense``, ``woodbury``),
- ``abs``:      replace it by |μ|+λ, the saddle-free Newton choice (``dense``, ``woodbury``),
- ``truncate``: return the last iterate before the negative-curvature direction, flagged
                (``cg``, ``lissa``; Steihaug's truncated CG without a trust region).

Every solve returns a :class:`CurvatureReport`: which curvature, damping, solver and policy gave
the answer, whether it converged and whether indefiniteness was seen. Nothing returns NaN: a
non-finite right-hand side, curvature product or Fisher row raises :class:`NonFiniteError`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from bat import validate
from bat.core.curvature import ROW_CURVATURES, CurvatureOperator, FisherOperator
from bat.errors import ConfigError

SOLVERS = ("dense", "woodbury", "cg", "lissa")
SPECTRAL_POLICIES = ("raise", "clip", "abs")
ITERATIVE_POLICIES = ("raise", "truncate")
POLICIES_BY_SOLVER = {"dense": SPECTRAL_POLICIES, "woodbury": SPECTRAL_POLICIES,
                      "cg": ITERATIVE_POLICIES, "lissa": ITERATIVE_POLICIES}


@dataclass(frozen=True)
class SolveOptions:
    solver: str = "cg"
    damping: float = 1e-3  # λ in (M + λI); also the default eigenvalue floor for ``clip``
    indefinite: str = "raise"
    eig_floor: float | None = None  # None: the damping
    tol: float = 1e-6  # relative residual ‖(M+λI)x − v‖ / ‖v‖ at which iterations stop
    max_iter: int = 200
    lissa_scale: float | None = None  # None: 1.1 × a power-iteration estimate of ‖M+λI‖

    def __post_init__(self):
        validate.choice("solver", self.solver, SOLVERS)
        validate.positive("damping", self.damping)
        validate.choice("indefinite", self.indefinite, POLICIES_BY_SOLVER[self.solver])
        if self.eig_floor is not None:
            validate.positive("eig_floor", self.eig_floor)
        validate.open_interval("tol", self.tol, 0.0, 1.0)
        validate.positive("max_iter", self.max_iter, integer=True)
        if self.lissa_scale is not None:
            validate.positive("lissa_scale", self.lissa_scale)


@dataclass
class CurvatureReport:
    curvature: str
    solver: str
    damping: float
    policy: str
    iterations: int  # products with M (0 for a dense matrix given directly)
    residual: float  # ‖(M+λI)x − v‖ / ‖v‖ against the unmodified damped matrix
    converged: bool
    indefinite: bool  # M + λI was seen not to be positive definite
    negative_eigenvalues: int | None  # of M, where the solver sees the spectrum
    min_eigenvalue: float | None  # of M, same
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Solution:
    x: torch.Tensor
    report: CurvatureReport


class IndefiniteCurvatureError(RuntimeError):
    """M + λI is not positive definite and the policy is ``raise``."""

    def __init__(self, report: CurvatureReport):
        super().__init__(f"{report.curvature} curvature with damping {report.damping} is "
                         f"indefinite (solver {report.solver!r}, min eigenvalue "
                         f"{report.min_eigenvalue}); choose another policy, more damping or "
                         f"a PSD curvature")
        self.report = report


class NonFiniteError(ValueError):
    """A solve met NaN or infinity in its input: the right-hand side, a product M v or G, w."""


def _require_finite(values: torch.Tensor, what: str) -> torch.Tensor:
    bad = ~torch.isfinite(values)
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise NonFiniteError(f"{what} has {int(bad.sum())} non-finite entries (first at index "
                             f"{first[0] if len(first) == 1 else first}); nothing was solved")
    return values


def _product(operator: CurvatureOperator, x: torch.Tensor) -> torch.Tensor:
    """M x in the dtype of x, refused when not finite (a NaN loss or gradient in the model)."""
    return _require_finite(operator.matvec(x).to(x.dtype),
                           f"the {operator.kind} curvature product M v")


def solve(operator: CurvatureOperator, v: torch.Tensor, options: SolveOptions) -> Solution:
    """x ≈ (M + λI)⁻¹ v, shape [d], with the solver and indefiniteness policy of ``options``.

    Raises :class:`IndefiniteCurvatureError` when M + λI is not positive definite under the
    ``raise`` policy, :class:`NonFiniteError` when v, a product M v or the Fisher rows hold NaN or
    infinity, and :class:`ConfigError` for ``woodbury`` on a curvature not made of rows
    (``fisher``, ``sampled_fisher``).
    """
    x, report = _solve(operator, v, options, norm_only=False)
    return Solution(x=x, report=report)


def solve_norm(operator: CurvatureOperator, v: torch.Tensor, options: SolveOptions
               ) -> tuple[float, CurvatureReport]:
    """‖(M + λI)⁻¹ v‖ (what Proposition 2's scores need) and the solve's report; errors as :func:`solve`.

    With ``woodbury`` on fewer rows than weights (the grids' case) the norm comes from the
    factor's coordinates, ‖x‖² = ‖U diag(1/(μ+λ)) Uᵀ Qᵀv‖² + (‖v‖² − ‖Qᵀv‖²)/λ² (Q has
    orthonormal columns, and the second part of x is orthogonal to them), so x is never
    expanded: one pass over G fewer per solve. Where v lies almost in the rows' span
    (‖v‖² − ‖Qᵀv‖² < 1e-6 ‖v‖², e.g. the empirical Fisher's own gradient sums) that difference
    would lose digits, and x is expanded as :func:`solve` does.
    """
    return _solve(operator, v, options, norm_only=True)


def _solve(operator: CurvatureOperator, v: torch.Tensor, options: SolveOptions, norm_only: bool):
    start = time.perf_counter()
    if options.solver == "woodbury" and not isinstance(operator, FisherOperator):
        raise ConfigError(f"solver: 'woodbury' needs a curvature made of rows "
                          f"{list(ROW_CURVATURES)}, not {operator.kind!r}; "
                          f"choose one of {[s for s in SOLVERS if s != 'woodbury']}")
    _require_finite(v, "the right-hand side v")
    if torch.count_nonzero(v) == 0:
        x, info = torch.zeros_like(v), dict(iterations=0, converged=True, indefinite=False, residual=0.0)
    elif options.solver == "woodbury":  # the one solver that can return a norm alone
        x, info = _woodbury(operator, v, options, norm_only)
    else:
        x, info = _ITERATIVE_OR_DENSE[options.solver](operator, v, options)
    residual = info.pop("residual", None)
    if residual is None:
        residual = _relative_residual(operator, x, v, options.damping)
    report = CurvatureReport(curvature=operator.kind, solver=options.solver,
                             damping=options.damping, policy=options.indefinite,
                             residual=residual, seconds=time.perf_counter() - start,
                             negative_eigenvalues=info.pop("negative_eigenvalues", None),
                             min_eigenvalue=info.pop("min_eigenvalue", None), **info)
    if report.indefinite and options.indefinite == "raise":
        raise IndefiniteCurvatureError(report)
    if norm_only and torch.is_tensor(x):
        # accumulated in float64: a float32 norm of millions of entries is off by ~1e-4
        return float(torch.linalg.vector_norm(x, dtype=torch.float64)), report
    return x, report


def _relative_residual(operator, x, v, damping) -> float:
    norm = float(torch.linalg.vector_norm(v))
    if norm == 0:
        return 0.0
    r = v - _product(operator, x) - damping * x
    return float(torch.linalg.vector_norm(r)) / norm


# --- spectral solvers -----------------------------------------------------------------------

def _spectral_inverse(mu: torch.Tensor, options: SolveOptions, dtype: torch.dtype):
    """1/σ for the eigenvalues μ of M, after the policy; and what the spectrum showed.

    Definiteness is judged on the damped eigenvalues μ + λ, the matrix actually inverted.
    """
    scale = float(mu.abs().max()) if mu.numel() else 0.0
    # Eigenvalues of a PSD matrix come out slightly negative from round-off in the operator's
    # own precision; only those below that noise level count as negative curvature.
    noise = 10 * max(mu.numel(), 1) * torch.finfo(dtype).eps * scale
    negative = mu < -noise
    damped = torch.where(negative, mu, mu.clamp(min=0)) + options.damping
    indefinite = bool((damped <= 0).any())
    if options.indefinite == "clip":
        floor = options.eig_floor if options.eig_floor is not None else options.damping
        damped = damped.clamp(min=floor)
    elif options.indefinite == "abs":
        damped = mu.abs() + options.damping
    elif indefinite:  # raise: solve() raises once the report exists
        damped = damped.abs().clamp(min=options.damping)
    info = dict(indefinite=indefinite, negative_eigenvalues=int(negative.sum()),
                min_eigenvalue=float(mu.min()) if mu.numel() else 0.0)
    return 1.0 / damped, info


def _dense(operator: CurvatureOperator, v: torch.Tensor, options: SolveOptions):
    matrix = _require_finite(operator.dense(), f"the {operator.kind} curvature matrix M")
    mu, basis = torch.linalg.eigh(matrix)
    inverse, info = _spectral_inverse(mu, options, v.dtype)
    x = basis @ (inverse * (basis.T @ v.to(torch.float64)))
    return x.to(v.dtype), dict(iterations=0, converged=True, **info)


def _woodbury(operator: FisherOperator, v: torch.Tensor, options: SolveOptions, norm_only: bool = False):
    """(M + λI)⁻¹ v = Q U (μ + λ)⁻¹ Uᵀ Qᵀ v + (v − Q Qᵀ v) / λ with M = Q (R diag(w) Rᵀ) Qᵀ and
    R diag(w) Rᵀ = U diag(μ) Uᵀ (:class:`bat.core.curvature.RowFactor`), in float64: one
    product with Qᵀ and one with Q, as v/λ + Q (U (μ + λ)⁻¹ Uᵀ − I/λ) Qᵀ v; with
    ``norm_only`` its norm instead, where :func:`solve_norm` can take it without Q."""
    _require_finite(operator.weights, "the Fisher weights w")
    # Screened by row norms (a reduction, no d-sized temporary); a full pass only finds the entry.
    if not bool(torch.isfinite(torch.linalg.vector_norm(operator.grads, dim=1)).all()):
        _require_finite(operator.grads, "the per-sample gradients G of the Fisher")
    kernel = operator.kernel()
    mu, u = torch.linalg.eigh((kernel + kernel.T) / 2)
    inverse, info = _spectral_inverse(mu, options, torch.float64)
    inside = operator.factor.project(v)  # v in the rows' span; the rest is scaled by 1/λ
    coordinates = u @ (inverse * (u.T @ inside))  # of x in the span
    v64 = v.to(torch.float64)
    norm_v = float(torch.linalg.vector_norm(v64))
    # (M + λI)x − v is zero outside the span; inside, it is what the policy changed.
    changed = u @ ((mu + options.damping) * (u.T @ coordinates)) - inside
    info.update(iterations=0, converged=True, residual=float(torch.linalg.vector_norm(changed)) / norm_v)
    outside = norm_v ** 2 - float(inside @ inside)  # ‖v − QQᵀv‖²
    if norm_only and operator.factor.wide and outside >= 1e-6 * norm_v ** 2:
        return math.sqrt(float(coordinates @ coordinates) + outside / options.damping ** 2), info
    x = v64 / options.damping + operator.factor.expand(coordinates - inside / options.damping)
    if norm_only:
        return float(torch.linalg.vector_norm(x)), info
    return x.to(v.dtype), info


# --- iterative solvers ----------------------------------------------------------------------

def _cg(operator: CurvatureOperator, v: torch.Tensor, options: SolveOptions):
    x = torch.zeros_like(v)
    r = v.clone()
    p = r.clone()
    rs = float(r @ r)
    target = options.tol * float(torch.linalg.vector_norm(v))
    for iteration in range(1, options.max_iter + 1):
        ap = _product(operator, p) + options.damping * p
        curvature = float(p @ ap)
        if not curvature > 0:
            return x, dict(iterations=iteration, converged=False, indefinite=True)
        alpha = rs / curvature
        x = x + alpha * p
        r = r - alpha * ap
        rs_next = float(r @ r)
        if rs_next ** 0.5 <= target:
            return x, dict(iterations=iteration, converged=True, indefinite=False)
        p = r + (rs_next / rs) * p
        rs = rs_next
    return x, dict(iterations=options.max_iter, converged=False, indefinite=False)


def _power_norm(operator: CurvatureOperator, damping: float, like: torch.Tensor,
                iterations: int = 20) -> float:
    """Largest |eigenvalue| of M + λI by power iteration, from a fixed start vector (drawn on the
    CPU, so the same on every device, then moved to ``like``'s device and dtype)."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(like.shape, generator=generator, dtype=torch.float64).to(like)
    estimate = 0.0
    for _ in range(iterations):
        z = z / torch.linalg.vector_norm(z)
        az = _product(operator, z) + damping * z
        estimate = float(torch.linalg.vector_norm(az))
        z = az
    return estimate


def _lissa(operator: CurvatureOperator, v: torch.Tensor, options: SolveOptions):
    scale = options.lissa_scale or 1.1 * _power_norm(operator, options.damping, v)
    x = v / scale
    best, best_residual = x, float("inf")
    target = options.tol * float(torch.linalg.vector_norm(v))
    previous = None
    for iteration in range(1, options.max_iter + 1):
        # Only the first product is checked for NaN (a broken operator shows on any product):
        # later ones overflow when the iteration diverges, which the residual check reports.
        product = _product(operator, x) if iteration == 1 else operator.matvec(x).to(v.dtype)
        r = v - product - options.damping * x
        residual = float(torch.linalg.vector_norm(r))
        if not math.isfinite(residual):  # diverged: lissa_scale below half of ‖M+λI‖
            return best, dict(iterations=iteration, converged=False, indefinite=False)
        if residual < best_residual:
            best, best_residual = x, residual
        if residual <= target:
            return x, dict(iterations=iteration, converged=True, indefinite=False)
        # r_t = (I − A/s) r_{t−1}, so A r_{t−1} = s (r_{t−1} − r_t) comes free: a non-positive
        # Rayleigh quotient along the residual is the negative curvature that makes LiSSA diverge.
        if previous is not None and not float(previous @ (previous - r)) > 0:
            return best, dict(iterations=iteration, converged=False, indefinite=True)
        x = x + r / scale
        previous = r
    return best, dict(iterations=options.max_iter, converged=False, indefinite=False)


_ITERATIVE_OR_DENSE = {"dense": _dense, "cg": _cg, "lissa": _lissa}
