# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tab. 2: BAT with candidates from outside the backbone's data
#
# Paper Sec. 5.2.2, Tab. 2: when the backbone's training data D^B is not available, BAT may draw its
# candidates from similar data that the backbone never saw. The paper compares DreamBooth with
# such a BAT against plain DreamBooth and finds it better in most scores, but less consistently
# than BAT on D^B.
#
# Here the out-of-backbone runs are the `grid_image@out_of_backbone` stage (`bat.stages.grid`): DreamBooth
# with BAT whose pool is emoji rendered in a font the tiny backbone was not trained on. They are set
# beside the plain and BAT runs of the `grid_image@dreambooth` stage (same styles, seeds and
# settings, pool from D^B), on the seeds and styles both grids hold. Every score is the mean ± sd
# over seeds of the final model, per style; the held-out loss is the task metric.

# %% tags=["parameters"]
grid = "out_of_backbone"
reference_grid = "dreambooth"
scores = ["cosine", "centroid_distance", "clip_cosine", "vendi"]

# %%
import pandas as pd

from bat import paths
from bat.analysis.runs import compare_final, matching, mean_sd_table, read_grid, records
from bat.io import write_json
from bat.stages.notebook import check_kernel_parameters
from bat.analysis.plotting import save_figure, table_figure

check_kernel_parameters("tab02_out_of_backbone", globals())
columns = ["heldout_loss", *scores]
label = "bat (out of D^B)"
reference = read_grid(paths.ROOT / "runs" / reference_grid).evaluations
outside = read_grid(paths.ROOT / "runs" / grid).evaluations.assign(regime=label)
seeds = sorted(set(reference["seed"]) & set(outside["seed"]))
datasets = sorted(set(reference["dataset"]) & set(outside["dataset"]))
evaluations = pd.concat([reference[reference["regime"].isin(["plain", "bat"])], outside], ignore_index=True)
evaluations = evaluations[evaluations["seed"].isin(seeds) & evaluations["dataset"].isin(datasets)]
comparison = compare_final(evaluations, tuple(columns), by=("dataset", "regime"))
comparison = pd.concat([matching(comparison, dataset=dataset, regime=regime)
                        for dataset in datasets for regime in ("plain", "bat", label)], ignore_index=True)
seeds, datasets

# %% [markdown]
# ## Final scores per style (mean ± sd over seeds)
# Arrows as in the paper: `cosine` and `clip_cosine` higher is better, `centroid_distance`,
# `vendi` and `heldout_loss` (noise-prediction loss on the style's held-out concepts) lower is
# better. `bat`: candidates from D^B; `bat (out of D^B)`: candidates from outside it (the
# out-of-backbone pool).

# %%
table = mean_sd_table(comparison, tuple(columns), keys=("dataset", "regime", "seeds"))
fig = table_figure((table, f"DreamBooth ± BAT, candidates from D^B or from outside it "
                           f"(grids {reference_grid} and {grid}, seeds: {len(seeds)})"), width=11.0)
save_figure(fig, "tab02_out_of_backbone")
table

# %% [markdown]
# ## How often each BAT variant beats plain, per score
# The share of seeds where the final model scores better than the plain run of the same style and
# seed (by the arrows above).

# %%
shares = comparison.loc[comparison["regime"] != "plain",
                        ["dataset", "regime", "seeds", *[f"{score}_better_share" for score in columns]]]
shares

# %%
write_json(paths.metrics("tab02_out_of_backbone"), {
    "final": records(comparison),
    "table": records(table),
})
