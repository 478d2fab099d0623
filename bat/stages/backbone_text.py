"""Stage ``pretrain_text``: instruction-tune the text backbone on D^B, scored before and after.

Usage: ``python -m bat.stages.backbone_text``, with the ``backbone_text`` section of params.yaml
(:class:`bat.text.backbone.TextBackboneConfig`) and ``runtime`` (device, dtype, mixed precision and
gradient checkpointing of the fine-tune, autocast of the scoring). The eight multiple-choice sets are scored on their
first ``eval_set_size`` items by the backbone before the fine-tune and by the saved folder
reopened with the loader the adaptation stages use. Writes

- ``models/backbone_text``: the merged LM, its tokenizer and the D^B ids it saw;
- ``runs/backbone_text/result.json`` (:mod:`bat.analysis.results`), which the ``backbone_text``
  notebook plots: ``source``; ``runtime`` (the section it ran under); ``rows`` (per step: ``step``, ``loss`` on response tokens,
  ``learning_rate``, labelled ``tokens``, wall ``seconds``); ``loss``
  (:func:`bat.text.backbone.loss_summary`); ``examples``, ``dropped_examples``,
  ``trainable_parameters``, ``distinct_examples_seen``; ``scores`` (one record per set and a last
  ``mean`` row: ``set``, ``paper``, ``items``, ``chance``, ``acc_before``/``acc_after``,
  ``acc_norm_before``/``acc_norm_after``); ``seconds`` (``load``, ``eval_before``, ``fine_tune``,
  ``save_and_reload``, ``eval_after``, ``total``; wall clock, rounded to 0.1 s).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

from bat.analysis.results import write_result
from bat.config import build
from bat.core.runtime import RuntimeConfig
from bat.stages import run_model_stage
from bat.io import read_jsonl
from bat.text.backbone import (TextBackboneConfig, compare_scores, fine_tune, initial_backbone, load_backbone,
                               load_eval_sets, loss_summary, save_backbone, score_eval_sets)

SECTION = "backbone_text"


def run(params: dict, runtime: RuntimeConfig, prepared: Path, model_folder: Path, result_folder: Path) -> Path:
    """Fine-tune into ``model_folder`` on ``runtime``'s device and write ``result_folder``; a bad
    key raises ConfigError."""
    started = time.perf_counter()
    config = build(TextBackboneConfig, params, SECTION)
    records = read_jsonl(prepared / "text" / "backbone.jsonl")
    eval_sets = load_eval_sets(prepared / "text" / "eval", config.eval_set_size)
    seconds = {}

    clock = time.perf_counter()
    model, tokenizer = initial_backbone(config, runtime)
    seconds["load"] = time.perf_counter() - clock
    clock = time.perf_counter()
    with runtime.autocast():
        before = score_eval_sets(model, tokenizer, eval_sets, batch_size=config.eval_batch_size)
    seconds["eval_before"] = time.perf_counter() - clock

    model, tokenizer, log = fine_tune(config, records, model=model, tokenizer=tokenizer, runtime=runtime)
    seconds["fine_tune"] = log["seconds"]
    clock = time.perf_counter()
    save_backbone(model, tokenizer, model_folder, pretraining_ids=log["seen_ids"])
    del model  # "after" is scored on the folder as saved, as the adaptation stages will read it
    model, tokenizer = load_backbone(model_folder, torch_dtype=runtime.dtype, device=runtime.device_name,
                                     attn_implementation=config.attn_implementation)
    seconds["save_and_reload"] = time.perf_counter() - clock

    clock = time.perf_counter()
    with runtime.autocast():
        after = score_eval_sets(model, tokenizer, eval_sets, batch_size=config.eval_batch_size)
    seconds["eval_after"] = time.perf_counter() - clock
    seconds["total"] = time.perf_counter() - started
    measured = {"source": config.source, "runtime": asdict(runtime), "rows": log["rows"], "loss": loss_summary(log),
                "examples": log["examples"], "dropped_examples": log["dropped_examples"],
                "trainable_parameters": log["trainable_parameters"],
                "distinct_examples_seen": len(set(log["seen_ids"])),
                "scores": compare_scores(before, after).to_dict("records"),
                "seconds": {key: round(value, 1) for key, value in seconds.items()}}
    return write_result(result_folder, params, measured)


def main(argv: list[str] | None = None) -> int:
    return run_model_stage(run, SECTION)


if __name__ == "__main__":
    sys.exit(main())
