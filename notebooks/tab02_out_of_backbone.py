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
# settings, pool from D^B), on the seeds and styles both grids hold. The held-out loss leads; the
# personalization scores follow. Every cell is a per-seed difference (same seed: same data order,
# noise and initialisation) with its 95 % t-interval and the MDE, at **equal steps**: the last step
# at which both runs were evaluated (a comparison whose runs share no evaluated step after the
# backbone's step 0 says so instead of comparing different steps).

# %% tags=["parameters"]
grid = "out_of_backbone"
reference_grid = "dreambooth"
scores = ["cosine", "centroid_distance", "clip_cosine", "vendi"]

# %%
import pandas as pd

from bat import paths
from bat.analysis.claims import compare_regimes, results_frame
from bat.analysis.outputs import write_metrics
from bat.stages.notebook import check_kernel_parameters
from bat.analysis.plotting import save_figure, table_figure
from bat.analysis.runs import HIGHER_IS_BETTER, read_grid

check_kernel_parameters("tab02_out_of_backbone", globals())
outside = read_grid(paths.ROOT / "runs" / grid).evaluations
reference = read_grid(paths.ROOT / "runs" / reference_grid).evaluations
datasets = sorted(set(reference["dataset"]) & set(outside["dataset"]))
settings = [{"dataset": dataset} for dataset in datasets]
pairs = [("bat (out of D^B) − plain", grid, "bat", reference_grid, "plain"),
         ("bat (out of D^B) − bat (D^B)", grid, "bat", reference_grid, "bat"),
         ("bat (D^B) − plain", reference_grid, "bat", reference_grid, "plain")]
rows = []
for measure in ["heldout_loss", *scores]:
    direction = "higher" if HIGHER_IS_BETTER.get(measure, True) else "lower"
    for label, left_grid, left, right_grid, right in pairs:
        frame = results_frame(compare_regimes(left_grid, measure, [left], reference=right, settings=settings,
                                              direction=direction, reference_grid=right_grid))
        rows.append(frame.assign(measure=measure, compared=label, claimed=direction))
comparisons = pd.concat(rows, ignore_index=True)
datasets

# %% [markdown]
# ## Per-seed differences per style, at equal steps
# `effect`: mean over seeds of the difference; `ci_low`/`ci_high`: its 95 % t-interval; `mde`: the
# smallest true difference this many seeds detect (α = 0.05, power 0.8); `claimed`: the direction
# that counts as better for the measure (the paper's arrows); `verdict` for that direction.

# %%
shown = comparisons.assign(
    cell=[f"{e:.3g} [{lo:.3g}, {hi:.3g}]" if pd.notna(lo) else (f"{e:.3g} (1 seed)" if pd.notna(e) else "–")
          for e, lo, hi in zip(comparisons["effect"], comparisons["ci_low"], comparisons["ci_high"])],
    mde=[f"{m:.2g}" if pd.notna(m) else "–" for m in comparisons["mde"]],
    verdict=[v.split(":")[0] for v in comparisons["verdict"]])
table = shown[["setting", "measure", "compared", "step", "seeds", "cell", "mde", "verdict"]].rename(
    columns={"cell": "difference [95 % interval]"})
fig = table_figure((table, f"DreamBooth ± BAT, candidates from D^B or from outside it "
                           f"(grids {reference_grid} and {grid})"), width=12.0)
save_figure(fig, "tab02_out_of_backbone")
comparisons

# %% [markdown]
# ## DVC metrics
# Headline: out-of-backbone BAT − plain in held-out loss, first style, equal steps. Secondary:
# out-of-backbone BAT − BAT from D^B, same style and step.

# %%
headline = compare_regimes(grid, "heldout_loss", ["bat"], settings=settings[:1], reference_grid=reference_grid)[0]
secondary = compare_regimes(grid, "heldout_loss", ["bat"], reference="bat", settings=settings[:1],
                            reference_grid=reference_grid)[0]
write_metrics("tab02_out_of_backbone", headline.metrics(), secondary.metrics())
