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
# Paper Sec. 5.1.2 compares a plain DreamBooth run with a BAT run from the same backbone. The
# primary endpoint here is the **held-out loss**: noise-prediction loss on the style's held-out
# concepts over fixed noise/timestep draws (the same draws for every run). The paper's
# ‖θ − θ^{A*}‖ to an oracle θ^{A*} (the `oracle_image@<style>_dreambooth` stage: a long plain run on
# the larger split of the style) is shown as **movement**: it rises from step 0 in every regime, so
# lower means "moved less", not "converged".
#
# The runs are the `grid_image@dreambooth` stage (`bat.stages.grid`), shared with Fig. 1, 3, 9 and
# 10. Beside plain DreamBooth and BAT: DreamBooth with its prior-preservation loss
# (`prior_preservation`, the paper's DreamBooth baseline), oracle-free BAT (`bat_oracle_free`: a
# held-out part of D^A stands in for θ^{A*}), random samples from BAT's pool, as many
# at every step as BAT took (`random_matched`), and plain training given the extra steps BAT's
# selection time would have paid for (`compute_matched`).
#
# Every comparison is the per-seed difference of two regimes (runs of one seed share data order,
# noise and initialisation) with its 95 % t-interval and the minimum detectable effect (MDE), at
# the alignment its `alignment` column names: every regime − plain at **equal steps** (the last
# step both were evaluated at); `compute_matched` − plain at each run's last step (what the extra
# steps did to plain); and BAT − `compute_matched` at **equal wall time**, the claims table's row
# (`bat.analysis.claims`): BAT at its last step, `compute_matched` at whichever of its evaluated
# steps has the lowest held-out loss. `compute_matched` is evaluated at the grid's evaluation
# interval along its whole longer run and at its end, so when its best step is the grid's last
# one, where it still equals plain, that row is BAT − plain: none of its extra steps lowered
# plain's held-out loss.

# %% tags=["parameters"]
grid = "dreambooth"
regimes = ["plain", "prior_preservation", "bat", "bat_oracle_free", "random_matched", "compute_matched"]

# %%
import matplotlib.pyplot as plt
import pandas as pd

from bat import paths
from bat.analysis.claims import ALIGNMENTS, compare_regimes, results_frame
from bat.analysis.outputs import difference_curves, level_curves, write_metrics, write_plots
from bat.analysis.plotting import REGIME_COLORS, plot_curve_rows, save_figure
from bat.analysis.runs import SELECTING_REGIMES, read_grid, selection_summary
from bat.stages.notebook import check_kernel_parameters

check_kernel_parameters("fig04_dreambooth_initial_steps", globals())
result = read_grid(paths.ROOT / "runs" / grid).only(regimes)
steps, evaluations, datasets, seeds = result.steps, result.evaluations, result.datasets, result.seeds
present = result.regimes
others = [r for r in present if r != "plain"]
curves = {
    "heldout_loss": level_curves(evaluations, "heldout_loss"),
    "heldout_loss_minus_plain": difference_curves(evaluations, "heldout_loss", others),
    "movement_minus_plain": difference_curves(steps, "weight_difference", others),
    "training_loss": level_curves(steps, "loss"),
}
write_plots("fig04_dreambooth_initial_steps", curves)

# %% [markdown]
# ## Held-out loss, its per-seed difference to plain, movement and training loss
# Row 1: held-out loss (mean over seeds, band min–max over seeds). Row 2: regime − plain of the
# same seed, mean with the 95 % t-interval (below zero: lower held-out loss than plain). Row 3:
# movement ‖θ − θ^{A*}‖ − plain of the same seed, 95 % interval. Row 4: the training loss of each
# step's batch (BAT's, random_matched's and prior preservation's batches also hold other examples).

# %%
rows = [("heldout_loss", "held-out loss"), ("heldout_loss_minus_plain", "held-out loss − plain"),
        ("movement_minus_plain", "movement − plain"), ("training_loss", "training loss")]
fig, axes = plot_curve_rows(curves, rows, datasets, f"{{dataset}} (dreambooth, {len(seeds)} seeds)")
axes[0, 0].legend(fontsize=7)
axes[1, 0].legend(fontsize=7)
save_figure(fig, "fig04_dreambooth_initial_steps")

# %% [markdown]
# ## Per-seed comparisons with plain: held-out loss first, then movement
# `effect` is the mean over seeds of regime − plain, `ci_low`/`ci_high` its 95 % t-interval, `mde`
# the smallest true difference this many seeds would detect (α = 0.05, power 0.8), `step` the step
# compared. Verdict for the claim "lower than plain".

# %%
settings = [{"dataset": dataset} for dataset in datasets]
matched = [r for r in others if r == "compute_matched"]
heldout = pd.concat([
    results_frame(compare_regimes(grid, "heldout_loss", [r for r in others if r != "compute_matched"],
                                  settings=settings)).assign(alignment=ALIGNMENTS["steps"]),
    results_frame(compare_regimes(grid, "heldout_loss", matched, settings=settings, align="final"))
    .assign(alignment=ALIGNMENTS["final"]),
    results_frame(compare_regimes(grid, "heldout_loss", ["bat"] if matched and "bat" in present else [],
                                  reference="compute_matched", settings=settings, align="budget"))
    .assign(alignment=ALIGNMENTS["budget"]),
], ignore_index=True)
movement = results_frame(compare_regimes(grid, "weight_difference", others, settings=settings, table="steps"))
pd.concat([heldout.assign(measure="held-out loss"),
           movement.assign(measure="movement", alignment=ALIGNMENTS["steps"])], ignore_index=True)

# %% [markdown]
# ## Algorithm 1's checks in the BAT runs
# Top: whether the condition of Proposition 2 (eq. 12) held at each check; middle: whether the
# check reselected the backbone examples; bottom: the seconds each check took. One marker per seed.

# %%
bat_runs = [r for r in SELECTING_REGIMES if r in present]
checks = steps[steps["regime"].isin(bat_runs) & steps["condition"].notna()].copy()
checks["condition"] = checks["condition"].astype(str).str.lower() == "true"
checks["reselected"] = checks["reselected"].astype(str).str.lower() == "true"
fig, axes = plt.subplots(3, len(datasets), figsize=(4.4 * len(datasets), 6), squeeze=False, sharex="col")
for column, dataset in enumerate(datasets):
    for regime in bat_runs:
        mine = checks[(checks["dataset"] == dataset) & (checks["regime"] == regime)]
        color = REGIME_COLORS.get(regime)
        axes[0, column].scatter(mine["step"], mine["condition"].astype(int), color=color, label=regime, s=14)
        axes[1, column].scatter(mine["step"], mine["reselected"].astype(int), color=color, s=14)
        axes[2, column].scatter(mine["step"], mine["selection_seconds"], color=color, s=14)
    axes[0, column].set_yticks([0, 1], ["failed", "held"])
    axes[1, column].set_yticks([0, 1], ["kept", "reselected"])
    axes[0, column].set_title(f"{dataset}: Algorithm 1's checks")
    axes[0, column].set_ylabel("eq. 12")
    axes[2, column].set_ylabel("selection seconds")
    axes[-1, column].set_xlabel("step")
axes[0, 0].legend(fontsize=7)
save_figure(fig, "fig04_algorithm1_checks")
selection = selection_summary(steps)
selection

# %% [markdown]
# ## DVC metrics
# Headline: BAT − plain in held-out loss, first style, equal steps. Secondary: BAT − DreamBooth
# with prior preservation in held-out loss, same style and step.

# %%
headline = compare_regimes(grid, "heldout_loss", ["bat"], settings=settings[:1])[0]
secondary = compare_regimes(grid, "heldout_loss", ["bat"], reference="prior_preservation", settings=settings[:1])
write_metrics("fig04_dreambooth_initial_steps", headline.metrics(), secondary[0].metrics() if secondary else None)
