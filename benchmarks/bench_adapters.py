"""What augmentation costs per adapter kind: step time and peak memory, plain vs random vs bat.

    python benchmarks/bench_adapters.py --out benchmarks/results/adapters.json

Trains every adapter kind on small backbones (a UNet with (32, 64) channels on 16×16 latents; a
2-layer LLaMA of width 128 on 64-token sequences) for a few steps in each regime, through
``bat.core.train.train``. ``bat`` uses a trivial selector (the first candidates), so its numbers are
the loop's own overhead of selection, not the cost of Proposition-2 scoring. Each measurement runs
in its own process, so peak memory (Linux ``VmHWM`` minus the resident size before training)
belongs to that run alone. Times are the mean per step after a warm-up, selection included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))  # tests.tiny_models holds the backbone builders

KINDS = ("dreambooth", "locon", "loha", "lokr", "lora", "dora")
REGIMES = ("plain", "random", "bat")
WARMUP = 2  # steps left out of the mean: first calls allocate and warm caches


class FirstCandidates:
    """The cheapest possible selector: the first ``count`` candidates it is offered."""

    def select(self, context, count):
        return context.candidate_ids[:count]


def memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(kind: str, regime: str, steps: int, batch_size: int) -> dict:
    """One training run in this process; returns its mean step seconds and peak extra memory."""
    import torch

    from bat.core.adapters import AdapterConfig
    from bat.image.task import DiffusionTask
    from bat.text.task import CausalLMTask
    from bat.core.train import TrainConfig, train
    from tests.tiny_models import diffusion_examples, text_examples, tiny_llama, tiny_scheduler
    from tests.tiny_models import tiny_unet

    torch.set_num_threads(1)
    if kind in ("lora", "dora"):
        model, task, mixing = tiny_llama(hidden=128), CausalLMTask(), "regular_interval"
        adaptation, backbone = text_examples(16, seed=0, length=64), text_examples(64, seed=1, length=64)
    else:
        model, task, mixing = tiny_unet(channels=(32, 64)), DiffusionTask(tiny_scheduler()), "per_batch"
        adaptation = diffusion_examples(16, seed=0, size=16)
        backbone = diffusion_examples(64, seed=1, size=16)
    config = TrainConfig(regime=regime, steps=steps, batch_size=batch_size, learning_rate=1e-4,
                         gamma=0.5, mixing=mixing, candidates=32, checkpoint_every=steps,
                         log_every=steps)
    before = memory_kib("VmRSS")
    with tempfile.TemporaryDirectory() as run_dir:
        log = train(model, AdapterConfig(kind), task, adaptation, backbone, config, run_dir,
                    selector=FirstCandidates() if regime == "bat" else None, progress=False).log
    timed = log[WARMUP:]
    return {"step_seconds": sum(r["seconds"] + r["selection_seconds"] for r in timed) / len(timed),
            "selection_seconds": sum(r["selection_seconds"] for r in timed) / len(timed),
            "peak_mib": (memory_kib("VmHWM") - before) / 1024,
            "examples_per_step": (log[-1]["n_adaptation"] + log[-1]["n_backbone"]) / len(log)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--one", nargs=2, metavar=("KIND", "REGIME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # child process: one measurement, as JSON on stdout
        print(json.dumps(measure(*args.one, args.steps, args.batch_size)))
        return 0

    from bat.io import write_json

    results = {}
    for kind in KINDS:
        runs = {}
        for regime in REGIMES:
            child = subprocess.run(
                [sys.executable, __file__, "--out", str(args.out), "--steps", str(args.steps),
                 "--batch-size", str(args.batch_size), "--one", kind, regime],
                check=True, capture_output=True, text=True)
            runs[regime] = json.loads(child.stdout.strip().splitlines()[-1])
            print(kind, regime, runs[regime], file=sys.stderr)
        plain = runs["plain"]
        runs["ratios"] = {f"{regime}/plain": {
            "time": runs[regime]["step_seconds"] / plain["step_seconds"],
            "memory": runs[regime]["peak_mib"] / plain["peak_mib"]} for regime in ("random", "bat")}
        results[kind] = runs

    import torch

    write_json(args.out, {"settings": {"steps": args.steps, "warmup": WARMUP,
                                       "batch_size": args.batch_size, "gamma": 0.5,
                                       "threads": 1, "torch": torch.__version__},
                          "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
