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
# Paper Fig. 9 (App. D.5): the difference between BAT and the plain adaptation, run after run with
# varying seeds; the paper reads it as "as language models have more parameters, the effect of
# non-deterministic feature reduces" compared with diffusion adaptations.
#
# Here, for each seed, the BAT run minus the plain run of the same seed (same data order, noise and
# initialisation), for the image grid (`grid_image@dreambooth`, DreamBooth on the UNet, every style)
# and the text grid (`grid_text@lora_dora`, LoRA on the language model). The primary measure is the
# **held-out loss** (image: noise prediction on the style's held-out concepts; text: the LM loss on
# the task's test split); ‖θ − θ^{A*}‖ is shown below it as **movement** (lower: moved less).
# The spread of the lines within a panel is the seed-to-seed variability of BAT's effect.
#
# Which step is "the same step": the image runs are compared at **equal steps**. The text runs mix
# D^A and D^B inside each batch, so at equal steps BAT has seen fewer D^A examples than plain; the
# table gives the text comparison both at equal steps and at **equal D^A exposure** (plain at its
# first evaluated step with at least as many D^A examples as BAT at its end).

# %% tags=["parameters"]
image_grid = "dreambooth"
text_grid = "lora_dora"
image_adapter = "dreambooth"
text_adapter = "lora"

# %%
import matplotlib.pyplot as plt
import pandas as pd

from bat import paths
from bat.analysis.claims import compare_regimes, results_frame
from bat.analysis.outputs import difference_curves, write_metrics, write_plot
from bat.analysis.plotting import save_figure
from bat.analysis.runs import paired_difference, read_grid

tracks = {"image": (image_grid, image_adapter), "text": (text_grid, text_adapter)}
tables = {}
for track, (grid, adapter) in tracks.items():
    result = read_grid(paths.ROOT / "runs" / grid)
    tables[track] = {"heldout_loss": result.evaluations[result.evaluations["adapter"] == adapter],
                     "weight_difference": result.steps[result.steps["adapter"] == adapter]}
    for measure, frame in tables[track].items():
        name = "heldout_loss" if measure == "heldout_loss" else "movement"
        write_plot("fig09_seeds", f"{track}_{name}_minus_plain",
                   difference_curves(frame, measure, ["bat"], by=("dataset", "adapter")))

# %% [markdown]
# ## BAT minus plain, seed by seed
# Top: held-out loss of BAT − plain, one line per seed (one line style per dataset); bottom: the
# same for movement. Each panel on its own scale; below zero, BAT is lower than plain.

# %%
linestyles = ["-", "--", ":", "-."]
rows = [("heldout_loss", "held-out loss\nbat − plain, same seed"),
        ("weight_difference", "movement\nbat − plain, same seed")]
fig, axes = plt.subplots(len(rows), len(tracks), figsize=(9, 5.6), squeeze=False)
for column, (track, (grid, adapter)) in enumerate(tracks.items()):
    for row, (measure, label) in enumerate(rows):
        difference = paired_difference(tables[track][measure], measure, "bat")
        datasets = list(difference["dataset"].unique())
        for (dataset, seed), run in difference.groupby(["dataset", "seed"], sort=True):
            style = linestyles[datasets.index(dataset) % len(linestyles)]
            axes[row, column].plot(run["step"], run["difference"], color=f"C{seed % 10}", linestyle=style,
                                   marker=".", label=f"{dataset}, seed {seed}")
        axes[row, column].axhline(0, color="black", linewidth=0.8)
        axes[row, 0].set_ylabel(label)
    axes[0, column].set_title(f"{track}: {adapter} ({grid} grid)")
    axes[-1, column].set_xlabel("step")
    axes[0, column].legend(fontsize=6)
save_figure(fig, "fig09_seeds")

# %% [markdown]
# ## The comparisons over seeds
# `effect`: mean over seeds of BAT − plain; `ci_low`/`ci_high`: its 95 % t-interval; `mde`: the
# smallest true difference this many seeds detect (α = 0.05, power 0.8); `step`: the step(s)
# compared; `align`: equal steps or equal D^A exposure. Verdicts for the claim "lower than plain".

# %%
image_settings = [{"dataset": d, "adapter": image_adapter}
                  for d in tables["image"]["heldout_loss"]["dataset"].unique()]
text_settings = [{"dataset": d, "adapter": text_adapter}
                 for d in tables["text"]["heldout_loss"]["dataset"].unique()]
comparisons = pd.concat([
    results_frame(compare_regimes(image_grid, "heldout_loss", ["bat"], settings=image_settings)).assign(
        track="image", measure="held-out loss", align="equal steps"),
    results_frame(compare_regimes(text_grid, "heldout_loss", ["bat"], settings=text_settings)).assign(
        track="text", measure="held-out loss", align="equal steps"),
    results_frame(compare_regimes(text_grid, "heldout_loss", ["bat"], settings=text_settings,
                                  align="exposure")).assign(
        track="text", measure="held-out loss", align="equal D^A exposure"),
    results_frame(compare_regimes(image_grid, "weight_difference", ["bat"], settings=image_settings,
                                  table="steps")).assign(track="image", measure="movement", align="equal steps"),
    results_frame(compare_regimes(text_grid, "weight_difference", ["bat"], settings=text_settings,
                                  table="steps")).assign(track="text", measure="movement", align="equal steps"),
], ignore_index=True)
comparisons

# %% [markdown]
# ## DVC metrics
# Headline: image BAT − plain in held-out loss, first style, equal steps. Secondary: text BAT −
# plain in held-out LM loss at equal D^A exposure.

# %%
headline = compare_regimes(image_grid, "heldout_loss", ["bat"], settings=image_settings[:1])[0]
text = compare_regimes(text_grid, "heldout_loss", ["bat"], settings=text_settings[:1], align="exposure")[0]
write_metrics("fig09_seeds", headline.metrics(), text.metrics())
