import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bat.text import benchmarks as mc
from bat.errors import ConfigError
from benchmarks.lm_eval.make_tiny_model import build_tokenizer
from tests.conftest import PROJECT

CORPUS = [
    "Question: which backbone augmented training selects data?\nAnswer: the backbone",
    "Please choose the correct answer to the question. Answer1: yes Answer2: no",
    "backbone backbone augmented augmented training training adaptation adaptation",
]


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE with a BOS post-processor, like LLaMA's tokenizers, trained offline."""
    return build_tokenizer(CORPUS, vocab_size=320)


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(len(tokenizer))


def items_for_scoring() -> list[mc.MultipleChoiceItem]:
    return [
        mc.MultipleChoiceItem(
            "Question: which backbone?\nAnswer:", ["the backbone", "data", "no"], 0, "a"
        ),
        mc.MultipleChoiceItem(
            "Answer1: yes Answer2: no", ["yes", "augmented training selects"], 1, "b"
        ),
        mc.MultipleChoiceItem(
            "adaptation", ["training", "zq", "backbone augmented training"], 2, "c"
        ),
    ]


def manual_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """One unpadded forward pass per pair: the straightforward computation to compare with."""
    whole = tokenizer(context + continuation)["input_ids"]
    n_context = len(tokenizer(context)["input_ids"])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0], dim=-1)
    return sum(logprobs[p - 1, whole[p]].item() for p in range(n_context, len(whole)))


def test_batched_loglikelihoods_match_one_pass_per_pair(model, tokenizer):
    pairs = [
        (item.context, " " + choice) for item in items_for_scoring() for choice in item.choices
    ]
    expected = [manual_loglikelihood(model, tokenizer, c, x) for c, x in pairs]
    for batch_size in (1, 3, 16):
        got = mc.continuation_loglikelihoods(
            model, tokenizer, pairs, batch_size=batch_size, progress=False
        )
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(params=["sdpa", "eager"])  # eager adds the mask to its scores
def attention(request, model):
    """``model`` with this attention implementation, back to sdpa for the tests after it."""
    model.set_attn_implementation(request.param)
    yield request.param
    model.set_attn_implementation("sdpa")


def test_shared_context_scoring_matches_one_pass_per_pair(model, tokenizer, attention):
    # Contexts of different lengths (padding inside a batch), single- and multi-token choices,
    # an empty context (BOS as context) and a context with a trailing space.
    items = items_for_scoring() + [
        mc.MultipleChoiceItem("", ["backbone", "yes no"], 0, "d"),
        mc.MultipleChoiceItem("Question: which backbone augmented training? ", ["no", "yes"], 1, "e"),
    ]
    pairs = [(item.context, " " + choice) for item in items for choice in item.choices]
    expected = mc.continuation_loglikelihoods(model, tokenizer, pairs, batch_size=1, progress=False)
    for batch_size in (1, 2, 16):
        shared = mc.score_loglikelihood(model, tokenizer, items, batch_size=batch_size,
                                        progress=False, shared_context=True)
        got = [ll for prediction in shared.predictions for ll in prediction.loglikelihoods]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    plain = mc.score_loglikelihood(model, tokenizer, items, progress=False)
    assert (shared.acc, shared.acc_norm) == (plain.acc, plain.acc_norm)


def partial_items() -> list[mc.MultipleChoiceItem]:
    """WinoGrande-style items: each choice a context of its own, one continuation after it."""
    return [
        mc.MultipleChoiceItem("", ["which backbone", "which data"], 1, "w1",
                              continuation="augmented training selects?"),
        mc.MultipleChoiceItem("Question:", [" the backbone", " no"], 0, "w2", continuation="data"),
    ]


def test_partial_scoring_scores_the_continuation_after_each_choice(model, tokenizer):
    items = partial_items()
    expected = [mc.continuation_loglikelihoods(model, tokenizer, [(item.context + choice,
                                                                   " " + item.continuation)],
                                               progress=False)[0]
                for item in items for choice in item.choices]
    for shared_context in (False, True):
        scores = mc.score_loglikelihood(model, tokenizer, items + items_for_scoring(),
                                        progress=False, shared_context=shared_context)
        got = [ll for p in scores.predictions[:2] for ll in p.loglikelihoods]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
        # acc_norm divides by the length of the filled-in context, as lm-eval's winogrande does.
        for item, prediction in zip(items, scores.predictions, strict=False):
            assert (prediction.pred, prediction.pred_norm) == mc.predict(prediction.loglikelihoods,
                                                                         item.choices)


def test_winogrande_partial_scoring_matches_lm_eval(model, tokenizer, tmp_path, monkeypatch):
    """Items read from WinoGrande rows and scored by us, against lm-eval's own winogrande task
    (its YAML and preprocess functions) on the same rows and the same model."""
    pytest.importorskip("lm_eval")
    import datasets

    from benchmarks.lm_eval_compare import lm_eval_scores, winogrande_task

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    rows = PROJECT / "benchmarks" / "lm_eval" / "winogrande.jsonl"
    items = mc.load_hub_items("json", "train", "winogrande", data_files=str(rows))
    theirs = lm_eval_scores(model, tokenizer, winogrande_task(rows), batch_size=4, repeats=1)
    for shared_context in (False, True):
        ours = mc.score_loglikelihood(model, tokenizer, items, progress=False,
                                      shared_context=shared_context)
        np.testing.assert_allclose([p.loglikelihoods for p in ours.predictions],
                                   theirs["loglikelihoods"], rtol=0, atol=1e-4)
        assert (ours.acc, ours.acc_norm) == (theirs["acc"], theirs["acc_norm"])


def test_encode_groups_splits_as_encode_pair(tokenizer):
    groups = [("Question: which backbone?\nAnswer:", [" the backbone", " no"]),
              ("", [" backbone", "backbone"]),
              ("Answer1: yes  ", ["no", " training"])]
    expected = [[mc.encode_pair(tokenizer, context, c) for c in choices] for context, choices in groups]
    assert mc.encode_groups(tokenizer, groups) == expected


def test_shared_context_truncates_long_items_as_lm_eval_does(model, tokenizer):
    groups = [("Question: which backbone augmented training selects data?", [" the backbone", " no"]),
              ("adaptation", [" training"])]
    pairs = [(context, choice) for context, choices in groups for choice in choices]
    expected = mc.continuation_loglikelihoods(model, tokenizer, pairs, max_length=8, progress=False)
    got = mc.shared_context_loglikelihoods(model, tokenizer, groups, max_length=8, progress=False)
    np.testing.assert_allclose([ll for lls in got for ll in lls], expected, rtol=0, atol=1e-4)


def test_long_sequences_keep_their_last_tokens(model, tokenizer):
    context, continuation = (
        "Question: which backbone augmented training selects data?",
        " the backbone",
    )
    context_ids, continuation_ids = mc.encode_pair(tokenizer, context, continuation)
    sequence = (context_ids + continuation_ids)[-9:]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([sequence[:-1]])).logits[0], dim=-1)
    n = len(continuation_ids)
    expected = sum(
        logprobs[p - 1, sequence[p]].item() for p in range(len(sequence) - n, len(sequence))
    )
    got = mc.continuation_loglikelihoods(
        model, tokenizer, [(context, continuation)], max_length=8, progress=False
    )
    assert got[0] == pytest.approx(expected, abs=1e-5)


def test_encode_pair_moves_trailing_space_and_splits_after_context(tokenizer):
    assert mc.encode_pair(tokenizer, "Answer: ", "yes") == mc.encode_pair(
        tokenizer, "Answer:", " yes"
    )
    context_ids, continuation_ids = mc.encode_pair(tokenizer, "Answer:", " the backbone")
    assert context_ids == tokenizer("Answer:")["input_ids"]  # with BOS
    assert tokenizer.decode(continuation_ids) == " the backbone"
    # The leading space belongs to the word's token, not to a token of its own.
    assert continuation_ids == tokenizer.encode(" the backbone", add_special_tokens=False)
    assert mc.encode_pair(tokenizer, "", " yes") == (
        [tokenizer.bos_token_id],
        tokenizer.encode(" yes", add_special_tokens=False),
    )


def test_acc_norm_divides_by_characters_not_tokens(tokenizer):
    # A zero output layer makes every token cost exactly log V, so a choice's log-likelihood is
    # -(its token count) * log V and only the normalisation decides acc_norm.
    uniform = tiny_llama(len(tokenizer))
    torch.nn.init.zeros_(uniform.lm_head.weight)
    # "yes" has fewer tokens, the other choice far more characters per token; normalised per
    # token, every choice would tie and argmax would take 0.
    item = mc.MultipleChoiceItem("adaptation", ["yes", "backbone augmented training"], 0, "x")
    tokens = np.array(
        [len(mc.encode_pair(tokenizer, item.context, " " + c)[1]) for c in item.choices]
    )
    characters = np.array([len(c) for c in item.choices])
    by_tokens, by_characters = np.argmax(-tokens / tokens), np.argmax(-tokens / characters)
    assert by_characters != by_tokens and by_characters != np.argmax(
        -tokens
    )  # the case discriminates

    scores = mc.score_loglikelihood(uniform, tokenizer, [item], progress=False)
    prediction = scores.predictions[0]
    np.testing.assert_allclose(
        prediction.loglikelihoods, -tokens * np.log(len(tokenizer)), rtol=1e-6
    )
    assert prediction.pred == np.argmax(-tokens)
    assert prediction.pred_norm == by_characters


def test_acc_norm_counts_characters_not_bytes():
    choices, loglikelihoods = ["ééé", "abcd"], [-3.3, -4.0]
    by_characters = np.argmax(np.array(loglikelihoods) / [len(c) for c in choices])
    by_bytes = np.argmax(np.array(loglikelihoods) / [len(c.encode()) for c in choices])
    assert by_characters != by_bytes
    assert mc.predict(loglikelihoods, choices) == (int(np.argmax(loglikelihoods)), by_characters)


def random_items(count: int, n_choices: int, seed: int) -> list[mc.MultipleChoiceItem]:
    rng = np.random.default_rng(seed)
    return [
        mc.MultipleChoiceItem(
            "q", [f"choice {j}" for j in range(n_choices)], int(rng.integers(n_choices)), str(i)
        )
        for i in range(count)
    ]


def within_chance(accuracy: float, count: int, n_choices: int) -> bool:
    chance = 1 / n_choices
    return abs(accuracy - chance) < 4 * np.sqrt(chance * (1 - chance) / count)


def test_perfect_and_random_loglikelihood_scorers():
    items = random_items(2000, 4, seed=0)
    perfect = [[0.0 if j == item.gold else -1.0 for j in range(4)] for item in items]
    scores = mc.grade_loglikelihoods(items, perfect)
    assert scores.acc == 1.0 and scores.acc_norm == 1.0
    noise = np.random.default_rng(1).normal(size=(len(items), 4)).tolist()
    scores = mc.grade_loglikelihoods(items, noise)
    assert within_chance(scores.acc, len(items), 4) and within_chance(
        scores.acc_norm, len(items), 4
    )


def test_scoring_restores_training_mode(tokenizer):
    model = tiny_llama(len(tokenizer)).train()
    mc.score_loglikelihood(model, tokenizer, items_for_scoring()[:1], progress=False)
    assert model.training


def test_items_round_trip_through_jsonl_and_json(tmp_path):
    items = items_for_scoring() + [mc.MultipleChoiceItem("ctx", ["é", "b"], 1, "d", continuation="c")]
    mc.write_items(tmp_path / "items.jsonl", items)
    assert mc.load_items(tmp_path / "items.jsonl") == items
    records = [json.loads(line) for line in (tmp_path / "items.jsonl").read_text().splitlines()]
    (tmp_path / "items.json").write_text(json.dumps(records))
    assert mc.load_items(tmp_path / "items.json") == items


@pytest.mark.parametrize(
    "record",
    [
        {"context": "c", "choices": ["a", "b"], "gold": 2, "id": "x"},
        {"context": "c", "choices": ["a"], "gold": 0, "id": "x"},
        {"context": "c", "choices": ["a", "b"], "id": "x"},
        {"context": "c", "choices": ["a", "b"], "gold": 0, "id": "x", "label": 1},
    ],
)
def test_bad_items_raise(tmp_path, record):
    (tmp_path / "bad.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(ConfigError):
        mc.load_items(tmp_path / "bad.jsonl")


HUB_ROWS = {
    "piqa": (
        {"goal": "Keep tea warm", "sol1": "Use a cosy.", "sol2": "Use ice.", "label": 0},
        mc.MultipleChoiceItem(
            "Question: Keep tea warm\nAnswer:",
            ["Use a cosy.", "Use ice."],
            0,
            "json/train/0",
        ),
    ),
    "arc": (
        {
            "id": "Mercury_1",
            "question": "What melts ice?",
            "answerKey": "B",
            "choices": {"text": ["cold", "heat", "dark"], "label": ["A", "B", "C"]},
        },
        mc.MultipleChoiceItem(
            "Question: What melts ice?\nAnswer:",
            ["cold", "heat", "dark"],
            1,
            "Mercury_1",
        ),
    ),
    "openbookqa": (
        {
            "id": "7-1",
            "question_stem": "The sun is",
            "answerKey": "A",
            "choices": {"text": ["a star", "a moon"], "label": ["A", "B"]},
        },
        mc.MultipleChoiceItem("The sun is", ["a star", "a moon"], 0, "7-1"),
    ),
    "boolq": (
        {"question": "is the sky blue", "passage": "The sky is blue.", "label": 1},
        mc.MultipleChoiceItem(
            "The sky is blue.\nQuestion: is the sky blue?\nAnswer:",
            ["no", "yes"],
            1,
            "json/train/0",
        ),
    ),
    "hellaswag": (
        {
            "ind": 4,
            "activity_label": "Baking",
            "ctx_a": "A man mixes flour.",
            "ctx_b": "he",
            "endings": ["bakes [title] bread.", "swims."],
            "label": "0",
        },
        mc.MultipleChoiceItem(
            "Baking: A man mixes flour. He",
            ["bakes. bread.", "swims."],
            0,
            "4",
        ),
    ),
    "siqa": (
        {
            "context": "Ann lost.",
            "question": "How does Ann feel?",
            "answerA": "sad",
            "answerB": "glad",
            "answerC": "tall",
            "label": "1",
        },
        mc.MultipleChoiceItem(
            "Q: Ann lost. How does Ann feel?\nA:",
            ["sad", "glad", "tall"],
            0,
            "json/train/0",
        ),
    ),
    "winogrande": (
        {"sentence": "The cup broke the glass because _ was hard.", "option1": "the cup",
         "option2": "the glass", "answer": "1"},
        mc.MultipleChoiceItem(
            "",
            ["The cup broke the glass because the cup", "The cup broke the glass because the glass"],
            0,
            "json/train/0",
            continuation="was hard.",
        ),
    ),
}


@pytest.mark.parametrize("schema", sorted(HUB_ROWS))
def test_load_hub_items_reads_local_files_of_the_hub_schema(tmp_path, schema):
    row, expected = HUB_ROWS[schema]
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    items = mc.load_hub_items(
        "json",
        "train",
        schema,
        data_files=str(tmp_path / "rows.jsonl"),
        cache_dir=str(tmp_path / "cache"),
    )
    assert items == [expected]


def test_load_hub_items_rejects_unknown_schema_and_misfit_rows(tmp_path):
    with pytest.raises(ConfigError, match=r"mapping: 'copa' is not allowed; choose one of \['arc'"):
        mc.load_hub_items("json", "train", "copa")
    (tmp_path / "rows.jsonl").write_text(json.dumps(HUB_ROWS["piqa"][0]) + "\n")
    with pytest.raises(ConfigError, match="row 0"):
        mc.load_hub_items(
            "json",
            "train",
            "arc",
            data_files=str(tmp_path / "rows.jsonl"),
            cache_dir=str(tmp_path / "cache"),
        )
