"""The text backbone: a LLaMA-architecture causal LM, instruction-tuned here on our D^B.

The paper's text backbone is LLaMA-2-7B fine-tuned on Alpaca-cleaned: a public model whose last
training set is known, so that set can serve as D^B. We rebuild that situation at CPU scale:

* ``source: gguf`` (tiny profile) — SmolLM2-135M-Instruct, read from the pinned GGUF file and
  dequantised to a plain ``LlamaForCausalLM``, then fine-tuned on ``data/prepared/text/backbone.jsonl``.
* ``source: config`` (smoke profile) — a minuscule LLaMA built from ``tiny_config`` with a fixed
  seed; the tokenizer still comes from the GGUF, so the vocabulary and chat template are real.
* ``source: pretrained`` (paper profile) — ``model_id``, a hub id or a local folder written by
  ``save_pretrained``; with ``steps: 0`` it is taken as the backbone as it is.

**The fine-tune is a merged LoRA, not a full fine-tune.** A full AdamW fine-tune of 135M weights
does not fit the tiny profile's 10-minute CPU budget together with loading and evaluation, so a
LoRA of rank ``lora_rank`` on every linear layer of every block (peft's ``all-linear``: q, k, v,
o, gate, up, down; not the tied embedding/LM head) is trained and then merged into the weights
(``merge_and_unload``). The saved backbone is therefore a plain ``LlamaForCausalLM`` with no
adapter left in it: ``AutoModelForCausalLM.from_pretrained(folder)`` opens it without peft or
``bat``. ``lora_rank: 0`` trains every weight instead (a full fine-tune, for GPUs).

Each D^B record is rendered with the tokenizer's chat template (SmolLM2-Instruct ships one; the
Alpaca prompt of :data:`bat.text.benchmarks.ALPACA_TEMPLATE` when a tokenizer has none), and the
loss is taken on the response tokens only: the prompt's labels are ``-100``. Batches are drawn
from a ``torch.Generator`` seeded by ``seed``, LoRA is initialised under the same seed, and there
is no dropout, so two runs with the same config give identical weights.

Where: the run's :class:`bat.core.runtime.RuntimeConfig`; the backbone is loaded (or built) in its
``dtype`` on its device, and the fine-tune runs there under its mixed precision and gradient
checkpointing.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from bat import paths, validate
from bat.core.runtime import (DEVICES, DTYPES, RuntimeConfig, enable_gradient_checkpointing, make_accelerator,
                              model_device, to_device, update)
from bat.errors import ConfigError
from bat.io import atomic_directory, read_json, write_json
from bat.text.benchmarks import ALPACA_TEMPLATE, MultipleChoiceItem, load_items, score_loglikelihood
from bat.text.task import IGNORE_INDEX, CausalLMTask

BACKBONE_SOURCES = ("gguf", "config", "pretrained")
ATTENTION = ("eager", "sdpa")  # eager: Hessian products need double-backward, which CPU SDPA lacks
# LlamaConfig fields a from-config backbone may set; vocabulary and special tokens come from the tokenizer.
TINY_CONFIG_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "max_position_embeddings")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class TextBackboneConfig:
    """The ``backbone_text`` section of params.yaml (defaults: the tiny profile)."""

    source: str = "gguf"  # gguf | config | pretrained, see the module docstring
    gguf_file: str = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # relative to data/raw; also the tokenizer of "config"
    model_id: str = ""  # hub id or folder, read when source == "pretrained"
    tiny_config: Mapping[str, int] = field(default_factory=lambda: {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2})
    attn_implementation: str = "eager"
    steps: int = 40  # 0: no fine-tune, the loaded model is the backbone (paper profile)
    batch_size: int = 8
    max_length: int = 64  # tokens per example, chat template included; longer responses are cut
    learning_rate: float = 2e-4  # a usual LoRA rate; a full fine-tune (lora_rank 0) wants ~1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 4  # linear warm-up, then linear decay to 0 at the last step
    lora_rank: int = 8  # 0: full fine-tune
    lora_alpha: float = 16.0
    max_grad_norm: float = 1.0  # 0 turns clipping off
    seed: int = 0
    eval_set_size: int = 20  # first items of each of the eight multiple-choice sets
    eval_batch_size: int = 8

    def __post_init__(self):
        validate.choice("backbone_text.source", self.source, BACKBONE_SOURCES)
        validate.choice("backbone_text.attn_implementation", self.attn_implementation, ATTENTION)
        if self.source in ("gguf", "config") and (
                not isinstance(self.gguf_file, str) or not self.gguf_file.endswith(".gguf")):
            raise ConfigError(f"backbone_text.gguf_file: {self.gguf_file!r} must name a .gguf file "
                              f"(relative to data/raw) when source is {self.source!r}")
        if self.source == "pretrained" and (not isinstance(self.model_id, str) or not self.model_id):
            raise ConfigError("backbone_text.model_id: must be a hub id or a folder when source is "
                              "'pretrained'")
        check_tiny_config(self.tiny_config)
        object.__setattr__(self, "tiny_config", dict(self.tiny_config))
        for name in ("batch_size", "max_length", "eval_set_size", "eval_batch_size"):
            validate.positive(f"backbone_text.{name}", getattr(self, name), integer=True)
        for name in ("steps", "warmup_steps", "lora_rank", "seed"):
            validate.non_negative(f"backbone_text.{name}", getattr(self, name), integer=True)
        validate.positive("backbone_text.learning_rate", self.learning_rate)
        validate.positive("backbone_text.lora_alpha", self.lora_alpha)
        validate.non_negative("backbone_text.weight_decay", self.weight_decay)
        validate.non_negative("backbone_text.max_grad_norm", self.max_grad_norm)
        if self.max_length < 8:
            raise ConfigError(f"backbone_text.max_length: {self.max_length} leaves no room for a "
                              "prompt and a response; use at least 8 (64 or more in practice)")


def check_tiny_config(tiny_config: Any) -> None:
    if not isinstance(tiny_config, Mapping):
        raise ConfigError(f"backbone_text.tiny_config: {tiny_config!r} must be a mapping of "
                          f"{list(TINY_CONFIG_KEYS)}")
    for key, value in tiny_config.items():
        validate.choice("backbone_text.tiny_config key", key, TINY_CONFIG_KEYS)
        validate.positive(f"backbone_text.tiny_config.{key}", value, integer=True)
    for key in ("hidden_size", "num_attention_heads"):
        if key not in tiny_config:
            raise ConfigError(f"backbone_text.tiny_config.{key} is missing")
    heads = tiny_config["num_attention_heads"]
    if tiny_config["hidden_size"] % heads:
        raise ConfigError(f"backbone_text.tiny_config: hidden_size {tiny_config['hidden_size']} is "
                          f"not a multiple of num_attention_heads {heads}")
    if heads % tiny_config.get("num_key_value_heads", heads):
        raise ConfigError(f"backbone_text.tiny_config: num_attention_heads {heads} is not a multiple "
                          f"of num_key_value_heads {tiny_config['num_key_value_heads']}")


# ----------------------------------------------------------------------------- loading

def resolve_gguf(gguf_file: str | Path) -> Path:
    """A relative GGUF path is read under ``data/raw``."""
    path = Path(gguf_file)
    return path if path.is_absolute() else paths.RAW / path


def _looks_local(path_or_id: str | Path) -> bool:
    # A hub id is "name" or "owner/name"; anything else (absolute, ./, ~, deeper) is a path.
    text = str(path_or_id)
    return (isinstance(path_or_id, Path) or text.startswith(("/", ".", "~")) or text.count("/") > 1
            or text.endswith(".gguf") or Path(text).exists())


def _locate(path_or_id: str | Path, gguf_file: str | None) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name or None); a local path that holds no model is an error."""
    if not _looks_local(path_or_id):
        if gguf_file is not None:
            return str(path_or_id), gguf_file
        return str(path_or_id), None
    path = Path(path_or_id).expanduser()
    if path.suffix == ".gguf" and gguf_file is None:
        path, gguf_file = path.parent, path.name
    expected = ("a folder written by save_pretrained (config.json and model.safetensors), "
                "or a .gguf file")
    if not path.is_dir():
        raise ConfigError(f"{path} does not exist; expected {expected}")
    if gguf_file is not None:
        file = path / gguf_file
        if not file.is_file():
            raise ConfigError(f"{file} does not exist; expected a .gguf file (run `make data` "
                              "for the pinned SmolLM2)")
        with open(file, "rb") as handle:
            if handle.read(4) != GGUF_MAGIC:
                raise ConfigError(f"{file} is not a GGUF file (it does not start with b'GGUF')")
        return str(path), gguf_file
    if not (path / "config.json").is_file() or not any((path / name).is_file() for name in WEIGHT_FILES):
        found = sorted(p.name for p in path.iterdir())[:8]
        raise ConfigError(f"{path} holds no model: expected {expected}; found {found}")
    return str(path), None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_tokenizer(path_or_id: str | Path, gguf_file: str | None = None):
    """The tokenizer of a saved folder, a hub id or a GGUF file (``folder/x.gguf`` or ``gguf_file=``)."""
    from transformers import AutoTokenizer

    where, gguf_file = _locate(path_or_id, gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=gguf_file)
    except Exception as error:  # the GGUF parser raises ValueError, struct.error, KeyError, ...
        raise ConfigError(f"could not load a tokenizer from {where!r}"
                          f"{f' (gguf_file={gguf_file!r})' if gguf_file else ''}: {_first_line(error)}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding positions are masked; any id will do
    return tokenizer


def _plain(model):
    """Drop what a GGUF load leaves behind, so ``save_pretrained`` writes a plain float model."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    elif hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def load_backbone(path_or_id: str | Path, *, gguf_file: str | None = None, torch_dtype: str = "float32",
                  device: str = "cpu", attn_implementation: str = "eager"):
    """``(model, tokenizer)`` from a saved folder, a hub id, or a GGUF file; one loader for all three.

    A local path that holds no model, and a GGUF that does not parse, raise :class:`ConfigError`
    naming the path. GGUF weights are dequantised to ``torch_dtype`` (a key of
    :data:`bat.core.runtime.DTYPES`); the model is loaded, then moved to ``device`` (``cpu``,
    ``cuda``, ``cuda:N``).
    """
    from transformers import AutoModelForCausalLM, GgufConfig

    validate.choice("torch_dtype", torch_dtype, DTYPES)
    validate.choice("backbone_text.attn_implementation", attn_implementation, ATTENTION)
    validate.device("device", device, DEVICES)
    where, gguf_file = _locate(path_or_id, gguf_file)
    tokenizer = load_tokenizer(where, gguf_file)
    options: dict[str, Any] = {"dtype": DTYPES[torch_dtype], "attn_implementation": attn_implementation}
    if gguf_file is not None:
        options.update(gguf_file=gguf_file, quantization_config=GgufConfig(dequantize=True))
    try:
        model = AutoModelForCausalLM.from_pretrained(where, **options)
    except Exception as error:  # OSError (hub), ValueError/struct.error (GGUF), ...
        raise ConfigError(f"could not load a causal LM from {where!r}"
                          f"{f' (gguf_file={gguf_file!r})' if gguf_file else ''}: {_first_line(error)}") from None
    return _plain(model).to(device).eval(), tokenizer


def build_tiny_model(tiny_config: Mapping[str, int], tokenizer, *, seed: int = 0,
                     attn_implementation: str = "eager", torch_dtype: str = "float32"):
    """A freshly initialised ``LlamaForCausalLM`` over the tokenizer's vocabulary (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    check_tiny_config(tiny_config)
    validate.choice("backbone_text.attn_implementation", attn_implementation, ATTENTION)
    config = LlamaConfig(**tiny_config, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True, attn_implementation=attn_implementation)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(DTYPES[torch_dtype]).eval()


def initial_backbone(config: TextBackboneConfig, runtime: RuntimeConfig | None = None):
    """``(model, tokenizer)`` before our fine-tune, as ``config.source`` says, in ``runtime``'s
    dtype on its device (None: float32 on the CPU)."""
    runtime = runtime or RuntimeConfig()
    placement = {"torch_dtype": runtime.dtype, "device": runtime.device_name}
    if config.source == "pretrained":
        return load_backbone(config.model_id, **placement, attn_implementation=config.attn_implementation)
    gguf = resolve_gguf(config.gguf_file)
    if config.source == "gguf":
        return load_backbone(gguf, **placement, attn_implementation=config.attn_implementation)
    tokenizer = load_tokenizer(gguf)
    model = build_tiny_model(config.tiny_config, tokenizer, seed=config.seed, torch_dtype=runtime.dtype,
                             attn_implementation=config.attn_implementation)
    return model.to(runtime.torch_device), tokenizer


# ----------------------------------------------------------------------------- instruction data

def render_prompt(tokenizer, instruction: str, response: str) -> tuple[str, str]:
    """(prompt, response part): the chat template's text up to the assistant turn, and the rest.

    The response part holds the template's end-of-turn tokens (``<|im_end|>`` for SmolLM2), so
    the model learns to stop. Without a chat template: the Alpaca prompt, and the response + EOS.
    """
    if getattr(tokenizer, "chat_template", None):
        user = [{"role": "user", "content": instruction}]
        prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}],
                                              tokenize=False)
        if not whole.startswith(prompt):
            raise ConfigError("the tokenizer's chat template does not render the assistant turn after "
                              "the generation prompt; cannot mask the prompt")
        return prompt, whole[len(prompt):]
    return ALPACA_TEMPLATE.format(instruction=instruction), response + (tokenizer.eos_token or "")


def encode_example(tokenizer, instruction: str, response: str, max_length: int) -> dict[str, list[int]] | None:
    """``input_ids`` and ``labels`` (``-100`` on the prompt), cut to ``max_length`` tokens.

    Prompt and response are encoded separately and joined, so the boundary is exact. A chat
    template renders its own special tokens; the Alpaca prompt gets the tokenizer's (e.g. BOS).
    None when the prompt alone fills ``max_length`` (no response token would be learned).
    """
    prompt, answer = render_prompt(tokenizer, instruction, response)
    templated = bool(getattr(tokenizer, "chat_template", None))
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=not templated)
    answer_ids = tokenizer.encode(answer, add_special_tokens=False)
    if len(prompt_ids) >= max_length:
        return None
    input_ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": input_ids, "labels": labels}


def encode_records(tokenizer, records: Sequence[Mapping[str, Any]], max_length: int) -> tuple[list[dict], int]:
    """Encoded examples of D^B records and how many were dropped (prompt longer than max_length).

    Each example keeps its record's ``id`` (its index when the record has none).
    """
    examples, dropped = [], 0
    for number, record in enumerate(records):
        if not isinstance(record, Mapping) or not all(
                isinstance(record.get(key), str) for key in ("instruction", "response")):
            raise ConfigError(f"backbone record {number}: needs string fields 'instruction' and "
                              f"'response', got {str(record)[:120]}")
        example = encode_example(tokenizer, record["instruction"], record["response"], max_length)
        if example is None:
            dropped += 1
        else:
            examples.append({**example, "id": record.get("id", number)})
    if not examples:
        raise ConfigError(f"backbone_text.max_length: {max_length} tokens do not even hold the prompts "
                          f"of the {len(records)} records; raise it")
    return examples, dropped


def collate(examples: Sequence[Mapping[str, list[int]]], pad_token_id: int,
            width: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` on padding),
    ``width`` columns wide (default: the longest example)."""
    width = width or max(len(example["input_ids"]) for example in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example["input_ids"])
        input_ids[row, :length] = torch.tensor(example["input_ids"])
        labels[row, :length] = torch.tensor(example["labels"])
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def batch_indices(count: int, batch_size: int, steps: int, seed: int) -> Iterator[list[int]]:
    """``steps`` batches of indices into ``count`` examples: a seeded shuffle, reshuffled per epoch."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            order += torch.randperm(count, generator=generator).tolist()
        yield order[:batch_size]
        order = order[batch_size:]


# ----------------------------------------------------------------------------- fine-tune

def learning_rate_at(step: int, config: TextBackboneConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then linear decay to 0 after the last step (1-based)."""
    if step <= config.warmup_steps:
        return config.learning_rate * step / (config.warmup_steps + 1)
    remaining = config.steps - step + 1
    return config.learning_rate * remaining / max(1, config.steps - config.warmup_steps)


def attach_lora(model, rank: int, alpha: float):
    """A peft LoRA on every linear layer of every block (``all-linear``: the LM head is left out)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft asks transformers a deprecated question; not ours to fix
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, lora)


def fine_tune(config: TextBackboneConfig, records: Sequence[Mapping[str, Any]], *, model=None,
              tokenizer=None, runtime: RuntimeConfig | None = None, progress: bool = True):
    """Instruction-tune the backbone on D^B records; return ``(model, tokenizer, log)``.

    ``model``/``tokenizer`` default to :func:`initial_backbone` of ``runtime`` (which raises on a
    bad path or GGUF before anything trains). The returned model is a plain causal LM: a LoRA is merged into
    it (``lora_rank > 0``). ``log`` holds ``rows`` (step, loss, learning_rate, labelled tokens,
    wall seconds) and the run's ``examples``, ``dropped_examples`` (prompt longer than
    ``max_length``), ``trainable_parameters``, ``seen_ids`` (the record ids trained on, in order:
    with few steps the backbone sees only part of D^B), ``encode_seconds`` and ``seconds``. With
    ``steps == 0`` the model is returned untouched and the records are not even encoded.
    The loss is :class:`bat.text.task.CausalLMTask`'s, as in the adaptation runs: each example's mean
    cross-entropy over its response tokens, averaged over the batch. It is computed under
    ``runtime``'s mixed precision (through Accelerate: fp16 with its loss scaler) and gradient
    checkpointing. Trained weights are float32 whatever ``runtime.dtype`` (the LoRA's, as peft
    keeps them; all of them with ``lora_rank: 0``), so the returned model is float32 when every
    weight trained; the stage saves it and loads it back in ``runtime.dtype``.
    """
    started = time.perf_counter()
    runtime = runtime or RuntimeConfig()
    if (model is None) != (tokenizer is None):
        raise ConfigError("fine_tune: pass both model and tokenizer, or neither")
    if model is None:
        model, tokenizer = initial_backbone(config, runtime)
    log: dict[str, Any] = {"rows": [], "examples": 0, "dropped_examples": 0, "trainable_parameters": 0,
                           "seen_ids": [], "encode_seconds": 0.0, "seconds": 0.0}
    if config.steps == 0:  # the loaded model is the backbone already (the paper's LLaMA-2-7B-alpaca-cleaned)
        log["seconds"] = time.perf_counter() - started
        return model.eval(), tokenizer, log
    clock = time.perf_counter()
    examples, log["dropped_examples"] = encode_records(tokenizer, records, config.max_length)
    log["examples"], log["encode_seconds"] = len(examples), time.perf_counter() - clock
    torch.manual_seed(config.seed)  # LoRA's A matrices are drawn from the global generator
    if config.lora_rank:
        trained = attach_lora(model, config.lora_rank, config.lora_alpha)
    else:  # every weight trains, in float32 as in the image pre-training (a half-precision
        # update rounds small steps away, and fp16's loss scaler refuses half-precision gradients)
        trained = model.float().requires_grad_(True)
    parameters = [p for p in trained.parameters() if p.requires_grad]
    log["trainable_parameters"] = sum(p.numel() for p in parameters)
    accelerator = make_accelerator(runtime)
    optimizer = accelerator.prepare(torch.optim.AdamW(parameters, lr=config.learning_rate,
                                                      weight_decay=config.weight_decay))
    task, device = CausalLMTask(), model_device(trained)
    pad = tokenizer.pad_token_id
    trained.train()
    if runtime.gradient_checkpointing:
        enable_gradient_checkpointing(trained)
    batches = batch_indices(len(examples), config.batch_size, config.steps, config.seed)
    bar = tqdm(batches, total=config.steps, desc="fine-tune backbone", disable=not progress)
    for step, indices in enumerate(bar, start=1):
        clock = time.perf_counter()
        batch = task.prepare(collate([examples[i] for i in indices], pad), None)
        batch = to_device(batch, device)
        lr = learning_rate_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with accelerator.autocast():
            loss = task.batch_losses(trained, batch).mean()
        if not torch.isfinite(loss):
            raise RuntimeError(f"backbone fine-tune diverged at step {step} (loss {loss.item()}); "
                               "lower backbone_text.learning_rate")
        update(accelerator, optimizer, loss, parameters, config.max_grad_norm)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        log["seen_ids"] += [examples[i]["id"] for i in indices]
        log["rows"].append({"step": step, "loss": loss.item(), "learning_rate": lr,
                            "tokens": int((batch["labels"] != IGNORE_INDEX).sum()),
                            "seconds": time.perf_counter() - clock})
    model = trained.merge_and_unload() if config.lora_rank else trained
    model.requires_grad_(False)
    log["seconds"] = time.perf_counter() - started
    return model.eval(), tokenizer, log


def loss_summary(log: Mapping[str, Any], window: int | None = None) -> dict[str, Any]:
    """First/last loss and the means of the first and last ``window`` steps (default: a tenth)."""
    losses = [row["loss"] for row in log["rows"]]
    if not losses:
        return {"steps": 0}
    window = window or max(1, math.ceil(len(losses) / 10))
    return {"steps": len(losses), "first": losses[0], "last": losses[-1], "window": window,
            "mean_first": sum(losses[:window]) / window, "mean_last": sum(losses[-window:]) / window}


# ----------------------------------------------------------------------------- saving

PRETRAINING_IDS = "bat_pretraining_ids.json"


def save_backbone(model, tokenizer, folder: str | Path, pretraining_ids: Sequence[str] | None = None) -> Path:
    """``save_pretrained`` (safetensors) and the tokenizer, into a folder beside ``folder``, then renamed.

    ``pretraining_ids`` are the D^B records the fine-tune actually saw (a CPU budget sees a few
    percent of D^B): BAT's backbone pool is what the backbone was trained on, so later stages
    read them back with :func:`pretraining_ids`.

    The result opens in a fresh process with ``AutoModelForCausalLM.from_pretrained(folder)`` and
    ``AutoTokenizer.from_pretrained(folder)``; nothing of ``bat`` or peft is needed.
    """
    if hasattr(model, "peft_config"):
        raise ConfigError("save_backbone: the model still carries a peft adapter; merge it first "
                          "(fine_tune returns a merged model)")
    folder = Path(folder)
    with atomic_directory(folder) as tmp:
        _plain(model).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if pretraining_ids:  # none when the fine-tune took no step: the backbone saw no D^B record
            write_json(tmp / PRETRAINING_IDS, sorted(set(pretraining_ids)))
    return folder


def pretraining_ids(folder: str | Path) -> list[str] | None:
    """The D^B record ids the saved backbone was fine-tuned on; None for a backbone from elsewhere."""
    path = Path(folder) / PRETRAINING_IDS
    return read_json(path) if path.exists() else None


# ----------------------------------------------------------------------------- evaluation

def load_eval_sets(folder: str | Path, size: int, names: Sequence[str] | None = None
                   ) -> dict[str, list[MultipleChoiceItem]]:
    """The first ``size`` items of each prepared multiple-choice set (``eval/<set>.jsonl``)."""
    from bat.text.data import EVAL_SETS

    folder = Path(folder)
    names = list(names) if names is not None else list(EVAL_SETS)
    sets = {}
    for name in names:
        path = folder / f"{name}.jsonl"
        if not path.is_file():
            raise ConfigError(f"{path} not found; run `dvc repro prepare` first")
        sets[name] = load_items(path)[:size]
    return sets


def score_eval_sets(model, tokenizer, sets: Mapping[str, Sequence[MultipleChoiceItem]], *,
                    batch_size: int = 8, progress: bool = True):
    """lm-eval ``acc`` and ``acc_norm`` per set: a DataFrame with set, paper, items, chance, acc, acc_norm.

    Each context is read once for all its choices (``shared_context``; ``batch_size`` counts
    items): the same numbers as lm-eval's one sequence per choice up to float32 round-off, at
    about twice its items/s on the tiny sets (benchmarks/results/lm_eval_compare.json).
    """
    import pandas as pd

    from bat.text.data import EVAL_SETS

    rows = []
    for name, items in sets.items():
        scores = score_loglikelihood(model, tokenizer, items, batch_size=batch_size,
                                     progress=progress, shared_context=True)
        chance = sum(1 / len(item.choices) for item in items) / len(items)
        rows.append({"set": name, "paper": EVAL_SETS.get(name, ""), "items": len(items), "chance": chance,
                     "acc": scores.acc, "acc_norm": scores.acc_norm})
    return pd.DataFrame(rows)


def compare_scores(before, after):
    """One row per set with acc/acc_norm before and after, and their mean over sets as a last row."""
    import pandas as pd

    merged = before.merge(after[["set", "acc", "acc_norm"]], on="set", suffixes=("_before", "_after"))
    columns = ["acc_before", "acc_after", "acc_norm_before", "acc_norm_after", "chance"]
    mean = {"set": "mean", "paper": "", "items": int(merged["items"].sum()),
            **{column: float(merged[column].mean()) for column in columns}}
    return pd.concat([merged[["set", "paper", "items", *columns]], pd.DataFrame([mean])],
                     ignore_index=True)
