"""Algorithm 1's cost inside a real grid: BAT's wall time against random_matched's, same run.

    python benchmarks/bench_grid_selection.py --out benchmarks/results/grid_selection.json [GRID ...]

Reads ``runs/<grid>/steps.csv`` as the pipeline wrote it (one ``dvc repro``, so the regimes
shared the machine) and, per BAT regime, sums the training-step and selection seconds over all
its runs, against ``random_matched``'s (the same number of backbone examples per step, drawn
without scoring). Issue 12's goal is a ratio ≤ 1.3 with a check every few steps. The selection
at each run's step 0 (``reason`` "initial") is also given apart, with the ratio without it, since
short runs pay it over few steps. Nothing is trained here: it reports the committed run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bat import io  # noqa: E402
from bat.analysis.runs import SELECTING_REGIMES  # noqa: E402

GOAL_RATIO = 1.3
BASELINE = "random_matched"


def grid_ratios(steps: pd.DataFrame) -> dict:
    """{BAT regime: wall seconds of its runs, random_matched's, their ratio, checks per run}."""
    seconds = steps.groupby("regime")[["seconds", "selection_seconds"]].sum()
    totals = seconds.sum(axis=1)
    if BASELINE not in totals:
        raise ValueError(f"the grid has no {BASELINE!r} runs to compare with")
    runs = steps.groupby("regime")[["dataset", "seed"]].apply(lambda frame: len(frame.drop_duplicates()))
    checks = steps[steps["score_bat"].notna()].groupby("regime").size()
    # The selection at step 0 is paid once per run, the checks every few steps: in short runs the
    # first one weighs most, so the two are reported apart.
    first = steps[steps["reason"] == "initial"].groupby("regime")["selection_seconds"].sum()
    rows = {}
    for regime in SELECTING_REGIMES:
        if regime not in totals:
            continue
        ratio = float(totals[regime] / totals[BASELINE])
        first_s = float(first.get(regime, 0.0))
        rows[regime] = {"runs": int(runs[regime]), "bat_s": float(totals[regime]),
                        "random_matched_s": float(totals[BASELINE]),
                        "selection_s": float(seconds.loc[regime, "selection_seconds"]),
                        "first_selection_s": first_s,
                        "ratio_without_first_selection": float(
                            (totals[regime] - first_s) / totals[BASELINE]),
                        "checks_per_run": float(checks.get(regime, 0) / runs[regime]),
                        "ratio": ratio, "goal_ratio": GOAL_RATIO, "meets_goal": ratio <= GOAL_RATIO}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grids", nargs="*", default=["dreambooth"])
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--out", default="benchmarks/results/grid_selection.json")
    args = parser.parse_args()
    results = {grid: grid_ratios(pd.read_csv(Path(args.runs) / grid / "steps.csv"))
               for grid in args.grids}
    io.write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
