"""The ``prepare`` stage: raw sources → every dataset the later stages read.

Usage: ``python -m bat.stages.prepare`` (parameters: the ``prepare`` section of params.yaml). The output
tree is built beside ``data/prepared`` and swapped in only when complete.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bat import paths, validate
from bat.text import data as text_data
from bat.config import load_section, run_cli
from bat.stages.fetch import require_raw
from bat.image.data import STYLES, Concept, load_concepts, render_source, save_image_set
from bat.io import atomic_directory, write_json, write_jsonl
from bat.text.sources import read_gcide, read_wikipedia, read_wordnet


@dataclass(frozen=True)
class PrepareConfig:
    seed: int
    image_size: int  # pixels; the UNet needs a multiple of 8
    backbone_images: int  # cap on |D^B| for images (OpenMoji has ~1.4k drawable concepts)
    backbone_heldout_size: int  # OpenMoji concepts kept out of D^B: do samples follow unseen prompts?
    styles: tuple[str, ...]
    style_train_size: int  # the few-shot D^A (paper: 5 images)
    style_oracle_size: int  # the larger disjoint split that θ* is trained on (Sec. 5.1.1)
    style_heldout_size: int  # concepts generated at evaluation, with real references
    out_of_backbone_size: int
    held_out_percent: int  # share of words/titles kept out of the text D^B
    text_backbone_size: int
    task_train_size: int
    task_oracle_size: int
    task_test_size: int
    eval_set_size: int

    def __post_init__(self):
        object.__setattr__(self, "styles", tuple(self.styles))
        validate.non_negative("prepare.seed", self.seed, integer=True)
        validate.positive("prepare.image_size", self.image_size, integer=True)
        if self.image_size % 8:
            validate.choice("prepare.image_size", self.image_size, [16, 32, 64, 128])
        for style in self.styles:
            validate.choice("prepare.styles", style, STYLES)
        for name in ("backbone_images", "style_train_size", "style_oracle_size", "style_heldout_size",
                     "backbone_heldout_size", "out_of_backbone_size", "text_backbone_size", "task_train_size",
                     "task_oracle_size", "task_test_size", "eval_set_size"):
            validate.positive(f"prepare.{name}", getattr(self, name), integer=True)
        validate.closed_interval("prepare.held_out_percent", self.held_out_percent, 1, 99)


def _stack(images: dict[str, np.ndarray], concepts: list[Concept]) -> np.ndarray:
    return np.stack([images[c.emoji] for c in concepts])


def prepare_images(config: PrepareConfig, raw: Path, out: Path) -> dict[str, int]:
    rng = random.Random(config.seed)
    concepts = load_concepts(raw)
    backbone_images = render_source(raw, "openmoji", concepts, config.image_size)
    drawable = [c for c in concepts if c.emoji in backbone_images]
    heldout = sorted(rng.sample(drawable, config.backbone_heldout_size), key=lambda c: c.emoji)
    remaining = [c for c in drawable if c not in heldout]
    backbone = sorted(rng.sample(remaining, min(config.backbone_images, len(remaining))),
                      key=lambda c: c.emoji)
    save_image_set(out / "backbone.npz", _stack(backbone_images, backbone), backbone, "openmoji")
    save_image_set(out / "backbone_heldout.npz", _stack(backbone_images, heldout), heldout, "openmoji")
    sizes = {"images/backbone": len(backbone), "images/backbone_heldout": len(heldout)}
    splits = {"train": config.style_train_size, "oracle": config.style_oracle_size,
              "heldout": config.style_heldout_size}
    for style in config.styles:
        # Only concepts the backbone has seen: personalisation teaches a style, not new objects.
        style_images = render_source(raw, style, backbone, config.image_size)
        available = [c for c in backbone if c.emoji in style_images]
        rng.shuffle(available)
        if len(available) < sum(splits.values()):
            raise ValueError(f"prepare: style {style} has {len(available)} concepts, "
                             f"fewer than the {sum(splits.values())} the splits ask for")
        start = 0
        for split, size in splits.items():
            chosen = available[start:start + size]
            start += size
            save_image_set(out / f"{style}_{split}.npz", _stack(style_images, chosen), chosen, style)
            sizes[f"images/{style}_{split}"] = len(chosen)
    pool_images = render_source(raw, "symbola", concepts, config.image_size)
    pool = [c for c in concepts if c.emoji in pool_images]
    pool = sorted(rng.sample(pool, min(config.out_of_backbone_size, len(pool))), key=lambda c: c.emoji)
    save_image_set(out / "out_of_backbone.npz", _stack(pool_images, pool), pool, "symbola")
    sizes["images/out_of_backbone"] = len(pool)
    return sizes


def prepare_text(config: PrepareConfig, raw: Path, out: Path) -> dict[str, int]:
    rng = random.Random(config.seed)
    by_key = read_wordnet(raw)
    synsets = [s for s in by_key.values() if text_data.single_word(s.lemmas[0])]
    articles = read_wikipedia(raw)
    definitions = read_gcide(raw)
    percent = config.held_out_percent

    def side(items, key, held):
        chosen = [item for item in items if text_data.held_out(key(item), percent) == held]
        rng.shuffle(chosen)
        return chosen

    backbone_synsets = side(synsets, lambda s: s.lemmas[0], False)
    backbone_articles = side(articles, lambda a: a.title, False)
    held_synsets = side(synsets, lambda s: s.lemmas[0], True)
    held_articles = side(articles, lambda a: a.title, True)
    held_words = side(sorted(definitions), lambda w: w, True)
    # A held-out word may have several synsets; one item per word keeps splits disjoint by key.
    held_synsets = list({s.lemmas[0]: s for s in held_synsets}.values())

    sizes = {}
    backbone = text_data.backbone_instructions(backbone_synsets, by_key, backbone_articles,
                                               config.text_backbone_size, rng)
    write_jsonl(out / "backbone.jsonl", backbone)
    sizes["text/backbone"] = len(backbone)

    # Held-out keys are dealt out once, so that tasks and evaluation sets never share an item.
    vocabulary = sorted({s.lemmas[0] for s in synsets})
    cloze = text_data.example_cloze_items(held_synsets, vocabulary, rng)
    cloze_keys = {item["key"] for item in cloze}
    other_synsets = [s for s in held_synsets if s.lemmas[0] not in cloze_keys]
    task_size = config.task_train_size + config.task_oracle_size + config.task_test_size
    eval_size = config.eval_set_size
    half = len(held_articles) // 2
    tasks = {
        "word_definition": text_data.word_definition_task(held_words[:task_size], definitions),
        "example_cloze": text_data.cloze_as_instructions(cloze[:task_size]),
        "wiki_summary": text_data.wiki_summary_task(held_articles[:task_size]),
    }
    third = len(other_synsets) // 3
    words_after_tasks = held_words[task_size:]
    evaluation = {
        "definition_check": text_data.definition_check(other_synsets[:third], rng),
        "hypernym_choice": text_data.hypernym_choice(other_synsets[third:2 * third], by_key, rng),
        "synonym_choice": text_data.synonym_choice(other_synsets[2 * third:], vocabulary, rng),
        "wiki_next_sentence": text_data.wiki_next_sentence(held_articles[task_size:half], rng),
        "example_cloze": cloze[task_size:],
        "definition_hard": text_data.definition_choice(words_after_tasks[:len(words_after_tasks) // 2],
                                                       definitions, True, rng),
        "definition_easy": text_data.definition_choice(words_after_tasks[len(words_after_tasks) // 2:],
                                                       definitions, False, rng),
        "wiki_field": text_data.wiki_field(held_articles[max(half, task_size):], rng),
    }
    for task, records in tasks.items():
        start = 0
        for split, size in (("train", config.task_train_size), ("oracle", config.task_oracle_size),
                            ("test", config.task_test_size)):
            chosen = text_data.take(records[start:start + size], size, f"{task}-{split}")
            start += size
            if len(chosen) < size:
                raise ValueError(f"prepare: task {task} has too few held-out items for its {split} split")
            write_jsonl(out / "tasks" / f"{task}_{split}.jsonl", chosen)
            sizes[f"text/tasks/{task}_{split}"] = len(chosen)
    for name, items in evaluation.items():
        chosen = text_data.take(items, eval_size, name)
        if len(chosen) < eval_size:
            raise ValueError(f"prepare: evaluation set {name} has only {len(items)} items")
        write_jsonl(out / "eval" / f"{name}.jsonl", chosen)
        sizes[f"text/eval/{name}"] = len(chosen)
    return sizes


def prepare(config: PrepareConfig, raw: Path = paths.RAW, prepared: Path = paths.PREPARED) -> dict:
    require_raw(raw)
    with atomic_directory(prepared) as partial:
        sizes = {**prepare_images(config, raw, partial / "images"),
                 **prepare_text(config, raw, partial / "text")}
        write_json(partial / "summary.json", {"sizes": sizes, "eval_sets": text_data.EVAL_SETS,
                                              "adaptation_tasks": text_data.ADAPTATION_TASKS})
    return sizes


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: prepare(load_section("prepare", PrepareConfig)))


if __name__ == "__main__":
    sys.exit(main())
