"""The text track: the LM backbone, the D^B records it was fine-tuned on, tasks and benchmarks.

Implements :class:`bat.core.track.Track` for the oracle and grid stages.
"""

from __future__ import annotations

from pathlib import Path

from bat import paths, validate
from bat.core.protocols import Batch
from bat.core.runtime import RuntimeConfig
from bat.core.track import heldout_loss
from bat.errors import ConfigError
from bat.io import read_jsonl
from bat.text.backbone import (collate, encode_records, load_backbone, load_eval_sets, pretraining_ids,
                               score_eval_sets)
from bat.text.data import ADAPTATION_TASKS
from bat.text.task import CausalLMTask

DATASETS = tuple(ADAPTATION_TASKS)
ADAPTERS = ("lora", "dora")
MIXING = "regular_interval"  # App. B: whole backbone batches every few adaptation batches
SEEDED_EVALUATION = False  # the LM loss and benchmark scores draw nothing
EVAL_BATCH = 8  # LM logits of 8 × 64 tokens × 49k vocabulary: ~100 MB
RETENTION_SIZE = 32  # held-out D^B records scored for retention, as many as the image track's concepts


def datasets(params: dict) -> tuple[str, ...]:
    """The D^A tasks (the same names whichever source ``prepare`` read them from)."""
    return DATASETS


def text_examples(tokenizer, records: list[dict], max_length: int) -> Batch:
    """Instruction records → right-padded ``{"input_ids", "attention_mask", "labels"}``.

    Formatted exactly as the text backbone was fine-tuned (chat template, prompt masked);
    records whose prompt alone fills ``max_length`` are dropped, as in that fine-tune. Every set
    is padded to ``max_length``, so that D^A and D^B examples can share a batch (the task trims
    the padding no example of a batch uses).
    """
    encoded, _ = encode_records(tokenizer, records, max_length)
    if not encoded:
        raise ValueError(f"no record fits in max_length={max_length} tokens")
    return collate(encoded, tokenizer.pad_token_id, max_length)


class TextTrack:
    """The LM of the text backbone (eager attention: Proposition 2 takes per-sample gradients of it,
    and transformers' SDPA mask cannot be traced by vmap), the D^B records it was fine-tuned on, the
    adaptation tasks and, with ``benchmark_items`` > 0, the eight multiple-choice sets.

    ``max_length``: tokens per example, as the backbone's fine-tune (``backbone_text.max_length``).
    ``runtime`` places the LM on its device in its dtype; evaluation runs under its autocast.
    Where the backbone's fine-tune is known (:func:`bat.text.backbone.pretraining_ids`), D^B is the
    records it trained on and :attr:`retention_examples` come from the rest. A backbone from
    elsewhere (the paper profile's LLaMA-2-7B-alpaca-cleaned) was fine-tuned on every record, so
    the first :data:`RETENTION_SIZE` are held out of D^B instead: no run draws them, and an adapter
    that forgets D^B loses on them. Raises :class:`ConfigError` when D^B would be left empty.
    """

    def __init__(self, models: str | Path, max_length: int, benchmark_items: int = 0,
                 prepared: str | Path | None = None, runtime: RuntimeConfig | None = None):
        validate.positive("backbone_text.max_length", max_length, integer=True)
        validate.non_negative("benchmark_items", benchmark_items, integer=True)
        self.prepared = Path(prepared) if prepared is not None else paths.PREPARED / "text"
        self.max_length = max_length
        self.runtime = runtime or RuntimeConfig()
        folder = Path(models) / "backbone_text"
        model, self.tokenizer = load_backbone(folder, torch_dtype=self.runtime.dtype,
                                              attn_implementation="eager")
        self.start_model = model.to(self.runtime.torch_device)
        self.task = CausalLMTask()
        records = read_jsonl(self.prepared / "backbone.jsonl")
        seen = pretraining_ids(folder)
        if seen is not None:  # D^B is what this backbone was trained on, when that is known
            seen = set(seen)
            held_out = [record for record in records if record["id"] not in seen]
            records = [record for record in records if record["id"] in seen]
            if not records:
                raise ConfigError(f"{folder}/bat_pretraining_ids.json names no record of "
                                  f"{self.prepared / 'backbone.jsonl'}; re-run the pretrain_text stage "
                                  "with backbone_text.steps > 0")
        else:
            if len(records) <= RETENTION_SIZE:
                raise ConfigError(f"prepare.text_backbone_size: {len(records)} records leave no D^B "
                                  f"once the first {RETENTION_SIZE} are held out for the retention loss; "
                                  f"prepare more than {RETENTION_SIZE}")
            held_out, records = records[:RETENTION_SIZE], records[RETENTION_SIZE:]
        self.records = records
        # backbone.jsonl is shuffled when prepared (bat.text.data.backbone_instructions, and the
        # seeded shuffle of bat.text.hub.load_records): its first held-out records are a random
        # sample of the distribution D^B was drawn from
        self.retention_records = held_out[:RETENTION_SIZE]
        self._retention = None
        self.eval_sets = (load_eval_sets(self.prepared / "eval", benchmark_items)
                          if benchmark_items else None)

    def _encode(self, records) -> Batch:
        return text_examples(self.tokenizer, records, self.max_length)

    def examples(self, split: str) -> Batch:
        return self._encode(read_jsonl(self.prepared / "tasks" / f"{split}.jsonl"))

    def backbone_size(self) -> int:
        return len(self.records)

    def backbone_examples(self, indices: list[int] | None = None) -> Batch:
        records = self.records if indices is None else [self.records[i] for i in indices]
        return self._encode(records)

    @property
    def retention_examples(self) -> Batch | None:
        """Up to :data:`RETENTION_SIZE` instruction records of D^B's distribution that no run trains
        on (and, where the backbone's fine-tune is known, that it did not train on either), on which
        an adapter that forgets what the backbone learned loses (the text track's retention
        control); None when the backbone's fine-tune saw every record."""
        if self._retention is None and self.retention_records:
            self._retention = self._encode(self.retention_records)
        return self._retention

    def evaluation_data(self, dataset: str, eval_size: int) -> dict:
        validate.choice("dataset", dataset, DATASETS)
        test = read_jsonl(self.prepared / "tasks" / f"{dataset}_test.jsonl")[:eval_size]
        return {"adaptation": self.examples(f"{dataset}_train"), "heldout": self._encode(test)}

    def evaluate(self, model, data: dict, seed: int, with_benchmarks: bool) -> tuple[dict, None]:
        """LM loss on the task's test items and, where known, on the held-out D^B records
        (``retention_loss``); on final models, acc / acc_norm of the eight sets."""
        with self.runtime.autocast():
            row = {"heldout_loss": heldout_loss(model, self.task, data["heldout"], EVAL_BATCH)}
            if self.retention_examples is not None:
                row["retention_loss"] = heldout_loss(model, self.task, self.retention_examples,
                                                     EVAL_BATCH)
            scores = (score_eval_sets(model, self.tokenizer, self.eval_sets, progress=False)
                      if with_benchmarks and self.eval_sets is not None else None)
        if scores is not None:
            for _, set_row in scores.iterrows():
                row[f"acc:{set_row['set']}"] = set_row["acc"]
                row[f"acc_norm:{set_row['set']}"] = set_row["acc_norm"]
            row["acc:mean"], row["acc_norm:mean"] = scores["acc"].mean(), scores["acc_norm"].mean()
        return row, None


def load(models: str | Path, runtime: RuntimeConfig | None = None, **options) -> TextTrack:
    """The text track of ``models``, its LM placed as ``runtime`` says (:class:`TextTrack`)."""
    return TextTrack(models, runtime=runtime, **options)
