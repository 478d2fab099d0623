"""The text backbone: config checks, prompt masking, a deterministic fine-tune, and a saved folder
that opens in a fresh process without ``bat``. A minuscule LLaMA over the real SmolLM2 tokenizer."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch

from bat.text import backbone as tb
from bat.errors import ConfigError
from bat.text.benchmarks import MultipleChoiceItem
from bat.text.task import IGNORE_INDEX

GGUF = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
RECORDS = [
    {"instruction": 'What does the word "cat" mean?', "response": "a small domesticated feline"},
    {"instruction": 'Name a more general term for "oak".', "response": "tree"},
    {"instruction": 'Use the word "river" in a sentence.', "response": "the river flooded the valley"},
    {"instruction": "What is Amman?", "response": "Amman is the capital and largest city of Jordan."},
    {"instruction": 'What does the word "sharpen" mean?', "response": "become sharp or sharper"},
]
ITEMS = [MultipleChoiceItem("Question: Is a cat an animal?\nAnswer:", ["yes", "no"], 0, "a"),
         MultipleChoiceItem("Question: Which is a tree?\nAnswer:", ["oak", "river", "stone"], 0, "b")]


def smoke(raw, **changes) -> tb.TextBackboneConfig:
    values = dict(source="config", gguf_file=str(raw / GGUF), steps=3, batch_size=2, max_length=64,
                  warmup_steps=1, learning_rate=1e-2, eval_set_size=4)
    return tb.TextBackboneConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def tokenizer(raw):
    return tb.load_tokenizer(raw / GGUF)


def tune(config, tokenizer):
    model = tb.build_tiny_model(config.tiny_config, tokenizer, seed=config.seed)
    return tb.fine_tune(config, RECORDS, model=model, tokenizer=tokenizer, progress=False)


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("changes, message", [
    ({"source": "onnx"}, r"backbone_text.source: 'onnx' is not allowed; choose one of \['gguf'"),
    ({"attn_implementation": "flash"}, r"attn_implementation: 'flash' is not allowed; choose one of \['eager', 'sdpa'\]"),
    ({"steps": -1}, r"steps: -1 must be an integer >= 0"),
    ({"lora_rank": 1.5}, r"lora_rank: 1.5 must be an integer >= 0"),
    ({"learning_rate": 0}, r"learning_rate: 0 must be a positive number"),
    ({"max_length": 4}, r"max_length: 4 leaves no room"),
    ({"gguf_file": "model.bin"}, r"gguf_file: 'model.bin' must name a .gguf file"),
    ({"source": "pretrained", "model_id": ""}, r"model_id: must be a hub id or a folder"),
    ({"tiny_config": {"hidden_size": 30, "num_attention_heads": 4}}, r"hidden_size 30 is not a multiple"),
    ({"tiny_config": {"hidden_size": 32, "num_attention_heads": 4, "layers": 2}}, r"tiny_config key: 'layers'"),
])
def test_config_names_the_bad_field(raw, changes, message):
    with pytest.raises(ConfigError, match=message):
        smoke(raw, **changes)


def test_config_builds_from_a_params_section(raw):
    from bat.config import build

    section = {name: getattr(smoke(raw), name) for name in tb.TextBackboneConfig.__dataclass_fields__}
    assert build(tb.TextBackboneConfig, section, "backbone_text") == smoke(raw)
    with pytest.raises(ConfigError, match="unknown parameter backbone_text.bogus"):
        build(tb.TextBackboneConfig, {**section, "bogus": 1}, "backbone_text")


# ----------------------------------------------------------------------------- data

def test_labels_mask_exactly_the_chat_prompt(tokenizer):
    instruction, response = RECORDS[0]["instruction"], RECORDS[0]["response"]
    example = tb.encode_example(tokenizer, instruction, response, max_length=512)
    user = [{"role": "user", "content": instruction}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    ids, labels = example["input_ids"], example["labels"]
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and IGNORE_INDEX not in labels[n_prompt:]
    # Prompt and response encoded apart still spell the whole chat, ending with the end-of-turn token.
    whole = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
    assert tokenizer.decode(ids) == whole
    assert tokenizer.decode(ids[n_prompt:]).startswith(response + "<|im_end|>")
    cut = tb.encode_example(tokenizer, instruction, response, max_length=n_prompt + 2)
    assert cut["input_ids"] == ids[:n_prompt + 2] and cut["labels"] == labels[:n_prompt + 2]
    assert tb.encode_example(tokenizer, instruction, response, max_length=n_prompt) is None


def test_without_a_chat_template_the_alpaca_prompt_is_masked(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    example = tb.encode_example(plain, "Define cat.", "a feline", max_length=512)
    labelled = [i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX]
    assert plain.decode(example["input_ids"][:labelled[0]]).endswith("### Response:\n")
    assert plain.decode([example["input_ids"][i] for i in labelled]) == "a feline" + plain.eos_token


def test_collate_and_batches(tokenizer):
    examples, dropped = tb.encode_records(tokenizer, RECORDS, max_length=64)
    assert dropped == 0
    batch = tb.collate(examples[:2], tokenizer.pad_token_id)
    padding = batch["attention_mask"] == 0
    assert padding.any() and (batch["labels"][padding] == IGNORE_INDEX).all()
    first = list(tb.batch_indices(5, 2, 5, seed=0))
    assert first == list(tb.batch_indices(5, 2, 5, seed=0)) != list(tb.batch_indices(5, 2, 5, seed=1))
    assert sorted(sum(first, [])[:5]) == list(range(5))  # the first epoch visits every example once
    with pytest.raises(ConfigError, match="'instruction' and 'response'"):
        tb.encode_records(tokenizer, [{"instruction": "x"}], 64)


# ----------------------------------------------------------------------------- fine-tune

def test_two_smoke_fine_tunes_give_identical_weights(raw, tokenizer):
    config = smoke(raw)
    initial = tb.build_tiny_model(config.tiny_config, tokenizer, seed=config.seed).state_dict()
    first, _, log = tune(config, tokenizer)
    second, _, _ = tune(config, tokenizer)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name
    assert type(first).__name__ == "LlamaForCausalLM" and not hasattr(first, "peft_config")
    assert not any("lora" in name for name in first.state_dict())  # the LoRA was merged
    assert any(not torch.equal(value, initial[name]) for name, value in first.state_dict().items())
    assert [row["step"] for row in log["rows"]] == [1, 2, 3]
    assert log["trainable_parameters"] > 0 and log["examples"] == len(RECORDS)
    assert len(log["seen_ids"]) == 3 * 2 and set(log["seen_ids"]) <= set(range(len(RECORDS)))
    other, _, _ = tune(smoke(raw, seed=1), tokenizer)
    assert not torch.equal(other.model.layers[0].self_attn.q_proj.weight, first.model.layers[0].self_attn.q_proj.weight)


def test_rank_zero_trains_every_weight_and_steps_zero_trains_none(raw, tokenizer, tmp_path):
    full, _, log = tune(smoke(raw, lora_rank=0, steps=1), tokenizer)
    assert log["trainable_parameters"] == sum(p.numel() for p in full.parameters())
    config = smoke(raw, steps=0)
    untouched, _, log = tune(config, tokenizer)
    initial = tb.build_tiny_model(config.tiny_config, tokenizer, seed=config.seed)
    assert log["rows"] == [] and all(torch.equal(a, b) for a, b in
                                     zip(untouched.state_dict().values(), initial.state_dict().values()))
    # No step, no D^B record seen: no ids file, so the text track keeps all of D^B (paper profile)
    tb.save_backbone(untouched, tokenizer, tmp_path / "backbone", pretraining_ids=log["seen_ids"])
    assert not (tmp_path / "backbone" / tb.PRETRAINING_IDS).exists()
    assert tb.pretraining_ids(tmp_path / "backbone") is None


@pytest.fixture
def no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training data was touched before the bad input was reported")
    monkeypatch.setattr(tb, "encode_records", fail)


def test_a_path_without_a_model_fails_before_training(raw, tmp_path, no_training):
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match=rf"{missing} does not exist; expected a folder written by save_pretrained"):
        tb.fine_tune(smoke(raw, source="pretrained", model_id=str(missing)), RECORDS)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"empty holds no model: expected .*found \['config.json'\]"):
        tb.fine_tune(smoke(raw, source="pretrained", model_id=str(tmp_path / "empty")), RECORDS)


def test_a_bad_gguf_fails_before_training(raw, tmp_path, no_training):
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ConfigError, match=r"bad.gguf is not a GGUF file"):
        tb.fine_tune(smoke(raw, source="gguf", gguf_file=str(tmp_path / "bad.gguf")), RECORDS)
    with open(raw / GGUF, "rb") as handle:  # a real header, cut short
        (tmp_path / "cut.gguf").write_bytes(handle.read(100_000))
    with pytest.raises(ConfigError, match=r"could not load a tokenizer from .*cut.gguf"):
        tb.fine_tune(smoke(raw, source="config", gguf_file=str(tmp_path / "cut.gguf")), RECORDS)
    with pytest.raises(ConfigError, match=r"missing.gguf does not exist"):
        tb.fine_tune(smoke(raw, gguf_file=str(tmp_path / "missing.gguf")), RECORDS)


# ----------------------------------------------------------------------------- save and load

FRESH_PROCESS = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, out = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
tokenizer = AutoTokenizer.from_pretrained(folder)
ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is Amman?"}],
                                    add_generation_prompt=True, tokenize=False)
ids = tokenizer(ids, add_special_tokens=False, return_tensors="pt")["input_ids"]
with torch.no_grad():
    logits = model(input_ids=ids).logits
torch.save({"ids": ids, "logits": logits}, out)
print(json.dumps({"bat_imported": any(m == "bat" or m.startswith("bat.") for m in sys.modules),
                  "class": type(model).__name__}))
"""


def test_saved_backbone_opens_in_a_fresh_process_without_bat(raw, tokenizer, tmp_path):
    model, _, _ = tune(smoke(raw), tokenizer)
    folder = tmp_path / "backbone"
    tb.save_backbone(tb.build_tiny_model(smoke(raw).tiny_config, tokenizer, seed=5), tokenizer, folder)
    tb.save_backbone(model, tokenizer, folder, pretraining_ids=["b-2", "b-1", "b-2"])  # replaces the first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backbone"]  # no temporary folder left
    assert tb.pretraining_ids(folder) == ["b-1", "b-2"]
    assert (folder / "model.safetensors").is_file()
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(folder), str(tmp_path / "out.pt")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"bat_imported": False, "class": "LlamaForCausalLM"}
    fresh = torch.load(tmp_path / "out.pt")
    prompt, _ = tb.render_prompt(tokenizer, "What is Amman?", "")
    assert fresh["ids"][0].tolist() == tokenizer.encode(prompt, add_special_tokens=False)
    with torch.no_grad():
        here = model(input_ids=fresh["ids"]).logits
    torch.testing.assert_close(fresh["logits"], here, rtol=0, atol=1e-6)


def test_attention_implementation_is_honoured(raw, tokenizer, tmp_path):
    config = smoke(raw)
    eager = tb.build_tiny_model(config.tiny_config, tokenizer, attn_implementation="eager")
    sdpa = tb.build_tiny_model(config.tiny_config, tokenizer, attn_implementation="sdpa")
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    tb.save_backbone(eager, tokenizer, tmp_path / "saved")
    for attention in tb.ATTENTION:
        loaded, _ = tb.load_backbone(tmp_path / "saved", attn_implementation=attention)
        assert loaded.config._attn_implementation == attention
    ids = torch.tensor([tokenizer.encode("Amman is the capital of Jordan.")])
    torch.testing.assert_close(eager(input_ids=ids).logits, sdpa(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    # What eager is for: a Hessian-vector product (double backward) through the attention.
    weight = eager.model.layers[0].self_attn.q_proj.weight.requires_grad_(True)
    loss = eager(input_ids=ids, labels=ids).loss
    (gradient,) = torch.autograd.grad(loss, weight, create_graph=True)
    (hvp,) = torch.autograd.grad((gradient * torch.ones_like(gradient)).sum(), weight)
    assert torch.isfinite(hvp).all()


def test_the_paper_path_loads_a_saved_folder_by_model_id(raw, tokenizer, tmp_path):
    """source "pretrained" (the paper profile's hub id) on a local folder of the same format."""
    model = tb.build_tiny_model(smoke(raw).tiny_config, tokenizer, seed=3)
    tb.save_backbone(model, tokenizer, tmp_path / "llama")
    config = smoke(raw, source="pretrained", model_id=str(tmp_path / "llama"), steps=0)
    loaded, loaded_tokenizer, log = tb.fine_tune(config, RECORDS)
    assert log["rows"] == [] and loaded_tokenizer.chat_template == tokenizer.chat_template
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name


# ----------------------------------------------------------------------------- evaluation

def test_scores_before_and_after(raw, tokenizer, tmp_path):
    model = tb.build_tiny_model(smoke(raw).tiny_config, tokenizer)
    before = tb.score_eval_sets(model, tokenizer, {"tiny": ITEMS}, progress=False)
    assert list(before.columns) == ["set", "paper", "items", "chance", "acc", "acc_norm"]
    assert before.loc[0, "chance"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    table = tb.compare_scores(before, before)
    assert list(table["set"]) == ["tiny", "mean"]
    assert (table["acc_before"] == table["acc_after"]).all()
    record = {"id": "x-1", "key": "cat", "context": ITEMS[0].context, "choices": ["yes", "no"], "gold": 0}
    (tmp_path / "definition_check.jsonl").write_text((json.dumps(record) + "\n") * 3)
    sets = tb.load_eval_sets(tmp_path, 2, names=["definition_check"])
    assert [item.id for item in sets["definition_check"]] == ["x-1", "x-1"]
    with pytest.raises(ConfigError, match="hypernym_choice.jsonl not found"):
        tb.load_eval_sets(tmp_path, 2, names=["hypernym_choice"])


def test_learning_rate_schedule_and_loss_summary(raw):
    config = smoke(raw, steps=10, warmup_steps=2, learning_rate=1.0)
    rates = [tb.learning_rate_at(step, config) for step in range(1, 11)]
    assert rates[2] == max(rates) == 1.0 and rates[0] < rates[1] < 1.0 and 0 < rates[-1] < rates[3]
    summary = tb.loss_summary({"rows": [{"loss": value} for value in range(20)]})
    assert summary == {"steps": 20, "first": 0, "last": 19, "window": 2, "mean_first": 0.5, "mean_last": 18.5}
