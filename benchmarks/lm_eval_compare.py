"""Does bat.text.benchmarks give the log-likelihood acc that lm-evaluation-harness gives?

    python benchmarks/lm_eval/make_tiny_model.py /tmp/tiny-llama
    python benchmarks/lm_eval_compare.py --model /tmp/tiny-llama \\
        --items benchmarks/lm_eval/items.jsonl --out /tmp/lm_eval_compare.json

Scores one saved Hugging Face causal LM on one item file twice: with
:func:`bat.text.benchmarks.score_loglikelihood`, and with lm-eval's ``hf`` model on a task whose
YAML reads the same file through ``dataset_path: json``. Writes both accuracies, the largest
per-choice log-likelihood difference and per-item disagreements to ``--out``; exits 1 if the
predictions differ. Needs ``pip install lm-eval`` (tested with 0.4.13); the test suite does not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bat import io
from bat.text.benchmarks import load_items, predict, score_loglikelihood

TASK = "bat_items"

# doc_to_text/choice/target name the item file's columns, which lm-eval reads as they are;
# target_delimiter " " is lm-eval's default, written out because bat relies on it too.
TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {items}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def lm_eval_scores(model_dir: Path, items_path: Path, batch_size: int) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as task_dir:
        (Path(task_dir) / f"{TASK}.yaml").write_text(
            TASK_YAML.format(task=TASK, items=items_path.resolve()), encoding="utf-8"
        )
        output = simple_evaluate(
            model="hf",
            model_args={"pretrained": str(model_dir), "dtype": "float32"},
            tasks=[TASK],
            batch_size=batch_size,
            device="cpu",
            task_manager=TaskManager(include_path=task_dir, include_defaults=False),
            log_samples=True,
        )
    samples = sorted(output["samples"][TASK], key=lambda sample: sample["doc_id"])
    return {
        "acc": output["results"][TASK]["acc,none"],
        "acc_norm": output["results"][TASK]["acc_norm,none"],
        "loglikelihoods": [[float(ll) for ll, _ in s["filtered_resps"]] for s in samples],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="save_pretrained folder")
    parser.add_argument("--items", type=Path, required=True, help=".jsonl or .json item file")
    parser.add_argument("--out", type=Path, required=True, help="JSON report to write")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    items = load_items(args.items)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    ours = score_loglikelihood(model, tokenizer, items, batch_size=args.batch_size)
    theirs = lm_eval_scores(args.model, args.items, args.batch_size)

    differences = [
        abs(a - b)
        for prediction, their_lls in zip(ours.predictions, theirs["loglikelihoods"], strict=True)
        for a, b in zip(prediction.loglikelihoods, their_lls, strict=True)
    ]
    disagreements = [
        {"id": p.id, "bat": p.loglikelihoods, "lm_eval": their_lls}
        for item, p, their_lls in zip(
            items, ours.predictions, theirs["loglikelihoods"], strict=True
        )
        if (p.pred, p.pred_norm) != predict(their_lls, item.choices)
    ]
    agree = not disagreements and ours.acc == theirs["acc"] and ours.acc_norm == theirs["acc_norm"]
    report = {
        "model": str(args.model),
        "items": str(args.items),
        "n_items": len(items),
        "bat": {"acc": ours.acc, "acc_norm": ours.acc_norm},
        "lm_eval": {"acc": theirs["acc"], "acc_norm": theirs["acc_norm"]},
        "max_abs_loglikelihood_difference": max(differences),
        "prediction_disagreements": disagreements,
        "agree": agree,
    }
    io.write_json(args.out, report)
    print(
        f"bat acc={ours.acc:.4f} acc_norm={ours.acc_norm:.4f} | lm-eval acc={theirs['acc']:.4f} "
        f"acc_norm={theirs['acc_norm']:.4f} | max |Δ log-likelihood|={max(differences):.2e} | "
        f"{'agree' if agree else 'DISAGREE'}"
    )
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
