"""Grids of adaptation runs, trained once and read by several figure notebooks.

Usage: ``python -m bat.grid <name>``; the grids are the entries of ``grids.image`` and
``grids.text`` in params.yaml (one DVC stage each, ``grid_image@<name>`` / ``grid_text@<name>``).
A grid is every combination of dataset (a style of D^A, or a text task), adapter, seed, γ, batch
size and regime; its folder ``runs/<name>`` holds plain tables (:mod:`bat.grid_results` reads them):

``steps.csv``
    one row per run and step: training loss, ‖θ − θ^{A*}‖ (every ``log_every`` steps), backbone
    examples so far, wall seconds of the step and of its selection, and Algorithm 1's checks;
``evaluations.csv``
    one row per run and evaluated step (0 = the backbone): the held-out loss (noise prediction on
    all of the style's held-out concepts, or the LM loss on the task's test split), the personalization
    scores of :mod:`bat.image_evaluation` (image) and, on final models, lm-eval ``acc`` /
    ``acc_norm`` on the eight multiple-choice sets (text, ``benchmark_items`` > 0);
``samples.npz``
    the images each image evaluation scored (for Fig. 10) and, as ``<dataset>/reference``, the real
    renders they were scored against; ``grid.json``: settings, pools, captions, time.

Regimes: ``plain``; ``bat`` (Proposition-2 selection against the oracle θ^{A*}, Algorithm 1); the
paper's ``random`` augmented training (random examples of all of D^B at ratio γ); and the matched
baselines, computed from the ``bat`` run of the same seed, γ and batch size: ``random_matched``
(random examples of the same pool BAT was offered, as many at each step as BAT took) and
``compute_matched`` (``plain`` with the extra steps that selection's wall time would have paid for).

Cost: DreamBooth trains every UNet weight and Proposition 2 takes per-sample gradients of all of
them, so BAT is offered a fixed random pool of ``pool_size`` examples per seed (``candidates = 0``:
the stateful selector keeps its choice between checks) and checks every ``score_every`` steps.
Run folders (full optimizer state) live in a temporary folder and are deleted: the tables are the
result, and a seed re-creates any run exactly.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bat import paths, validate
from bat.config import build, read_yaml, run_cli, section
from bat.errors import ConfigError
from bat.grid_results import RUN_KEYS, sample_key
from bat.image_data import STYLES, ImageSet, load_image_set
from bat.io import atomic_directory, read_jsonl, write_json
from bat.mixing import derived_seed
from bat.oracle import IMAGE_KINDS, TEXT_KINDS, TEXT_MAX_LENGTH
from bat.text_data import ADAPTATION_TASKS

TRACKS = ("image", "text")
GRID_REGIMES = ("plain", "bat", "random", "random_matched", "compute_matched")
MATCHED = ("random_matched", "compute_matched")
POOLS = ("backbone", "out_of_backbone")
ADAPTERS = {"image": IMAGE_KINDS, "text": TEXT_KINDS}
HELDOUT_NOISE_SEED = 0  # one fixed noise / timestep draw for every held-out noise loss
TEXT_EVAL_BATCH = 8  # LM logits of 8 × 64 tokens × 49k vocabulary: ~100 MB
# Per-sample gradients are taken this many examples at a time: all at once, DoRA's per-sample
# weight norms over the whole LM took more than 20 GB.
PER_SAMPLE_CHUNK = 4


@dataclass(frozen=True)
class GridConfig:
    """One entry of ``grids.<track>`` in params.yaml; ``name`` and ``track`` come from its place."""

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
    pool_size: int  # candidates offered to Algorithm 1, a fixed random pool per seed
    score_every: int  # Algorithm 1 checks Proposition 2 every this many steps
    damping: float  # of the damped Fisher (Woodbury solver)
    eval_size: int  # held-out concepts sampled (image; the loss uses all) or test items (text)
    sample_steps: int  # image: denoising steps of each evaluation sample
    guidance_scale: float  # image: classifier-free guidance of the samples
    benchmark_items: int  # text: items per multiple-choice set scored on final models; 0: none

    def __post_init__(self):
        where = f"grids.{self.track}.{self.name}"
        validate.choice(f"{where} (track)", self.track, TRACKS)
        for name in ("datasets", "adapters", "seeds", "regimes", "gammas", "batch_sizes"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
                raise ConfigError(f"{where}.{name}: {value!r} must be a non-empty list")
            if len(set(value)) != len(value):
                raise ConfigError(f"{where}.{name}: {list(value)} lists an entry twice")
            object.__setattr__(self, name, tuple(value))
        datasets = STYLES if self.track == "image" else tuple(ADAPTATION_TASKS)
        for dataset in self.datasets:
            validate.choice(f"{where}.datasets", dataset, datasets)
        for adapter in self.adapters:
            validate.choice(f"{where}.adapters", adapter, ADAPTERS[self.track])
        for seed in self.seeds:
            validate.non_negative(f"{where}.seeds", seed, integer=True)
        for regime in self.regimes:
            validate.choice(f"{where}.regimes", regime, GRID_REGIMES)
        matched = [regime for regime in self.regimes if regime in MATCHED]
        if matched and "bat" not in self.regimes:
            raise ConfigError(f"{where}.regimes: {matched[0]!r} is matched to a 'bat' run; "
                              "add 'bat' to the regimes")
        for gamma in self.gammas:
            validate.open_interval(f"{where}.gammas", gamma, 0.0, 1.0)
        for batch_size in self.batch_sizes:
            validate.positive(f"{where}.batch_sizes", batch_size, integer=True)
        for name in ("steps", "log_every", "pool_size", "score_every", "eval_size", "sample_steps"):
            validate.positive(f"{where}.{name}", getattr(self, name), integer=True)
        for name in ("evaluate_every", "benchmark_items"):
            validate.non_negative(f"{where}.{name}", getattr(self, name), integer=True)
        for name in ("learning_rate", "damping", "guidance_scale"):
            validate.positive(f"{where}.{name}", getattr(self, name))
        validate.choice(f"{where}.pool", self.pool, POOLS)
        if self.track == "text" and self.pool != "backbone":
            raise ConfigError(f"{where}.pool: {self.pool!r} exists for images only; use 'backbone'")
        if self.track == "image" and self.benchmark_items:
            raise ConfigError(f"{where}.benchmark_items: the multiple-choice sets score LMs; "
                              "set it to 0 for an image grid")
        most = max(self.backbone_per_step(g, b) for g in self.gammas for b in self.batch_sizes)
        if self.pool_size < most:
            raise ConfigError(f"{where}.pool_size: {self.pool_size} is fewer than the {most} "
                              "backbone examples a step may take at these gammas and batch_sizes")

    @property
    def mixing(self) -> str:
        return "per_batch" if self.track == "image" else "regular_interval"  # App. B

    def backbone_per_step(self, gamma: float, batch_size: int) -> int:
        """The most backbone examples one step adds (bat.mixing)."""
        if self.mixing == "regular_interval":
            return batch_size
        return math.ceil(batch_size * (1 - gamma) / gamma)

    @property
    def evaluation_steps(self) -> list[int]:
        every = self.evaluate_every or self.steps
        return sorted({*range(every, self.steps + 1, every), self.steps})


def load_grid(name: str, params: dict) -> GridConfig:
    grids = section(params, "grids")
    tracks = [track for track in TRACKS if name in (grids.get(track) or {})]
    if not tracks:
        known = sorted(n for track in TRACKS for n in (grids.get(track) or {}))
        raise ConfigError(f"grids has no grid {name!r}; grids: {known}")
    track = tracks[0]
    return build(GridConfig, {"name": name, "track": track, **grids[track][name]},
                 f"grids.{track}.{name}")


def backbone_pool(size: int, n_backbone: int, seed: int) -> list[int]:
    """``size`` distinct indices of D^B, fixed by ``seed`` (sorted)."""
    rng = np.random.default_rng(derived_seed(seed, 4))
    return sorted(int(i) for i in rng.choice(n_backbone, size=min(size, n_backbone), replace=False))


@torch.no_grad()
def heldout_loss(model, task, examples, batch_size: int = 64) -> float:
    """Mean task loss on ``examples``, with one fixed noise and timestep draw for diffusion."""
    model.eval()
    count = len(next(iter(examples.values())))
    total = 0.0
    for start in range(0, count, batch_size):
        chunk = {name: values[start:start + batch_size] for name, values in examples.items()}
        batch = task.prepare(chunk, torch.Generator().manual_seed(HELDOUT_NOISE_SEED + start))
        total += float(task.batch_losses(model, batch).sum())
    return total / count


class ImageSetting:
    """The UNet of the image backbone, its D^B, the styles of D^A and the personalization scores."""

    seeded_evaluation = True  # a run's samples are drawn with its seed

    def __init__(self, config: GridConfig, models: Path):
        from bat.encoders import load_encoders
        from bat.image_backbone import load_image_backbone, noise_task

        self.config = config
        self.pipe = load_image_backbone(models / "backbone_image")
        self.task = noise_task(self.pipe)
        self.encoders = load_encoders(models / "encoders")
        self.start_model = self.pipe.unet
        images = paths.PREPARED / "images"
        self.pool_set = load_image_set(images / ("backbone.npz" if config.pool == "backbone"
                                                 else "out_of_backbone.npz"))
        self.full_backbone = (self._encode(load_image_set(images / "backbone.npz"))
                              if "random" in config.regimes else None)

    def _encode(self, image_set: ImageSet, prompts=None):
        from bat.adaptation_data import image_examples

        return image_examples(self.pipe, image_set, prompts)

    def pool_size(self) -> int:
        return len(self.pool_set)

    def pool(self, indices: list[int]):
        """The pool's examples; D^B keeps its own captions."""
        chosen = ImageSet(self.pool_set.images[indices], [self.pool_set.emoji[i] for i in indices],
                          [self.pool_set.captions[i] for i in indices], self.pool_set.source)
        return self._encode(chosen)

    def dataset(self, name: str):
        from bat.adaptation_data import style_prompts

        train_set = load_image_set(paths.PREPARED / "images" / f"{name}_train.npz")
        heldout = load_image_set(paths.PREPARED / "images" / f"{name}_heldout.npz")
        sampled = heldout.spread(self.config.eval_size)  # sampling is the dear part: a subset
        prompts = style_prompts(sampled.captions)
        return {"adaptation": self._encode(train_set, style_prompts(train_set.captions)),
                "heldout": self._encode(heldout, style_prompts(heldout.captions)),
                "prompts": prompts, "captions": list(sampled.captions), "references": sampled.images}

    def evaluate(self, model, data: dict, seed: int, with_benchmarks: bool) -> tuple[dict, np.ndarray]:
        from bat.image_backbone import with_unet
        from bat.image_evaluation import evaluate_personalization

        unet = model.get_base_model() if hasattr(model, "get_base_model") else model
        unet.eval()
        scores = evaluate_personalization(
            with_unet(self.pipe, unet), self.encoders, data["prompts"], data["references"], [seed],
            self.config.sample_steps, self.config.guidance_scale, data["captions"])
        row = {"heldout_loss": heldout_loss(model, self.task, data["heldout"]),
               **scores.per_seed.loc[seed].to_dict()}
        return row, scores.samples[seed]


class TextSetting:
    """The LM of the text backbone, the D^B records it was fine-tuned on, tasks and benchmarks."""

    seeded_evaluation = False

    def __init__(self, config: GridConfig, models: Path):
        from bat.tasks import CausalLMTask
        from bat.text_backbone import load_backbone, load_eval_sets, pretraining_ids

        self.config = config
        folder = models / "backbone_text"
        # Eager attention: Proposition 2 takes per-sample gradients of this model (bat.tasks).
        self.start_model, self.tokenizer = load_backbone(folder, attn_implementation="eager")
        self.task = CausalLMTask()
        records = read_jsonl(paths.PREPARED / "text" / "backbone.jsonl")
        seen = pretraining_ids(folder)
        if seen is not None:  # D^B is what this backbone was trained on, when that is known
            seen = set(seen)
            records = [record for record in records if record["id"] in seen]
        self.records = records
        self.full_backbone = self._encode(records) if "random" in config.regimes else None
        self.eval_sets = (load_eval_sets(paths.PREPARED / "text" / "eval", config.benchmark_items)
                          if config.benchmark_items else None)

    def _encode(self, records):
        from bat.adaptation_data import text_examples

        return text_examples(self.tokenizer, records, TEXT_MAX_LENGTH)

    def pool_size(self) -> int:
        return len(self.records)

    def pool(self, indices: list[int]):
        return self._encode([self.records[i] for i in indices])

    def dataset(self, name: str):
        tasks = paths.PREPARED / "text" / "tasks"
        test = read_jsonl(tasks / f"{name}_test.jsonl")[:self.config.eval_size]
        return {"adaptation": self._encode(read_jsonl(tasks / f"{name}_train.jsonl")),
                "heldout": self._encode(test)}

    def evaluate(self, model, data: dict, seed: int, with_benchmarks: bool) -> tuple[dict, None]:
        from bat.text_backbone import score_eval_sets

        row = {"heldout_loss": heldout_loss(model, self.task, data["heldout"], TEXT_EVAL_BATCH)}
        if with_benchmarks and self.eval_sets is not None:
            scores = score_eval_sets(model, self.tokenizer, self.eval_sets, progress=False)
            for _, set_row in scores.iterrows():
                row[f"acc:{set_row['set']}"] = set_row["acc"]
                row[f"acc_norm:{set_row['set']}"] = set_row["acc_norm"]
            row["acc:mean"], row["acc_norm:mean"] = scores["acc"].mean(), scores["acc_norm"].mean()
        return row, None


def oracle_name(dataset: str, adapter: str) -> str:
    """The ``oracles`` entry whose θ^{A*} the runs of (dataset, adapter) are measured against."""
    return f"{dataset}_{adapter}"


def _selection_rows(records: list[dict]) -> dict[int, dict]:
    """Per step (1-based) that Algorithm 1 scored: whether it reselected, whether Prop. 2 held."""
    return {record["step"] + 1: {"reselected": bool(record.get("reselected", False)),
                                 "condition": record.get("condition")} for record in records}


class GridRunner:
    """Trains the runs of one grid and collects their rows (see :func:`run_grid`)."""

    def __init__(self, config: GridConfig, setting, oracles_folder: Path, progress: bool):
        self.config, self.setting, self.progress = config, setting, progress
        self.oracles_folder = oracles_folder
        self.step_rows, self.evaluation_rows, self.samples, self.pools = [], [], {}, {}
        self.captions = {}  # per image dataset: the held-out concepts its samples show
        self._baselines = {}

    def oracle(self, dataset: str, adapter: str) -> torch.Tensor:
        from bat.checkpoint import trained_vector

        folder = self.oracles_folder / oracle_name(dataset, adapter)
        try:
            return trained_vector(folder)
        except FileNotFoundError:
            raise ConfigError(f"no oracle θ^A* in {folder}; add {oracle_name(dataset, adapter)!r} "
                              f"to oracles.{self.config.track} and run its stage") from None

    def run(self, scratch: Path) -> None:
        from bat.adapters import AdapterConfig, attach_adapter, flat_adapter_vector
        from bat.train import seed_everything

        config = self.config
        # The pool depends on the seed only: drawn and encoded once, shared by every dataset.
        self.pools = {str(seed): backbone_pool(config.pool_size, self.setting.pool_size(), seed)
                      for seed in config.seeds}
        pools = {seed: self.setting.pool(self.pools[str(seed)]) for seed in config.seeds}
        for dataset in config.datasets:
            data = self.setting.dataset(dataset)
            if "captions" in data:
                self.captions[dataset] = data["captions"]
                self.samples[f"{dataset}/reference"] = data["references"]  # the real renders
            for adapter_kind in config.adapters:
                adapter, oracle = AdapterConfig(adapter_kind), self.oracle(dataset, adapter_kind)
                for seed in config.seeds:
                    seed_everything(seed)  # as train() does before attaching: θ at step 0
                    start = float(torch.linalg.vector_norm(flat_adapter_vector(
                        attach_adapter(copy.deepcopy(self.setting.start_model), adapter)) - oracle))
                    baseline = self.baseline(dataset, data, seed)
                    for batch_size in config.batch_sizes:
                        run = {"dataset": dataset, "adapter": adapter_kind, "seed": seed,
                               "batch_size": batch_size, "adapter_config": adapter,
                               "data": data, "pool": pools[seed], "oracle": oracle,
                               "start_difference": start, "baseline": baseline}
                        # plain ignores γ: one run per batch size, γ left empty in the tables
                        if "plain" in config.regimes:
                            self.run_regimes(run, None, ["plain"], scratch)
                        for gamma in config.gammas:
                            others = [r for r in config.regimes if r != "plain"]
                            if others:
                                self.run_regimes(run, gamma, others, scratch)

    def baseline(self, dataset: str, data: dict, seed: int):
        """The backbone's evaluation at step 0, shared by every run of (dataset, seed)
        (of every seed, when evaluating draws no noise)."""
        key = (dataset, seed if self.setting.seeded_evaluation else None)
        if key not in self._baselines:
            self._baselines[key] = self.setting.evaluate(self.setting.start_model, data, seed,
                                                         with_benchmarks=True)
        return self._baselines[key]

    def run_regimes(self, run: dict, gamma: float | None, regimes: list[str], scratch: Path) -> None:
        """The runs of ``regimes`` at one γ; matched baselines follow the ``bat`` run before them."""
        from bat.selection import Prop2Selector, SelectionConfig
        from bat.train import TrainConfig, backbone_schedule, compute_matched_steps

        config = self.config
        base = TrainConfig(steps=config.steps, batch_size=run["batch_size"],
                           learning_rate=config.learning_rate, gamma=gamma or 0.5,
                           mixing=config.mixing, candidates=0, log_every=config.log_every,
                           seed=run["seed"])
        bat_log, records = None, []
        for regime in regimes:
            kwargs, backbone, steps = {}, run["pool"], config.steps
            if regime == "plain":
                train_config, backbone = replace(base, regime="plain"), None
            elif regime == "bat":
                selection = SelectionConfig(mode="oracle", curvature="fisher", solver="woodbury",
                                            damping=config.damping,
                                            score_adaptation_every=config.score_every,
                                            score_bat_every=config.score_every,
                                            chunk_size=PER_SAMPLE_CHUNK, seed=run["seed"])
                kwargs["selector"] = Prop2Selector(selection, target=run["oracle"])
                train_config = replace(base, regime="bat")
            elif regime == "random":
                train_config, backbone = replace(base, regime="random"), self.setting.full_backbone
            elif regime == "random_matched":
                kwargs["backbone_counts"] = backbone_schedule(bat_log)
                train_config = replace(base, regime="random")
            else:  # compute_matched
                steps = config.steps + compute_matched_steps(bat_log)
                train_config, backbone = replace(base, regime="plain", steps=steps), None
            evaluation_steps = sorted({s for s in config.evaluation_steps if s <= steps} | {steps})
            run_key = {name: run[name] for name in RUN_KEYS if name in run}
            run_key.update(gamma=gamma, regime=regime)
            log = self.train_evaluated(run_key, run, backbone, train_config, evaluation_steps,
                                       scratch, **kwargs)
            if regime == "bat":
                bat_log, records = log, kwargs["selector"].records
            self.add_steps(run_key, log, run["start_difference"],
                           _selection_rows(records) if regime == "bat" else {})
            baseline_row, baseline_samples = run["baseline"]
            self.add_evaluation(run_key, 0, baseline_row, baseline_samples)

    def train_evaluated(self, run_key: dict, run: dict, backbone, train_config,
                        evaluation_steps: list[int], scratch: Path, **kwargs) -> list[dict]:
        """Train one run, evaluating the model at each of ``evaluation_steps``."""
        from bat.train import train

        def evaluate(step: int, model) -> None:
            if step in evaluation_steps:
                row, samples = self.setting.evaluate(model, run["data"], run_key["seed"],
                                                     with_benchmarks=step == evaluation_steps[-1])
                self.add_evaluation(run_key, step, row, samples)

        with tempfile.TemporaryDirectory(dir=scratch) as run_dir:  # full state: ~80 MB for DreamBooth
            result = train(copy.deepcopy(self.setting.start_model), run["adapter_config"],
                           self.setting.task, run["data"]["adaptation"], backbone,
                           replace(train_config, checkpoint_every=train_config.steps), run_dir,
                           oracle=run["oracle"], progress=self.progress, on_step=evaluate, **kwargs)
        return result.log

    def add_steps(self, run_key: dict, log: list[dict], start_difference: float,
                  selected: dict[int, dict]) -> None:
        empty = {"reselected": None, "condition": None}
        self.step_rows.append({**run_key, "step": 0, "loss": np.nan,
                               "weight_difference": start_difference, "n_backbone": 0,
                               "seconds": 0.0, "selection_seconds": 0.0, **empty})
        for row in log:
            self.step_rows.append({**run_key, "step": row["step"], "loss": row["loss"],
                                   "weight_difference": row["weight_difference"],
                                   "n_backbone": row["n_backbone"], "seconds": row["seconds"],
                                   "selection_seconds": row["selection_seconds"],
                                   **selected.get(row["step"], empty)})

    def add_evaluation(self, run_key: dict, step: int, row: dict, samples) -> None:
        self.evaluation_rows.append({**run_key, "step": step, **row})
        if samples is not None:
            self.samples[sample_key(run_key, step)] = samples


def run_grid(config: GridConfig, out_folder: str | Path, models_folder: str | Path | None = None,
             progress: bool = False) -> Path:
    """Train every run of ``config`` and write the tables into ``out_folder`` (all or nothing)."""
    import pandas as pd

    if not isinstance(config, GridConfig):
        raise ConfigError(f"config: need a GridConfig, not {type(config).__name__}")
    models = Path(models_folder) if models_folder is not None else paths.MODELS
    started = time.perf_counter()
    setting = (ImageSetting if config.track == "image" else TextSetting)(config, models)
    runner = GridRunner(config, setting, models / "oracles", progress)
    with tempfile.TemporaryDirectory(prefix=f"grid-{config.name}-") as scratch:
        runner.run(Path(scratch))
    with atomic_directory(out_folder) as folder:
        pd.DataFrame(runner.step_rows).to_csv(folder / "steps.csv", index=False)
        pd.DataFrame(runner.evaluation_rows).to_csv(folder / "evaluations.csv", index=False)
        if runner.samples:
            np.savez_compressed(folder / "samples.npz", **runner.samples)
        write_json(folder / "grid.json", {
            "config": asdict(config), "pools": runner.pools,
            "captions": runner.captions,
            "seconds": time.perf_counter() - started})
    return Path(out_folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    return run_cli(lambda: run_grid(load_grid(args.grid, read_yaml(paths.PARAMS)),
                                    paths.ROOT / "runs" / args.grid, progress=args.progress))


if __name__ == "__main__":
    sys.exit(main())
