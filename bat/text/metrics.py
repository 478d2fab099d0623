"""Scores for generated text against a reference: ROUGE-L, exact match and token F1.

Each function scores one (prediction, reference) pair; :func:`average` applies one over a corpus.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

from bat.errors import ConfigError

_PUNCTUATION = frozenset(string.punctuation)


def rouge_tokens(text: str) -> list[str]:
    """The tokens of the ``rouge-score`` package's default tokenizer, without stemming.

    Lowercase, then every run of characters outside [a-z0-9] separates tokens, so punctuation
    and letters outside ASCII (accents, non-Latin scripts) are dropped, as in that package.
    """
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    # One row of the dynamic-programming table at a time: O(len(b)) memory.
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (Lin 2004) of one pair, as ``rouge_score.RougeScorer(["rougeL"])``.

    With L the length of the longest common subsequence of the two token lists
    (:func:`rouge_tokens`), P = L / |prediction|, R = L / |reference| and F = 2PR / (P + R);
    0 when either side has no tokens. Sentence-level ROUGE-L, not ROUGE-Lsum.
    """
    predicted, referenced = rouge_tokens(prediction), rouge_tokens(reference)
    if not predicted or not referenced:
        return 0.0
    common = _lcs_length(predicted, referenced)
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(referenced)
    return 2 * precision * recall / (precision + recall)


def squad_normalize(text: str) -> str:
    """SQuAD's answer normalisation: lowercase, drop punctuation, drop a/an/the, squeeze spaces."""
    text = "".join(char for char in text.lower() if char not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the two strings agree after :func:`squad_normalize`, else 0.0 (SQuAD v1.1 EM)."""
    return float(squad_normalize(prediction) == squad_normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 on :func:`squad_normalize`-d, whitespace-split tokens.

    Overlap counts tokens with multiplicity (a bag-of-words intersection). When either side is
    empty after normalisation, the score is 1.0 if both are empty, else 0.0 (SQuAD v2.0's rule).
    """
    predicted = squad_normalize(prediction).split()
    referenced = squad_normalize(reference).split()
    if not predicted or not referenced:
        return float(predicted == referenced)
    overlap = sum((Counter(predicted) & Counter(referenced)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(referenced)
    return 2 * precision * recall / (precision + recall)


def average(
    metric: Callable[[str, str], float], predictions: Sequence[str], references: Sequence[str]
) -> float:
    """Mean of ``metric(prediction_i, reference_i)`` over a corpus of matched pairs."""
    if len(predictions) != len(references) or not predictions:
        raise ConfigError(
            "predictions and references: need the same, non-zero number of texts, got "
            f"{len(predictions)} and {len(references)}"
        )
    return sum(map(metric, predictions, references)) / len(predictions)
