"""How much of a Proposition-2 verdict is the sampled Fisher's draw: each check of a grid's BAT run, again.

    python benchmarks/bench_check_draws.py --out benchmarks/results/check_draws.json \
        [--run dreambooth:noto:dreambooth:0 ...] [--draws 8] [--pooled-draws 8]

The grids' check estimates both curvatures of eq. 12 with the sampled Fisher: one target drawn
per example (``fisher_draws: 1``) and, with ``curvature_examples``, a seeded subsample of D^A, both
fresh at every check (``Prop2Selector._draw_seed``). A check that fails because of its draw, not
because of D^B', would re-select at random. This benchmark re-trains the ``bat`` run of a grid
cell as the grid does (same seed, data, pool, selector settings; grids of one γ and one batch
size) and, at each due check of the kept D^B' (not a selection, whose D^bat is about to change),
scores the same D^bat at the same θ again:

- ``draws`` times with one draw each (fresh target and subsample seeds): the spread of the ratio
  ``factor · Score_bat / Score_A`` (eq. 12 holds when it is ≤ 1; factor γ or √γ as the
  ``inequality`` says), and the share of those single-draw checks that hold;
- once with ``pooled_draws`` targets per example pooled into one curvature (one D^A subsample):
  less noisy, and with ``pooled_draws`` times the rows, so its span is wider and its ratio can sit
  apart from the single draws' mean. That shift is what the number of draws does to the check;
  a single draw's disagreement with the pooled verdict mixes it with the draw's noise.

Only the curvature is redrawn: the gradient sums are the check's own (for diffusion they carry
that step's noise and timesteps, which this does not vary). The run's own check (the grid's draw)
is reported beside them; ``committed_match`` is its largest relative gap to the committed
``runs/<grid>/steps.csv`` row, float rounding only (the grids run one thread, this benchmark
``--threads``), which shows the extra scoring left training untouched. Raises ValueError when no
check of the run is in the committed table. Nothing here changes a committed result.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bat import io, paths  # noqa: E402
from bat.config import read_yaml  # noqa: E402
from bat.core import selection  # noqa: E402
from bat.core.mixing import derived_seed  # noqa: E402
from bat.core.prop2 import Prop2Problem, Prop2Scores  # noqa: E402
from bat.core.runtime import runtime_config  # noqa: E402
from bat.stages.grid import Cell, GridContext, GridRunner, load_grid  # noqa: E402
from bat.stages.oracle import track_options  # noqa: E402

DEFAULT_RUNS = ("dreambooth:noto:dreambooth:0", "dreambooth:emojione:dreambooth:0",
                "dreambooth:noto:dreambooth:1", "dreambooth:emojione:dreambooth:1",
                "lora_dora:word_definition:lora:0", "lora_dora:word_definition:dora:0")
REDRAW_STREAM = 7  # derived_seed stream of the extra draws, apart from the grid's own


def scores_ratio(scores: Prop2Scores) -> float:
    """factor · Score_bat / Score_A, the margin of :attr:`Prop2Scores.holds` (holds when ≤ 1)."""
    factor = scores.gamma if scores.inequality == "norms" else math.sqrt(scores.gamma)
    return factor * scores.score_bat / scores.score_adaptation


def ratio(problem: Prop2Problem, config: selection.SelectionConfig) -> float:
    """:func:`scores_ratio` of ``problem``'s scores under ``config``."""
    return scores_ratio(problem.scores(config.solve_options, inequality=config.inequality,
                                       relative=config.relative_damping))


class RedrawingSelector(selection.Prop2Selector):
    """A :class:`Prop2Selector` that, at each check of a kept D^B', also scores it with other draws."""

    def __init__(self, config: selection.SelectionConfig, target: torch.Tensor | None = None, *,
                 draws: int = 8, pooled_draws: int = 8):
        super().__init__(config, target)
        self.draws, self.pooled_draws = draws, pooled_draws
        self.redraws: dict[int, dict] = {}  # by step: what _redraw measured at its check
        self._selecting = False

    def _problem(self, context, adaptation):
        problem = super()._problem(context, adaptation)
        if self._selected_batch is not None and not self._selecting:  # a due check of a kept D^B'
            self.redraws[context.step] = self._redraw(context, adaptation, problem)
        return problem

    def _reselect(self, *args, **kwargs):
        self._selecting = True  # a selection builds its own problem when no check did
        try:
            super()._reselect(*args, **kwargs)
        finally:
            self._selecting = False

    def score_again(self, context, adaptation, problem: Prop2Problem, draws: int,
                    seed: int) -> float:
        """The ratio of ``problem``'s check with its curvature drawn again: ``draws`` targets per
        example and the D^A subsample from ``seed``; the gradient sums are ``problem``'s."""
        config = self.config
        weight = problem.n * (1 - problem.gamma) / (problem.gamma * problem.m)
        sums = (problem.sum_adaptation, (problem.sum_bat - problem.sum_adaptation) / weight)
        return ratio(Prop2Problem(
            context.model, context.task, adaptation, self._selected_batch, config.curvature,
            gamma=config.gamma, chunk_size=config.chunk_size,
            backbone_curvature=config.backbone_curvature, draws=draws, seed=seed,
            curvature_examples=config.curvature_examples, sums=sums), config)

    def _redraw(self, context, adaptation, problem: Prop2Problem) -> dict:
        start, seed = time.perf_counter(), self._draw_seed(context.step)
        single = [self.score_again(context, adaptation, problem, 1,
                                   derived_seed(seed, REDRAW_STREAM, index))
                  for index in range(self.draws)]
        pooled = self.score_again(context, adaptation, problem, self.pooled_draws,
                                  derived_seed(seed, REDRAW_STREAM, self.draws))
        return {"single_ratios": single, "pooled_ratio": pooled,
                "pooled_holds": pooled <= 1, "seconds": time.perf_counter() - start}


def measure_run(spec: str, draws: int, pooled_draws: int) -> dict:
    """The checks of one ``grid:dataset:adapter:seed`` BAT run, each scored again (module docstring)."""
    grid, dataset, adapter, seed = spec.split(":")
    params = read_yaml(paths.PARAMS)
    config = load_grid(grid, params)
    # the final evaluation only: evaluating draws no training randomness, and costs minutes
    config = replace(config, evaluate_every=0, benchmark_items=0)
    if len(config.gammas) > 1 or len(config.batch_sizes) > 1:
        raise ValueError(f"--run {spec}: grid {grid!r} has gammas {list(config.gammas)} and batch_sizes "
                         f"{list(config.batch_sizes)}; this benchmark takes grids of one of each")
    context = GridContext(config, paths.MODELS.absolute(), track_options(config.track, params),
                          False, "bench_check_draws", runtime_config(params))
    runner = GridRunner(context)
    cell = Cell(dataset, adapter, int(seed), config.batch_sizes[0], config.gammas[0], ("bat",))
    made: list[RedrawingSelector] = []

    def redrawing(*args, **kwargs) -> RedrawingSelector:  # the grid builds its selector by this name
        made.append(RedrawingSelector(*args, draws=draws, pooled_draws=pooled_draws, **kwargs))
        return made[-1]

    original, selection.Prop2Selector = selection.Prop2Selector, redrawing
    try:
        with tempfile.TemporaryDirectory() as scratch:
            runner.run_cell(cell, Path(scratch))
    finally:
        selection.Prop2Selector = original
    selector = made[0]
    checks = []
    for record in selector.records:
        redraw = selector.redraws.get(record["step"])
        if redraw is None or "score_bat" not in record or "condition" not in record:
            continue
        grid_ratio = scores_ratio(Prop2Scores(record["score_adaptation"], record["score_bat"],
                                              record["gamma"], selector.config.inequality, {}))
        single = redraw["single_ratios"]
        mean = statistics.fmean(single)
        checks.append({
            "step": record["step"], "score_adaptation": record["score_adaptation"],
            "score_bat": record["score_bat"],
            "grid_ratio": grid_ratio,
            "grid_holds": bool(record["condition"]),
            "single_ratio_mean": mean,
            "single_ratio_sd": statistics.stdev(single),
            "single_ratio_min": min(single), "single_ratio_max": max(single),
            "single_share_holding": sum(r <= 1 for r in single) / len(single),
            # more draws widen the rows' span, so the pooled check is not only less noisy but
            # can sit systematically apart from the single draws' mean
            "pooled_minus_single_mean": redraw["pooled_ratio"] - mean,
            **{key: redraw[key] for key in ("single_ratios", "pooled_ratio", "pooled_holds",
                                            "seconds")}})
    return {"run": spec, "grid": grid, "track": config.track, "dataset": dataset, "adapter": adapter,
            "seed": int(seed), "draws": draws, "pooled_draws": pooled_draws,
            "committed_match": committed_match(grid, dataset, adapter, int(seed), checks),
            "checks": checks}


def committed_match(grid: str, dataset: str, adapter: str, seed: int, checks: list[dict],
                    root: Path = paths.ROOT) -> float:
    """Largest relative difference between these checks' scores and the committed run's.

    Raises ValueError when a check has no committed row (another run, or tables of other code)."""
    steps = pd.read_csv(root / "runs" / grid / "steps.csv")
    rows = steps[(steps.regime == "bat") & (steps.dataset == dataset) & (steps.adapter == adapter)
                 & (steps.seed == seed) & steps.score_bat.notna()].set_index("step")
    gaps = []
    for check in checks:
        # steps.csv is 1-based (the step a selection fed); the selector's records are 0-based
        if check["step"] + 1 not in rows.index:
            raise ValueError(f"runs/{grid}/steps.csv has no check of {dataset}/{adapter}/seed {seed} "
                             f"at step {check['step'] + 1}: re-run the grid with this code first")
        row = rows.loc[check["step"] + 1]
        gaps += [abs(row[key] - check[key]) / abs(row[key]) for key in ("score_adaptation", "score_bat")]
    if not gaps:
        raise ValueError(f"{grid}/{dataset}/{adapter}/seed {seed}: no check of a kept D^B' to compare")
    return max(gaps)


def summary(runs: list[dict]) -> dict:
    """Per track: how often one draw's verdict differs from the pooled one, and the ratio's spread."""
    rows = {}
    for track in dict.fromkeys(run["track"] for run in runs):
        checks = [check for run in runs if run["track"] == track for check in run["checks"]]
        if not checks:
            continue
        disagree = [abs(check["single_share_holding"] - (1.0 if check["pooled_holds"] else 0.0))
                    for check in checks]
        rows[track] = {
            "checks": len(checks),
            "pooled_holding": sum(check["pooled_holds"] for check in checks),
            "grid_holding": sum(check["grid_holds"] for check in checks),
            "grid_agrees_with_pooled": sum(check["grid_holds"] == check["pooled_holds"]
                                           for check in checks),
            # the chance that a single-draw check, as the grids run it, disagrees with the pooled one
            "single_disagrees_with_pooled": statistics.fmean(disagree),
            "median_ratio_cv": statistics.median(check["single_ratio_sd"] / check["single_ratio_mean"]
                                                 for check in checks),
            "median_pooled_minus_single_mean": statistics.median(
                check["pooled_minus_single_mean"] for check in checks),
            "checks_with_split_single_verdicts": sum(0 < check["single_share_holding"] < 1
                                                     for check in checks)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/check_draws.json")
    parser.add_argument("--run", action="append", dest="runs",
                        help="grid:dataset:adapter:seed of a BAT run (repeatable); default: "
                             + ", ".join(DEFAULT_RUNS))
    parser.add_argument("--draws", type=int, default=8, help="single-draw re-checks per check")
    parser.add_argument("--pooled-draws", type=int, default=8,
                        help="targets per example of the pooled reference check")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.draws < 2 or args.pooled_draws < 1:
        parser.error("--draws must be at least 2 and --pooled-draws at least 1")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    runs = []
    for spec in args.runs or DEFAULT_RUNS:
        runs.append(measure_run(spec, args.draws, args.pooled_draws))
        print(spec, [round(check["single_share_holding"], 2) for check in runs[-1]["checks"]],
              flush=True)
    io.write_json(args.out, {"runs": runs, "summary": summary(runs),
                             "minutes": (time.perf_counter() - started) / 60,
                             "threads": args.threads})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
