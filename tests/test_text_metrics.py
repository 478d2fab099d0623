from collections import Counter

import pytest

from bat.text import metrics as tm
from bat.errors import ConfigError

PAIRS = [
    ("the cat sat on the mat", "the cat is on the mat"),
    ("A quick brown fox.", "the quick, brown dog jumps"),
    ("Police killed the gunman", "the gunman police killed"),
    ("nothing in common", "entirely different words"),
    ("repeated repeated words words", "words repeated"),
    ("Café au lait, s'il vous plaît!", "cafe au lait s il vous plait"),
    ("", "an empty prediction"),
    ("?!", "punctuation only"),
]


@pytest.mark.parametrize("prediction, reference", PAIRS)
def test_rouge_l_matches_rouge_score_package(prediction, reference):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    expected = rouge_scorer.RougeScorer(["rougeL"]).score(reference, prediction)["rougeL"].fmeasure
    assert tm.rouge_l(prediction, reference) == pytest.approx(expected)


def test_rouge_l_by_hand():
    # LCS of "police killed the gunman" and "the gunman police killed" is "police killed" (2).
    precision, recall = 2 / 4, 2 / 4
    assert tm.rouge_l("Police killed the gunman", "the gunman police killed") == pytest.approx(
        2 * precision * recall / (precision + recall)
    )
    assert tm.rouge_l("Same words.", "same WORDS") == 1.0
    assert tm.rouge_l("", "anything") == 0.0


def test_rouge_tokens_follow_rouge_score():
    assert tm.rouge_tokens("It's a DOG-friendly café!") == [
        "it",
        "s",
        "a",
        "dog",
        "friendly",
        "caf",
    ]


def test_exact_match_normalisation():
    assert tm.exact_match("The Eiffel Tower!", "eiffel   tower") == 1.0
    assert tm.exact_match("an apple", "apple.") == 1.0
    assert tm.exact_match("Eiffel Tower", "Eiffel Towers") == 0.0
    assert tm.squad_normalize("  The  Cat, a Dog ") == "cat dog"


def test_token_f1_against_counter_definition():
    prediction, reference = "red red blue green", "the red blue blue"
    predicted = tm.squad_normalize(prediction).split()
    referenced = tm.squad_normalize(reference).split()
    overlap = sum((Counter(predicted) & Counter(referenced)).values())
    precision, recall = overlap / len(predicted), overlap / len(referenced)
    assert tm.token_f1(prediction, reference) == pytest.approx(
        2 * precision * recall / (precision + recall)
    )
    assert tm.token_f1("The answer", "answer") == 1.0
    assert tm.token_f1("yes", "no") == 0.0
    assert tm.token_f1("the", "a") == 1.0  # both empty after normalisation
    assert tm.token_f1("the", "cat") == 0.0


def test_average_over_a_corpus():
    predictions, references = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    expected = sum(tm.token_f1(p, r) for p, r in PAIRS) / len(PAIRS)
    assert tm.average(tm.token_f1, predictions, references) == pytest.approx(expected)
    with pytest.raises(ConfigError):
        tm.average(tm.rouge_l, predictions, references[:-1])
    with pytest.raises(ConfigError):
        tm.average(tm.rouge_l, [], [])
