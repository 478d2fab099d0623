# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fig. 4: the initial steps of DreamBooth, with and without BAT
#
# Paper Sec. 5.1.2: an adapter trained on D^A stands in for the optimum θ^{A*}; then a plain
# DreamBooth run and a BAT run start from the same backbone, and the weight difference
# ‖θ − θ^{A*}‖ is measured over the first steps. Here θ^{A*} is the `oracle_image@<style>_dreambooth`
# stage: a long plain run on the larger split of the style, disjoint from the few-shot D^A
# (as in Sec. 5.1.1), so neither run is guaranteed to converge to it.
#
# The runs are the `grid_image@dreambooth` stage (`bat.stages.grid`), shared with Fig. 1, 3, 9 and 10.
# Beside the paper's two curves: `random_matched`, random backbone samples from the pool BAT was
# offered, as many at every step as the BAT run took. Every curve is the mean over seeds, with the
# min–max band over seeds. Task metrics lead in Fig. 1 and Tab. 1; this figure is the paper's
# weight-distance view.

# %% tags=["parameters"]
grid = "dreambooth"
regimes = ["plain", "bat", "random_matched", "compute_matched"]

# %%
import matplotlib.pyplot as plt

from bat import paths
from bat.analysis.runs import (band_summary, compare_final, paired_difference, read_grid, records,
                              seconds_summary, selection_summary)
from bat.io import write_json
from bat.stages.notebook import check_kernel_parameters
from bat.analysis.plotting import plot_bands, save_figure

check_kernel_parameters("fig04_dreambooth_initial_steps", globals())
result = read_grid(paths.ROOT / "runs" / grid)
steps = result.steps[result.steps["regime"].isin(regimes)]
datasets = list(result.info["config"]["datasets"])
seeds = result.info["config"]["seeds"]
distance = band_summary(steps, "weight_difference")
losses = band_summary(steps, "loss")

# %% [markdown]
# ## Weight difference to θ^{A*} over the first steps
# Top: ‖θ − θ^{A*}‖ (mean over seeds, band min–max). Middle: the same, minus the plain run of the
# same seed (below zero: closer to θ^{A*} than plain). Bottom: the training loss of each step's
# batch; BAT's and random_matched's batches also hold backbone examples.

# %%
fig, axes = plt.subplots(3, len(datasets), figsize=(4.2 * len(datasets), 8), squeeze=False,
                         sharex="col")
for column, dataset in enumerate(datasets):
    plot_bands(axes[0, column], distance[distance["dataset"] == dataset])
    for regime in regimes[1:]:
        gap = paired_difference(steps, "weight_difference", regime)
        gap = band_summary(gap[gap["dataset"] == dataset].assign(regime=regime), "difference")
        plot_bands(axes[1, column], gap)
    axes[1, column].axhline(0, color="black", linewidth=0.8)
    plot_bands(axes[2, column], losses[losses["dataset"] == dataset])
    axes[0, column].set_title(f"{dataset} (dreambooth, {len(seeds)} seeds)")
    axes[0, column].set_ylabel(r"$\|\theta - \theta^{A*}\|$")
    axes[1, column].set_ylabel("minus plain, same seed")
    axes[2, column].set_ylabel("training loss")
    axes[2, column].set_xlabel("step")
axes[0, 0].legend()
save_figure(fig, "fig04_dreambooth_initial_steps")

# %% [markdown]
# ## The last step, per style and regime (over seeds)
# `*_better_share`: the share of seeds where the regime beats the plain run of the same seed.
# `heldout_loss`: noise-prediction loss of the model on the style's held-out concepts.

# %%
final_distance = compare_final(steps, ("weight_difference", "loss"), by=("dataset", "regime"))
evaluations = result.evaluations[result.evaluations["regime"].isin(regimes)]
final_heldout = compare_final(evaluations, ("heldout_loss",), by=("dataset", "regime"))
final = final_distance.merge(final_heldout, on=["dataset", "regime", "seeds", "step"])
final

# %% [markdown]
# ## How often Algorithm 1 checked Proposition 2, how often it held, and the time it took

# %%
selection = selection_summary(steps)
seconds = seconds_summary(steps)
selection, seconds

# %%
write_json(paths.metrics("fig04_dreambooth_initial_steps"), {
    "weight_difference": records(distance),
    "training_loss": records(losses),
    "final": records(final),
    "selection": records(selection),
    "seconds": records(seconds),
})
