"""Multiple-choice benchmarks (paper Tab. 1: BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC, OBQA)
scored by log-likelihood, as lm-evaluation-harness 0.4 does for ``output_type: multiple_choice``.

Each choice is the continuation ``target_delimiter + choice`` of the item's context; ``acc`` takes
the choice with the highest summed log-likelihood, ``acc_norm`` divides that sum by the choice's
length in characters first (``len(choice)``, the delimiter not counted; lm-eval's ``acc_bytes``
would use UTF-8 bytes instead, which we do not report). WinoGrande is scored *partially*, as
lm-eval's ``winogrande`` task does: the choices are the sentence up to the blank with each option
filled in, each is a context of its own, and the one shared continuation (the sentence after the
blank) is scored after each (:attr:`MultipleChoiceItem.continuation`).

Models and tokenizers are duck-typed Hugging Face objects (a causal LM, a ``PeftModel`` around one,
and a tokenizer with ``encode``), so this module does not import transformers.
"""

from __future__ import annotations

import json
import re
from itertools import groupby
from operator import itemgetter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bat import io, validate
from bat.core.runtime import model_device
from bat.errors import ConfigError

# lm-eval's fallback when neither the model config nor the caller gives a context length.
DEFAULT_MAX_LENGTH = 2048

# The Alpaca prompt (Stanford Alpaca's, without an input section), for tokenizers without a chat
# template (:mod:`bat.text.backbone`).
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass
class MultipleChoiceItem:
    """One question: the context, its choices (without a leading space), the gold index, an id.

    ``continuation``: None for the usual item, whose choices are scored after ``context``. For a
    partially scored item (WinoGrande) it is the text after the blank: each choice is then a
    context, ``context + choice``, after which ``continuation`` is scored.
    """

    context: str
    choices: list[str]
    gold: int
    id: str
    continuation: str | None = None

    def __post_init__(self) -> None:
        where = f"item {self.id!r}"
        if not isinstance(self.context, str):
            raise ConfigError(f"{where}: context must be a string, got {self.context!r}")
        if (
            not isinstance(self.choices, list)
            or len(self.choices) < 2
            or not all(isinstance(choice, str) and choice for choice in self.choices)
        ):
            raise ConfigError(
                f"{where}: choices must be a list of at least 2 non-empty strings, "
                f"got {self.choices!r}"
            )
        if isinstance(self.gold, bool) or not isinstance(self.gold, int):
            raise ConfigError(f"{where}: gold must be an integer index, got {self.gold!r}")
        if not 0 <= self.gold < len(self.choices):
            raise ConfigError(
                f"{where}: gold {self.gold} is not an index of its {len(self.choices)} choices"
            )
        if self.continuation is not None and not isinstance(self.continuation, str):
            raise ConfigError(f"{where}: continuation must be a string or null, "
                              f"got {self.continuation!r}")

    def requests(self, target_delimiter: str = " ") -> list[tuple[str, str]]:
        """The ``(context, continuation)`` pair scored for each choice, in choice order."""
        if self.continuation is None:
            return [(self.context, target_delimiter + choice) for choice in self.choices]
        return [(self.context + choice, target_delimiter + self.continuation)
                for choice in self.choices]


# ----------------------------------------------------------------------------- item files


def load_items(path: str | Path) -> list[MultipleChoiceItem]:
    """Read items from ``.jsonl`` (one object a line) or ``.json`` (a list of objects).

    Each object has the fields of :class:`MultipleChoiceItem`; ``continuation`` may be left out,
    and ``key`` (the held-out word or title that ``prepare`` records) is read past.
    """
    path = Path(path)
    if path.suffix == ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        records = [
            (f"{path}:{n}", json.loads(line)) for n, line in enumerate(lines, 1) if line.strip()
        ]
    elif path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ConfigError(f"{path}: expected a JSON list of items, got {type(data).__name__}")
        records = [(f"{path}[{n}]", record) for n, record in enumerate(data)]
    else:
        raise ConfigError(f"{path}: item files must end in .jsonl or .json")
    items = []
    for where, record in records:
        fields = {"context", "choices", "gold", "id"}
        if not isinstance(record, dict) or not fields <= record.keys():
            raise ConfigError(f"{where}: an item needs the fields {sorted(fields)}, got {record!r}")
        extra = record.keys() - fields - {"continuation", "key"}
        if extra:
            raise ConfigError(f"{where}: unknown item fields {sorted(extra)}")
        items.append(MultipleChoiceItem(**{k: v for k, v in record.items() if k != "key"}))
    return items


def write_items(path: str | Path, items: Sequence[MultipleChoiceItem]) -> None:
    """Write items as JSONL, the format :func:`load_items` and lm-eval's ``json`` loader read
    (``continuation`` only where an item has one)."""
    records = [{k: v for k, v in asdict(item).items() if k != "continuation" or v is not None}
               for item in items]
    io.write_text(
        path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    )


# ----------------------------------------------------------------------------- hub datasets
# Each schema turns one dataset row into item fields, with the context and choices that
# lm-eval's task of the same name builds (lm_eval/tasks/<task>/*.yaml), so acc is comparable.


def _question_answer(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def _piqa(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "context": _question_answer(row["goal"]),
        "choices": [row["sol1"], row["sol2"]],
        "gold": int(row["label"]),
    }


def _lettered_choices(row: Mapping[str, Any]) -> tuple[list[str], int]:
    # ARC and OpenBookQA store choices as {"text": [...], "label": ["A", ...]} and answerKey
    # as one of the labels (some ARC items use "1".."4"; OpenBookQA keys may carry a space).
    labels = list(row["choices"]["label"])
    return list(row["choices"]["text"]), labels.index(row["answerKey"].strip())


def _arc(row: Mapping[str, Any]) -> dict[str, Any]:
    choices, gold = _lettered_choices(row)
    return {
        "context": _question_answer(row["question"]),
        "choices": choices,
        "gold": gold,
    }


def _openbookqa(row: Mapping[str, Any]) -> dict[str, Any]:
    choices, gold = _lettered_choices(row)
    return {
        "context": row["question_stem"],
        "choices": choices,
        "gold": gold,
    }


def _boolq(row: Mapping[str, Any]) -> dict[str, Any]:
    # super_glue/boolq has an integer "label"; google/boolq a boolean "answer".
    gold = row["label"] if "label" in row else row["answer"]
    return {
        "context": f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:",
        "choices": ["no", "yes"],
        "gold": int(gold),
    }


def _hellaswag_clean(text: str) -> str:
    # The bracketed tags are WikiHow artifacts; lm-eval's hellaswag/utils.py removes them alike.
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _hellaswag(row: Mapping[str, Any]) -> dict[str, Any]:
    query = _hellaswag_clean(f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}")
    return {
        "context": query,
        "choices": [_hellaswag_clean(ending) for ending in row["endings"]],
        "gold": int(row["label"]),
    }


def _siqa(row: Mapping[str, Any]) -> dict[str, Any]:
    question = f"{row['context']} {row['question']}"
    return {
        "context": f"Q: {question}\nA:",
        "choices": [row["answerA"], row["answerB"], row["answerC"]],
        "gold": int(row["label"]) - 1,
    }


def _winogrande(row: Mapping[str, Any]) -> dict[str, Any]:
    # lm-eval's winogrande/preprocess_winogrande.py: doc_to_choice fills the blank "_" with each
    # option and cuts there, doc_to_target is the rest of the sentence, stripped; answer "1"/"2".
    blank = row["sentence"].index("_")
    return {
        "context": "",
        "choices": [row["sentence"][:blank] + option for option in (row["option1"], row["option2"])],
        "continuation": row["sentence"][blank + 1 :].strip(),
        "gold": int(row["answer"]) - 1,
    }


HUB_SCHEMAS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "arc": _arc,
    "boolq": _boolq,
    "hellaswag": _hellaswag,
    "openbookqa": _openbookqa,
    "piqa": _piqa,
    "siqa": _siqa,
    "winogrande": _winogrande,
}


def load_hub_items(
    dataset_id: str,
    split: str,
    mapping: str | Callable[[Mapping[str, Any]], dict[str, Any]],
    **load_dataset_kwargs: Any,
) -> list[MultipleChoiceItem]:
    """Load a split with ``datasets.load_dataset`` and turn its rows into items.

    ``mapping`` is a name in :data:`HUB_SCHEMAS`, each the lm-eval 0.4 task of that name (``piqa``
    for ``baber/piqa``, ``arc`` for ``allenai/ai2_arc``, ``openbookqa``, ``boolq`` for
    ``aps/super_glue`` boolq, ``hellaswag``, ``siqa``, ``winogrande`` for ``allenai/winogrande``,
    scored partially), or a function from a row to the item fields other than ``id``. The id is
    the row's ``id`` (HellaSwag: ``ind``) or ``"<dataset_id>/<split>/<row index>"``. ``split``
    takes ``datasets``' slices (``"validation[:1000]"``: the first 1000 rows, as lm-eval's
    ``--limit 1000``). Extra keyword arguments go to ``load_dataset`` (``name``, ``data_files``,
    ``cache_dir``, ...), so ``load_hub_items("json", "train", "piqa", data_files="piqa.jsonl")``
    reads a local file of the hub schema. Raises :class:`ConfigError` naming the column a row
    lacks, or the row that does not fit the mapping.
    """
    if isinstance(mapping, str):
        validate.choice("mapping", mapping, sorted(HUB_SCHEMAS))
        to_fields = HUB_SCHEMAS[mapping]
    else:
        to_fields = mapping
    # datasets is slow to import and only this loader needs it.
    from datasets import load_dataset

    rows = load_dataset(dataset_id, split=split, **load_dataset_kwargs)
    items = []
    for index, row in enumerate(rows):
        row_id = row.get("id", row.get("ind"))
        item_id = str(row_id) if row_id is not None else f"{dataset_id}/{split}/{index}"
        try:
            fields = to_fields(row)
        except KeyError as error:
            raise ConfigError(
                f"{dataset_id} {split} row {index}: mapping {mapping!r} needs the column "
                f"{error.args[0]!r}; the rows have columns {sorted(row)}"
            ) from error
        except (ValueError, TypeError) as error:
            raise ConfigError(
                f"{dataset_id} {split} row {index}: does not fit mapping {mapping!r} ({error!r})"
            ) from error
        items.append(MultipleChoiceItem(**fields, id=item_id))
    return items


# ----------------------------------------------------------------------------- log-likelihood


@contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    # Dropout off for scoring, and the caller's train/eval state back afterwards.
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _max_length(model: torch.nn.Module) -> int:
    # The config attributes lm-eval's HFLM looks at, in its order.
    for attribute in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, attribute, None)
        if value:
            return int(value)
    return DEFAULT_MAX_LENGTH


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation), split as lm-eval's HFLM splits them.

    Trailing spaces of the context move to the continuation; the whole string is encoded once
    (with the tokenizer's special tokens, e.g. BOS) and the continuation is every token past the
    context's own encoding, so a word's leading space stays inside the word's token. An empty
    context becomes the BOS token (EOS if there is none), as in lm-eval.
    """
    if not context:
        continuation_ids = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = (
            tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        )
        if continuation_ids[:1] == [prefix]:
            return continuation_ids[:1], continuation_ids[1:]
        return [prefix], continuation_ids
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole_ids = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole_ids[len(context_ids) :]


def continuation_loglikelihoods(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    progress: bool = True,
) -> list[float]:
    """Summed log-probability of each continuation's tokens given its context, in ``pairs`` order.

    Sequences longer than ``max_length`` (default: the model's context length) keep their last
    ``max_length`` input tokens, as in lm-eval. Batches are right-padded; log-softmax runs in
    float32 whatever the model's dtype. Logits are computed at the continuation's positions only
    (transformers' ``logits_to_keep`` as a boolean position mask; the vocabulary projection is a
    fifth of a 135M LM's cost per token), so the model must take it (transformers' decoder-only
    LMs do).
    """
    validate.positive("batch_size", batch_size, integer=True)
    max_length = max_length or _max_length(model)
    encoded = []
    for context, continuation in pairs:
        context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
        if not continuation_ids or len(continuation_ids) > max_length:
            raise ConfigError(
                f"continuation {continuation!r} of context {context[-40:]!r}: encodes to "
                f"{len(continuation_ids)} tokens; need 1 to max_length={max_length}"
            )
        # The last max_length + 1 tokens; the final one is only a target, never an input.
        encoded.append(
            ((context_ids + continuation_ids)[-(max_length + 1) :], len(continuation_ids))
        )
    # Longest first, so each batch pads little and an out-of-memory error shows on the first batch.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    loglikelihoods = [0.0] * len(encoded)
    device = model_device(model)
    with _evaluating(model):
        for start in tqdm(
            range(0, len(order), batch_size), desc="log-likelihood", disable=not progress
        ):
            batch = order[start : start + batch_size]
            width = len(encoded[batch[0]][0]) - 1
            input_ids = torch.zeros((len(batch), width), dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            # Input position p predicts token p + 1: the continuation's n tokens are predicted by
            # the last n real input positions, the only ones whose logits are computed.
            predicting = torch.zeros((len(batch), width), dtype=torch.bool)
            targets = []
            for row, index in enumerate(batch):
                sequence, n_continuation = encoded[index]
                end = len(sequence) - 1
                input_ids[row, :end] = torch.tensor(sequence[:-1])
                attention_mask[row, :end] = 1
                predicting[row, end - n_continuation : end] = True
                targets.extend(sequence[-n_continuation:])
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                           logits_to_keep=predicting.to(device)).logits
            token_logprobs = _target_logprobs(logits, targets)
            counts = [encoded[index][1] for index in batch]
            for index, total in zip(batch, token_logprobs.split(counts), strict=True):
                loglikelihoods[index] = total.sum().item()
    return loglikelihoods


def _target_logprobs(logits: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
    """log p(target) of each row of ``logits`` [t, vocab] (log-softmax in float32) [t]."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    index = torch.tensor(targets, device=logprobs.device)
    return logprobs.gather(1, index[:, None])[:, 0]


def encode_groups(
    tokenizer: Any, groups: Sequence[tuple[str, Sequence[str]]]
) -> list[list[tuple[list[int], list[int]]]]:
    """:func:`encode_pair` of every ``(context, continuation)`` of ``groups``, ``[group][continuation]``,
    with one batched tokenizer call for the contexts and one for the whole strings (a fast
    tokenizer encodes a list in one pass; pair by pair, tokenization is a large share of scoring
    a small model). An empty context goes through :func:`encode_pair` itself."""
    stripped, joined = [], []
    for context, continuations in groups:
        n_spaces = len(context) - len(context.rstrip())
        stripped.append(context[: len(context) - n_spaces])
        joined.extend(context + continuation for continuation in continuations)
    context_ids = tokenizer(stripped)["input_ids"] if stripped else []
    whole_ids = iter(tokenizer(joined)["input_ids"] if joined else [])
    encoded = []
    for (context, continuations), ids in zip(groups, context_ids, strict=True):
        wholes = [next(whole_ids) for _ in continuations]
        if not context:
            encoded.append([encode_pair(tokenizer, context, c) for c in continuations])
        else:
            encoded.append([(list(ids), list(whole[len(ids) :])) for whole in wholes])
    return encoded


def shared_context_loglikelihoods(
    model: torch.nn.Module,
    tokenizer: Any,
    groups: Sequence[tuple[str, Sequence[str]]],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
    progress: bool = True,
) -> list[list[float]]:
    """:func:`continuation_loglikelihoods` of each ``(context, continuations)`` group, reading the
    context once for all its continuations: ``[group][continuation]`` summed log-probabilities.

    Each group is one packed row, the context followed by every continuation but its last token,
    read in one forward pass with a 4-D attention mask: a continuation's tokens see the context
    and their own continuation's earlier tokens, never another continuation's, and their position
    ids continue the context's, so each continuation is read exactly as after its context alone
    (the packing of choices that tree attention and lm-eval's one-token-continuation cache use in
    part). Rows of ``batch_size`` groups, longest first, are right-padded. The last context
    position predicts every continuation's first token. Tokens are split as :func:`encode_pair`
    splits them, so the numbers are those of :func:`continuation_loglikelihoods` up to float
    rounding. A group with a sequence longer than ``max_length`` + 1 tokens is scored by
    :func:`continuation_loglikelihoods`, which truncates each sequence on its own as lm-eval does.
    Needs a model that takes a prepared 4-D ``attention_mask`` [batch, 1, query, key],
    ``position_ids`` and ``logits_to_keep`` (transformers' decoder-only LMs, sdpa or eager
    attention). Raises :class:`ConfigError` for an empty continuation or one longer than
    ``max_length``.
    """
    validate.positive("batch_size", batch_size, integer=True)
    max_length = max_length or _max_length(model)
    encoded, results, long_groups = [], [None] * len(groups), []
    for index, ((context, continuations), pairs) in enumerate(
        zip(groups, encode_groups(tokenizer, groups), strict=True)
    ):
        for (_, continuation_ids), continuation in zip(pairs, continuations, strict=True):
            if not continuation_ids or len(continuation_ids) > max_length:
                raise ConfigError(
                    f"continuation {continuation!r} of context {context[-40:]!r}: encodes to "
                    f"{len(continuation_ids)} tokens; need 1 to max_length={max_length}"
                )
        context_ids = pairs[0][0]  # encode_pair's context split depends on the context alone
        if len(context_ids) + max(len(ids) for _, ids in pairs) > max_length + 1:
            long_groups.append(index)
        else:
            choices = [ids for _, ids in pairs]
            width = len(context_ids) + sum(len(ids) - 1 for ids in choices)
            encoded.append((index, context_ids, choices, width))
    device = model_device(model)
    encoded.sort(key=lambda entry: -entry[3])  # similar row lengths share a batch
    with _evaluating(model):
        for start in tqdm(range(0, len(encoded), batch_size), desc="log-likelihood",
                          disable=not progress):
            batch = encoded[start : start + batch_size]
            width = batch[0][3]
            input_ids = torch.zeros((len(batch), width), dtype=torch.long)
            position_ids = torch.zeros((len(batch), width), dtype=torch.long)
            # segment: -1 context, j continuation j, -2 padding
            segment = torch.full((len(batch), width), -2, dtype=torch.long)
            keep = torch.zeros((len(batch), width), dtype=torch.bool)
            reading, targets, counts = [], [], []  # per scored token: its logits row and token
            kept = 0  # logits rows of the rows before, in logits_to_keep's row-major order
            for row, (_, context_ids, choices, _) in enumerate(batch):
                n_context = len(context_ids)
                input_ids[row, :n_context] = torch.tensor(context_ids)
                position_ids[row, :n_context] = torch.arange(n_context)
                segment[row, :n_context] = -1
                keep[row, n_context - 1] = True
                # this row's logits: its context's last position, then its continuation inputs
                at = n_context
                for choice, ids in enumerate(choices):
                    inputs = ids[:-1]
                    span = slice(at, at + len(inputs))
                    input_ids[row, span] = torch.tensor(inputs, dtype=torch.long)
                    position_ids[row, span] = n_context + torch.arange(len(inputs))
                    segment[row, span] = choice
                    keep[row, span] = True
                    first_input = kept + 1 + at - n_context
                    reading += [kept] + list(range(first_input, first_input + len(inputs)))
                    targets += ids
                    counts.append(len(ids))
                    at += len(inputs)
                kept += 1 + at - n_context
            query, key = torch.arange(width)[:, None], torch.arange(width)[None, :]
            seen = (segment[:, None, :] == -1) | (segment[:, None, :] == segment[:, :, None])
            mask = seen & (key <= query)[None] & (segment != -2)[:, None, :]
            mask |= torch.eye(width, dtype=torch.bool)[None]  # no all-masked row (padding)
            logits = model(input_ids=input_ids.to(device),
                           attention_mask=_prepared_mask(model, mask[:, None]).to(device),
                           position_ids=position_ids.to(device),
                           logits_to_keep=keep.to(device)).logits
            token_logprobs = _target_logprobs(logits[torch.tensor(reading, device=logits.device)],
                                              targets)
            totals = iter(sum(part.tolist()) for part in token_logprobs.split(counts))
            for index, _, choices, _ in batch:
                results[index] = [next(totals) for _ in choices]
    if long_groups:
        pairs = [(groups[i][0], continuation) for i in long_groups for continuation in groups[i][1]]
        flat = continuation_loglikelihoods(model, tokenizer, pairs, batch_size=batch_size,
                                           max_length=max_length, progress=progress)
        offset = 0
        for index in long_groups:
            results[index] = flat[offset : offset + len(groups[index][1])]
            offset += len(groups[index][1])
    return results


def _prepared_mask(model: torch.nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """A boolean 4-D mask (True: attend) in the form the model's attention takes as prepared:
    sdpa and flex take booleans, eager adds the mask to its scores (0 or the dtype's minimum)."""
    if getattr(model.config, "_attn_implementation", None) != "eager":
        return mask
    dtype = next(model.parameters()).dtype
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)


@dataclass(frozen=True)
class LoglikelihoodPrediction:
    id: str
    gold: int
    loglikelihoods: list[float]
    pred: int
    pred_norm: int


@dataclass(frozen=True)
class LoglikelihoodScores:
    """``acc`` and ``acc_norm`` (fractions in [0, 1]) with every item's log-likelihoods."""

    acc: float
    acc_norm: float
    predictions: list[LoglikelihoodPrediction]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict(loglikelihoods: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(pred, pred_norm): argmax of the log-likelihoods, raw and divided by ``len(choice)``.

    Ties go to the first choice (``np.argmax``), as in lm-eval.
    """
    scores = np.asarray(loglikelihoods, dtype=np.float64)
    characters = np.array([len(choice) for choice in choices], dtype=np.float64)
    return int(np.argmax(scores)), int(np.argmax(scores / characters))


def grade_loglikelihoods(
    items: Sequence[MultipleChoiceItem], loglikelihoods: Sequence[Sequence[float]]
) -> LoglikelihoodScores:
    """Accuracy of per-choice log-likelihoods, ``loglikelihoods[i][j]`` for item i, choice j."""
    if not items or len(items) != len(loglikelihoods):
        raise ConfigError(
            f"loglikelihoods: need one list per item for {len(items)} items, "
            f"got {len(loglikelihoods)}"
        )
    predictions = []
    for item, scores in zip(items, loglikelihoods, strict=True):
        if len(scores) != len(item.choices):
            raise ConfigError(
                f"item {item.id!r}: {len(item.choices)} choices but {len(scores)} log-likelihoods"
            )
        pred, pred_norm = predict(scores, item.choices)
        predictions.append(
            LoglikelihoodPrediction(item.id, item.gold, list(scores), pred, pred_norm)
        )
    return LoglikelihoodScores(
        acc=float(np.mean([p.pred == p.gold for p in predictions])),
        acc_norm=float(np.mean([p.pred_norm == p.gold for p in predictions])),
        predictions=predictions,
    )


def score_loglikelihood(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[MultipleChoiceItem],
    *,
    target_delimiter: str = " ",
    batch_size: int = 8,
    max_length: int | None = None,
    progress: bool = True,
    shared_context: bool = False,
) -> LoglikelihoodScores:
    """lm-eval's ``acc`` and ``acc_norm`` of ``model`` on ``items``.

    Choice j of an item is scored as the continuation ``target_delimiter + choices[j]`` of its
    context; " " is lm-eval's default delimiter, hence choices are stored without a leading space.
    A partially scored item (``continuation`` set, WinoGrande) scores ``target_delimiter +
    continuation`` after each ``context + choices[j]`` instead (:meth:`MultipleChoiceItem.requests`).
    ``shared_context``: read each context once for all its continuations
    (:func:`shared_context_loglikelihoods`; ``batch_size`` then counts contexts, not pairs).
    """
    requests = [item.requests(target_delimiter) for item in items]
    if shared_context:
        # Consecutive pairs with one context form a group: all choices of a usual item, each
        # choice on its own for a partially scored one.
        groups = [(context, [continuation for _, continuation in pairs])
                  for item_requests in requests
                  for context, pairs in groupby(item_requests, key=itemgetter(0))]
        scored = shared_context_loglikelihoods(
            model, tokenizer, groups, batch_size=batch_size, max_length=max_length, progress=progress
        )
        flat = [loglikelihood for group in scored for loglikelihood in group]
    else:
        flat = continuation_loglikelihoods(
            model, tokenizer, [pair for item_requests in requests for pair in item_requests],
            batch_size=batch_size, max_length=max_length, progress=progress
        )
    per_item, start = [], 0
    for item in items:
        per_item.append(flat[start : start + len(item.choices)])
        start += len(item.choices)
    return grade_loglikelihoods(items, per_item)
