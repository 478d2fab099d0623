# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fig. 5: the initial steps with other adapters (LoCon, LoRA, DoRA), with and without BAT
#
# Paper Sec. 5.1.2 repeats the experiment of Fig. 4 with LoCon on the diffusion model and with
# LoRA and DoRA on the language model: a plain run and a BAT run start from the same backbone and
# the weight difference ‖θ − θ^{A*}‖ to an adapter trained on a larger split of the same data
# (the oracle θ^{A*}) is followed over the first steps. The paper reports the same pattern as in
# Fig. 4.
#
# Here the LoCon runs are the `grid_image@locon` stage and the LoRA / DoRA runs the
# `grid_text@lora_dora` stage (`bat.stages.grid`), on the tiny models. One column per adapter (and
# dataset); every curve is the mean over seeds with the min–max band over seeds. The table at the
# end leads with the task metric (held-out loss) and follows with the weight distance.

# %% tags=["parameters"]
image_grid = "locon"
text_grid = "lora_dora"

# %%
import matplotlib.pyplot as plt
import pandas as pd

from bat import paths
from bat.analysis.runs import (band_summary, compare_final, matching, paired_difference, read_grid,
                              records)
from bat.io import write_json
from bat.analysis.plotting import plot_bands, save_figure

regimes = ["plain", "bat"]
results = {grid: read_grid(paths.ROOT / "runs" / grid) for grid in (image_grid, text_grid)}
panels = [(grid, adapter, dataset) for grid, result in results.items()
          for adapter in result.info["config"]["adapters"]
          for dataset in result.info["config"]["datasets"]]
distances, gaps = [], []
for grid, adapter, dataset in panels:
    steps = matching(results[grid].steps, adapter=adapter, dataset=dataset)
    steps = steps[steps["regime"].isin(regimes)]
    distances.append(band_summary(steps, "weight_difference", by=("dataset", "adapter", "regime"))
                     .assign(grid=grid))
    gap = paired_difference(steps, "weight_difference", "bat").assign(regime="bat")
    gaps.append(band_summary(gap, "difference", by=("dataset", "adapter", "regime")).assign(grid=grid))
distance = pd.concat(distances, ignore_index=True)
gap = pd.concat(gaps, ignore_index=True)
panels

# %% [markdown]
# ## Weight difference to θ^{A*} over the first steps
# Top: ‖θ − θ^{A*}‖ per regime (mean over seeds, band min–max). Bottom: BAT minus the plain run of
# the same seed; below the zero line BAT is closer to θ^{A*} than plain. The scale of the weight
# distance differs between adapters (their parameter counts differ), so compare within a column.

# %%
fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 5.6), squeeze=False,
                         sharex="col", layout="constrained")
for column, (grid, adapter, dataset) in enumerate(panels):
    selected = dict(grid=grid, adapter=adapter, dataset=dataset)
    plot_bands(axes[0, column], matching(distance, **selected))
    plot_bands(axes[1, column], matching(gap, **selected))
    axes[1, column].axhline(0, color="black", linewidth=0.8)
    seeds = len(results[grid].info["config"]["seeds"])
    axes[0, column].set_title(f"{adapter}: {dataset}\n(grid {grid}, seeds: {seeds})")
    axes[1, column].set_xlabel("step")
axes[0, 0].set_ylabel(r"$\|\theta - \theta^{A*}\|$")
axes[1, 0].set_ylabel("bat minus plain, same seed")
axes[0, 0].legend()
save_figure(fig, "fig05_other_adapters")

# %% [markdown]
# ## The last step, per adapter and regime (over seeds)
# `heldout_loss`: for LoCon the noise-prediction loss on the style's held-out concepts, for LoRA
# and DoRA the language-model loss on the task's test split. `*_better_share`: the share of seeds
# where BAT beats the plain run of the same seed (lower is better for both columns).

# %%
finals = []
for grid, result in results.items():
    steps = result.steps[result.steps["regime"].isin(regimes)]
    evaluations = result.evaluations[result.evaluations["regime"].isin(regimes)]
    heldout = compare_final(evaluations, ("heldout_loss",), by=("adapter", "regime"))
    weights = compare_final(steps, ("weight_difference",), by=("adapter", "regime"))
    finals.append(heldout.merge(weights, on=["adapter", "regime", "seeds", "step"]).assign(grid=grid))
final = pd.concat(finals, ignore_index=True)
final

# %%
write_json(paths.metrics("fig05_other_adapters"), {
    "weight_difference": records(distance),
    "bat_minus_plain": records(gap),
    "final": records(final),
})
