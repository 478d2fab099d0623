"""Experiments behind the paper's figures: run grids of adapter trainings and collect their logs.

:func:`initial_steps_runs` is Fig. 4 (paper Sec. 5.1.2): per style of D^A and per seed, a ``plain``
DreamBooth run, a ``bat`` run (Proposition-2 selection with the oracle θ^{A*}, Algorithm 1) and
the matched baselines — ``random_matched`` (random backbone samples, as many at every step as the
``bat`` run took, :func:`bat.train.backbone_schedule`) and ``compute_matched`` (``plain`` with the
extra steps that selection's wall time would have paid for, :func:`bat.train.compute_matched_steps`).
Every run logs the weight difference ‖θ − θ^{A*}‖ to the oracle every ``log_every`` steps; the final
model's noise-prediction loss on the style's held-out concepts is measured too.

Cost: DreamBooth trains every UNet weight, so each Proposition-2 scoring takes per-sample
gradients over all of them. The backbone examples offered to the selector are therefore a fixed
random pool of ``pool_size`` examples of D^B per seed (``TrainConfig.candidates = 0`` offers the
whole pool, so the stateful selector keeps its selection between scorings), and Algorithm 1's
checks run every ``score_every`` steps. ``random_matched`` draws from the same pool.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bat import paths, validate
from bat.errors import ConfigError
from bat.image_data import STYLES, ImageSet, load_image_set
from bat.mixing import derived_seed

INITIAL_STEPS_REGIMES = ("plain", "bat", "random_matched", "compute_matched")
IMAGE_ADAPTERS = ("dreambooth", "locon", "loha", "lokr")
HELDOUT_NOISE_SEED = 0  # one fixed noise / timestep draw for every held-out loss


@dataclass(frozen=True)
class InitialStepsConfig:
    """Settings of the Fig. 4 grid (the ``fig04_dreambooth_initial_steps`` section of params.yaml)."""

    styles: tuple[str, ...] = ("noto", "emojione")  # D^A; the oracle run is "<style>_<adapter>"
    seeds: tuple[int, ...] = (0, 1, 2)
    regimes: tuple[str, ...] = ("plain", "bat", "random_matched")
    adapter: str = "dreambooth"
    steps: int = 20
    batch_size: int = 4  # D^A examples per step
    learning_rate: float = 1e-4  # the oracle runs' rate
    gamma: float = 0.5  # n/k: with batch 4, four backbone examples join each bat step
    log_every: int = 2  # steps between weight-difference measurements
    pool_size: int = 16  # D^B examples offered to the selector (a fixed random pool per seed)
    score_every: int = 20  # Algorithm 1 checks Proposition 2 every this many steps
    damping: float = 1e-3  # of the damped Fisher (Woodbury solver)

    def __post_init__(self):
        section = "fig04_dreambooth_initial_steps"
        for name in ("styles", "seeds", "regimes"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
                raise ConfigError(f"{section}.{name}: {value!r} must be a non-empty list")
            if len(set(value)) != len(value):
                raise ConfigError(f"{section}.{name}: {list(value)} lists an entry twice")
            object.__setattr__(self, name, tuple(value))
        for style in self.styles:
            validate.choice(f"{section}.styles", style, STYLES)
        for seed in self.seeds:
            validate.non_negative(f"{section}.seeds", seed, integer=True)
        for regime in self.regimes:
            validate.choice(f"{section}.regimes", regime, INITIAL_STEPS_REGIMES)
        needs_bat = [r for r in self.regimes if r in ("random_matched", "compute_matched")]
        if needs_bat and "bat" not in self.regimes:
            raise ConfigError(f"{section}.regimes: {needs_bat[0]!r} is matched to a 'bat' run; "
                              "add 'bat' to the regimes")
        validate.choice(f"{section}.adapter", self.adapter, IMAGE_ADAPTERS)
        for name in ("steps", "batch_size", "log_every", "pool_size", "score_every"):
            validate.positive(f"{section}.{name}", getattr(self, name), integer=True)
        validate.positive(f"{section}.learning_rate", self.learning_rate)
        validate.open_interval(f"{section}.gamma", self.gamma, 0.0, 1.0)
        validate.positive(f"{section}.damping", self.damping)
        if self.pool_size < self.backbone_per_step:
            raise ConfigError(f"{section}.pool_size: {self.pool_size} is fewer than the "
                              f"{self.backbone_per_step} backbone examples a step takes at "
                              f"batch_size {self.batch_size} and gamma {self.gamma}")

    @property
    def backbone_per_step(self) -> int:
        """The most backbone examples one step adds (bat.mixing, per_batch scheme)."""
        return math.ceil(self.batch_size * (1 - self.gamma) / self.gamma)


def oracle_run(style: str, adapter: str) -> str:
    """The ``oracles.runs`` entry whose θ^{A*} a style's runs are measured against."""
    return f"{style}_{adapter}"


def backbone_pool(size: int, n_backbone: int, seed: int) -> list[int]:
    """``size`` distinct indices of D^B, fixed by ``seed`` (sorted)."""
    rng = np.random.default_rng(derived_seed(seed, 4))
    return sorted(int(i) for i in rng.choice(n_backbone, size=min(size, n_backbone), replace=False))


@torch.no_grad()
def heldout_loss(model, task, examples, seed: int = HELDOUT_NOISE_SEED) -> float:
    """Mean noise-prediction loss on ``examples`` with one fixed noise and timestep draw."""
    model.eval()
    batch = task.prepare(examples, torch.Generator().manual_seed(seed))
    return float(task.batch_losses(model, batch).mean())


def _selection_rows(records: list[dict]) -> dict[int, dict]:
    """Per logged step (1-based): whether Algorithm 1 reselected and whether Prop. 2 held."""
    rows = {}
    for record in records:
        rows[record["step"] + 1] = {"reselected": bool(record.get("reselected", False)),
                                    "condition": record.get("condition")}
    return rows


def initial_steps_runs(config: InitialStepsConfig, out_folder: str | Path,
                       backbone_folder: str | Path | None = None,
                       oracles_folder: str | Path | None = None,
                       progress: bool = False) -> pd.DataFrame:
    """Train every (style, seed, regime) of ``config`` into ``out_folder``; one row per step.

    Columns: ``style``, ``seed``, ``regime``, ``step`` (0 = the backbone before training),
    ``loss`` (training batch), ``weight_difference`` (‖θ − θ^{A*}‖, every ``log_every`` steps and
    at the last step, else NaN), ``n_backbone`` (backbone examples so far), ``seconds`` and
    ``selection_seconds`` (wall time of the step), ``heldout_loss`` (at step 0 and the last step),
    ``reselected`` / ``condition`` (``bat`` only, at the steps Algorithm 1 scored).
    Run folders are ``out_folder/<style>/seed<seed>/<regime>``; a finished run is not retrained.
    """
    from bat.adaptation_data import image_examples, style_prompts
    from bat.adapters import AdapterConfig, attach_adapter, flat_adapter_vector
    from bat.checkpoint import trained_vector
    from bat.image_backbone import load_image_backbone, noise_task
    from bat.protocols import take_examples
    from bat.selection import Prop2Selector, SelectionConfig
    from bat.train import (TrainConfig, backbone_schedule, compute_matched_steps, seed_everything,
                           train)

    if not isinstance(config, InitialStepsConfig):
        raise ConfigError(f"config: need an InitialStepsConfig, not {type(config).__name__}")
    out_folder = Path(out_folder)
    oracles_folder = Path(oracles_folder) if oracles_folder is not None else paths.MODELS / "oracles"
    oracles = {}
    for style in config.styles:
        folder = oracles_folder / oracle_run(style, config.adapter)
        try:
            oracles[style] = trained_vector(folder)
        except FileNotFoundError:
            raise ConfigError(f"no oracle θ^A* in {folder}; run the stage "
                              f"oracle_image@{oracle_run(style, config.adapter)} first") from None

    pipe = load_image_backbone(backbone_folder or paths.MODELS / "backbone_image")
    task = noise_task(pipe)
    backbone_set = load_image_set(paths.PREPARED / "images" / "backbone.npz")
    pools = {seed: backbone_pool(config.pool_size, len(backbone_set), seed) for seed in config.seeds}
    needed = sorted({i for pool in pools.values() for i in pool})
    needed_set = ImageSet(backbone_set.images[needed], [backbone_set.emoji[i] for i in needed],
                          [backbone_set.captions[i] for i in needed], backbone_set.source)
    encoded = image_examples(pipe, needed_set)  # D^B keeps its own captions
    position = {index: row for row, index in enumerate(needed)}
    adapter = AdapterConfig(config.adapter)

    rows = []
    for style in config.styles:
        adaptation_set = load_image_set(paths.PREPARED / "images" / f"{style}_train.npz")
        adaptation = image_examples(pipe, adaptation_set, style_prompts(adaptation_set.captions))
        heldout_set = load_image_set(paths.PREPARED / "images" / f"{style}_heldout.npz")
        heldout = image_examples(pipe, heldout_set, style_prompts(heldout_set.captions))
        oracle = oracles[style]
        start_model = pipe.unet
        start_loss = heldout_loss(start_model, task, heldout)
        for seed in config.seeds:
            backbone = take_examples(encoded, [position[i] for i in pools[seed]])
            base = TrainConfig(steps=config.steps, batch_size=config.batch_size,
                               learning_rate=config.learning_rate, gamma=config.gamma,
                               candidates=0, checkpoint_every=config.steps,
                               log_every=config.log_every, seed=seed)
            bat_log, records = None, []
            seed_everything(seed)  # as train() does before attaching the adapter: θ at step 0
            start_difference = float(torch.linalg.vector_norm(
                flat_adapter_vector(attach_adapter(copy.deepcopy(start_model), adapter)) - oracle))
            for regime in config.regimes:
                kwargs = {}
                if regime == "plain":
                    train_config = replace(base, regime="plain")
                elif regime == "bat":
                    selection = SelectionConfig(mode="oracle", curvature="fisher", solver="woodbury",
                                                damping=config.damping,
                                                score_adaptation_every=config.score_every,
                                                score_bat_every=config.score_every, seed=seed)
                    kwargs["selector"] = Prop2Selector(selection, target=oracle)
                    train_config = replace(base, regime="bat")
                elif regime == "random_matched":
                    kwargs["backbone_counts"] = backbone_schedule(bat_log)
                    train_config = replace(base, regime="random")
                else:  # compute_matched
                    steps = config.steps + compute_matched_steps(bat_log)
                    train_config = replace(base, regime="plain", steps=steps,
                                           checkpoint_every=steps)
                result = train(copy.deepcopy(start_model), adapter, task, adaptation,
                               None if train_config.regime == "plain" else backbone, train_config,
                               out_folder / style / f"seed{seed}" / regime, oracle=oracle,
                               progress=progress, **kwargs)
                if regime == "bat":
                    bat_log, records = result.log, kwargs["selector"].records
                selected = _selection_rows(records) if regime == "bat" else {}
                final = heldout_loss(result.model, task, heldout)
                common = {"style": style, "seed": seed, "regime": regime}
                rows.append({**common, "step": 0, "loss": np.nan,
                             "weight_difference": start_difference, "n_backbone": 0,
                             "seconds": 0.0, "selection_seconds": 0.0, "heldout_loss": start_loss,
                             "reselected": None, "condition": None})
                for row in result.log:
                    last = row["step"] == train_config.steps
                    rows.append({**common, "step": row["step"], "loss": row["loss"],
                                 "weight_difference": row["weight_difference"],
                                 "n_backbone": row["n_backbone"], "seconds": row["seconds"],
                                 "selection_seconds": row["selection_seconds"],
                                 "heldout_loss": final if last else np.nan,
                                 **selected.get(row["step"], {"reselected": None, "condition": None})})
                del result
    frame = pd.DataFrame(rows)
    frame["weight_difference"] = frame["weight_difference"].astype(float)
    return frame


def band_summary(frame: pd.DataFrame, value: str = "weight_difference") -> pd.DataFrame:
    """Mean, sd, min and max of ``value`` over seeds, per style, regime and step (measured steps)."""
    measured = frame.dropna(subset=[value])
    summary = (measured.groupby(["style", "regime", "step"])[value]
               .agg(["mean", "std", "min", "max", "count"]).reset_index())
    summary["std"] = summary["std"].fillna(0.0)  # one seed: no spread
    return summary


def final_comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """Per style and regime, over seeds: the last step's weight difference and held-out loss,
    the final training loss, total selection seconds, and the share of seeds where the regime's
    last weight difference is below the ``plain`` run's of the same seed (at the same step)."""
    last = frame.loc[frame.groupby(["style", "seed", "regime"])["step"].idxmax()]
    plain_steps = frame[frame["regime"] == "plain"]
    out = []
    for (style, regime), group in last.groupby(["style", "regime"], sort=False):
        beats = []
        for _, row in group.iterrows():
            reference = plain_steps[(plain_steps["style"] == style) & (plain_steps["seed"] == row["seed"])
                                    & (plain_steps["step"] == row["step"])]
            if len(reference) and regime != "plain":
                beats.append(float(row["weight_difference"] < reference["weight_difference"].iloc[0]))
        selection = frame[(frame["style"] == style) & (frame["regime"] == regime)]
        out.append({"style": style, "regime": regime, "step": int(group["step"].max()),
                    "seeds": len(group),
                    "weight_difference_mean": group["weight_difference"].mean(),
                    "weight_difference_sd": group["weight_difference"].std(ddof=1) if len(group) > 1 else 0.0,
                    "heldout_loss_mean": group["heldout_loss"].mean(),
                    "heldout_loss_sd": group["heldout_loss"].std(ddof=1) if len(group) > 1 else 0.0,
                    "train_loss_mean": group["loss"].mean(),
                    "selection_seconds_mean": selection.groupby("seed")["selection_seconds"].sum().mean(),
                    "share_below_plain": float(np.mean(beats)) if beats else None})
    return pd.DataFrame(out)
