"""README's generated blocks: the numbers README shows, written from the files the pipeline writes.

Each block sits between ``<!-- <name>:start -->`` and ``<!-- <name>:end -->``; :func:`update`
rewrites every block, and ``tests/test_readme.py`` fails when README differs from what the
committed files give, so no number in those tables is typed by hand:

- ``claims``: the claims table (:func:`bat.analysis.claims.render`, from ``runs/``);
- ``budget``: wall minutes and peak memory per stage (``benchmarks/results/repro.json``, written
  by ``benchmarks/bench_repro.py``);
- ``stages``: the flat metrics of the training and pilot stages (``metrics/<stem>.json``);
- ``benchmarks``: the benchmarks' measurements that have a goal, against it;
- ``sweep``: the image backbone's sweep, one row per setting
  (``benchmarks/results/backbone_image_sweep.json``, written by
  ``benchmarks/bench_backbone_image_sweep.py``);
- ``check_draws``: how much of a Proposition-2 verdict is the sampled Fisher's draw
  (``benchmarks/results/check_draws.json``, written by ``benchmarks/bench_check_draws.py``).

Usage: ``python -m bat.analysis.readme`` (after the pipeline, or after a benchmark run).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from bat import paths
from bat.errors import ConfigError
from bat.io import read_json

STAGE_METRICS = ("backbone_image", "backbone_text", "encoders", "pilot_run_length")
REPRO = Path("benchmarks") / "results" / "repro.json"
CURVATURE = Path("benchmarks") / "results" / "curvature.json"
SWEEP = Path("benchmarks") / "results" / "backbone_image_sweep.json"
GRID_SELECTION = Path("benchmarks") / "results" / "grid_selection.json"
LM_EVAL_COMPARE = Path("benchmarks") / "results" / "lm_eval_compare.json"
CHECK_DRAWS = Path("benchmarks") / "results" / "check_draws.json"
CHECK_EVERY = 4  # the check interval issue 12's grid-ratio goal names
# What a curvature benchmark row measured against each kind of goal: the first key present.
MEASURED = {"goal_speedup": ("speedup_hooks", "speedup"), "goal_gb": ("peak_projected_gb",),
            "goal_s": ("grid_check_s",), "goal_ratio": ("ratio",)}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_block(text: str, name: str, block: str) -> str:
    """``text`` with what lies between the markers of ``name`` replaced by ``block``.

    Raises :class:`ConfigError` unless each marker occurs once, start before end."""
    start, end = markers(name)
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ConfigError(f"README: needs one {start} line followed by one {end} line")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{block}{end}{tail}"


def _number(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool) or isinstance(value, int):
        return str(int(value))
    return f"{value:.3g}"


def budget_block(root: Path) -> str:
    """Per stage (the file's order, the order they finished): wall minutes and peak resident
    GiB; the total of the stages run, and the machine's peak when the run measured it."""
    path = root / REPRO
    if not path.exists():
        return f"No timed run yet: `python {Path('benchmarks') / 'bench_repro.py'} --out {REPRO}`.\n"
    run = read_json(path)
    lines = ["| stage | minutes | peak memory (GiB) |", "|---|---|---|"]
    for row in run["stages"]:
        if row["ran"]:
            lines.append(f"| `{row['stage']}` | {row['seconds'] / 60:.1f} | {_number(row['peak_rss_gib'])} |")
    jobs = run.get("jobs", 1)
    label = "all stages" if jobs == 1 else f"all stages, {jobs} at a time (wall)"
    lines.append(f"| **{label}** | **{run['total_minutes']:.1f}** | "
                 f"**{_number(run['peak_rss_gib'])}** (largest stage) |")
    if jobs == 1:
        note = ""
    elif "machine_peak_gib" in run:
        note = (f"\nWith {jobs} stages at a time (one thread each), the most memory in use on the "
                f"machine at once, above its level when the run started: "
                f"{_number(run['machine_peak_gib'])} GiB.\n")
    else:
        note = (f"\nWith {jobs} stages at a time (one thread each), memory in use at once can "
                f"reach the sum of {jobs} stages' peaks (this run did not sample the machine's).\n")
    return "\n".join(lines) + "\n" + note


def stages_block(root: Path) -> str:
    """The flat metrics of :data:`STAGE_METRICS`, one row per metric."""
    lines = ["| stage | metric | value |", "|---|---|---|"]
    for stem in STAGE_METRICS:
        path = root / "metrics" / f"{stem}.json"
        if not path.exists():
            lines.append(f"| `{stem}` | not run yet | – |")
            continue
        for key, value in read_json(path).items():
            if isinstance(value, (dict, list, str)):
                raise ConfigError(f"{path}: {key!r} is not a flat number; re-run the {stem} stage")
            lines.append(f"| `{stem}` | `{key}` | {_number(value)} |")
    return "\n".join(lines) + "\n"


def _goal_rows(tree: dict, path: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            if "meets_goal" in value:
                goal = next(k for k in value if k.startswith("goal"))
                measured = next((k for k in MEASURED.get(goal, ()) if k in value), None)
                yield (f"{path}{key}", measured, value.get(measured), goal, value[goal], value["meets_goal"])
            else:
                yield from _goal_rows(value, f"{path}{key}.")


def benchmarks_block(root: Path) -> str:
    """Every measurement that has a goal, and whether it met it: ``benchmarks/results/
    curvature.json`` (``benchmarks/bench_curvature.py``), then Algorithm 1's cost inside the
    committed grid runs, ``grid_selection.json`` (``benchmarks/bench_grid_selection.py``), and
    the multiple-choice scorer's speed against lm-evaluation-harness, ``lm_eval_compare.json``
    (``benchmarks/lm_eval_compare.py``)."""
    path = root / CURVATURE
    if not path.exists():
        return "No curvature benchmark run yet: `make bench`.\n"
    curvature = read_json(path)
    rows = list(_goal_rows(curvature))
    for extra, prefix in ((GRID_SELECTION, "grid_selection."), (LM_EVAL_COMPARE, "lm_eval_compare.")):
        if (root / extra).exists():
            rows += _goal_rows(read_json(root / extra), prefix)
    # the per-example loop slows and the batched rows speed up with threads: say how many
    threads = curvature.get("machine", {}).get("threads")
    lines = [f"The curvature rows ran with {threads} torch thread{'s' if threads != 1 else ''} "
             "(`machine.threads`).", "",
             "| measurement | measured | goal | met |", "|---|---|---|---|"]
    for name, measured, value, goal, target, met in rows:
        lines.append(f"| `{name}` | {measured} = {_number(value)} | {goal} = {_number(target)} | "
                     f"{'yes' if met else '**no**'} |")
    check = curvature.get("dreambooth_check", {})
    if "train_step_s" in check:
        # why the grid ratio's goal is out of reach at this scale: the passes no check can skip
        step, floor = check["train_step_s"], check["gradient_sums_s"] + check["sampled_fisher_rows_s"]
        lines += ["", f"One DreamBooth check ({_number(check['examples'])} examples) costs "
                  f"{_number(check['grid_check_s'] / step)} training steps of the grids' batch shape "
                  f"(forward and backward on 4 D^A + 4 D^B': {_number(step)} s); the two passes no "
                  f"check can skip (gradient sums, curvature rows) cost {_number(floor / step)}, so "
                  f"with a check every {CHECK_EVERY} steps a run takes at least "
                  f"{_number(1 + floor / (CHECK_EVERY * step))}× the time of the same run without "
                  "checks (`dreambooth_check` in `curvature.json`)."]
    if "batch_gradient_s" in check:
        rows_s, plain_s = check["sampled_fisher_rows_s"], check["batch_gradient_s"]
        lines += ["", f"Of the curvature rows' pass ({_number(rows_s)} s), one plain forward and "
                  f"backward of the same {_number(check['examples'])} examples costs "
                  f"{_number(plain_s)} s; the rest is the per-layer products and writing the "
                  f"{_number(check['examples'])} rows of {_number(check['weights'] / 1e6)}M float32 "
                  f"weights into fresh memory, which alone takes {_number(check['write_rows_s'])} s."]
    ceilings = [(name, row) for name, row in curvature.get("per_sample_grads", {}).items()
                if "speedup_ceiling" in row]
    if ceilings:
        parts = [f"`{name}` {_number(row['speedup_ceiling'])}× (the hooks cost "
                 f"{_number(row['hooks_s'] / row['batched_s'])}× that pass)"
                 for name, row in ceilings]
        lines += ["", "A per-sample method that rides one batched forward and backward is at most "
                  "as much faster than the per-example loop as that pass is: "
                  f"{', '.join(parts)} (`batched_s` in `per_sample_grads`)."]
    if (root / GRID_SELECTION).exists():
        for grid, regimes in read_json(root / GRID_SELECTION).items():
            parts = [f"`{regime}` {_number(row['ratio_without_first_selection'])} "
                     f"({_number(row['first_selection_s'])} of its {_number(row['selection_s'])} s "
                     "of selection)" for regime, row in regimes.items()
                     if "ratio_without_first_selection" in row]
            if parts:
                lines += ["", f"In the {grid} grid, without the selection at each run's step 0 "
                          f"the ratio would be {' and '.join(parts)}."]
    return "\n".join(lines) + "\n"


def sweep_block(root: Path) -> str:
    """Per setting of the image backbone's sweep: training minutes (empty for the model it
    re-judged), guidance, and on held-out captions prompt preference / top-1 in thumbnail and
    encoder space, KID beside its real-vs-real floor, and the VAE's PSNR; last, when the stage's
    metrics have it, the preferences of D^B renders looked up by caption, drawn by no model."""
    path = root / SWEEP
    if not path.exists():
        return "No sweep run yet: `python benchmarks/bench_backbone_image_sweep.py`.\n"
    lines = ["| setting | guidance | train min | thumbnail pref / top-1 | encoder pref / top-1 | "
             "KID (floor) | VAE PSNR dB |", "|---|---|---|---|---|---|---|"]
    for row in read_json(path):
        held = row["heldout"]
        lines.append(
            f"| {row['name']} | {_number(row['guidance_scale'])} | {_number(row['train_minutes'])} | "
            f"{held['thumbnail_preference']:.2f} / {held['thumbnail_top1']} of {held['count']} | "
            f"{held['encoder_preference']:.2f} / {held['encoder_top1']} of {held['count']} | "
            f"{_number(held['kid'])} ({_number(held['kid_floor'])}) | {_number(held['vae_psnr'])} |")
    stage = root / "metrics" / "backbone_image.json"  # as stages_block reads it
    reference = read_json(stage) if stage.exists() else {}
    if "heldout_nearest_caption_encoder_preference" in reference:
        lines.append(f"| no model: the D^B render of the nearest caption (`metrics/backbone_image.json`) | – | – | "
                     f"{reference['heldout_nearest_caption_thumbnail_preference']:.2f} / – | "
                     f"{reference['heldout_nearest_caption_encoder_preference']:.2f} / – | – | – |")
    return "\n".join(lines) + "\n"


def check_draws_block(root: Path) -> str:
    """Per track, the grids' checks scored again with other sampled-Fisher draws: how many held
    with the grid's own draw and with the pooled draws, how many checks' single-draw verdicts
    split, how often one draw disagrees with the pooled verdict, the ratio's spread over draws
    (median coefficient of variation) and the pooled ratio's shift from the single draws' mean."""
    path = root / CHECK_DRAWS
    if not path.exists():
        return "No check-draws benchmark run yet: `python benchmarks/bench_check_draws.py`.\n"
    data = read_json(path)
    runs = data["runs"]
    draws, pooled = runs[0]["draws"], runs[0]["pooled_draws"]
    lines = ["| track | checks | held, the grid's draw | held, pooled | the grid's verdict = pooled "
             "| checks whose single draws split | a single draw disagrees with pooled "
             "| ratio CV over draws (median) | pooled − single-draw mean (median) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for track, row in data["summary"].items():
        lines.append(f"| {track} | {row['checks']} | {row['grid_holding']} | {row['pooled_holding']} | "
                     f"{row['grid_agrees_with_pooled']} of {row['checks']} | "
                     f"{row['checks_with_split_single_verdicts']} | "
                     f"{_number(row['single_disagrees_with_pooled'])} | "
                     f"{_number(row['median_ratio_cv'])} | "
                     f"{_number(row['median_pooled_minus_single_mean'])} |")
    names = ", ".join(f"`{run['run']}`" for run in runs)
    lines += ["", f"Runs: {names}; {draws} single draws and one pooled check of {pooled} draws per "
              f"due check of a kept D^B' ({_number(data['minutes'])} min with {data['threads']} torch "
              "threads). The scored runs reproduce the committed checks to a relative "
              f"{_number(max(run['committed_match'] for run in runs))} (`committed_match`; the grids "
              "run one thread each, so sums round differently with more)."]
    return "\n".join(lines) + "\n"


def blocks(root: str | Path = paths.ROOT) -> dict[str, str]:
    from bat.analysis.claims import classify, render

    root = Path(root)
    return {"claims": render(classify(root=root)), "budget": budget_block(root),
            "stages": stages_block(root), "benchmarks": benchmarks_block(root),
            "sweep": sweep_block(root), "check_draws": check_draws_block(root)}


def update(readme: str | Path = paths.ROOT / "README.md", root: str | Path = paths.ROOT) -> bool:
    """Rewrite every generated block of ``readme``; whether anything changed."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    updated = text
    for name, block in blocks(root).items():
        updated = replace_block(updated, name, block)
    if updated != text:
        readme.write_text(updated, encoding="utf-8")
    return updated != text


if __name__ == "__main__":
    print("README updated" if update() else "README already up to date")
    sys.exit(0)
