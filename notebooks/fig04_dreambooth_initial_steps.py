# %% [markdown]
# # Fig. 4: the initial steps of DreamBooth, with and without BAT
#
# Paper Sec. 5.1.2: an adapter trained on D^A stands in for the optimum θ^{A*}; then a plain
# DreamBooth run and a BAT run start from the same backbone, and the weight difference
# ‖θ − θ^{A*}‖ is measured over the first steps. Here θ^{A*} is the `oracle_image@<style>_dreambooth`
# stage: a long plain run on the larger split of the style, disjoint from the few-shot D^A
# (as in Sec. 5.1.1), so neither run is guaranteed to converge to it.
#
# Beside the paper's two curves: `random_matched`, random backbone samples, as many at every step
# as the BAT run took (optionally `compute_matched`, plain training given the extra steps that
# selection's wall time would have paid for). Every curve is the mean over seeds, with the
# min–max band over seeds. BAT offers Algorithm 1 a fixed random pool of D^B per seed and checks
# Proposition 2 every `score_every` steps: per-sample gradients over all UNet weights are the cost
# (see `bat.experiments`).

# %% tags=["parameters"]
styles = ["noto", "emojione"]
seeds = [0, 1, 2]
regimes = ["plain", "bat", "random_matched"]
adapter = "dreambooth"
steps = 20
batch_size = 4
learning_rate = 0.0001
gamma = 0.5
log_every = 2
pool_size = 16
score_every = 20
damping = 0.001

# %%
import json

import matplotlib.pyplot as plt

from bat import paths
from bat.config import from_namespace
from bat.experiments import InitialStepsConfig, band_summary, final_comparison, initial_steps_runs
from bat.io import write_json
from bat.plotting import REGIME_COLORS, save_figure

config = from_namespace(InitialStepsConfig, globals(), "fig04_dreambooth_initial_steps")

# %%
frame = initial_steps_runs(config, paths.MODELS / "runs" / "fig04")
summary = band_summary(frame)
losses = band_summary(frame, "loss")
comparison = final_comparison(frame)

# %% [markdown]
# ## Weight difference to θ^{A*} over the first steps
# Top: ‖θ − θ^{A*}‖ (mean over seeds, band min–max). Bottom: the training loss of each step's
# batch (mean over seeds); BAT's and random_matched's batches also hold backbone examples.

# %%
fig, axes = plt.subplots(2, len(config.styles), figsize=(4.2 * len(config.styles), 6),
                         squeeze=False, sharex="col")
for column, style in enumerate(config.styles):
    for regime in config.regimes:
        curve = summary[(summary["style"] == style) & (summary["regime"] == regime)]
        axes[0, column].plot(curve["step"], curve["mean"], color=REGIME_COLORS[regime], label=regime)
        axes[0, column].fill_between(curve["step"], curve["min"], curve["max"],
                                     color=REGIME_COLORS[regime], alpha=0.2, linewidth=0)
        loss = losses[(losses["style"] == style) & (losses["regime"] == regime)]
        axes[1, column].plot(loss["step"], loss["mean"], color=REGIME_COLORS[regime], label=regime)
    axes[0, column].set_title(f"{style} ({config.adapter}, {len(config.seeds)} seeds)")
    axes[0, column].set_ylabel(r"$\|\theta - \theta^{A*}\|$")
    axes[1, column].set_ylabel("training loss")
    axes[1, column].set_xlabel("step")
axes[0, 0].legend()
save_figure(fig, "fig04_dreambooth_initial_steps")

# %% [markdown]
# ## The last step, per style and regime (over seeds)
# `share_below_plain`: the share of seeds whose last weight difference is below the plain run's
# of the same seed at the same step. `heldout_loss`: noise-prediction loss of the final model on
# the style's held-out concepts (one fixed noise draw).

# %%
comparison

# %% [markdown]
# ## How often Algorithm 1 reselected, and whether Proposition 2 held when it was checked

# %%
checks = frame[(frame["regime"] == "bat") & frame["condition"].notna()]
selection = (checks.groupby("style")
             .agg(checks=("condition", "size"), condition_held=("condition", "sum"),
                  reselections=("reselected", "sum"))
             .reset_index())
selection

# %%
write_json(paths.metrics("fig04_dreambooth_initial_steps"), {
    "weight_difference": json.loads(summary.to_json(orient="records")),
    "training_loss": json.loads(losses.to_json(orient="records")),
    "final": json.loads(comparison.to_json(orient="records")),
    "selection": json.loads(selection.to_json(orient="records")),
    "seconds": json.loads(frame.groupby("regime")[["seconds", "selection_seconds"]].sum()
                          .to_json(orient="index")),
})
