# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fig. 1: personalization metrics, BAT vs random augmented training
#
# Paper Fig. 1: the trend of several personalization metrics, measured every 100 steps of a
# DreamBooth adaptation, for BAT and for random augmented training (random examples of D^B mixed
# in at the same ratio γ); in the paper all metrics favour BAT.
#
# Here the runs are the `grid_image@dreambooth` stage (`bat.stages.grid`), shared with Fig. 3, 4, 9 and
# 10: every style of the grid, every seed, evaluated every `evaluate_every` steps and once on the
# backbone before training (step 0). Beside the paper's two curves: `random_matched`, random
# backbone samples from the pool BAT was offered, as many at every step as the BAT run took. The
# scores are those of `bat.image.evaluation` on the style's held-out concepts; an arrow in the
# axis label says which direction is better (the paper's Tab. 1 arrows). Every curve is the mean
# over seeds, with the min–max band over seeds; the paper's trend lines are not fitted.

# %% tags=["parameters"]
grid = "dreambooth"
regimes = ["bat", "random", "random_matched"]
scores = ["cosine", "centroid_distance", "clip_cosine", "vendi"]

# %%
import matplotlib.pyplot as plt

from bat import paths
from bat.analysis.runs import (HIGHER_IS_BETTER, band_summary, compare_final, mean_sd_table,
                              read_grid, records)
from bat.io import write_json
from bat.stages.notebook import check_kernel_parameters
from bat.analysis.plotting import plot_bands, save_figure

check_kernel_parameters("fig01_metrics_vs_random", globals())
result = read_grid(paths.ROOT / "runs" / grid)
evaluations = result.evaluations[result.evaluations["regime"].isin(regimes)]
datasets = list(result.info["config"]["datasets"])
seeds = result.info["config"]["seeds"]
bands = {score: band_summary(evaluations, score) for score in scores}

# %% [markdown]
# ## The scores over training
# One row per style, one column per score; step 0 is the backbone, the same for every regime of a
# seed. ↑: higher is better, ↓: lower is better.

# %%
fig, axes = plt.subplots(len(datasets), len(scores), figsize=(3.4 * len(scores), 2.8 * len(datasets)),
                         squeeze=False, sharex=True, layout="constrained")
for row, dataset in enumerate(datasets):
    for column, score in enumerate(scores):
        summary = bands[score]
        plot_bands(axes[row, column], summary[summary["dataset"] == dataset])
        arrow = "↑" if HIGHER_IS_BETTER.get(score, True) else "↓"
        axes[row, column].set_ylabel(f"{score} {arrow}")
        axes[row, column].set_title(f"{dataset} ({len(seeds)} seeds)")
        axes[-1, column].set_xlabel("step")
axes[0, 0].legend()
save_figure(fig, "fig01_metrics_vs_random")

# %% [markdown]
# ## The last evaluation, per style and regime (over seeds)
# `*_better_share`: the share of seeds where the regime beats the `random` run of the same seed, in
# the direction of the score's arrow.

# %%
final = compare_final(evaluations, tuple(scores), reference="random", by=("dataset", "regime"))
final

# %%
mean_sd_table(final, tuple(scores), ("dataset", "regime", "seeds", "step"))

# %%
write_json(paths.metrics("fig01_metrics_vs_random"), {
    "bands": {score: records(bands[score]) for score in scores},
    "final": records(final),
})
