# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fig. 9: BAT minus plain across seeds, image vs text adaptation
#
# Paper Fig. 9 (App. D.5): the difference in convergence between BAT and the plain adaptation,
# run after run with varying seeds; the paper reads it as "as language models have more
# parameters, the effect of non-deterministic feature reduces" compared with diffusion adaptations.
#
# Here: for each seed, ‖θ − θ^{A*}‖ of the BAT run minus that of the plain run of the same seed,
# over the steps, for the image grid (`grid_image@dreambooth`, DreamBooth on the UNet, every style)
# and for the text grid (`grid_text@lora_dora`, LoRA on the language model). The two models'
# distances live on different scales, so the difference is also divided by the plain run's
# distance at step 0 of the same seed (its distance from the backbone to θ^{A*}): the relative
# difference is the share of the starting distance that BAT gains (below zero) or loses. Read the
# spread of the lines within a panel as the seed-to-seed variability of BAT's effect.

# %% tags=["parameters"]
image_grid = "dreambooth"
text_grid = "lora_dora"
image_adapter = "dreambooth"
text_adapter = "lora"

# %%
import matplotlib.pyplot as plt
import pandas as pd

from bat import paths
from bat.analysis.runs import final_rows, paired_difference, read_grid, records
from bat.io import write_json
from bat.analysis.plotting import save_figure

tracks = {"image": (image_grid, image_adapter), "text": (text_grid, text_adapter)}
run_keys = ["dataset", "adapter", "seed", "batch_size"]
differences = {}
for track, (grid, adapter) in tracks.items():
    steps = read_grid(paths.ROOT / "runs" / grid).steps
    steps = steps[steps["adapter"] == adapter]
    start = (steps[(steps["regime"] == "plain") & (steps["step"] == 0)]
             .dropna(subset=["weight_difference"])[[*run_keys, "weight_difference"]]
             .rename(columns={"weight_difference": "start"}))
    difference = paired_difference(steps, "weight_difference", "bat").merge(start, on=run_keys)
    difference["relative"] = difference["difference"] / difference["start"]
    differences[track] = difference.assign(track=track)

# %% [markdown]
# ## BAT minus plain, seed by seed
# Top: ‖θ_BAT − θ^{A*}‖ − ‖θ_plain − θ^{A*}‖ (each panel on its own scale). Bottom: the same divided by
# the plain run's distance at step 0, on a shared scale. One colour per seed, one line style per
# dataset; below zero, BAT is closer to θ^{A*} than plain.

# %%
linestyles = ["-", "--", ":", "-."]
fig, axes = plt.subplots(2, 2, figsize=(9, 5.6), squeeze=False)
axes[1, 1].sharey(axes[1, 0])  # the relative differences on one scale
for column, (track, (grid, adapter)) in enumerate(tracks.items()):
    difference = differences[track]
    datasets = list(difference["dataset"].unique())
    for (dataset, seed), run in difference.groupby(["dataset", "seed"], sort=True):
        style = linestyles[datasets.index(dataset) % len(linestyles)]
        label = f"{dataset}, seed {seed}"
        axes[0, column].plot(run["step"], run["difference"], color=f"C{seed % 10}", linestyle=style,
                             label=label)
        axes[1, column].plot(run["step"], run["relative"], color=f"C{seed % 10}", linestyle=style,
                             label=label)
    for row in range(2):
        axes[row, column].axhline(0, color="black", linewidth=0.8)
    axes[0, column].set_title(f"{track}: {adapter} ({grid} grid)")
    axes[1, column].set_xlabel("step")
    axes[0, column].legend(fontsize=6)
axes[0, 0].set_ylabel("BAT minus plain,\nsame seed")
axes[1, 0].set_ylabel("BAT minus plain,\n/ plain at step 0")
save_figure(fig, "fig09_seeds")

# %% [markdown]
# ## The last step, over seeds
# Per grid and dataset: mean and sd over seeds of the difference and of the relative difference
# (sd is empty with a single seed). A smaller sd of `relative` means BAT's effect depends less on
# the seed.

# %%
final = pd.concat([final_rows(differences[track]) for track in tracks], ignore_index=True)
final = (final.groupby(["track", "dataset", "adapter"], sort=False)
         .agg(seeds=("seed", "nunique"), step=("step", "max"),
              difference_mean=("difference", "mean"), difference_sd=("difference", "std"),
              relative_mean=("relative", "mean"), relative_sd=("relative", "std"))
         .reset_index())
final

# %%
write_json(paths.metrics("fig09_seeds"), {
    "differences": {track: records(differences[track]) for track in tracks},
    "final": records(final),
})
