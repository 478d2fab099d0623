"""The paper's text sets (App. B, Tab. 1), read with ``datasets``, in the prepared formats.

- D^B: Alpaca-cleaned (hub ``yahma/alpaca-cleaned``: instruction, input, output), the instruction
  set the paper's backbone, LLaMA-2-7B-alpaca-cleaned, was fine-tuned on → ``backbone``.
- D^A (App. B): MedQuad (``keivalya/MedQuad-MedicalQnADataset``: qtype, Question, Answer) →
  ``word_definition``; WinoGrande (``allenai/winogrande``, config ``winogrande_xl``: sentence,
  option1, option2, answer) → ``example_cloze``; XSum (``EdinburghNLP/xsum``: document, summary,
  id) → ``wiki_summary``.
- The eight multiple-choice sets: lm-eval 0.4's tasks of the same name (:data:`BENCHMARKS`), read
  by :func:`bat.text.benchmarks.load_hub_items`.

Each fills the prepared set of its analogue (→, :data:`bat.text.data.ADAPTATION_TASKS` and
:data:`bat.text.data.EVAL_SETS`), so the text track reads it unchanged. Where a set comes from is
``load_dataset``'s ``path``: a hub id, a local copy of one (``hf download <id> --repo-type dataset
--local-dir <folder>``, read with the same ``name``), or a builder (``parquet``, ``json``, ``csv``)
with ``data_files``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bat import validate
from bat.errors import ConfigError
from bat.text.data import Record, cloze_as_instructions, cloze_context, summary_record


def _alpaca(row: Mapping[str, Any]) -> Record:
    # Alpaca's optional input (the text an instruction is about) follows the instruction, as in
    # Stanford Alpaca's prompt; our prompt template has one instruction field.
    instruction = f"{row['instruction']}\n\n{row['input']}" if row["input"] else row["instruction"]
    return {"source": "alpaca", "key": instruction, "instruction": instruction,
            "response": row["output"]}


def _medquad(row: Mapping[str, Any]) -> Record:
    return {"key": row["Question"], "instruction": row["Question"], "response": row["Answer"]}


def _winogrande(row: Mapping[str, Any]) -> Record:
    # The cloze analogue's instruction: the sentence with its blank "_", the two options listed.
    item = {"key": row["sentence"], "context": cloze_context(row["sentence"]),
            "choices": [row["option1"], row["option2"]], "gold": int(row["answer"]) - 1}
    return cloze_as_instructions([item])[0]


def _xsum(row: Mapping[str, Any]) -> Record:
    return summary_record(row["id"], row["document"], row["summary"])


# name -> (prepared set it fills, the columns it reads, row -> instruction record)
RECORD_SETS: dict[str, tuple[str, tuple[str, ...], Callable[[Mapping[str, Any]], Record]]] = {
    "alpaca": ("backbone", ("instruction", "input", "output"), _alpaca),
    "medquad": ("word_definition", ("Question", "Answer"), _medquad),
    "winogrande": ("example_cloze", ("sentence", "option1", "option2", "answer"), _winogrande),
    "xsum": ("wiki_summary", ("id", "document", "summary"), _xsum),
}
TASKS = ("medquad", "winogrande", "xsum")  # the paper's D^A of LoRA / DoRA (App. B)

# lm-eval task -> (prepared set it fills, row schema in bat.text.benchmarks.HUB_SCHEMAS)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "boolq": ("definition_check", "boolq"),
    "piqa": ("hypernym_choice", "piqa"),
    "siqa": ("synonym_choice", "siqa"),
    "hellaswag": ("wiki_next_sentence", "hellaswag"),
    "winogrande": ("example_cloze", "winogrande"),
    "arc_challenge": ("definition_hard", "arc"),
    "arc_easy": ("definition_easy", "arc"),
    "openbookqa": ("wiki_field", "openbookqa"),
}


def load_records(dataset: str, size: int, seed: int, path: str, split: str,
                 **load_dataset_kwargs: Any) -> list[Record]:
    """``size`` instruction records (``key``, ``instruction``, ``response``) of ``dataset`` (a name
    in :data:`RECORD_SETS`), in the order of a seeded shuffle of the split, one per key.

    ``load_dataset(path, split=split, **load_dataset_kwargs)`` reads the rows; ``Dataset.shuffle``
    with ``seed`` orders them, so the same seed draws the same records. Duplicate keys (MedQuad
    repeats a question under several answers) keep their first row, so that splits cut from the
    list share no prompt. Raises :class:`ConfigError` for an unknown name, rows without the
    columns it reads, or fewer distinct rows than ``size``.
    """
    validate.choice("dataset", dataset, sorted(RECORD_SETS))
    validate.positive(f"{dataset} size", size, integer=True)
    _, columns, to_record = RECORD_SETS[dataset]
    from datasets import load_dataset  # slow to import; only the paper's sources need it

    rows = load_dataset(path, split=split, **load_dataset_kwargs)
    missing = [column for column in columns if column not in rows.column_names]
    if missing:
        raise ConfigError(f"{path} {split}: {dataset} needs the columns {list(columns)}; "
                          f"it has {rows.column_names}")
    records, keys = [], set()
    for row in rows.shuffle(seed=seed):
        record = to_record(row)
        if record["key"] not in keys:
            keys.add(record["key"])
            records.append(record)
            if len(records) == size:
                return records
    raise ConfigError(f"{path} {split}: {dataset} has {len(records)} distinct rows, "
                      f"fewer than the {size} asked for")
