# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fig. 8: BAT's convergence against the batch size
#
# Paper App. D.4: DreamBooth with BAT at several batch sizes; the paper reads from its curves that
# the convergence rate grows with the batch size and conjectures that a larger batch carries more
# variety, the augmented backbone data included.
#
# Here the runs are the `grid_image@batch_size` stage (`bat.stages.grid`) on the tiny diffusion model: for
# each batch size (D^A examples per step) a plain run and a BAT run of the same seed. The primary
# measure is the **held-out loss**; ‖θ − θ^{A*}‖ is **movement** (lower: moved less, not converged).
# Every comparison is BAT − plain of the same seed at **equal steps** (the last step both were
# evaluated at), with its 95 % t-interval and the MDE.

# %% tags=["parameters"]
grid = "batch_size"

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
batch_sizes = sorted(steps["batch_size"].unique())
colormap = plt.get_cmap("plasma")
colors = {size: colormap(0.8 * index / max(len(batch_sizes) - 1, 1)) for index, size in enumerate(batch_sizes)}
curves = {
    "heldout_loss": level_curves(evaluations, "heldout_loss", by=("dataset", "batch_size", "regime")),
    "heldout_loss_minus_plain": difference_curves(evaluations, "heldout_loss", ["bat"],
                                                  by=("dataset", "batch_size")),
    "movement_minus_plain": difference_curves(steps, "weight_difference", ["bat"], by=("dataset", "batch_size")),
}
write_plots("fig08_batch_size", curves)
settings = [{"dataset": dataset, "batch_size": size} for dataset in datasets for size in batch_sizes]
heldout = results_frame(compare_regimes(grid, "heldout_loss", ["bat"], settings=settings))
movement = results_frame(compare_regimes(grid, "weight_difference", ["bat"], settings=settings, table="steps"))

# %% [markdown]
# ## BAT − plain per batch size, paired by seed, at equal steps
# Left: held-out loss, BAT solid and plain dashed, one colour per batch size (band min–max over
# seeds). Middle: BAT − plain in held-out loss at the last step both were evaluated at, against the
# batch size, with the 95 % t-interval (bars) and the MDE beside each point. Right: the same for
# ‖θ − θ^{A*}‖ (**movement**: below zero means BAT moved less, not that it converged).

# %%
fig, axes = plt.subplots(len(datasets), 3, figsize=(13, 3.6 * len(datasets)), squeeze=False,
                         layout="constrained")
for row, dataset in enumerate(datasets):
    levels = curves["heldout_loss"]
    for size in batch_sizes:
        for regime, style in (("bat", "-"), ("plain", "--")):
            curve = levels[levels["series"] == f"{dataset}/{size}/{regime}"]
            axes[row, 0].plot(curve["step"], curve["mean"], color=colors[size], linestyle=style,
                              label=f"{regime}, batch {size}")
            axes[row, 0].fill_between(curve["step"], curve["low"], curve["high"], color=colors[size],
                                      alpha=0.15, linewidth=0)
    axes[row, 0].set_title(f"{dataset} (dreambooth, {len(seeds)} seeds)")
    axes[row, 0].set_xlabel("step")
    axes[row, 0].set_ylabel("held-out loss")
    axes[row, 0].legend(ncols=2, fontsize=7)
    for column, (frame, label) in ((1, (heldout, "held-out loss, bat − plain")),
                                   (2, (movement, "movement, bat − plain"))):
        plot_effects(axes[row, column], frame[frame["dataset"] == dataset], "batch_size", label)
        axes[row, column].set_xscale("log", base=2)
        axes[row, column].set_xticks(batch_sizes, [str(size) for size in batch_sizes])
        axes[row, column].minorticks_off()
        axes[row, column].set_xlabel("batch size (D^A examples per step)")
save_figure(fig, "fig08_batch_size")

# %% [markdown]
# ## The comparisons per batch size: held-out loss first, then movement
# `effect`: mean over seeds of BAT − plain; `ci_low`/`ci_high`: its 95 % t-interval; `mde`: the
# smallest true difference this many seeds detect (α = 0.05, power 0.8); `step`: the step compared
# (equal steps). Verdicts for the claim "lower than plain".

# %%
pd.concat([heldout.assign(measure="held-out loss"), movement.assign(measure="movement")], ignore_index=True)

# %% [markdown]
# ## DVC metrics
# Headline: BAT − plain in held-out loss at the largest batch size, first style, equal steps.
# Secondary: the same in movement.

# %%
headline = compare_regimes(grid, "heldout_loss", ["bat"], settings=settings[-1:])[0]
secondary = compare_regimes(grid, "weight_difference", ["bat"], settings=settings[-1:], table="steps")[0]
write_metrics("fig08_batch_size", headline.metrics(), secondary.metrics())
