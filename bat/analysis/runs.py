"""Reading a grid of runs (``runs/<name>``, written by :mod:`bat.stages.grid`) and summarising it.

Everything here is pandas: the figure notebooks import it without loading torch. Runs are keyed
by :data:`RUN_KEYS`; ``gamma`` is empty for ``plain`` runs, which do not depend on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bat.errors import ConfigError

RUN_KEYS = ("dataset", "adapter", "seed", "gamma", "batch_size", "regime")
SELECTING_REGIMES = ("bat", "bat_oracle_free")  # the regimes whose runs Algorithm 1 selects for
IMAGE_SCORES = ("cosine", "set_cosine", "centroid_distance", "clip_cosine", "clip_torchmetrics", "vendi")
HIGHER_IS_BETTER = {"heldout_loss": False, "cosine": True, "set_cosine": True,
                    "centroid_distance": False, "clip_cosine": True, "clip_torchmetrics": True,
                    "vendi": False, "weight_difference": False}  # paper Tab. 1 arrows


@dataclass(frozen=True)
class GridResult:
    steps: pd.DataFrame  # one row per run and step
    evaluations: pd.DataFrame  # one row per run and evaluated step
    info: dict  # grid.json: the settings, the pools, the held-out captions, seconds
    folder: Path

    @property
    def datasets(self) -> list[str]:
        return list(self.info["config"]["datasets"])

    @property
    def seeds(self) -> list[int]:
        return list(self.info["config"]["seeds"])

    @property
    def regimes(self) -> list[str]:
        """The regimes that have runs, in the order the grid ran them."""
        return list(dict.fromkeys(self.steps["regime"]))

    def only(self, regimes) -> GridResult:
        """The rows of those of ``regimes`` that have runs (a figure's subset of the grid)."""
        keep = [regime for regime in regimes if regime in set(self.steps["regime"])]
        return GridResult(self.steps[self.steps["regime"].isin(keep)],
                          self.evaluations[self.evaluations["regime"].isin(keep)], self.info, self.folder)

    def samples(self, dataset, adapter, seed, gamma, batch_size, regime, step) -> np.ndarray:
        """The images one evaluation scored, uint8 ``[prompts, H, W, 3]`` (``gamma=None``: plain)."""
        run_key = dict(zip(RUN_KEYS, (dataset, adapter, seed, gamma, batch_size, regime)))
        return self._sample_array(sample_key(run_key, step))

    def references(self, dataset) -> np.ndarray:
        """The real renders of the held-out concepts that the samples of ``dataset`` were scored against."""
        return self._sample_array(f"{dataset}/reference")

    def _sample_array(self, key: str) -> np.ndarray:
        with np.load(self.folder / "samples.npz") as archive:
            if key not in archive:
                raise KeyError(f"{self.folder.name} has no samples {key!r}")
            return archive[key]


def sample_key(run_key: dict, step: int) -> str:
    """The ``samples.npz`` entry of one run's evaluation at ``step``."""
    return "/".join(str(run_key[name]) for name in RUN_KEYS) + f"/{step}"


def read_grid(folder: str | Path) -> GridResult:
    folder = Path(folder)
    if not (folder / "grid.json").is_file():
        raise ConfigError(f"{folder} holds no grid; run its stage (dvc repro grid_image@{folder.name} "
                          f"or grid_text@{folder.name})")
    steps = pd.read_csv(folder / "steps.csv")
    evaluations = pd.read_csv(folder / "evaluations.csv")
    info = json.loads((folder / "grid.json").read_text())
    return GridResult(steps, evaluations, info, folder)


def matching(frame: pd.DataFrame, **keys) -> pd.DataFrame:
    """Rows whose columns equal ``keys`` (``gamma=None`` selects the plain runs' empty γ)."""
    mask = pd.Series(True, index=frame.index)
    for name, value in keys.items():
        mask &= frame[name].isna() if value is None else frame[name] == value
    return frame[mask]


def band_summary(frame: pd.DataFrame, value: str, by: tuple[str, ...] = ("dataset", "regime")) -> pd.DataFrame:
    """Mean, sd, min and max of ``value`` over seeds, per ``by`` and step (measured steps only)."""
    measured = frame.dropna(subset=[value])
    keys = [*by, "step"]
    summary = (measured.groupby(keys, dropna=False)[value]
               .agg(["mean", "std", "min", "max", "count"]).reset_index())
    summary["std"] = summary["std"].fillna(0.0)  # one seed: no spread
    return summary


def final_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Each run's row at its last step (of the rows where ``frame`` has one)."""
    keys = [key for key in RUN_KEYS if key in frame]
    index = frame.groupby(keys, dropna=False)["step"].idxmax()
    return frame.loc[index].reset_index(drop=True)


def paired_difference(frame: pd.DataFrame, value: str, regime: str, reference: str = "plain",
                      on: tuple[str, ...] = ("dataset", "adapter", "seed", "batch_size")) -> pd.DataFrame:
    """``value`` of ``regime`` minus that of ``reference`` for the same run keys ``on`` and step.

    Paired by seed, so the spread over seeds is that of the difference, not of either curve.
    """
    keys = [*on, "step"]
    left = frame[frame["regime"] == regime].dropna(subset=[value])
    right = frame[frame["regime"] == reference].dropna(subset=[value])
    merged = left.merge(right[[*keys, value]], on=keys, suffixes=("", "_reference"))
    merged["difference"] = merged[value] - merged[f"{value}_reference"]
    columns = [*on, "gamma", "step", value, f"{value}_reference", "difference"]
    return merged[[c for c in columns if c in merged]]


def compare_final(evaluations: pd.DataFrame, scores: tuple[str, ...], reference: str = "plain",
                  by: tuple[str, ...] = ("dataset", "adapter", "regime")) -> pd.DataFrame:
    """The last evaluation of each run, mean ± sd over seeds per ``by``, and for each score the
    share of seeds where the regime is better than ``reference`` at the same seed (paper arrows)."""
    last = final_rows(evaluations)
    rows = []
    for group_key, group in last.groupby(list(by), sort=False, dropna=False):
        row = dict(zip(by, group_key if isinstance(group_key, tuple) else (group_key,)))
        row["seeds"] = int(group["seed"].nunique())
        row["step"] = int(group["step"].max())
        for score in scores:
            row[f"{score}_mean"] = group[score].mean()
            row[f"{score}_sd"] = group[score].std(ddof=1) if len(group) > 1 else 0.0
            if row.get("regime") != reference:
                row[f"{score}_better_share"] = _better_share(last, group, score, reference, by)
        rows.append(row)
    return pd.DataFrame(rows)


def _better_share(last: pd.DataFrame, group: pd.DataFrame, score: str, reference: str,
                  by: tuple[str, ...]) -> float | None:
    # Pair each run with the reference run of the same dataset, adapter, seed and batch size,
    # whatever ``by`` groups over (γ is left out: plain runs have none).
    keys = [k for k in ("dataset", "adapter", "seed", "batch_size") if k in last]
    baseline = last[last["regime"] == reference][[*keys, score]]
    paired = group.merge(baseline, on=keys, suffixes=("", "_reference"))
    if paired.empty:
        return None
    if HIGHER_IS_BETTER.get(score, True):
        better = paired[score] > paired[f"{score}_reference"]
    else:
        better = paired[score] < paired[f"{score}_reference"]
    return float(better.mean())


def selection_summary(steps: pd.DataFrame, by: tuple[str, ...] = ("regime", "dataset")) -> pd.DataFrame:
    """How often Algorithm 1 checked Proposition 2, how often it held, how often it reselected,
    per ``by`` over the runs that select (``bat`` and ``bat_oracle_free``)."""
    checks = steps[steps["regime"].isin(SELECTING_REGIMES) & steps["condition"].notna()].copy()
    checks["condition"] = checks["condition"].astype(str).str.lower() == "true"
    checks["reselected"] = checks["reselected"].astype(str).str.lower() == "true"
    return (checks.groupby(list(by), dropna=False)
            .agg(checks=("condition", "size"), condition_held=("condition", "sum"),
                 reselections=("reselected", "sum"))
            .reset_index())


def mean_sd_table(comparison: pd.DataFrame, scores: tuple[str, ...], keys: tuple[str, ...],
                  digits: int = 4) -> pd.DataFrame:
    """``<score>_mean`` / ``<score>_sd`` columns of :func:`compare_final` as "mean ± sd" text,
    to ``digits`` significant digits (scores range from ~0.1 to ~10⁴)."""
    table = comparison[list(keys)].copy()
    for score in scores:
        cells = []
        for mean, sd in zip(comparison[f"{score}_mean"], comparison[f"{score}_sd"]):
            decimals = (digits - 1 if not np.isfinite(mean) or mean == 0
                        else max(0, digits - 1 - int(np.floor(np.log10(abs(mean))))))
            cells.append(f"{mean:.{decimals}f} ± {sd:.{decimals}f}")  # sd to the mean's precision
        table[score] = cells
    return table


def held_out_minimum(evaluations: pd.DataFrame, value: str = "heldout_loss",
                     by: tuple[str, ...] = ("dataset", "seed")) -> pd.DataFrame:
    """Per ``by``: the evaluated step where ``value`` is lowest, that value, the last evaluated step
    and ``passed`` (the minimum lies before the last step, so the run went past it).

    A pilot's run length is long enough for augmentation to matter when every run passed its
    minimum: after it, plain training only overfits D^A.
    """
    if evaluations.empty:
        raise ConfigError(f"no evaluations to find the minimum of {value!r} in")
    rows = []
    for key, group in evaluations.dropna(subset=[value]).groupby(list(by), sort=True):
        best = group.loc[group[value].idxmin()]
        last = int(group["step"].max())
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))),
                     "best_step": int(best["step"]), f"best_{value}": float(best[value]),
                     "last_step": last, "passed": bool(best["step"] < last)})
    return pd.DataFrame(rows)
