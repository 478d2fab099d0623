"""Local stand-ins for the paper profile's models and datasets, in their real hub formats.

    python benchmarks/paper_standins.py --out .cache/paper-standins
    python -m bat.stages.profile use paper --override profiles/paper-cpu.example.yaml
    # or: make repro PROFILE=paper OVERRIDE=profiles/paper-cpu.example.yaml

The paper profile (``profiles/paper.yaml``) loads Stable Diffusion 1.4, LLaMA-2-7B-alpaca-cleaned,
DINOv2 and CLIP by hub id and reads LAION, Alpaca-cleaned, MedQuad, WinoGrande, XSum and the eight
lm-eval sets with ``datasets``. On a CPU machine without a hub, this script writes a minuscule
stand-in of each into ``--out`` (default ``.cache/paper-standins``), in the layout and file format
the real one has, so that the paper profile's own loaders (``StableDiffusionPipeline.from_pretrained``,
``AutoModelForCausalLM`` / ``AutoTokenizer``, ``AutoModel`` / ``AutoProcessor``,
``datasets.load_dataset``) read them unchanged. Models are built from configs with random weights
under a fixed seed (as ``tests/tiny_models.py`` does), tokenizers from vocabularies written here;
texts and images are drawn from small word lists and coloured shapes with one seeded generator.
Nothing is downloaded. Two runs write byte-identical model weights and data files.

==============================  ===================================  ==========================================
folder under ``--out``          imitates (hub id)                    format
==============================  ===================================  ==========================================
``stable-diffusion-v1-4/``      ``CompVis/stable-diffusion-v1-4``    diffusers ``StableDiffusionPipeline``:
                                                                     ``model_index.json``, ``unet/`` (4 levels,
                                                                     3 cross-attention, as SD 1.x), ``vae/``
                                                                     (4 levels: 8x down-sampling, 4 latent
                                                                     channels, scaling 0.18215), ``text_encoder/``
                                                                     (``CLIPTextModel``, 77 positions),
                                                                     ``tokenizer/`` (``CLIPTokenizer``, character
                                                                     level), ``scheduler/`` (SD's PNDM, scaled
                                                                     linear betas), ``feature_extractor/``; no
                                                                     safety checker. safetensors, float32
``llama-2-7b-alpaca-cleaned/``  ``NEU-HAI/Llama-2-7b-alpaca-cleaned``  ``LlamaForCausalLM`` (no GQA, untied head,
                                                                     as LLaMA-2) + ``LlamaTokenizer``
                                                                     (``tokenizer.json``: BPE with byte
                                                                     fallback, ``<s>``/``</s>``/``<unk>``, no chat
                                                                     template, so the Alpaca prompt is used)
``dinov2-base/``                ``facebook/dinov2-base``             ``Dinov2Model`` + ``BitImageProcessor``
``clip-vit-base-patch32/``      ``openai/clip-vit-base-patch32``     ``CLIPModel`` + ``CLIPProcessor``
``laion/0000{0,1}.tar``         a LAION sample via img2dataset       webdataset shards: ``<key>.jpg``,
                                                                     ``<key>.txt``, ``<key>.json`` per sample
``alpaca-cleaned/``             ``yahma/alpaca-cleaned``             ``alpaca_data_cleaned.json`` (one JSON
                                                                     array: instruction, input, output)
``medquad/``                    ``keivalya/MedQuad-MedicalQnADataset``  ``medDataset_processed.csv`` (qtype,
                                                                     Question, Answer)
``winogrande/``                 ``allenai/winogrande``               local hub copy: ``winogrande_xl/{train,
                                                                     validation}-*.parquet``, configs in README
``xsum/``                       ``EdinburghNLP/xsum``                local hub copy: ``data/train-*.parquet``
``super_glue/``                 ``aps/super_glue``                   local hub copy, config ``boolq``
``piqa/`` ``siqa/``             ``baber/piqa``, ``lighteval/siqa``   local hub copies, ``data/validation-*``
``hellaswag/``                  ``Rowan/hellaswag``                  local hub copy, ``data/validation-*``
``ai2_arc/``                    ``allenai/ai2_arc``                  local hub copy, configs ``ARC-Easy``,
                                                                     ``ARC-Challenge`` (``test`` split)
``openbookqa/``                 ``allenai/openbookqa``               local hub copy, config ``main``
==============================  ===================================  ==========================================

The image D^A stays the emoji styles of ``data/raw`` (the paper profile keeps them), so no
imagefolder set is written. ``--out`` also receives ``paper-cpu.yaml``: the override
``profiles/paper-cpu.example.yaml`` with its ``.cache/paper-standins`` paths replaced by ``--out``
(relative to the project when ``--out`` is inside it); the script prints that file's path.
About 6 MB in all, written in a few seconds (most of it importing torch and diffusers).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tarfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ".cache/paper-standins"
EXAMPLE_OVERRIDE = PROJECT / "profiles" / "paper-cpu.example.yaml"
SEED = 0

# ----------------------------------------------------------------------------- word lists

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "grey", "pink"]
RGB = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (240, 220, 40),
       "purple": (140, 40, 170), "orange": (250, 140, 20), "black": (15, 15, 15),
       "white": (245, 245, 245), "grey": (128, 128, 128), "pink": (250, 150, 190)}
SHAPES = ["circle", "square", "triangle", "cross", "ring", "bar"]
NOUNS = ["cat", "dog", "house", "tree", "river", "city", "boat", "bird", "horse", "garden", "bridge",
         "school", "doctor", "teacher", "farmer", "market", "train", "road", "lake", "forest", "child",
         "book", "letter", "window", "table", "kitchen", "storm", "island", "mountain", "village"]
VERBS = ["see", "find", "open", "carry", "build", "paint", "move", "clean", "visit", "help"]
ADJECTIVES = ["small", "large", "old", "new", "quiet", "busy", "bright", "dark", "warm", "cold"]
SYLLABLES = ["ba", "co", "di", "fe", "ga", "hi", "lo", "ma", "ne", "pu", "ra", "si", "tu", "vo", "ze"]
FUNCTION_WORDS = ["a", "an", "the", "of", "on", "in", "and", "is", "are", "was", "to", "with", "what",
                  "which", "how", "why", "who", "it", "this", "that", "by", "for", "from", "at", "be",
                  "photo", "picture", "background", "symptoms", "causes", "treatment", "syndrome",
                  "disease", "fever", "pain", "rest", "water", "doctors", "people", "summarise",
                  "article", "said", "yes", "no", "true", "false", "because", "answer", "question",
                  "sentence", "first", "second", "number", "numbers", "add", "write", "describe",
                  "explain", "list", "give", "one", "two", "three", "fill", "blank", "options"]


def disease(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(3)) + rng.choice(["itis", "osis", "emia"])


def sentence(rng: random.Random, words: int = 8) -> str:
    pool = NOUNS + VERBS + ADJECTIVES + FUNCTION_WORDS[:24]
    text = " ".join(rng.choice(pool) for _ in range(words))
    return text[0].upper() + text[1:] + "."


# ----------------------------------------------------------------------------- models

def _seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def clip_tokenizer(folder: Path, max_length: int = 77):
    """A character-level ``CLIPTokenizer`` (letters, digits, with and without end-of-word), the
    vocabulary of ``tests/tiny_models.write_clip_vocab`` plus a few punctuation marks."""
    from transformers import CLIPTokenizer

    symbols = list("abcdefghijklmnopqrstuvwxyz0123456789.,'-")
    tokens = symbols + [f"{s}</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              model_max_length=max_length, pad_token="<|endoftext|>")
    (folder / "vocab.json").unlink()
    (folder / "merges.txt").unlink()
    return tokenizer


def stable_diffusion(out: Path) -> Path:
    """SD 1.4's layout at toy widths: 64-pixel images, 8x8x4 latents, 32-wide caption states."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    folder = out / "stable-diffusion-v1-4"
    tokenizer = clip_tokenizer(out / ".clip-vocab-sd")
    (out / ".clip-vocab-sd").rmdir()
    _seed(SEED)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    _seed(SEED + 1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(8, 8, 16, 16), norm_num_groups=4, sample_size=64,
                        scaling_factor=0.18215)
    _seed(SEED + 2)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32, 32, 32), cross_attention_dim=32, attention_head_dim=4,
        norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    scheduler = PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1,
                              set_alpha_to_one=False)
    feature_extractor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None,
                                   feature_extractor=feature_extractor, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def llama_vocabulary(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """LLaMA's id layout (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, the 256 byte-fallback tokens
    ``<0x00>``…``<0xFF>``), then single characters, then one token ``▁word`` per word with the
    merges that build it from the left: BPE then reads every listed word as one token and spells
    anything else out in characters (or bytes). Deterministic, unlike a trained vocabulary."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    characters = "▁" + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;?!'\"()-_#/%&+=*<>[]"
    for character in characters:
        vocab.setdefault(character, len(vocab))
    merges = []
    for word in sorted(set(words)):
        piece = "▁"
        for character in word:
            merged = piece + character
            if merged not in vocab:
                vocab[merged] = len(vocab)
                merges.append((piece, character))
            piece = merged
    return vocab, merges


# Words of the prompts the project wraps around the sets: the Alpaca template
# (bat.text.benchmarks.ALPACA_TEMPLATE), the task instructions (bat.text.data) and lm-eval's contexts.
PROMPT_TEXT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
               "the request. Instruction Response Fill in the blank Options Summarise in one line Question "
               "Answer Passage Context yes no")


def llama(out: Path, texts: list[str]) -> Path:
    """LLaMA-2's architecture at toy width; its vocabulary: every word of ``texts`` and the prompts."""
    import re

    from transformers import LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    folder = out / "llama-2-7b-alpaca-cleaned"
    words = set(re.findall(r"[A-Za-z]+", " ".join([PROMPT_TEXT, *texts])))
    words |= {w.capitalize() for w in words} | {w.lower() for w in words}
    vocab, merges = llama_vocabulary(sorted(words))
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False,
                               model_max_length=256, padding_side="right")
    _seed(SEED + 3)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=None))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def dinov2(out: Path) -> Path:
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = out / "dinov2-base"
    _seed(SEED + 4)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=28, patch_size=14)).save_pretrained(folder, safe_serialization=True)
    # facebook/dinov2-base: resize the short side to 256, centre-crop 224, ImageNet mean and std.
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}, do_center_crop=True,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                      do_convert_rgb=True).save_pretrained(folder)
    return folder


def clip(out: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = out / "clip-vit-base-patch32"
    tokenizer = clip_tokenizer(out / ".clip-vocab")
    (out / ".clip-vocab").rmdir()
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    _seed(SEED + 5)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(
        folder, safe_serialization=True)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                     crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- image data

def shape_image(rng: random.Random) -> tuple[bytes, str, tuple[int, int]]:
    """A JPEG of a coloured shape on a coloured background, not square, and its caption."""
    from PIL import Image, ImageDraw

    width, height = rng.choice([(96, 64), (64, 96), (80, 80), (112, 72)])
    fg, bg = rng.sample(COLOURS, 2)
    shape, size = rng.choice(SHAPES), rng.choice(["small", "large"])
    image = Image.new("RGB", (width, height), RGB[bg])
    draw = ImageDraw.Draw(image)
    r = min(width, height) * (0.2 if size == "small" else 0.4)
    cx, cy = width / 2 + rng.uniform(-8, 8), height / 2 + rng.uniform(-8, 8)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=RGB[fg])
    elif shape == "ring":
        draw.ellipse(box, outline=RGB[fg], width=max(2, int(r / 3)))
    elif shape == "square":
        draw.rectangle(box, fill=RGB[fg])
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=RGB[fg])
    elif shape == "cross":
        draw.rectangle((cx - r, cy - r / 4, cx + r, cy + r / 4), fill=RGB[fg])
        draw.rectangle((cx - r / 4, cy - r, cx + r / 4, cy + r), fill=RGB[fg])
    else:
        draw.rectangle((cx - r, cy - r / 5, cx + r, cy + r / 5), fill=RGB[fg])
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    caption = f"a photo of a {size} {fg} {shape} on a {bg} background"
    return buffer.getvalue(), caption, (width, height)


def _add(shard: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size, member.mtime, member.mode = len(data), 0, 0o644  # no clock: byte-stable shards
    shard.addfile(member, io.BytesIO(data))


def laion(out: Path, rng: random.Random, shards: int = 2, per_shard: int = 48) -> Path:
    """img2dataset's webdataset output: per sample ``%09d.jpg``, ``.txt`` (the caption) and
    ``.json`` (url, caption, key, status, size), ``per_shard`` samples a shard."""
    folder = out / "laion"
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(shards):
        with tarfile.open(folder / f"{number:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as shard:
            for index in range(per_shard):
                key = f"{number:05d}{index:04d}"
                jpg, caption, (width, height) = shape_image(rng)
                meta = {"url": f"https://example.org/laion/{key}.jpg", "caption": caption, "key": key,
                        "status": "success", "width": width, "height": height}
                _add(shard, f"{key}.jpg", jpg)
                _add(shard, f"{key}.txt", caption.encode())
                _add(shard, f"{key}.json", json.dumps(meta).encode())
    return folder


# ----------------------------------------------------------------------------- text data

def _parquet(rows: list[dict], path: Path) -> None:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)


def _card(folder: Path, configs: dict[str, dict[str, str]]) -> None:
    """A dataset card declaring each configuration's split files, as hub copies carry."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {pattern}" for split, pattern in splits.items()]
    (folder / "README.md").write_text("\n".join(lines) + "\n---\n", encoding="utf-8")


def alpaca_rows(rng: random.Random, count: int) -> list[dict]:
    rows = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            rows.append({"instruction": f"Add the numbers {i}.", "input": f"{a} and {b}", "output": str(a + b)})
        elif kind == 1:
            noun = rng.choice(NOUNS)
            rows.append({"instruction": f"Describe a {rng.choice(ADJECTIVES)} {noun} in one sentence ({i}).",
                         "input": "", "output": sentence(rng)})
        elif kind == 2:
            rows.append({"instruction": f"Give three words for a {rng.choice(NOUNS)} ({i}).", "input": "",
                         "output": ", ".join(rng.sample(ADJECTIVES, 3))})
        else:
            rows.append({"instruction": f"Explain why the {rng.choice(NOUNS)} is {rng.choice(ADJECTIVES)} ({i}).",
                         "input": sentence(rng, 6), "output": sentence(rng, 10)})
    return rows


def medquad_rows(rng: random.Random, count: int) -> list[dict]:
    rows, seen = [], set()
    while len(rows) < count:
        name, qtype = disease(rng), rng.choice(["symptoms", "causes", "treatment"])
        question = f"What are the {qtype} of {name} ?"
        if question in seen:
            continue
        seen.add(question)
        rows.append({"qtype": qtype, "Question": question,
                     "Answer": f"The {qtype} of {name} are {rng.choice(['fever', 'pain', 'rest', 'water'])} "
                               f"and {sentence(rng, 6).lower()}"})
    return rows


def winogrande_rows(rng: random.Random, count: int, start: int) -> list[dict]:
    rows = []
    for i in range(start, start + count):
        a, b = rng.sample(NOUNS, 2)
        rows.append({"sentence": f"The {a} could not carry the {b} because _ was too {rng.choice(ADJECTIVES)} "
                                 f"({i}).",
                     "option1": a, "option2": b, "answer": rng.choice(["1", "2"])})
    return rows


def xsum_rows(rng: random.Random, count: int) -> list[dict]:
    return [{"document": " ".join(sentence(rng, 10) for _ in range(4)), "summary": sentence(rng, 7),
             "id": str(30000000 + i)} for i in range(count)]


def benchmark_rows(name: str, rng: random.Random, count: int) -> list[dict]:
    """``count`` rows of each lm-eval set's hub schema (``tests/test_paper_data.BENCHMARK_ROWS``)."""
    rows = []
    for i in range(count):
        noun, other = rng.sample(NOUNS, 2)
        if name == "boolq":
            rows.append({"question": f"is the {noun} {rng.choice(ADJECTIVES)}", "passage": sentence(rng, 12),
                         "idx": i, "label": rng.randint(0, 1)})
        elif name == "piqa":
            rows.append({"goal": f"How to {rng.choice(VERBS)} a {noun}?", "sol1": sentence(rng, 6),
                         "sol2": sentence(rng, 6), "label": rng.randint(0, 1)})
        elif name == "siqa":
            rows.append({"context": sentence(rng, 8), "question": f"How does the {noun} feel?",
                         "answerA": rng.choice(ADJECTIVES), "answerB": rng.choice(ADJECTIVES),
                         "answerC": rng.choice(ADJECTIVES), "label": str(rng.randint(1, 3))})
        elif name == "hellaswag":
            rows.append({"ind": i, "activity_label": noun.capitalize(), "ctx_a": sentence(rng, 8),
                         "ctx_b": f"the {noun}", "ctx": "", "endings": [sentence(rng, 5) for _ in range(4)],
                         "source_id": f"stand-in~{i}", "split": "val", "split_type": "indomain",
                         "label": str(rng.randint(0, 3))})
        elif name in ("arc_easy", "arc_challenge"):
            labels = ["A", "B", "C", "D"]
            rows.append({"id": f"{name}-{i}", "question": f"Which {noun} can {rng.choice(VERBS)} a {other}?",
                         "choices": {"text": [sentence(rng, 3) for _ in labels], "label": labels},
                         "answerKey": rng.choice(labels)})
        elif name == "openbookqa":
            labels = ["A", "B", "C", "D"]
            rows.append({"id": f"obqa-{i}", "question_stem": f"The {noun} is",
                         "choices": {"text": [rng.choice(ADJECTIVES) for _ in labels], "label": labels},
                         "answerKey": rng.choice(labels)})
        else:
            raise ValueError(name)
    return rows


SPLIT_FILE = "{split}-00000-of-00001.parquet"


def text_sets(out: Path, rng: random.Random, sizes: dict[str, int]) -> list[str]:
    """Alpaca-cleaned, MedQuad, WinoGrande, XSum and the eight lm-eval sets, as their hub repositories
    lay them out (the splits the paper profile reads). Returns every row written, as JSON text."""
    import pandas as pd

    written: list[dict] = []

    def rows(made: list[dict]) -> list[dict]:
        written.extend(made)
        return made

    (out / "alpaca-cleaned").mkdir(parents=True, exist_ok=True)
    (out / "alpaca-cleaned" / "alpaca_data_cleaned.json").write_text(
        json.dumps(rows(alpaca_rows(rng, sizes["alpaca"])), indent=4), encoding="utf-8")

    (out / "medquad").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows(medquad_rows(rng, sizes["medquad"]))).to_csv(
        out / "medquad" / "medDataset_processed.csv", index=False)

    winogrande = out / "winogrande"
    _parquet(rows(winogrande_rows(rng, sizes["winogrande"], 0)),
             winogrande / "winogrande_xl" / SPLIT_FILE.format(split="train"))
    _parquet(rows(winogrande_rows(rng, sizes["benchmark"], 100000)),
             winogrande / "winogrande_xl" / SPLIT_FILE.format(split="validation"))
    _card(winogrande, {"winogrande_xl": {"train": "winogrande_xl/train-*",
                                         "validation": "winogrande_xl/validation-*"}})

    _parquet(rows(xsum_rows(rng, sizes["xsum"])), out / "xsum" / "data" / SPLIT_FILE.format(split="train"))

    count = sizes["benchmark"]
    _parquet(rows(benchmark_rows("boolq", rng, count)),
             out / "super_glue" / "boolq" / SPLIT_FILE.format(split="validation"))
    _card(out / "super_glue", {"boolq": {"validation": "boolq/validation-*"}})
    for name in ("piqa", "siqa", "hellaswag"):
        _parquet(rows(benchmark_rows(name, rng, count)), out / name / "data" / SPLIT_FILE.format(split="validation"))
    for name, config in (("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge")):
        _parquet(rows(benchmark_rows(name, rng, count)), out / "ai2_arc" / config / SPLIT_FILE.format(split="test"))
    _card(out / "ai2_arc", {"ARC-Easy": {"test": "ARC-Easy/test-*"},
                            "ARC-Challenge": {"test": "ARC-Challenge/test-*"}})
    _parquet(rows(benchmark_rows("openbookqa", rng, count)),
             out / "openbookqa" / "main" / SPLIT_FILE.format(split="test"))
    _card(out / "openbookqa", {"main": {"test": "main/test-*"}})
    return [json.dumps(row) for row in written]


# ----------------------------------------------------------------------------- the whole set

SIZES = {"alpaca": 256, "medquad": 96, "winogrande": 64, "xsum": 64, "benchmark": 24}


def override_text(out: Path) -> str:
    """``profiles/paper-cpu.example.yaml`` with its stand-in folder replaced by ``out``."""
    out = out.resolve()
    try:
        where = str(out.relative_to(PROJECT.resolve()))
    except ValueError:
        where = str(out)
    text = EXAMPLE_OVERRIDE.read_text(encoding="utf-8")
    return text.replace(DEFAULT_OUT, where)


def build(out: str | Path) -> Path:
    """Write every stand-in into ``out`` and the override pointing at them; return the override."""
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same weights whatever the machine
    try:
        rng = random.Random(SEED)
        laion(out, rng)
        texts = text_sets(out, rng, SIZES)
        stable_diffusion(out)
        llama(out, texts)
        dinov2(out)
        clip(out)
    finally:
        torch.set_num_threads(threads)
    override = out / "paper-cpu.yaml"
    override.write_text(override_text(out), encoding="utf-8")
    return override


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder to write into (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    print(build(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
