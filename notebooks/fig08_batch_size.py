# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fig. 8: BAT's convergence against the batch size
#
# Paper App. D.4: DreamBooth with BAT at several batch sizes; the paper reads from its curves that
# the convergence rate grows with the batch size and conjectures that a larger batch carries more
# variety, the augmented backbone data included.
#
# Here the runs are the `grid_image@batch_size` stage (`bat.stages.grid`) on the tiny diffusion model: for
# each batch size (D^A examples per step) a plain run and a BAT run of the same seed. Left: the
# weight difference ‖θ − θ^{A*}‖ to the oracle over the steps, one colour per batch size. Middle
# and right: at the last step, BAT minus plain (paired by seed) in weight distance and in the task
# metric (held-out loss), against the batch size.

# %% tags=["parameters"]
grid = "batch_size"

# %%
import matplotlib.pyplot as plt
import pandas as pd

from bat import paths
from bat.analysis.runs import (band_summary, compare_final, final_rows, matching, paired_difference,
                              read_grid, records)
from bat.io import write_json
from bat.analysis.plotting import save_figure

result = read_grid(paths.ROOT / "runs" / grid)
steps = result.steps[result.steps["regime"].isin(["plain", "bat"])]
evaluations = result.evaluations[result.evaluations["regime"].isin(["plain", "bat"])]
datasets = list(result.info["config"]["datasets"])
seeds = result.info["config"]["seeds"]
batch_sizes = sorted(steps["batch_size"].unique())
colormap = plt.get_cmap("plasma")
colors = {size: colormap(0.8 * index / max(len(batch_sizes) - 1, 1))
          for index, size in enumerate(batch_sizes)}
distance = band_summary(steps, "weight_difference", by=("dataset", "batch_size", "regime"))
distance_gap = band_summary(final_rows(paired_difference(steps, "weight_difference", "bat")),
                            "difference", by=("dataset", "batch_size")).assign(score="weight_difference")
heldout_gap = band_summary(final_rows(paired_difference(evaluations, "heldout_loss", "bat",
                                                        on=("dataset", "adapter", "seed", "batch_size"))),
                           "difference", by=("dataset", "batch_size")).assign(score="heldout_loss")
gaps = pd.concat([distance_gap, heldout_gap], ignore_index=True)
gaps

# %% [markdown]
# ## Weight difference against the steps, and BAT minus plain against the batch size
# Left: ‖θ − θ^{A*}‖, BAT solid and plain dashed, one colour per batch size (band min–max over
# seeds). Middle: BAT minus plain in ‖θ − θ^{A*}‖ at the last step; right: the same for the
# held-out loss. Below the zero line BAT is ahead of plain at that batch size; the error bars are
# the min–max over seeds.

# %%
fig, axes = plt.subplots(len(datasets), 3, figsize=(13, 3.6 * len(datasets)), squeeze=False,
                         layout="constrained")
for row, dataset in enumerate(datasets):
    for size in batch_sizes:
        for regime, style in (("bat", "-"), ("plain", "--")):
            curve = matching(distance, dataset=dataset, batch_size=size, regime=regime)
            axes[row, 0].plot(curve["step"], curve["mean"], color=colors[size], linestyle=style,
                              label=f"{regime}, batch {size}")
            axes[row, 0].fill_between(curve["step"], curve["min"], curve["max"], color=colors[size],
                                      alpha=0.15, linewidth=0)
    axes[row, 0].set_title(f"{dataset} (dreambooth, seeds: {len(seeds)})")
    axes[row, 0].set_xlabel("step")
    axes[row, 0].set_ylabel(r"$\|\theta - \theta^{A*}\|$")
    axes[row, 0].legend(ncols=2, fontsize=7)
    panels = ((1, "weight_difference", r"bat − plain, last step $\|\theta - \theta^{A*}\|$"),
              (2, "heldout_loss", "bat − plain, last step held-out loss"))
    for column, score, label in panels:
        gap = matching(gaps, dataset=dataset, score=score)
        axes[row, column].errorbar(gap["batch_size"], gap["mean"],
                                   yerr=[gap["mean"] - gap["min"], gap["max"] - gap["mean"]],
                                   color="black", marker="o", capsize=3)
        axes[row, column].axhline(0, color="black", linewidth=0.8)
        axes[row, column].set_xscale("log", base=2)
        axes[row, column].set_xticks(batch_sizes, [str(size) for size in batch_sizes])
        axes[row, column].minorticks_off()
        axes[row, column].set_xlabel("batch size (D^A examples per step)")
        axes[row, column].set_ylabel(label)
save_figure(fig, "fig08_batch_size")

# %% [markdown]
# ## The last step, per batch size and regime (over seeds)
# `heldout_loss`: noise-prediction loss on the style's held-out concepts; `loss`: training loss of
# the last batch. `*_better_share`: the share of seeds where BAT beats the plain run of the same
# seed and batch size (lower is better for every column). The training loss is taken on different
# batches (BAT's also hold backbone examples), so its share is not a like-for-like comparison.

# %%
final_heldout = compare_final(evaluations, ("heldout_loss",), by=("dataset", "batch_size", "regime"))
final_distance = compare_final(steps, ("weight_difference", "loss"), by=("dataset", "batch_size", "regime"))
final = final_heldout.merge(final_distance, on=["dataset", "batch_size", "regime", "seeds", "step"])
final

# %%
write_json(paths.metrics("fig08_batch_size"), {
    "weight_difference": records(distance),
    "final_bat_minus_plain": records(gaps),
    "final": records(final),
})
