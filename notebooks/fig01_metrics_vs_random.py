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
# backbone before training (step 0). Beside the paper's two curves: `random_matched` (random
# backbone samples from BAT's pool, as many at every step as the BAT run took),
# oracle-free BAT, plain DreamBooth and DreamBooth with its prior-preservation loss. The held-out
# loss (noise prediction on the style's held-out concepts) leads; the personalization scores of
# `bat.image.evaluation` follow, an arrow in the axis label saying which direction is better (the
# paper's Tab. 1 arrows). Every curve is a per-seed difference regime − random of the same seed
# (same data order, noise and initialisation): the mean over seeds with its 95 % t-interval; the
# table compares at **equal steps** (the last step both were evaluated at) and prints the MDE.

# %% tags=["parameters"]
grid = "dreambooth"
regimes = ["bat", "random", "random_matched", "bat_oracle_free", "plain", "prior_preservation"]
scores = ["cosine", "centroid_distance", "clip_cosine", "vendi"]

# %%
import matplotlib.pyplot as plt
import pandas as pd

from bat import paths
from bat.analysis.claims import compare_regimes, results_frame
from bat.analysis.outputs import difference_curves, write_metrics, write_plot
from bat.analysis.plotting import plot_series, save_figure
from bat.analysis.runs import HIGHER_IS_BETTER, read_grid
from bat.stages.notebook import check_kernel_parameters

check_kernel_parameters("fig01_metrics_vs_random", globals())
result = read_grid(paths.ROOT / "runs" / grid)
present = [r for r in regimes if r in set(result.evaluations["regime"])]
evaluations = result.evaluations[result.evaluations["regime"].isin(present)]
datasets = list(result.info["config"]["datasets"])
seeds = result.info["config"]["seeds"]
measures = ["heldout_loss", *scores]
others = [r for r in present if r != "random"]
curves = {measure: difference_curves(evaluations, measure, others, reference="random") for measure in measures}
for measure, table in curves.items():
    write_plot("fig01_metrics_vs_random", f"{measure}_minus_random", table)

# %% [markdown]
# ## Each regime minus random augmentation, over training
# One row per style, one column per measure: regime − random of the same seed, mean over seeds
# with its 95 % t-interval (none with one seed); step 0 is the backbone, the same for every regime.
# ↑: higher is better, ↓: lower is better.

# %%
fig, axes = plt.subplots(len(datasets), len(measures), figsize=(3.4 * len(measures), 2.8 * len(datasets)),
                         squeeze=False, sharex=True, layout="constrained")
for row, dataset in enumerate(datasets):
    for column, measure in enumerate(measures):
        table = curves[measure]
        plot_series(axes[row, column], table, f"{dataset}/")
        axes[row, column].axhline(0, color="black", linewidth=0.8)
        arrow = "↑" if HIGHER_IS_BETTER.get(measure, True) else "↓"
        axes[row, column].set_ylabel(f"{measure} {arrow}, − random")
        axes[row, column].set_title(f"{dataset} ({len(seeds)} seeds)")
        axes[-1, column].set_xlabel("step")
axes[0, 0].legend(fontsize=7)
save_figure(fig, "fig01_metrics_vs_random")

# %% [markdown]
# ## The comparisons with random augmentation, at equal steps
# `effect`: mean over seeds of regime − random; `ci_low`/`ci_high`: its 95 % t-interval; `mde`: the
# smallest true difference this many seeds detect (α = 0.05, power 0.8); `claimed`: the better
# direction; `verdict` for "better than random" in that direction.

# %%
settings = [{"dataset": dataset} for dataset in datasets]
rows = []
for measure in measures:
    direction = "higher" if HIGHER_IS_BETTER.get(measure, True) else "lower"
    rows.append(results_frame(compare_regimes(grid, measure, others, reference="random", settings=settings,
                                              direction=direction)).assign(measure=measure, claimed=direction))
comparisons = pd.concat(rows, ignore_index=True)
comparisons

# %% [markdown]
# ## DVC metrics
# Headline: BAT − random in held-out loss, first style, equal steps. Secondary: BAT − random in
# image-feature cosine (claimed higher), same style and step.

# %%
headline = compare_regimes(grid, "heldout_loss", ["bat"], reference="random", settings=settings[:1])[0]
secondary = compare_regimes(grid, "cosine", ["bat"], reference="random", settings=settings[:1],
                            direction="higher")[0]
write_metrics("fig01_metrics_vs_random", headline.metrics(), secondary.metrics())
