# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fig. 7: overfitting, with and without BAT
#
# Paper App. D.3: DreamBooth is trained deliberately long so that it overfits its few-shot D^A,
# once plainly and once with BAT; the paper reads from its curves that BAT regulates overfitting
# better than plain DreamBooth across datasets.
#
# Here the runs are the `grid_image@overfitting` stage (`bat.stages.grid`): the tiny diffusion model,
# trained longer and at a higher learning rate than the other grids, one seed per style. One
# column per style. Overfitting shows as a held-out loss that falls and then rises again while
# the training loss keeps falling; the rows below follow the same runs in weight distance to the
# oracle θ^{A*} and in the personalization scores of the samples.

# %% tags=["parameters"]
grid = "overfitting"

# %%
import matplotlib.pyplot as plt

from bat import paths
from bat.analysis.runs import band_summary, matching, read_grid, records
from bat.io import write_json
from bat.analysis.plotting import plot_bands, save_figure

result = read_grid(paths.ROOT / "runs" / grid)
steps = result.steps[result.steps["regime"].isin(["plain", "bat"])]
evaluations = result.evaluations[result.evaluations["regime"].isin(["plain", "bat"])]
datasets = list(result.info["config"]["datasets"])
seeds = result.info["config"]["seeds"]
rows = [("heldout_loss", evaluations, "held-out loss"),
        ("loss", steps, "training loss"),
        ("weight_difference", steps, r"$\|\theta - \theta^{A*}\|$"),
        ("cosine", evaluations, "cosine (image features)"),
        ("clip_cosine", evaluations, "CLIP cosine")]
curves = {score: band_summary(frame, score) for score, frame, _ in rows}

# %% [markdown]
# ## Held-out loss, training loss, weight distance and sample scores over the whole run
# Rows, top to bottom: the noise-prediction loss on the style's held-out concepts (step 0: the
# backbone; lower is better), the training loss of each step's batch (BAT's batches also hold
# backbone examples), ‖θ − θ^{A*}‖, and two personalization scores of the samples: the cosine
# between image features of sample and reference, and the CLIP text–image cosine (higher is
# better for both). With one seed the lines carry no band.

# %%
fig, axes = plt.subplots(len(rows), len(datasets), figsize=(4.6 * len(datasets), 2.3 * len(rows)),
                         squeeze=False, sharex="col", layout="constrained")
for column, dataset in enumerate(datasets):
    for row, (score, _, label) in enumerate(rows):
        plot_bands(axes[row, column], matching(curves[score], dataset=dataset))
        axes[row, 0].set_ylabel(label)
    axes[0, column].set_title(f"{dataset} (dreambooth, seeds: {len(seeds)})")
    axes[-1, column].set_xlabel("step")
axes[0, 0].legend()
save_figure(fig, "fig07_overfitting")

# %% [markdown]
# ## Where the held-out loss is lowest, and where it ends (mean over seeds)
# `best_step`: the evaluated step with the lowest held-out loss (0 means training never improved
# on the backbone); `rise_after_best`: the held-out loss at the last step minus that minimum. A
# larger rise is more overfitting.

# %%
heldout = curves["heldout_loss"]
best = heldout.loc[heldout.groupby(["dataset", "regime"])["mean"].idxmin(),
                   ["dataset", "regime", "step", "mean"]]
last = heldout.loc[heldout.groupby(["dataset", "regime"])["step"].idxmax(),
                   ["dataset", "regime", "step", "mean"]]
overfitting = best.merge(last, on=["dataset", "regime"], suffixes=("_best", "_last")).rename(columns={
    "step_best": "best_step", "mean_best": "best_heldout_loss",
    "step_last": "last_step", "mean_last": "last_heldout_loss"})
overfitting["rise_after_best"] = overfitting["last_heldout_loss"] - overfitting["best_heldout_loss"]
overfitting

# %%
write_json(paths.metrics("fig07_overfitting"), {
    **{score: records(curve) for score, curve in curves.items()},
    "overfitting": records(overfitting),
})
