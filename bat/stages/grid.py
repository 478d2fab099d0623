"""Grids of adaptation runs, trained once and read by several figure notebooks.

Usage: ``python -m bat.stages.grid <name>``; the grids are the entries of ``grids.image`` and
``grids.text`` in params.yaml (one DVC stage each, ``grid_image@<name>`` / ``grid_text@<name>``).
A grid is every combination of dataset (a style of D^A, or a text task), adapter, seed, γ, batch
size and regime; its folder ``runs/<name>`` holds plain tables (:mod:`bat.analysis.runs` reads them):

``steps.csv``
    one row per run and step: training loss, ‖θ − θ^{A*}‖ (every ``log_every`` steps), backbone
    examples so far, wall seconds of the step and of its selection, and Algorithm 1's checks
    (Score_A, Score_bat, whether eq. 12 held, whether and why D^B' was re-selected, and whether
    eq. 12 holds for the re-selected D^B': ``condition_after_reselection``);
``evaluations.csv``
    one row per run and evaluated step (0 = the backbone): the held-out loss (noise prediction on
    all of the style's held-out concepts, or the LM loss on the task's test split), the personalization
    scores of :mod:`bat.image.evaluation` (image) and, on final models, lm-eval ``acc`` /
    ``acc_norm`` on the eight multiple-choice sets (text, ``benchmark_items`` > 0);
``samples.npz``
    the images each image evaluation scored (for Fig. 10) and, as ``<dataset>/reference``, the real
    renders they were scored against; ``grid.json``: settings, pools (``{}`` when no regime
    draws one: ``pool``, ``pool_size`` and ``candidates`` are then unused), captions, the runtime
    and executor it ran under, time.

Regimes: ``plain``; ``prior_preservation`` (DreamBooth with its prior-preservation loss: the
style's class images drawn once by the backbone, one per instance image at every step, weighted
by λ as eq. 27); ``bat`` (Algorithm 1 against the oracle θ^{A*}) and ``bat_oracle_free`` (a
held-out part of D^A in place of θ^{A*}); the paper's ``random`` augmented training (random
examples of all of D^B at ratio γ); and the matched baselines, computed from the ``bat`` run of
the same seed, γ and batch size: ``random_matched`` (random examples of the same pool BAT was
offered, as many at each step as BAT took) and ``compute_matched`` (``plain`` with the extra
steps that selection's wall time would have paid for).

Cost: DreamBooth trains every UNet weight and Proposition 2 takes per-sample gradients of all of
them, so BAT draws from a fixed random pool of ``pool_size`` examples per seed: at every step
the training loop offers a fresh random draw of ``candidates`` of them (0: the whole pool). The
stateful selector keeps its choice between checks, and a failed check selects again from that
step's draw (Algorithm 1's "select D^bat again"), so a re-selection ranks new examples, not
only the set it replaces (a draw of 16 of 32 holds about half of a kept set). Algorithm 1's settings are the grid's ``selection`` (n = ``score_adaptation_every``,
k = ``score_bat_every``), with γ the run's. Run folders (full optimizer state) live in a temporary
folder and are deleted: the tables are the result, and a seed re-creates any run exactly.

Cells: the runs of one (dataset, adapter, seed, batch size, γ) are one :class:`Cell`, trained in
one process; cells are independent, so ``executor`` in params.yaml runs them in this process or
as Ray tasks (:mod:`bat.stages.executor`) and the tables come out the same, row for row. Finished
cells are staged beside ``runs/<name>``: a stage that is killed and run again trains only the
cells it lacks.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import os
import sys
import tempfile
import time
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from bat import paths, validate
from bat.analysis.runs import RUN_KEYS, SELECTING_REGIMES, sample_key
from bat.config import build, read_yaml, run_cli, section
from bat.core.mixing import derived_seed
from bat.core.runtime import RuntimeConfig, runtime_config
from bat.core.selection import SelectionConfig
from bat.core.track import TRACKS, track_module
from bat.errors import ConfigError
from bat.io import atomic_directory, write_json
from bat.stages.executor import ExecutorConfig, Staging, fingerprint, load_executor, run_cells
from bat.stages.oracle import track_options

GRID_REGIMES = ("plain", "prior_preservation", "bat", "bat_oracle_free", "random", "random_matched",
                "compute_matched")
WITHOUT_GAMMA = ("plain", "prior_preservation")  # one run per batch size, γ empty in the tables
MATCHED = ("random_matched", "compute_matched")
POOL_REGIMES = ("bat", "bat_oracle_free", "random_matched")  # the regimes that draw from BAT's pool
IMAGE_ONLY = ("prior_preservation",)  # DreamBooth's class images come from a text-to-image backbone
POOLS = ("backbone", "out_of_backbone")
# Set per run, not per grid: the run's seed draws the oracle-free held-out split, and γ in eq. 12
# is the run's configured γ (Def. 2), not a measured share of the batch.
RUN_SELECTION_KEYS = ("seed", "gamma")
CLASS_IMAGE_SEED = 1000  # DreamBooth's class images: one draw shared by every run, of no grid seed


@dataclass(frozen=True)
class GridConfig:
    """One entry of ``grids.<track>`` in params.yaml over ``grids.defaults``; ``name`` and
    ``track`` come from its place. ``selection`` holds Algorithm 1's settings
    (:class:`bat.core.selection.SelectionConfig`: mode, curvature, solver, damping, n and k...)."""

    name: str
    track: str  # image: adapters on the UNet, datasets are styles; text: on the LM, tasks
    datasets: tuple[str, ...]
    adapters: tuple[str, ...]
    seeds: tuple[int, ...]
    regimes: tuple[str, ...]
    gammas: tuple[float, ...]  # n/k, the share of D^A in D^bat (Def. 2)
    batch_sizes: tuple[int, ...]  # image: D^A examples per step; text: all examples per step
    steps: int
    learning_rate: float
    log_every: int  # steps between weight-difference measurements
    evaluate_every: int  # steps between evaluations; 0: the last step only
    pool: str  # where BAT's candidates come from: D^B, or images that were never in it
    pool_size: int  # BAT's backbone pool, a fixed random draw of D^B (or the out-of-backbone set) per seed
    candidates: int  # examples of the pool offered to Algorithm 1 per step, drawn afresh; 0: all
    # (pool, pool_size and candidates matter only to POOL_REGIMES: without them no pool is drawn)
    selection: dict  # Algorithm 1's settings, less the per-run RUN_SELECTION_KEYS
    class_images: int  # image: backbone samples of the class prompts for prior_preservation
    prior_loss_weight: float  # image: λ of eq. 27 for those class images
    eval_size: int  # held-out concepts sampled (image; the loss uses all) or test items (text)
    sample_steps: int  # image: denoising steps of each evaluation sample
    guidance_scale: float  # image: classifier-free guidance of the samples
    benchmark_items: int  # text: items per multiple-choice set scored on final models; 0: none

    def __post_init__(self):
        where = f"grids.{self.track}.{self.name}"
        validate.choice(f"{where} (track)", self.track, TRACKS)
        track = track_module(self.track)
        for name in ("datasets", "adapters", "seeds", "regimes", "gammas", "batch_sizes"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
                raise ConfigError(f"{where}.{name}: {value!r} must be a non-empty list")
            if len(set(value)) != len(value):
                raise ConfigError(f"{where}.{name}: {list(value)} lists an entry twice")
            object.__setattr__(self, name, tuple(value))
        for adapter in self.adapters:
            validate.choice(f"{where}.adapters", adapter, track.ADAPTERS)
        for seed in self.seeds:
            validate.non_negative(f"{where}.seeds", seed, integer=True)
        for regime in self.regimes:
            validate.choice(f"{where}.regimes", regime, GRID_REGIMES)
            if regime in IMAGE_ONLY and self.track != "image":
                raise ConfigError(f"{where}.regimes: {regime!r} exists for image grids only")
        matched = [regime for regime in self.regimes if regime in MATCHED]
        if matched and "bat" not in self.regimes:
            raise ConfigError(f"{where}.regimes: {matched[0]!r} is matched to a 'bat' run; "
                              "add 'bat' to the regimes")
        for gamma in self.gammas:
            validate.open_interval(f"{where}.gammas", gamma, 0.0, 1.0)
        for batch_size in self.batch_sizes:
            validate.positive(f"{where}.batch_sizes", batch_size, integer=True)
        for name in ("steps", "log_every", "pool_size", "eval_size", "sample_steps", "class_images"):
            validate.positive(f"{where}.{name}", getattr(self, name), integer=True)
        validate.non_negative(f"{where}.prior_loss_weight", self.prior_loss_weight)
        for name in ("evaluate_every", "benchmark_items", "candidates"):
            validate.non_negative(f"{where}.{name}", getattr(self, name), integer=True)
        for name in ("learning_rate", "guidance_scale"):
            validate.positive(f"{where}.{name}", getattr(self, name))
        validate.choice(f"{where}.pool", self.pool, POOLS)
        if self.track == "text" and self.pool != "backbone":
            raise ConfigError(f"{where}.pool: {self.pool!r} exists for images only; use 'backbone'")
        if self.track == "image" and self.benchmark_items:
            raise ConfigError(f"{where}.benchmark_items: the multiple-choice sets score LMs; "
                              "set it to 0 for an image grid")
        if not isinstance(self.selection, dict):
            raise ConfigError(f"{where}.selection must be a mapping of Algorithm 1's settings")
        fixed = sorted(set(self.selection) & set(RUN_SELECTION_KEYS))
        if fixed:
            raise ConfigError(f"{where}.selection.{fixed[0]} is set per run (the run's seed and γ); "
                              "remove it")
        self.selection_config(self.seeds[0], self.gammas[0])  # validates every selection key
        if self.uses_pool:  # a grid without POOL_REGIMES draws no pool: its size cannot be short
            self._validate_pool(where)

    def _validate_pool(self, where: str) -> None:
        most = max(self.backbone_per_step(g, b) for g in self.gammas for b in self.batch_sizes)
        if self.pool_size < most:
            raise ConfigError(f"{where}.pool_size: {self.pool_size} is fewer than the {most} "
                              "backbone examples a step may take at these gammas and batch_sizes")
        if self.candidates and not most <= self.candidates <= self.pool_size:
            raise ConfigError(f"{where}.candidates: {self.candidates} must lie between the {most} "
                              f"backbone examples a step may take and pool_size {self.pool_size}, "
                              "or be 0 (the whole pool at every step)")

    @property
    def uses_pool(self) -> bool:
        """Whether a regime of this grid draws from BAT's pool (:data:`POOL_REGIMES`)."""
        return any(regime in POOL_REGIMES for regime in self.regimes)

    @property
    def mixing(self) -> str:
        return track_module(self.track).MIXING  # App. B

    def backbone_per_step(self, gamma: float, batch_size: int) -> int:
        """The most backbone examples one step adds (bat.core.mixing)."""
        if self.mixing == "regular_interval":
            return batch_size
        return math.ceil(batch_size * (1 - gamma) / gamma)

    def selection_config(self, seed: int, gamma: float) -> SelectionConfig:
        """Algorithm 1's settings for the run of ``seed`` at ``gamma``."""
        return build(SelectionConfig, {**dataclass_defaults(SelectionConfig), **self.selection,
                                       "seed": seed, "gamma": gamma},
                     f"grids.{self.track}.{self.name}.selection")

    @property
    def evaluation_steps(self) -> list[int]:
        return self.evaluation_steps_until(self.steps)

    def evaluation_steps_until(self, steps: int) -> list[int]:
        """Every ``evaluate_every`` steps (0: every ``self.steps``) up to ``steps``, and ``steps``:
        a run longer than the grid's (``compute_matched``) is evaluated along its extra steps
        too, so that "its best evaluated step" can fall among them."""
        every = self.evaluate_every or self.steps
        return sorted({*range(every, steps + 1, every), steps})

    def track_options(self) -> dict:
        """What this grid's settings ask of the track when it is loaded."""
        if self.track == "image":
            return {"pool": self.pool, "sample_steps": self.sample_steps,
                    "guidance_scale": self.guidance_scale, "prior_loss_weight": self.prior_loss_weight}
        return {"benchmark_items": self.benchmark_items}


def dataclass_defaults(cls) -> dict:
    return {field.name: field.default for field in fields(cls) if field.default is not MISSING}


def grid_values(grids: dict, track: str, name: str) -> dict:
    """The effective settings of grid ``name``: ``grids.defaults`` updated by the grid's own keys
    (``selection`` key by key); a grid key that no default has is left for :func:`build` to name."""
    defaults = grids.get("defaults") or {}
    values = {**defaults, **grids[track][name]}
    values["selection"] = {**(defaults.get("selection") or {}),
                           **(grids[track][name].get("selection") or {})}
    return values


def load_grid(name: str, params: dict) -> GridConfig:
    grids = section(params, "grids")
    tracks = [track for track in TRACKS if name in (grids.get(track) or {})]
    if not tracks:
        known = sorted(n for track in TRACKS for n in (grids.get(track) or {}))
        raise ConfigError(f"grids has no grid {name!r}; grids: {known}")
    track = tracks[0]
    config = build(GridConfig, {"name": name, "track": track, **grid_values(grids, track, name)},
                   f"grids.{track}.{name}")
    for dataset in config.datasets:  # what prepare writes under these params
        validate.choice(f"grids.{track}.{name}.datasets", dataset, track_module(track).datasets(params))
    oracles = (params.get("oracles") or {}).get(track) or {}
    for dataset, adapter in itertools.product(config.datasets, config.adapters):
        if oracle_name(dataset, adapter) not in oracles:  # every run is measured against one
            raise ConfigError(f"grids.{track}.{name}: no oracle for ({dataset}, {adapter}); add "
                              f"{oracle_name(dataset, adapter)!r} to oracles.{track}")
    # A run that shared its oracle's seed would start from θ^{A*}'s own initialisation: its
    # distance to θ^{A*} would start small for that seed only (an artefact, not a result).
    shared = sorted({run["seed"] for run in oracles.values()} & set(config.seeds))
    if shared:
        raise ConfigError(f"grids.{track}.{name}.seeds: {shared[0]} is also the seed of an oracle in "
                          f"oracles.{track}; give the oracles a seed no grid uses")
    return config


def backbone_pool(size: int, n_backbone: int, seed: int) -> list[int]:
    """``size`` distinct indices of D^B, fixed by ``seed`` (sorted)."""
    rng = np.random.default_rng(derived_seed(seed, 4))
    return sorted(int(i) for i in rng.choice(n_backbone, size=min(size, n_backbone), replace=False))


def oracle_name(dataset: str, adapter: str) -> str:
    """The ``oracles`` entry whose θ^{A*} the runs of (dataset, adapter) are measured against."""
    return f"{dataset}_{adapter}"


CHECK_COLUMNS = ("score_adaptation", "score_bat", "condition", "reselected", "reason",
                 "condition_after_reselection")


def _selection_rows(records: list[dict]) -> dict[int, dict]:
    """Per step (1-based) that Algorithm 1 worked at: Score_A and Score_bat (when computed),
    whether eq. 12 held (for a check that failed: the values that failed, not the re-selected
    set's), whether and why it re-selected D^B', and whether eq. 12 holds for the new D^B'."""
    return {record["step"] + 1: {"score_adaptation": record.get("score_adaptation"),
                                 "score_bat": record.get("score_bat"),
                                 "condition": record.get("condition"),
                                 "reselected": "reason" in record, "reason": record.get("reason"),
                                 "condition_after_reselection":
                                     record.get("after_reselection", {}).get("condition")}
            for record in records}


@dataclass(frozen=True)
class Cell:
    """One unit of work of a grid: the runs of ``regimes`` at one (dataset, adapter, seed, batch
    size, γ), trained in this order by one process, since a matched baseline is computed from the
    ``bat`` run before it. ``gamma`` is None for the regimes that ignore γ (``WITHOUT_GAMMA``)."""

    dataset: str
    adapter: str
    seed: int
    batch_size: int
    gamma: float | None
    regimes: tuple[str, ...]

    @property
    def name(self) -> str:
        """Unique within a grid, and a file name: the cell's file in the staging folder."""
        return f"{self.dataset}_{self.adapter}_seed{self.seed}_batch{self.batch_size}_gamma{self.gamma}"


def grid_cells(config: GridConfig) -> list[Cell]:
    """The cells of ``config`` in the order of its tables' rows: by dataset, adapter, seed and
    batch size; in each, the runs without γ, then those of each γ."""
    without = tuple(regime for regime in config.regimes if regime in WITHOUT_GAMMA)
    others = tuple(regime for regime in config.regimes if regime not in WITHOUT_GAMMA)
    cells = []
    for dataset, adapter, seed, batch_size in itertools.product(
            config.datasets, config.adapters, config.seeds, config.batch_sizes):
        if without:
            cells.append(Cell(dataset, adapter, seed, batch_size, None, without))
        if others:
            cells.extend(Cell(dataset, adapter, seed, batch_size, gamma, others)
                         for gamma in config.gammas)
    return cells


@dataclass(frozen=True)
class GridContext:
    """What every cell of a grid needs besides its :class:`Cell`, sent to the process that runs it.

    ``models``: the folder the track and the oracles are loaded from; ``track_options``: see
    :func:`run_grid`; ``fingerprint``: of the settings and input files
    (:func:`bat.stages.executor.fingerprint`), so that a process reloads what it keeps when they change.
    """

    config: GridConfig
    models: Path
    track_options: dict
    progress: bool
    fingerprint: str
    runtime: RuntimeConfig  # device and precision of loading, training, evaluating


@dataclass
class CellResult:
    """What one cell measured: its rows of ``steps.csv`` and ``evaluations.csv`` in table order,
    its ``samples.npz`` entries (image grids: its dataset's ``<dataset>/reference`` first), the
    backbone pool of its seed (indices of D^B; empty when no regime uses it) and the captions
    its dataset's samples show (image grids; None for text)."""

    pool: list[int]
    captions: list[str] | None
    step_rows: list[dict] = field(default_factory=list)
    evaluation_rows: list[dict] = field(default_factory=list)
    samples: dict[str, np.ndarray] = field(default_factory=dict)

    def add_steps(self, run_key: dict, log: list[dict], start_difference: float,
                  selected: dict[int, dict]) -> None:
        empty = dict.fromkeys(CHECK_COLUMNS)
        self.step_rows.append({**run_key, "step": 0, "loss": np.nan,
                               "weight_difference": start_difference, "n_adaptation": 0, "n_backbone": 0,
                               "seconds": 0.0, "selection_seconds": 0.0, **empty})
        for row in log:
            self.step_rows.append({**run_key, "step": row["step"], "loss": row["loss"],
                                   "weight_difference": row["weight_difference"],
                                   "n_adaptation": row["n_adaptation"],
                                   "n_backbone": row["n_backbone"], "seconds": row["seconds"],
                                   "selection_seconds": row["selection_seconds"],
                                   **selected.get(row["step"], empty)})

    def add_evaluation(self, run_key: dict, step: int, row: dict, samples) -> None:
        self.evaluation_rows.append({**run_key, "step": step, **row})
        if samples is not None:
            self.samples[sample_key(run_key, step)] = samples


class GridRunner:
    """Trains cells of one grid in this process (see :func:`run_cell`).

    Keeps what several cells share: the track, the encoded pool of each seed and all of D^B, each
    dataset's evaluation data and class images, and the backbone's step-0 evaluation. Each is
    a deterministic function of the settings, so a cell's rows do not depend on which cells this
    process ran before, and a worker that runs a few cells computes them once.
    """

    def __init__(self, context: GridContext):
        self.context, self.config, self.progress = context, context.config, context.progress
        # The one place a grid loads its track (train_evaluated: the one place it trains).
        self.track = track_module(self.config.track).load(context.models, runtime=context.runtime,
                                                          **self.config.track_options(),
                                                          **context.track_options)
        self._pools, self._data, self._baselines, self._full_backbone = {}, {}, {}, None

    def pool(self, seed: int) -> tuple[list[int], dict]:
        """BAT's candidates for ``seed``: their indices in D^B and their examples. The pool depends
        on the seed only: every dataset's runs of that seed share it."""
        if seed not in self._pools:
            indices = backbone_pool(self.config.pool_size, self.track.backbone_size(), seed)
            self._pools[seed] = indices, self.track.backbone_examples(indices)
        return self._pools[seed]

    @property
    def full_backbone(self) -> dict:
        """All of D^B, which the paper's random augmentation draws from."""
        if self._full_backbone is None:
            self._full_backbone = self.track.backbone_examples()
        return self._full_backbone

    def evaluation_data(self, dataset: str, with_prior: bool) -> dict:
        """:meth:`Track.evaluation_data` of ``dataset``; with DreamBooth's class images as ``prior``
        when ``with_prior`` (drawn once per dataset, as diffusers does, from a seed of no run)."""
        if dataset not in self._data:
            self._data[dataset] = self.track.evaluation_data(dataset, self.config.eval_size)
        data = self._data[dataset]
        if with_prior and "prior" not in data:
            data["prior"] = self.track.prior_examples(data, self.config.class_images,
                                                      derived_seed(CLASS_IMAGE_SEED, 5))
        return data

    def baseline(self, dataset: str, data: dict, seed: int):
        """The backbone's evaluation at step 0, shared by every run of (dataset, seed)
        (of every seed, when evaluating draws no noise)."""
        key = (dataset, seed if track_module(self.config.track).SEEDED_EVALUATION else None)
        if key not in self._baselines:
            self._baselines[key] = self.track.evaluate(self.track.start_model, data, seed,
                                                         with_benchmarks=True)
        return self._baselines[key]

    def run_cell(self, cell: Cell, scratch: Path) -> CellResult:
        from bat.core.adapters import AdapterConfig, attach_adapter
        from bat.core.curvature import flat_parameters
        from bat.core.checkpoint import trained_vector
        from bat.core.train import seed_everything

        data = self.evaluation_data(cell.dataset, "prior_preservation" in cell.regimes)
        indices, pool = self.pool(cell.seed) if self.config.uses_pool else ([], None)
        result = CellResult(pool=indices, captions=data.get("captions"))
        if "captions" in data:  # the real renders that the samples are scored against
            result.samples[f"{cell.dataset}/reference"] = data["references"]
        adapter = AdapterConfig(cell.adapter)
        oracle = trained_vector(self.context.models / "oracles" / self.config.track
                                / oracle_name(cell.dataset, cell.adapter))
        seed_everything(cell.seed)  # as train() does before attaching: θ at step 0
        start = float(torch.linalg.vector_norm(flat_parameters(
            attach_adapter(copy.deepcopy(self.track.start_model), adapter)).cpu() - oracle))
        run = {"dataset": cell.dataset, "adapter": cell.adapter, "seed": cell.seed,
               "batch_size": cell.batch_size, "adapter_config": adapter, "data": data, "pool": pool,
               "oracle": oracle, "start_difference": start,
               "baseline": self.baseline(cell.dataset, data, cell.seed)}
        self.run_regimes(run, cell.gamma, cell.regimes, scratch, result)
        return result

    def run_regimes(self, run: dict, gamma: float | None, regimes: tuple[str, ...], scratch: Path,
                    result: CellResult) -> None:
        """The runs of ``regimes`` at one γ; matched baselines follow the ``bat`` run before them."""
        from bat.core.selection import Prop2Selector
        from bat.core.train import TrainConfig, backbone_schedule, compute_matched_steps

        config = self.config
        base = TrainConfig(steps=config.steps, batch_size=run["batch_size"],
                           learning_rate=config.learning_rate, gamma=gamma or 0.5,
                           mixing=config.mixing, candidates=0, log_every=config.log_every,
                           seed=run["seed"])
        bat_log = None
        for regime in regimes:
            kwargs, backbone, steps = {}, run["pool"], config.steps
            adaptation = run["data"]["adaptation"]
            if regime == "plain":
                train_config, backbone = replace(base, regime="plain"), None
            elif regime == "prior_preservation":
                # diffusers' train_dreambooth: each step pairs every instance image with a class
                # image (random, per-batch mixing at γ = 1/2); the task weights the class half by λ.
                prior = run["data"]["prior"]
                instances = len(next(iter(adaptation.values())))
                adaptation = {**adaptation, "prior": torch.zeros(instances, dtype=torch.bool)}
                train_config = replace(base, regime="random", gamma=0.5, mixing="per_batch")
                backbone = prior
            elif regime in SELECTING_REGIMES:
                selection = config.selection_config(run["seed"], gamma)
                if regime == "bat":
                    kwargs["selector"] = Prop2Selector(selection, target=run["oracle"])
                else:  # a held-out part of D^A stands in for θ^{A*} (the paper's future work)
                    kwargs["selector"] = Prop2Selector(replace(selection, mode="oracle_free"))
                train_config = replace(base, regime="bat", candidates=config.candidates)
            elif regime == "random":
                train_config, backbone = replace(base, regime="random"), self.full_backbone
            elif regime == "random_matched":
                kwargs["backbone_counts"] = backbone_schedule(bat_log)
                train_config = replace(base, regime="random")
            else:  # compute_matched
                steps = config.steps + compute_matched_steps(bat_log)
                train_config, backbone = replace(base, regime="plain", steps=steps), None
            evaluation_steps = config.evaluation_steps_until(steps)
            run_key = {name: run[name] for name in RUN_KEYS if name in run}
            run_key.update(gamma=gamma, regime=regime)
            log = self.train_evaluated(result, run_key, run, adaptation, backbone, train_config,
                                       evaluation_steps, scratch, **kwargs)
            if regime == "bat":
                bat_log = log
            checks = _selection_rows(kwargs["selector"].records) if "selector" in kwargs else {}
            result.add_steps(run_key, log, run["start_difference"], checks)
            baseline_row, baseline_samples = run["baseline"]
            result.add_evaluation(run_key, 0, baseline_row, baseline_samples)

    def train_evaluated(self, result: CellResult, run_key: dict, run: dict, adaptation, backbone,
                        train_config, evaluation_steps: list[int], scratch: Path, **kwargs) -> list[dict]:
        """Train one run, evaluating the model at each of ``evaluation_steps``."""
        from bat.core.train import train

        def evaluate(step: int, model) -> None:
            if step in evaluation_steps:
                row, samples = self.track.evaluate(model, run["data"], run_key["seed"],
                                                     with_benchmarks=step == evaluation_steps[-1])
                result.add_evaluation(run_key, step, row, samples)

        with tempfile.TemporaryDirectory(dir=scratch) as run_dir:  # full state: ~80 MB for DreamBooth
            trained = train(copy.deepcopy(self.track.start_model), run["adapter_config"],
                            self.track.task, adaptation, backbone,
                            replace(train_config, checkpoint_every=train_config.steps), run_dir,
                            oracle=run["oracle"], progress=self.progress, on_step=evaluate,
                            runtime=self.context.runtime, **kwargs)
        return trained.log


_RUNNERS: list[GridRunner] = []  # this process's runner: a worker keeps its track between cells


def run_cell(context: GridContext, cell: Cell) -> CellResult:
    """Train the runs of ``cell`` and return what they measured.

    Pure (:mod:`bat.stages.executor`): the result depends on ``context``, ``cell`` and the files
    they name only, wherever it runs. The process keeps one :class:`GridRunner`, replaced when
    ``context`` changes (another grid, or changed inputs).
    """
    if not _RUNNERS or _RUNNERS[0].context != context:
        _RUNNERS.clear()  # the previous track is freed before the next one loads
        _RUNNERS.append(GridRunner(context))
    with tempfile.TemporaryDirectory(prefix=f"grid-{context.config.name}-") as scratch:
        return _RUNNERS[0].run_cell(cell, Path(scratch))


def check_oracles(config: GridConfig, models: Path) -> None:
    """Raise :class:`ConfigError` naming the first oracle θ^{A*} the grid needs and ``models`` lacks."""
    from bat.core.checkpoint import state_path

    for dataset, adapter in itertools.product(config.datasets, config.adapters):
        folder = models / "oracles" / config.track / oracle_name(dataset, adapter)
        if not state_path(folder).exists():
            raise ConfigError(f"no oracle θ^A* in {folder}; add {oracle_name(dataset, adapter)!r} "
                              f"to oracles.{config.track} and run its stage")


def run_grid(config: GridConfig, out_folder: str | Path, models_folder: str | Path | None = None,
             progress: bool = False, executor: ExecutorConfig | None = None,
             runtime: RuntimeConfig | None = None, **track_options) -> Path:
    """Train every run of ``config`` and write the tables into ``out_folder`` (all or nothing).

    The runs are trained cell by cell (:func:`grid_cells`, :func:`run_cell`) by ``executor``
    (default: in this process; :mod:`bat.stages.executor`), and the tables are the same under
    every executor. Finished cells are staged in ``.<name>.cells`` beside ``out_folder``, so a
    stage killed midway and run again trains only the cells it lacks; the folder is deleted once
    the tables are written. ``track_options``: what loading the track needs beyond the grid's
    settings (:func:`bat.stages.oracle.track_options`: the text track's ``max_length``).
    ``runtime``: the device and precision every cell loads, trains and evaluates in
    (:class:`bat.core.runtime.RuntimeConfig`; default float32 on the CPU).
    Raises :class:`ConfigError` before any training when an oracle is missing.
    """
    import pandas as pd

    if not isinstance(config, GridConfig):
        raise ConfigError(f"config: need a GridConfig, not {type(config).__name__}")
    executor = ExecutorConfig() if executor is None else executor
    if not isinstance(executor, ExecutorConfig):
        raise ConfigError(f"executor: need an ExecutorConfig, not {type(executor).__name__}")
    runtime = RuntimeConfig() if runtime is None else runtime
    if not isinstance(runtime, RuntimeConfig):
        raise ConfigError(f"runtime: need a RuntimeConfig, not {type(runtime).__name__}")
    # Absolute: a worker's working directory may differ from this process's.
    models = Path(models_folder if models_folder is not None else paths.MODELS).absolute()
    started = time.perf_counter()
    check_oracles(config, models)
    # The stage's inputs as DVC sees them: models, prepared data and the code; a change in any
    # discards the cells staged by an earlier, killed run.
    settings = {"config": asdict(config), "models": str(models), "track_options": track_options,
                "runtime": asdict(runtime)}
    inputs = [models, paths.PREPARED, Path(__file__).resolve().parents[1]]
    context = GridContext(config, models, track_options, progress, fingerprint(settings, inputs),
                          runtime)
    cells = grid_cells(config)
    staging = Staging(out_folder, context.fingerprint)
    resumed = sum(staging.finished(cell.name) for cell in cells)
    results = run_cells(run_cell, context, cells, [cell.name for cell in cells], executor, staging)
    samples = {}
    for result in results:  # a repeated <dataset>/reference keeps the place of its first cell
        samples.update(result.samples)
    with atomic_directory(out_folder) as folder:
        pd.DataFrame([row for result in results for row in result.step_rows]).to_csv(
            folder / "steps.csv", index=False)
        pd.DataFrame([row for result in results for row in result.evaluation_rows]).to_csv(
            folder / "evaluations.csv", index=False)
        if samples:
            np.savez_compressed(folder / "samples.npz", **samples)
        write_json(folder / "grid.json", {
            "config": asdict(config),
            "pools": {str(cell.seed): result.pool for cell, result in zip(cells, results)
                      if config.uses_pool},
            # Algorithm 1's effective settings at each γ (every key; the seed is the run's)
            "selection": {str(gamma): {key: value for key, value in
                                       asdict(config.selection_config(0, gamma)).items() if key != "seed"}
                          for gamma in config.gammas},
            "captions": {cell.dataset: result.captions for cell, result in zip(cells, results)
                         if result.captions is not None},
            # how the tables were computed, not what they hold
            "runtime": asdict(runtime),
            "executor": {**asdict(executor), "cells": len(cells), "cells_resumed": resumed},
            "seconds": time.perf_counter() - started})
    staging.remove()
    return Path(out_folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    def run():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # every process would run every cell and write the tables; cells spread over GPUs
            raise ConfigError("grids: a grid is not launched data-parallel (accelerate launch, "
                              "torchrun); run it with python and executor.kind 'ray', which gives "
                              "each cell executor.num_gpus_per_run GPUs (accelerate launch is for "
                              "one long oracle run)")
        params = read_yaml(paths.PARAMS)
        config = load_grid(args.grid, params)
        return run_grid(config, paths.ROOT / "runs" / args.grid, progress=args.progress,
                        executor=load_executor(params), runtime=runtime_config(params),
                        **track_options(config.track, params))

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
