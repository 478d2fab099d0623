"""Time one pipeline stage end to end at the tiny profile, without touching the project's outputs.

    python benchmarks/bench_stage.py backbone_image --out benchmarks/results/backbone_image.json

The notebook runs exactly as `dvc repro` runs it (same parameters from params.yaml), in a
temporary root whose data/ points at the project's, so models/, figures/ and metrics/ of the
project are left alone. Reports wall time, CPU count and the budget the issue sets.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from bat import paths
from bat.io import read_json, write_json
from bat.stages.notebook import execute, stage_parameters

BUDGET_SECONDS = {"backbone_image": 600, "backbone_text": 600}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stem")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        (root / "data").mkdir()
        for name in ("raw", "prepared"):
            (root / "data" / name).symlink_to(paths.DATA / name)
        os.environ["BAT_ROOT"] = str(root)
        started = time.perf_counter()
        execute(args.stem, stage_parameters(args.stem), report=root / "report.ipynb", cwd=root)
        seconds = time.perf_counter() - started
        stage_metrics = read_json(root / "metrics" / f"{args.stem}.json")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = {"stage": args.stem, "wall_seconds": round(seconds, 1),
              "budget_seconds": BUDGET_SECONDS.get(args.stem),
              "within_budget": seconds <= BUDGET_SECONDS.get(args.stem, float("inf")),
              "peak_rss_mib_of_kernel": round(children.ru_maxrss / 1024),
              "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(),
              "stage_timings": stage_metrics.get("timings")}
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
