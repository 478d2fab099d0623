# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fig. 7: overfitting, the deep-retention control first, then BAT
#
# Paper App. D.3: DreamBooth is trained deliberately long so that it overfits its few-shot D^A,
# once plainly and once with BAT; the paper reads from its curves that BAT regulates overfitting
# better than plain DreamBooth.
#
# The runs are the `grid_image@overfitting` stage (`bat.stages.grid`): DreamBooth trained longer and
# at a higher learning rate than the other grids. Before any claim about BAT, this grid carries
# **positive control (ii), deep retention**: at a rate where plain DreamBooth
# forgets, random augmentation with D^B must keep a lower loss on OpenMoji concepts held out of D^B
# (`retention_loss`, the backbone's own distribution) than plain. If its interval does not exclude
# zero, the experiment is not sensitive enough to detect what augmentation does, and the BAT rows
# below cannot be read as evidence either way.
#
# Every comparison is the per-seed difference regime − plain at **equal steps** (the last step both
# were evaluated at) with its 95 % t-interval and the minimum detectable effect (MDE). ‖θ − θ^{A*}‖
# is **movement**, not convergence.

# %% tags=["parameters"]
grid = "overfitting"
regimes = ["plain", "random", "bat"]

# %%
import pandas as pd

from bat import paths
from bat.analysis.claims import compare_regimes, results_frame
from bat.analysis.outputs import difference_curves, level_curves, write_metrics, write_plots
from bat.analysis.plotting import plot_curve_rows, save_figure
from bat.analysis.runs import read_grid
from bat.stages.notebook import check_kernel_parameters

check_kernel_parameters("fig07_overfitting", globals())

result = read_grid(paths.ROOT / "runs" / grid).only(regimes)
steps, evaluations, datasets, seeds = result.steps, result.evaluations, result.datasets, result.seeds
others = [r for r in result.regimes if r != "plain"]
curves = {
    "retention_loss": level_curves(evaluations, "retention_loss"),
    "retention_loss_minus_plain": difference_curves(evaluations, "retention_loss", others),
    "heldout_loss": level_curves(evaluations, "heldout_loss"),
    "heldout_loss_minus_plain": difference_curves(evaluations, "heldout_loss", others),
    "movement_minus_plain": difference_curves(steps, "weight_difference", others),
    "training_loss": level_curves(steps, "loss"),
}
write_plots("fig07_overfitting", curves)

# %% [markdown]
# ## Retention, held-out loss, movement and training loss over the whole run
# Levels: mean over seeds, band min–max over seeds. "− plain": regime − plain of the same seed,
# mean with its 95 % t-interval (below zero: lower than plain). Overfitting shows as a held-out
# loss that falls and then rises while the training loss keeps falling; forgetting as a rising
# retention loss.

# %%
rows = [("retention_loss", "retention loss"), ("retention_loss_minus_plain", "retention − plain"),
        ("heldout_loss", "held-out loss"), ("heldout_loss_minus_plain", "held-out loss − plain"),
        ("movement_minus_plain", "movement − plain"), ("training_loss", "training loss")]
fig, axes = plot_curve_rows(curves, rows, datasets, f"{{dataset}} (dreambooth, {len(seeds)} seeds)")
axes[0, 0].legend(fontsize=7)
save_figure(fig, "fig07_overfitting")

# %% [markdown]
# ## Per-seed comparisons with plain at equal steps: the control first
# `effect`: mean over seeds of regime − plain; `ci_low`/`ci_high`: its 95 % t-interval; `mde`: the
# smallest true difference this many seeds detect (α = 0.05, power 0.8); `step`: the step compared.
# Verdicts for the claim "lower than plain".

# %%
settings = [{"dataset": dataset} for dataset in datasets]
control = results_frame(compare_regimes(grid, "retention_loss", ["random"], settings=settings))
heldout = results_frame(compare_regimes(grid, "heldout_loss", others, settings=settings))
retention = results_frame(compare_regimes(grid, "retention_loss", [r for r in others if r != "random"],
                                          settings=settings))
pd.concat([control.assign(measure="retention loss (control ii)"),
           retention.assign(measure="retention loss"), heldout.assign(measure="held-out loss")],
          ignore_index=True)

# %% [markdown]
# ## Where the held-out loss is lowest, and where it ends (mean over seeds)
# `best_step`: the evaluated step with the lowest mean held-out loss (0: training never improved on
# the backbone); `rise_after_best`: the loss at the last step minus that minimum.

# %%
levels = curves["heldout_loss"]
best = levels.loc[levels.groupby("series")["mean"].idxmin(), ["series", "step", "mean"]]
last = levels.loc[levels.groupby("series")["step"].idxmax(), ["series", "step", "mean"]]
overfitting = best.merge(last, on="series", suffixes=("_best", "_last"))
overfitting["rise_after_best"] = overfitting["mean_last"] - overfitting["mean_best"]
overfitting

# %% [markdown]
# ## DVC metrics
# Headline: positive control (ii), random − plain in retention loss, first style, equal steps.
# Secondary: BAT − plain in held-out loss, same style and step.

# %%
headline = compare_regimes(grid, "retention_loss", ["random"], settings=settings[:1])[0]
secondary = compare_regimes(grid, "heldout_loss", ["bat"], settings=settings[:1])[0]
write_metrics("fig07_overfitting", headline.metrics(), secondary.metrics())
