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
# run per γ and the plain DreamBooth run of the same seed (plain does not depend on γ). The primary
# measure is the **held-out loss**; ‖θ − θ^{A*}‖ is **movement** (lower: moved less, not converged).
# Every comparison is BAT − plain of the same seed at **equal steps** (the last step both were
# evaluated at), with its 95 % t-interval and the MDE.

# %% tags=["parameters"]
grid = "ratio"

# %%
import matplotlib.pyplot as plt
import pandas as pd

from bat import paths
from bat.analysis.claims import compare_regimes, results_frame
from bat.analysis.outputs import difference_curves, level_curves, write_metrics, write_plots
from bat.analysis.plotting import plot_effects, save_figure
from bat.analysis.runs import read_grid

result = read_grid(paths.ROOT / "runs" / grid).only(["plain", "bat"])
steps, evaluations, datasets, seeds = result.steps, result.evaluations, result.datasets, result.seeds
gammas = sorted(steps["gamma"].dropna().unique())
colormap = plt.get_cmap("viridis")
colors = {gamma: colormap(0.85 * index / max(len(gammas) - 1, 1)) for index, gamma in enumerate(gammas)}
curves = {
    "heldout_loss": level_curves(evaluations, "heldout_loss", by=("dataset", "gamma", "regime")),
    "heldout_loss_minus_plain": difference_curves(evaluations, "heldout_loss", ["bat"], by=("dataset", "gamma")),
    "movement_minus_plain": difference_curves(steps, "weight_difference", ["bat"], by=("dataset", "gamma")),
}
write_plots("fig06_ratio", curves)
settings = [{"dataset": dataset, "gamma": gamma} for dataset in datasets for gamma in gammas]
heldout = results_frame(compare_regimes(grid, "heldout_loss", ["bat"], settings=settings))
movement = results_frame(compare_regimes(grid, "weight_difference", ["bat"], settings=settings, table="steps"))
gammas

# %% [markdown]
# ## BAT − plain per γ, paired by seed, at equal steps
# Left: BAT − plain in held-out loss over the steps, one line per γ (colour from small to large γ),
# mean with its 95 % t-interval over seeds. Middle: the same at the last step both were evaluated
# at, against γ, with the 95 % interval (bars) and the MDE printed beside each point. Right: the
# same for ‖θ − θ^{A*}‖ (**movement**: below zero means BAT moved less, not that it converged).
# Below zero: BAT lower than the plain run of the same seed.

# %%
fig, axes = plt.subplots(len(datasets), 3, figsize=(13, 3.6 * len(datasets)), squeeze=False,
                         layout="constrained")
for row, dataset in enumerate(datasets):
    table = curves["heldout_loss_minus_plain"]
    for gamma in gammas:
        curve = table[table["series"] == f"{dataset}/{gamma}/bat"]
        axes[row, 0].plot(curve["step"], curve["mean"], color=colors[gamma], label=f"γ = {gamma}")
        axes[row, 0].fill_between(curve["step"], curve["low"], curve["high"], color=colors[gamma],
                                  alpha=0.15, linewidth=0)
    axes[row, 0].set_title(f"{dataset} (dreambooth, {len(seeds)} seeds)")
    axes[row, 0].set_xlabel("step")
    axes[row, 0].set_ylabel("held-out loss, bat − plain")
    axes[row, 0].legend(fontsize=7)
    for column, (frame, label) in ((1, (heldout, "held-out loss, bat − plain")),
                                   (2, (movement, "movement, bat − plain"))):
        plot_effects(axes[row, column], frame[frame["dataset"] == dataset], "gamma", label)
        axes[row, column].set_xlabel("γ = n/k (share of D^A per batch)")
        axes[row, column].set_xticks(gammas)
save_figure(fig, "fig06_ratio")

# %% [markdown]
# ## The comparisons per γ: held-out loss first, then movement
# `effect`: mean over seeds of BAT − plain; `ci_low`/`ci_high`: its 95 % t-interval; `mde`: the
# smallest true difference this many seeds detect (α = 0.05, power 0.8); `step`: the step compared
# (equal steps). Verdicts for the claim "lower than plain".

# %%
pd.concat([heldout.assign(measure="held-out loss"), movement.assign(measure="movement")], ignore_index=True)

# %% [markdown]
# ## DVC metrics
# Headline: BAT − plain in held-out loss at the smallest γ (the most backbone data), first style,
# equal steps. Secondary: the same in movement.

# %%
headline = compare_regimes(grid, "heldout_loss", ["bat"], settings=settings[:1])[0]
secondary = compare_regimes(grid, "weight_difference", ["bat"], settings=settings[:1], table="steps")[0]
write_metrics("fig06_ratio", headline.metrics(), secondary.metrics())
