# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fig. 6: the backbone augmentation ratio γ
#
# Paper App. D.2: DreamBooth with BAT, trained on the same data for the same number of steps,
# with γ = n/k (the share of D^A in each augmented batch, Def. 2) ranging from the smallest to
# the largest value of the grid; the paper reads from its curves that increasing γ reduces the
# convergence rate of backbone augmented training, as Proposition 2 suggests.
#
# Here the runs are the `grid_image@ratio` stage (`bat.stages.grid`) on the tiny diffusion model: one BAT
# run per γ and the plain DreamBooth run of the same seed (plain does not depend on γ). Left: the
# weight difference ‖θ − θ^{A*}‖ to the oracle over the steps. Middle and right: the value at the
# last step against γ, for the weight distance and for the task metric (held-out loss).

# %% tags=["parameters"]
grid = "ratio"

# %%
import matplotlib.pyplot as plt
import pandas as pd

from bat import paths
from bat.analysis.runs import (band_summary, compare_final, matching, paired_difference, read_grid,
                              records)
from bat.io import write_json
from bat.analysis.plotting import REGIME_COLORS, plot_bands, save_figure

result = read_grid(paths.ROOT / "runs" / grid)
steps = result.steps[result.steps["regime"].isin(["plain", "bat"])]
evaluations = result.evaluations[result.evaluations["regime"].isin(["plain", "bat"])]
datasets = list(result.info["config"]["datasets"])
seeds = result.info["config"]["seeds"]
gammas = sorted(steps["gamma"].dropna().unique())
colormap = plt.get_cmap("viridis")
colors = {gamma: colormap(0.85 * index / max(len(gammas) - 1, 1)) for index, gamma in enumerate(gammas)}
bat_distance = band_summary(matching(steps, regime="bat"), "weight_difference", by=("dataset", "gamma"))
plain_distance = band_summary(matching(steps, regime="plain"), "weight_difference")
gammas

# %% [markdown]
# ## The final values per γ (mean and sd over seeds)
# `plain` has no γ (its row has an empty `gamma`). `heldout_loss`: noise-prediction loss on the
# style's held-out concepts. Lower is better for every column.

# %%
final_distance = compare_final(steps, ("weight_difference", "loss"), by=("dataset", "gamma", "regime"))
final_heldout = compare_final(evaluations, ("heldout_loss",), by=("dataset", "gamma", "regime"))
final = (final_heldout.merge(final_distance, on=["dataset", "gamma", "regime", "seeds", "step"])
         .filter(regex="^(?!.*_better_share$)").sort_values(["dataset", "regime", "gamma"]))
final

# %% [markdown]
# ## Weight difference to θ^{A*} against the steps and against γ
# Left: one line per γ (colour from small to large γ, band min–max over seeds), the plain run
# dashed. Middle: ‖θ − θ^{A*}‖ at the last step against γ; right: the held-out loss at the last
# step against γ. The horizontal line is the plain run (no backbone data), error bars are the sd
# over seeds. A faster convergence shows as a lower weight distance; the held-out loss says
# whether that also helps the task.

# %%
fig, axes = plt.subplots(len(datasets), 3, figsize=(13, 3.6 * len(datasets)), squeeze=False,
                         layout="constrained")
for row, dataset in enumerate(datasets):
    plot_bands(axes[row, 0], matching(bat_distance, dataset=dataset), hue="gamma", colors=colors,
               label="bat, γ = {}")
    plain = matching(plain_distance, dataset=dataset)
    axes[row, 0].plot(plain["step"], plain["mean"], color=REGIME_COLORS["plain"], linestyle="--",
                      label="plain")
    axes[row, 0].fill_between(plain["step"], plain["min"], plain["max"], color=REGIME_COLORS["plain"],
                              alpha=0.15, linewidth=0)
    axes[row, 0].set_title(f"{dataset} (dreambooth, seeds: {len(seeds)})")
    axes[row, 0].set_xlabel("step")
    axes[row, 0].set_ylabel(r"$\|\theta - \theta^{A*}\|$")
    axes[row, 0].legend()
    for column, score in ((1, "weight_difference"), (2, "heldout_loss")):
        bat = matching(final, dataset=dataset, regime="bat")
        axes[row, column].errorbar(bat["gamma"], bat[f"{score}_mean"], yerr=bat[f"{score}_sd"],
                                   color=REGIME_COLORS["bat"], marker="o", capsize=3, label="bat")
        axes[row, column].axhline(matching(final, dataset=dataset, regime="plain")[f"{score}_mean"].iloc[0],
                                  color=REGIME_COLORS["plain"], linestyle="--", label="plain")
        axes[row, column].set_xlabel("γ = n/k (share of D^A per batch)")
        axes[row, column].set_xticks(gammas)
        axes[row, column].ticklabel_format(axis="y", useOffset=False)
    axes[row, 1].set_ylabel(r"last step $\|\theta - \theta^{A*}\|$")
    axes[row, 2].set_ylabel("last step held-out loss")
    axes[row, 1].legend()
save_figure(fig, "fig06_ratio")

# %% [markdown]
# ## BAT minus plain at the last step, per γ (paired by seed)
# Below zero: the BAT run with that γ ends closer to θ^{A*} (or with a lower held-out loss) than
# the plain run of the same seed.

# %%
distance_gap = paired_difference(steps, "weight_difference", "bat")
distance_gap = distance_gap[distance_gap["step"] == distance_gap["step"].max()]
heldout_gap = paired_difference(evaluations, "heldout_loss", "bat")
heldout_gap = heldout_gap[heldout_gap["step"] == heldout_gap["step"].max()]
gaps = pd.concat([band_summary(distance_gap.assign(score="weight_difference"), "difference",
                               by=("dataset", "score", "gamma")),
                  band_summary(heldout_gap.assign(score="heldout_loss"), "difference",
                               by=("dataset", "score", "gamma"))], ignore_index=True)
gaps

# %%
write_json(paths.metrics("fig06_ratio"), {
    "weight_difference_bat": records(bat_distance),
    "weight_difference_plain": records(plain_distance),
    "final": records(final),
    "final_bat_minus_plain": records(gaps),
})
