"""Quality per CPU-minute of the tiny image backbone: one setting of ``backbone_image`` per call.

    OMP_NUM_THREADS=1 python benchmarks/bench_backbone_image_sweep.py --name cosine_ema \\
        --set unet_lr_schedule=cosine --set ema_decay=0.99 --guidance 3 7.5

Overrides (``--set key=value``, YAML values) go on top of params.yaml's ``backbone_image``; the
stage's own code trains (:func:`bat.image.backbone.pretrain`) and judges
(:func:`bat.stages.backbone_image.evaluate`, with ``models/encoders``), in memory: nothing is
written to ``models/`` or ``runs/``. ``--model FOLDER`` judges a saved pipeline instead of training
(e.g. the committed default's). Each ``--guidance`` scale samples the same trained model again.
One row per (setting, guidance scale) replaces any row of the same name and scale in ``--out``:
``train_minutes`` (VAE + UNet), ``eval_minutes`` (sampling and judging both groups at that scale),
the thread count, peak RSS, and per group the thumbnail and encoder preference / top-1 (as counts
of ``eval_prompts``), KID and its real-vs-real floor, and the VAE's PSNR on the real renders.
Times are wall seconds on a shared 2-core machine at the thread count given: under `make repro`
(two stages at a time) the stage also gets one thread; with `JOBS=1` it gets two and is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import yaml  # noqa: E402

from bat import paths  # noqa: E402
from bat.config import build_parts, read_yaml, section  # noqa: E402
from bat.image.backbone import ImageBackboneConfig, load_image_backbone, pretrain  # noqa: E402
from bat.image.encoders import load_encoders  # noqa: E402
from bat.io import write_json  # noqa: E402
from bat.stages.backbone_image import SECTION, FidelityConfig, evaluate, load_sets  # noqa: E402

OUT = PROJECT / "benchmarks" / "results" / "backbone_image_sweep.json"


def parse_override(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="the setting's name in the table")
    parser.add_argument("--set", dest="overrides", action="append", default=[], type=parse_override,
                        metavar="KEY=VALUE", help="override one key of backbone_image")
    parser.add_argument("--guidance", type=float, nargs="+", default=None,
                        help="guidance scales to sample at (default: the section's)")
    parser.add_argument("--model", type=Path, default=None, help="judge this saved pipeline instead of training")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    params = {**section(read_yaml(paths.PARAMS), SECTION), **dict(args.overrides)}
    config, fidelity = build_parts(params, SECTION, ImageBackboneConfig, FidelityConfig)
    sets = load_sets(paths.PREPARED)
    encoders = load_encoders(paths.MODELS / "encoders")
    started = time.perf_counter()
    if args.model is None:
        pipe, log = pretrain(config, sets["seen"].images, list(sets["seen"].captions))
        pipe.set_progress_bar_config(disable=True)
        losses = {name: sum(row["loss"] for row in log[name][-10:]) / 10 for name in ("vae", "unet")}
    else:
        pipe, losses = load_image_backbone(args.model), None
    train_minutes = (time.perf_counter() - started) / 60 if args.model is None else None

    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    for scale in args.guidance or [fidelity.guidance_scale]:
        scale_fidelity = FidelityConfig(fidelity.eval_prompts, fidelity.sample_steps, scale)
        started = time.perf_counter()
        scores, _ = evaluate(pipe, sets, config.seed, scale_fidelity, encoders)
        row = {"name": args.name, "overrides": dict(args.overrides), "model": str(args.model) if args.model else None,
               "guidance_scale": scale, "threads": torch.get_num_threads(), "train_minutes": train_minutes,
               "eval_minutes": (time.perf_counter() - started) / 60, "loss_last10": losses,
               "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
               "load_average": os.getloadavg()}
        for group in scores:
            count = group["count"]
            row[group["group"]] = {
                "count": count, "thumbnail_preference": group["thumbnail_preference"],
                "thumbnail_top1": round(group["thumbnail_accuracy"] * count),
                "encoder_preference": group["encoder_preference"],
                "encoder_top1": round(group["encoder_accuracy"] * count),
                "kid": group["kid"], "kid_floor": group["kid_floor"], "vae_psnr": group["vae_psnr"]}
        print(json.dumps(row, indent=1))
        rows = [r for r in rows if (r["name"], r["guidance_scale"]) != (args.name, scale)] + [row]
        write_json(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
