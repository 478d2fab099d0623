# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fig. 3: movement over the full run, BAT vs random augmented training, with the held-out loss first
#
# Paper Fig. 3: the weight difference ‖θ − θ^{A*}‖ to the adaptation optimum over the entire
# DreamBooth training, for BAT and for random augmented training; in the paper, when BAT meets the
# condition of Proposition 2, its weight difference stays below that of random augmented training.
#
# Here the runs are the `grid_image@dreambooth` stage (`bat.stages.grid`), shared with Fig. 1, 4, 9
# and 10; θ^{A*} is the `oracle_image@<style>_dreambooth` stage (see Fig. 4). ‖θ − θ^{A*}‖ rises from
# step 0 in every regime, so it is read as **movement** (lower: moved less), not convergence; the
# **held-out loss** (noise prediction on the style's held-out concepts) is shown first. Beside the
# paper's two curves: `random_matched` (random samples of BAT's pool, as many at every
# step as BAT took). Every curve is regime − random of the same seed, mean over seeds with its 95 %
# t-interval; the table compares at **equal steps** (the last step both have) and prints the MDE.

# %% tags=["parameters"]
grid = "dreambooth"
regimes = ["bat", "random", "random_matched"]

# %%
import pandas as pd

from bat import paths
from bat.analysis.claims import compare_regimes, results_frame
from bat.analysis.outputs import difference_curves, level_curves, write_metrics, write_plots
from bat.analysis.plotting import plot_curve_rows, save_figure
from bat.analysis.runs import read_grid, selection_summary
from bat.stages.notebook import check_kernel_parameters

check_kernel_parameters("fig03_weight_difference_vs_random", globals())
result = read_grid(paths.ROOT / "runs" / grid).only(regimes)
steps, evaluations, datasets, seeds = result.steps, result.evaluations, result.datasets, result.seeds
others = [r for r in regimes if r != "random"]
curves = {
    "heldout_loss_minus_random": difference_curves(evaluations, "heldout_loss", others, reference="random"),
    "movement": level_curves(steps, "weight_difference"),
    "movement_minus_random": difference_curves(steps, "weight_difference", others, reference="random"),
}
write_plots("fig03_weight_difference_vs_random", curves)

# %% [markdown]
# ## Held-out loss and movement, against random augmented training
# Row 1: held-out loss − random of the same seed (95 % t-interval). Row 2: movement ‖θ − θ^{A*}‖
# (mean over seeds, band min–max). Row 3: movement − random of the same seed (95 % t-interval).
# Below zero: lower than random augmented training.

# %%
rows = [("heldout_loss_minus_random", "held-out loss − random"), ("movement", "movement"),
        ("movement_minus_random", "movement − random")]
fig, axes = plot_curve_rows(curves, rows, datasets, f"{{dataset}} (dreambooth, {len(seeds)} seeds)")
axes[1, 0].legend(fontsize=7)
save_figure(fig, "fig03_weight_difference_vs_random")

# %% [markdown]
# ## The comparisons with random augmentation at equal steps: held-out loss first
# `effect`: mean over seeds of regime − random; `ci_low`/`ci_high`: its 95 % t-interval; `mde`: the
# smallest true difference this many seeds detect (α = 0.05, power 0.8); `step`: the step compared.
# Verdicts for "lower than random".

# %%
settings = [{"dataset": dataset} for dataset in datasets]
pd.concat([
    results_frame(compare_regimes(grid, "heldout_loss", others, reference="random", settings=settings))
    .assign(measure="held-out loss"),
    results_frame(compare_regimes(grid, "weight_difference", others, reference="random", settings=settings,
                                  table="steps")).assign(measure="movement"),
], ignore_index=True)

# %% [markdown]
# ## How often Algorithm 1 checked Proposition 2 in the BAT runs, and how often it held

# %%
selection = selection_summary(steps)
selection

# %% [markdown]
# ## DVC metrics
# Headline: BAT − random in held-out loss, first style, equal steps. Secondary: BAT − random in
# movement, same style, equal steps.

# %%
headline = compare_regimes(grid, "heldout_loss", ["bat"], reference="random", settings=settings[:1])[0]
movement = compare_regimes(grid, "weight_difference", ["bat"], reference="random", settings=settings[:1],
                           table="steps")[0]
write_metrics("fig03_weight_difference_vs_random", headline.metrics(), movement.metrics())
