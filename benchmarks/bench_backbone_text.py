"""How long does the tiny profile's ``backbone_text`` stage take, piece by piece?

    python benchmarks/bench_backbone_text.py --out benchmarks/results/backbone_text.json

Runs the ``pretrain_text`` stage itself (:func:`bat.stages.backbone_text.run`) with the
``backbone_text`` section of params.yaml, into temporary folders (not ``models/`` or ``runs/``):
load the GGUF backbone, score the eight sets, fine-tune, save, reload, score again. Writes the
seconds of each piece as the stage measured them, per-step fine-tune times, the thread count and
the load average (other work on the machine changes every number here). The stage budget is
600 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from bat import io, paths  # noqa: E402
from bat.analysis.results import RESULT  # noqa: E402
from bat.config import read_yaml, section  # noqa: E402
from bat.core.runtime import runtime_config  # noqa: E402
from bat.stages.backbone_text import SECTION, run  # noqa: E402

BUDGET_SECONDS = 600


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=None, help="override the tiny profile's steps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = read_yaml(paths.PARAMS)
    parameters = dict(section(params, SECTION))
    if args.steps is not None:
        parameters["steps"] = args.steps

    with tempfile.TemporaryDirectory() as tmp:
        model_folder = Path(tmp) / "model"
        run(parameters, runtime_config(params), paths.PREPARED, model_folder, Path(tmp) / "result")
        result = io.read_json(Path(tmp) / "result" / RESULT)
        size = sum(path.stat().st_size for path in model_folder.iterdir())

    seconds = result["seconds"]
    steps = [row["seconds"] for row in result["rows"]]
    mean = next(row for row in result["scores"] if row["set"] == "mean")
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_after": list(os.getloadavg()), "torch": torch.__version__},
        "parameters": parameters,
        "seconds": seconds,
        "fine_tune_step_seconds": {"mean": statistics.mean(steps) if steps else None,
                                   "median": statistics.median(steps) if steps else None,
                                   "first": steps[0] if steps else None, "max": max(steps) if steps else None},
        "eval": {"items": mean["items"], "seconds_per_item": seconds["eval_before"] / mean["items"]},
        "saved_megabytes": round(size / 2**20, 1),
        "within_budget": seconds["total"] <= BUDGET_SECONDS, "budget_seconds": BUDGET_SECONDS,
        "mean_acc": {"before": mean["acc_before"], "after": mean["acc_after"]},
        "mean_acc_norm": {"before": mean["acc_norm_before"], "after": mean["acc_norm_after"]},
        "loss": result["loss"],
    }
    io.write_json(args.out, report)
    print(f"whole stage {seconds['total']:.0f} s (budget {BUDGET_SECONDS} s); written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
