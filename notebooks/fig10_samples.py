# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fig. 10: DreamBooth samples in the middle of training, plain vs BAT
#
# Paper Fig. 10 (App. D.6): outputs gathered in the middle of DreamBooth training, of a regular
# (plain) run and of a BAT run, to show BAT's faster convergence; the same models for every class,
# each image an output of its model with a different random seed.
#
# Here the runs are the `grid_image@dreambooth` stage (`bat.stages.grid`), shared with Fig. 1, 3, 4 and 9.
# Shown is the evaluation step closest to half of the grid's `steps`: for every style, first the
# real renders the scores compare against, then the backbone's samples (step 0, seed 0), then for
# every seed the plain and the BAT run of that seed, one row each. The columns are the first
# held-out concepts of the style, titled with their captions, in the order the evaluation prompted
# them. The notebook closes with the per-seed differences BAT − plain
# of the held-out loss and of the cosine and CLIP scores **at the step shown** (equal steps), each
# with its 95 % t-interval and MDE.

# %% tags=["parameters"]
grid = "dreambooth"
regimes = ["plain", "bat"]
prompts_shown = 6

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bat import paths
from bat.analysis.claims import compare_regimes
from bat.analysis.outputs import write_metrics
from bat.stages.notebook import check_kernel_parameters
from bat.analysis.plotting import save_figure, show_images
from bat.analysis.runs import HIGHER_IS_BETTER, read_grid
from bat.analysis.statistics import compare, paired_differences, verdict

check_kernel_parameters("fig10_samples", globals())
result = read_grid(paths.ROOT / "runs" / grid)
config = result.info["config"]
datasets = list(config["datasets"])
seeds = list(config["seeds"])
adapter = config["adapters"][0]
gamma = config["gammas"][0]
batch_size = config["batch_sizes"][0]
evaluated = np.array(sorted(step for step in result.evaluations["step"].unique() if step != 0))
middle = int(evaluated[np.argmin(np.abs(evaluated - config["steps"] / 2))])
print(f"samples at step {middle} of {config['steps']} ({adapter}, γ = {gamma}, batch size {batch_size})")

# %% [markdown]
# ## Samples at the middle evaluation step
# One block of rows per style: the real renders of the concepts (what the scores compare with), the
# backbone (step 0, seed 0), then plain and BAT for every seed.

# %%
rows_per_dataset = 2 + len(seeds) * len(regimes)
columns = min(prompts_shown, min(len(result.info["captions"][dataset]) for dataset in datasets))
fig, axes = plt.subplots(len(datasets) * rows_per_dataset, columns,
                         figsize=(1.3 * columns + 1.2, 1.35 * len(datasets) * rows_per_dataset),
                         squeeze=False)
for block, dataset in enumerate(datasets):
    captions = result.info["captions"][dataset][:columns]
    first = block * rows_per_dataset
    show_images(axes[first], result.references(dataset)[:columns], captions)
    axes[first, 0].text(-0.08, 0.5, f"{dataset}\nreal renders", transform=axes[first, 0].transAxes,
                        ha="right", va="center", fontsize=7)
    shown = [("backbone, seed " + str(seeds[0]), seeds[0], regimes[0], 0)]
    for seed in seeds:
        for regime in regimes:
            shown.append((f"{regime}, seed {seed}", seed, regime, middle))
    for offset, (label, seed, regime, step) in enumerate(shown):
        row = first + 1 + offset
        images = result.samples(dataset, adapter, seed, None if regime == "plain" else gamma, batch_size,
                                regime, step)[:columns]
        show_images(axes[row], images)
        axes[row, 0].text(-0.08, 0.5, f"{dataset}\n{label}\nstep {step}", transform=axes[row, 0].transAxes,
                          ha="right", va="center", fontsize=7)
save_figure(fig, "fig10_samples")

# %% [markdown]
# ## BAT − plain at the step shown, per seed
# Per style: the held-out loss (↓), `cosine`, the image features' cosine between each sample and the
# real render of the same concept (↑), and `clip_cosine`, the CLIP caption–sample cosine (↑), over
# all of the evaluation's held-out concepts, not only the columns shown (`bat.image.evaluation`).
# `effect`: mean over seeds of BAT − plain of the same seed; `ci_low`/`ci_high`: its 95 %
# t-interval; `mde`: the smallest true difference this many seeds detect (α = 0.05, power 0.8).

# %%
rows = []
for dataset in datasets:
    for measure in ("heldout_loss", "cosine", "clip_cosine"):
        direction = "higher" if HIGHER_IS_BETTER[measure] else "lower"
        differences = paired_differences(result.evaluations, measure, regimes[1], regimes[0],
                                         step=middle, dataset=dataset)
        judged = verdict(compare(differences.to_numpy()), direction)
        c = judged.comparison
        rows.append({"dataset": dataset, "measure": measure, "claimed": direction, "step": middle,
                     "seeds": c.seeds, "effect": c.mean, "ci_low": c.low, "ci_high": c.high, "mde": c.mde,
                     "verdict": judged.label})
shown_comparisons = pd.DataFrame(rows)
shown_comparisons

# %% [markdown]
# ## DVC metrics
# Headline: BAT − plain in held-out loss, first style, equal steps (the last evaluated step).
# Secondary: BAT − plain in image-feature cosine (claimed higher) at the same step.

# %%
headline = compare_regimes(grid, "heldout_loss", [regimes[1]], reference=regimes[0],
                           settings=[{"dataset": datasets[0]}])[0]
secondary = compare_regimes(grid, "cosine", [regimes[1]], reference=regimes[0], direction="higher",
                            settings=[{"dataset": datasets[0]}])[0]
write_metrics("fig10_samples", headline.metrics(), secondary.metrics())
