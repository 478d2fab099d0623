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
# LoRA and DoRA on the language model; the paper reports the same pattern as in Fig. 4.
#
# Here the LoCon runs are the `grid_image@locon` stage and the LoRA / DoRA runs the
# `grid_text@lora_dora` stage (`bat.stages.grid`). The primary measure is the **held-out loss**
# (LoCon: noise prediction on the style's held-out concepts; LoRA / DoRA: the LM loss on the task's
# test split); ‖θ − θ^{A*}‖ is **movement** (lower: moved less, not converged). Every comparison is
# BAT − plain of the same seed with its 95 % t-interval and MDE.
#
# Which step is "the same step": LoCon at **equal steps**. LoRA / DoRA mix D^A and D^B inside each
# batch, so at equal steps BAT has seen fewer D^A examples than plain: the table gives them at
# equal steps (the paper's recipe) and at **equal D^A exposure** (plain at its first evaluated step
# with at least as many D^A examples as BAT at its end).

# %% tags=["parameters"]
image_grid = "locon"
text_grid = "lora_dora"

# %%
import matplotlib.pyplot as plt
import pandas as pd

from bat import paths
from bat.analysis.claims import compare_regimes, results_frame
from bat.analysis.outputs import difference_curves, write_metrics, write_plot
from bat.analysis.plotting import REGIME_COLORS, save_figure
from bat.analysis.runs import read_grid

results = {grid: read_grid(paths.ROOT / "runs" / grid) for grid in (image_grid, text_grid)}
panels = [(grid, adapter, dataset) for grid, result in results.items()
          for adapter in result.info["config"]["adapters"]
          for dataset in result.info["config"]["datasets"]]
curves = {
    "heldout_loss_minus_plain": pd.concat([difference_curves(r.evaluations, "heldout_loss", ["bat"],
                                                             by=("dataset", "adapter")) for r in results.values()]),
    "movement_minus_plain": pd.concat([difference_curves(r.steps, "weight_difference", ["bat"],
                                                         by=("dataset", "adapter")) for r in results.values()]),
}
for name, table in curves.items():
    write_plot("fig05_other_adapters", name, table)
panels

# %% [markdown]
# ## BAT − plain over the steps, per adapter
# Top: held-out loss, bottom: movement; BAT − plain of the same seed, mean over seeds with its 95 %
# t-interval (none with one seed). Below zero: BAT lower than plain. Compare within a column: the
# adapters' scales differ.

# %%
fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 5.6), squeeze=False,
                         sharex="col", layout="constrained")
for column, (grid, adapter, dataset) in enumerate(panels):
    for row, (name, label) in enumerate((("heldout_loss_minus_plain", "held-out loss, bat − plain"),
                                         ("movement_minus_plain", "movement, bat − plain"))):
        curve = curves[name][curves[name]["series"] == f"{dataset}/{adapter}/bat"]
        axes[row, column].plot(curve["step"], curve["mean"], color=REGIME_COLORS["bat"], marker=".")
        axes[row, column].fill_between(curve["step"], curve["low"], curve["high"], color=REGIME_COLORS["bat"],
                                       alpha=0.2, linewidth=0)
        axes[row, column].axhline(0, color="black", linewidth=0.8)
        axes[row, 0].set_ylabel(label)
    seeds = len(results[grid].info["config"]["seeds"])
    axes[0, column].set_title(f"{adapter}: {dataset}\n(grid {grid}, {seeds} seeds)")
    axes[1, column].set_xlabel("step")
save_figure(fig, "fig05_other_adapters")

# %% [markdown]
# ## The comparisons per adapter: held-out loss first, then movement
# `effect`: mean over seeds of BAT − plain; `ci_low`/`ci_high`: its 95 % t-interval; `mde`: the
# smallest true difference this many seeds detect (α = 0.05, power 0.8); `step`: the step(s)
# compared. Verdicts for the claim "lower than plain".

# %%
rows = []
for grid, adapter, dataset in panels:
    where = [{"dataset": dataset, "adapter": adapter}]
    alignments = ["steps", "exposure"] if grid == text_grid else ["steps"]
    for align in alignments:
        rows.append(results_frame(compare_regimes(grid, "heldout_loss", ["bat"], settings=where, align=align))
                    .assign(adapter=adapter, measure="held-out loss", align=align))
    rows.append(results_frame(compare_regimes(grid, "weight_difference", ["bat"], settings=where, table="steps"))
                .assign(adapter=adapter, measure="movement", align="steps"))
comparisons = pd.concat(rows, ignore_index=True)
comparisons

# %% [markdown]
# ## DVC metrics
# Headline: LoCon BAT − plain in held-out loss, equal steps. Secondary: the first text adapter's
# BAT − plain in held-out LM loss at equal D^A exposure.

# %%
exposure = comparisons[(comparisons["align"] == "exposure") & (comparisons["measure"] == "held-out loss")]
headline = compare_regimes(image_grid, "heldout_loss", ["bat"],
                           settings=[{"dataset": panels[0][2], "adapter": panels[0][1]}])[0]
text_panel = [panel for panel in panels if panel[0] == text_grid][0]
secondary = compare_regimes(text_grid, "heldout_loss", ["bat"], align="exposure",
                            settings=[{"dataset": text_panel[2], "adapter": text_panel[1]}])[0]
write_metrics("fig05_other_adapters", headline.metrics(), secondary.metrics())
