# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tab. 1: benchmarks of adapters with and without BAT
#
# Paper Sec. 5.2.1, Tab. 1: DreamBooth and LoCon, each with and without BAT, scored on
# personalization metrics (image-feature cosine ↑, centroid distance ↓, CLIP score ↑, Vendi
# score ↓), and LoRA and DoRA on a language model, each with and without BAT, scored on eight
# multiple-choice benchmarks (BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC-c, ARC-e, OBQA).
#
# Here the image rows come from the `grid_image@dreambooth` and `grid_image@locon` stages and the
# text rows from `grid_text@lora_dora` (`bat.stages.grid`), on the tiny models; every score is the mean ±
# sd over seeds of the final model. The eight text sets are built analogues of the paper's
# benchmarks (`bat.text.data`: definition_check ~ BoolQ, hypernym_choice ~ PIQA, synonym_choice ~
# SIQA, wiki_next_sentence ~ HellaSwag, example_cloze ~ WinoGrande, definition_hard ~ ARC-c,
# definition_easy ~ ARC-e, wiki_field ~ OBQA), scored like lm-evaluation-harness (`acc`,
# `acc_norm`). Beside the paper's rows: the backbone before training (step 0), the held-out loss
# as the task metric, and in the DreamBooth grid DreamBooth with its prior-preservation loss (the
# paper's DreamBooth baseline), oracle-free BAT, `random` (random examples of all of D^B),
# `random_matched` (random examples of BAT's pool, as many as BAT took) and `compute_matched`.
# The mean ± sd tables describe each regime; the comparisons are the per-seed differences with
# their 95 % intervals and MDE at the end.

# %% tags=["parameters"]
image_grids = ["dreambooth", "locon"]
text_grid = "lora_dora"
image_scores = ["cosine", "centroid_distance", "clip_cosine", "vendi"]

# %%
import pandas as pd

from bat import paths
from bat.analysis.claims import compare_regimes, results_frame
from bat.analysis.outputs import write_metrics
from bat.stages.notebook import check_kernel_parameters
from bat.analysis.plotting import save_figure, table_figure
from bat.analysis.runs import HIGHER_IS_BETTER, compare_final, matching, mean_sd_table, read_grid

check_kernel_parameters("tab01_benchmarks", globals())
image_columns = ["heldout_loss", *image_scores]
image_parts = []
for grid in image_grids:
    evaluations = read_grid(paths.ROOT / "runs" / grid).evaluations
    backbone = compare_final(matching(evaluations, step=0, regime="plain").assign(regime="backbone"),
                             tuple(image_columns), reference="backbone", by=("adapter", "regime"))
    trained = compare_final(evaluations, tuple(image_columns), by=("adapter", "regime"))
    image_parts.append(pd.concat([backbone, matching(trained, regime="plain"),
                                  trained[trained["regime"] != "plain"]], ignore_index=True)
                       .assign(grid=grid))
image_comparison = pd.concat(image_parts, ignore_index=True)

text = read_grid(paths.ROOT / "runs" / text_grid)
text_sets = [column for column in text.evaluations.columns
             if column.startswith("acc:") and column != "acc:mean"]
# The sets are scored only when the grid's benchmark_items > 0 (the paper profile; see params.yaml).
text_columns = ["heldout_loss", *text_sets,
                *[column for column in ("acc:mean", "acc_norm:mean") if column in text.evaluations]]
text_backbone = compare_final(matching(text.evaluations, step=0, regime="plain").assign(regime="backbone"),
                              tuple(text_columns), reference="backbone", by=("adapter", "regime"))
text_trained = compare_final(text.evaluations, tuple(text_columns), by=("adapter", "regime"))
text_parts = []
for adapter in text.info["config"]["adapters"]:
    trained = matching(text_trained, adapter=adapter)
    text_parts += [matching(text_backbone, adapter=adapter), matching(trained, regime="plain"),
                   trained[trained["regime"] != "plain"]]
text_comparison = pd.concat(text_parts, ignore_index=True).assign(grid=text_grid)
text_seeds = len(text.info["config"]["seeds"])

# %% [markdown]
# ## Image adapters: personalization scores of the final model (mean ± sd over seeds)
# Arrows as in the paper: `cosine` and `clip_cosine` higher is better, `centroid_distance`,
# `vendi` and `heldout_loss` (noise-prediction loss on the style's held-out concepts) lower is
# better. `backbone`: the model before training, scored the same way.

# %%
image_table = mean_sd_table(image_comparison, tuple(image_columns),
                            keys=("grid", "adapter", "regime", "seeds"))
image_table

# %% [markdown]
# ## Text adapters: multiple-choice accuracy of the final model (mean ± sd over seeds)
# One column per adapter and regime, one row per score: `acc:<set>` for the eight sets, their mean
# `acc:mean` and the length-normalised `acc_norm:mean` (higher is better), and `heldout_loss`, the
# language-model loss on the task's test split (lower is better). A grid run with
# `benchmark_items: 0` has the held-out loss only.

# %%
text_table = mean_sd_table(text_comparison, tuple(text_columns), keys=("adapter", "regime"))
text_display = (text_table.assign(method=text_table["adapter"] + ": " + text_table["regime"])
                .set_index("method")[text_columns].T.rename_axis("score").reset_index())
text_display

# %% [markdown]
# ## Both parts as one figure
# Top: the image adapters (rows: grid, adapter, regime). Bottom: the text adapters (columns:
# adapter and regime).

# %%
frames = [(image_table, "image adapters: personalization scores of the final model, mean ± sd over seeds"),
          (text_display, f"text adapters ({text_grid}, seeds: {text_seeds}): "
                         f"{'multiple-choice accuracy and ' if text_sets else ''}test loss "
                         "of the final model, mean ± sd over seeds")]
fig = table_figure(frames, width=12)
save_figure(fig, "tab01_benchmarks")

# %% [markdown]
# ## Per-seed differences against plain (and against prior preservation), at equal steps
# Every trained regime minus plain of the same seed, per style or adapter and score: `effect` is the
# mean over seeds, `ci_low`/`ci_high` its 95 % t-interval, `mde` the smallest true difference this
# many seeds detect (α = 0.05, power 0.8), `claimed` the better direction (the arrows above), and
# `step` the step compared: **equal steps** (the last step both runs were evaluated at), except
# `compute_matched`, compared at each run's last step (**equal wall time**). BAT is also compared
# with DreamBooth's prior-preservation baseline. Text: the held-out LM loss also at **equal D^A
# exposure** (plain at its first evaluated step with at least as many D^A examples as BAT).

# %%
rows = []
for grid in image_grids:
    evaluations = read_grid(paths.ROOT / "runs" / grid).evaluations
    regimes = [r for r in evaluations["regime"].unique() if r != "plain"]
    settings = [{"dataset": d, "adapter": a} for d, a in
                evaluations[["dataset", "adapter"]].drop_duplicates().itertuples(index=False)]
    for measure in image_columns:
        direction = "higher" if HIGHER_IS_BETTER.get(measure, True) else "lower"
        for regime in regimes:
            align = "final" if regime == "compute_matched" else "steps"
            rows.append(results_frame(compare_regimes(grid, measure, [regime], settings=settings,
                                                      direction=direction, align=align))
                        .assign(grid=grid, measure=measure, claimed=direction))
        if {"bat", "prior_preservation"} <= set(regimes):
            rows.append(results_frame(compare_regimes(grid, measure, ["bat"], reference="prior_preservation",
                                                      settings=settings, direction=direction))
                        .assign(grid=grid, measure=measure, claimed=direction))
text_settings = [{"dataset": d, "adapter": a} for d, a in
                 text.evaluations[["dataset", "adapter"]].drop_duplicates().itertuples(index=False)]
text_regimes = [r for r in text.evaluations["regime"].unique() if r != "plain"]
for measure in text_columns:
    direction = "lower" if measure == "heldout_loss" else "higher"
    alignments = ["steps", "exposure"] if measure == "heldout_loss" else ["steps"]
    for align in alignments:
        rows.append(results_frame(compare_regimes(text_grid, measure, text_regimes, settings=text_settings,
                                                  direction=direction, align=align))
                    .assign(grid=text_grid, measure=measure, claimed=direction, align=align))
comparisons = pd.concat(rows, ignore_index=True)
comparisons

# %% [markdown]
# ## DVC metrics
# Headline: DreamBooth BAT − prior preservation in held-out loss, first style, equal steps.
# Secondary: the first text adapter's BAT − plain in held-out LM loss at equal D^A exposure.

# %%
headline = compare_regimes(image_grids[0], "heldout_loss", ["bat"], reference="prior_preservation",
                           settings=[{"dataset": read_grid(paths.ROOT / "runs" / image_grids[0])
                                      .info["config"]["datasets"][0]}])[0]
text_heldout = compare_regimes(text_grid, "heldout_loss", ["bat"], settings=text_settings[:1],
                               align="exposure")[0].metrics()
write_metrics("tab01_benchmarks", headline.metrics(), text_heldout)
