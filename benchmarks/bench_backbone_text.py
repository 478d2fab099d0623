"""How long does the tiny profile's ``backbone_text`` stage take, piece by piece?

    python benchmarks/bench_backbone_text.py --out benchmarks/results/backbone_text.json

Runs what the ``pretrain_text`` stage (``bat.stages.backbone_text``) runs, with the parameters
cell of ``notebooks/backbone_text.py`` (the tiny profile, kept equal to params.yaml by the tests):
load the GGUF backbone, score the eight sets, fine-tune, save (to a temporary folder, not to
``models/``), reload, score again. Writes the seconds of each piece, per-step fine-tune times,
the thread count and the load average (other work on the machine changes every number here).
The stage budget is 600 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jupytext  # noqa: E402
import torch  # noqa: E402

from bat import io, paths# noqa: E402
from bat.stages.notebook import parameter_defaults  # noqa: E402
from bat.text.backbone import (TextBackboneConfig, fine_tune, initial_backbone, load_backbone,  # noqa: E402
                               load_eval_sets, save_backbone, score_eval_sets)

BUDGET_SECONDS = 600


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=None, help="override the tiny profile's steps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    parameters = parameter_defaults(jupytext.read(PROJECT / "notebooks" / "backbone_text.py"))
    if args.steps is not None:
        parameters["steps"] = args.steps
    config = TextBackboneConfig(**parameters)
    seconds: dict[str, float] = {}
    started = clock = time.perf_counter()

    records = io.read_jsonl(paths.PREPARED / "text" / "backbone.jsonl")
    eval_sets = load_eval_sets(paths.PREPARED / "text" / "eval", config.eval_set_size)
    seconds["read_data"] = time.perf_counter() - clock
    clock = time.perf_counter()
    model, tokenizer = initial_backbone(config)
    seconds["load"] = time.perf_counter() - clock
    clock = time.perf_counter()
    before = score_eval_sets(model, tokenizer, eval_sets, batch_size=config.eval_batch_size)
    seconds["eval_before"] = time.perf_counter() - clock
    model, tokenizer, log = fine_tune(config, records, model=model, tokenizer=tokenizer)
    seconds["fine_tune"] = log["seconds"]
    seconds["encode_records"] = log["encode_seconds"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "backbone_text"
        clock = time.perf_counter()
        save_backbone(model, tokenizer, folder)
        seconds["save"] = time.perf_counter() - clock
        del model
        clock = time.perf_counter()
        model, tokenizer = load_backbone(folder, torch_dtype=config.torch_dtype, device=config.device,
                                         attn_implementation=config.attn_implementation)
        seconds["reload"] = time.perf_counter() - clock
        size = sum(path.stat().st_size for path in folder.iterdir())
    clock = time.perf_counter()
    after = score_eval_sets(model, tokenizer, eval_sets, batch_size=config.eval_batch_size)
    seconds["eval_after"] = time.perf_counter() - clock
    seconds["whole"] = time.perf_counter() - started

    steps = [row["seconds"] for row in log["rows"]]
    items = sum(len(items) for items in eval_sets.values())
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_after": list(os.getloadavg()), "torch": torch.__version__},
        "parameters": parameters,
        "seconds": {key: round(value, 2) for key, value in seconds.items()},
        "fine_tune_step_seconds": {"mean": statistics.mean(steps) if steps else None,
                                   "median": statistics.median(steps) if steps else None,
                                   "first": steps[0] if steps else None, "max": max(steps) if steps else None},
        "eval": {"items": items, "seconds_per_item": seconds["eval_before"] / items},
        "saved_megabytes": round(size / 2**20, 1),
        "within_budget": seconds["whole"] <= BUDGET_SECONDS, "budget_seconds": BUDGET_SECONDS,
        "mean_acc": {"before": float(before["acc"].mean()), "after": float(after["acc"].mean())},
        "mean_acc_norm": {"before": float(before["acc_norm"].mean()), "after": float(after["acc_norm"].mean())},
        "loss": {"first": log["rows"][0]["loss"] if steps else None, "last": log["rows"][-1]["loss"] if steps else None},
    }
    io.write_json(args.out, result)
    print(f"whole stage {seconds['whole']:.0f} s (budget {BUDGET_SECONDS} s); written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
