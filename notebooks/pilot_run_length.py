# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Pilot: how long must a DreamBooth run be?
#
# Augmentation can only matter once plain training starts to overfit D^A: before its held-out
# minimum, every extra D^A step helps. This pilot (`grid_image@pilot`) trains plain DreamBooth on
# both styles for many steps and evaluates the held-out loss (noise prediction on every held-out
# concept of the style, over fixed noise draws) along the way. Below: where the minimum falls per
# style and seed, against the length the headline grid (`grid_image@dreambooth`) is configured
# with. If the headline runs stop before the minimum, BAT is compared where plain training still
# improves, and the README says so.

# %% tags=["parameters"]
grid = "pilot"
headline_grid = "dreambooth"

# %%
import matplotlib.pyplot as plt

from bat import paths
from bat.analysis.outputs import level_curves, write_plot
from bat.analysis.plotting import plot_series, save_figure
from bat.analysis.runs import held_out_minimum, read_grid
from bat.io import read_json, write_json

pilot = read_grid(paths.ROOT / "runs" / grid)
evaluations = pilot.evaluations
headline_steps = read_json(paths.ROOT / "runs" / headline_grid / "grid.json")["config"]["steps"]
minimum = held_out_minimum(evaluations)
minimum

# %% [markdown]
# Held-out loss of plain DreamBooth per style (mean over seeds, band min–max); the dashed line is
# the headline grid's run length.

# %%
curves = level_curves(evaluations, "heldout_loss")
write_plot("pilot_run_length", "heldout_loss", curves)
datasets = list(pilot.info["config"]["datasets"])
fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.2), squeeze=False)
for axis, dataset in zip(axes[0], datasets):
    plot_series(axis, curves, f"{dataset}/")
    axis.axvline(headline_steps, color="black", linestyle="--", linewidth=0.8,
                 label=f"{headline_grid} grid: {headline_steps} steps")
    axis.set(title=f"{dataset}: plain DreamBooth", xlabel="step", ylabel="held-out loss")
    axis.legend(fontsize=7)
save_figure(fig, "pilot_run_length")

# %%
write_json(paths.metrics("pilot_run_length"), {
    "latest_minimum_step": int(minimum["best_step"].max()),
    "earliest_minimum_step": int(minimum["best_step"].min()),
    "share_passed": float(minimum["passed"].mean()),
    "headline_steps": int(headline_steps),
    "headline_passes_minimum": int(headline_steps > minimum["best_step"].max()),
})
