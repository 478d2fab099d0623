# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fig. 3: weight difference over the full run, BAT vs random augmented training
#
# Paper Fig. 3: the weight difference ‖θ − θ^{A*}‖ to the adaptation optimum over the entire
# DreamBooth training, for BAT and for random augmented training, on deliberately small adaptation
# sets; in the paper, when BAT meets the condition of Proposition 2, its weight difference stays
# below that of random augmented training throughout.
#
# Here the runs are the `grid_image@dreambooth` stage (`bat.stages.grid`), shared with Fig. 1, 4, 9 and
# 10, over all of their `steps`; θ^{A*} is the `oracle_image@<style>_dreambooth` stage (see Fig. 4).
# Beside the paper's two curves: `random_matched`, random backbone samples from the pool BAT was
# offered, as many at every step as the BAT run took. Every curve is the mean over seeds, with the
# min–max band over seeds.

# %% tags=["parameters"]
grid = "dreambooth"
regimes = ["bat", "random", "random_matched"]

# %%
import matplotlib.pyplot as plt
import pandas as pd

from bat import paths
from bat.analysis.runs import (band_summary, compare_final, paired_difference, read_grid, records,
                              selection_summary)
from bat.io import write_json
from bat.stages.notebook import check_kernel_parameters
from bat.analysis.plotting import plot_bands, save_figure

check_kernel_parameters("fig03_weight_difference_vs_random", globals())
result = read_grid(paths.ROOT / "runs" / grid)
steps = result.steps[result.steps["regime"].isin(regimes)]
datasets = list(result.info["config"]["datasets"])
seeds = result.info["config"]["seeds"]
distance = band_summary(steps, "weight_difference")
gaps = []
for regime in regimes:
    if regime != "random":
        gaps.append(band_summary(paired_difference(steps, "weight_difference", regime, reference="random")
                                 .assign(regime=regime), "difference"))
gaps = pd.concat(gaps, ignore_index=True)

# %% [markdown]
# ## Weight difference to θ^{A*} over training
# Top: ‖θ − θ^{A*}‖ (mean over seeds, band min–max). Bottom: the same, minus the `random` run of the
# same seed (below zero: closer to θ^{A*} than random augmented training).

# %%
fig, axes = plt.subplots(2, len(datasets), figsize=(4.2 * len(datasets), 5.6), squeeze=False,
                         sharex="col")
for column, dataset in enumerate(datasets):
    plot_bands(axes[0, column], distance[distance["dataset"] == dataset])
    plot_bands(axes[1, column], gaps[gaps["dataset"] == dataset])
    axes[1, column].axhline(0, color="black", linewidth=0.8)
    axes[0, column].set_title(f"{dataset} (dreambooth, {len(seeds)} seeds)")
    axes[0, column].set_ylabel(r"$\|\theta - \theta^{A*}\|$")
    axes[1, column].set_ylabel("minus random, same seed")
    axes[1, column].set_xlabel("step")
axes[0, 0].legend()
save_figure(fig, "fig03_weight_difference_vs_random")

# %% [markdown]
# ## The last step, per style and regime (over seeds)
# `weight_difference_better_share`: the share of seeds where the regime ends closer to θ^{A*} than
# the `random` run of the same seed.

# %%
final = compare_final(steps, ("weight_difference",), reference="random", by=("dataset", "regime"))
final

# %% [markdown]
# ## How often Algorithm 1 checked Proposition 2 in the BAT runs, and how often it held

# %%
selection = selection_summary(steps)
selection

# %%
write_json(paths.metrics("fig03_weight_difference_vs_random"), {
    "weight_difference": records(distance),
    "minus_random": records(gaps),
    "final": records(final),
    "selection": records(selection),
})
