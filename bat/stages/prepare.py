"""The ``prepare`` stage: raw sources → every dataset the later stages read.

Usage: ``python -m bat.stages.prepare`` (parameters: the ``prepare`` section of params.yaml). The output
tree is built beside ``data/prepared`` and swapped in only when complete.

Each kind of data names its source. The tiny and smoke profiles build everything from the pinned raw
sources (``data/raw``); the paper profile reads the paper's datasets with ``datasets`` (hub ids or
local copies: :mod:`bat.image.hub`, :mod:`bat.text.hub`) into the same prepared files, so the later
stages read them unchanged:

=====================  ================================  ==============================================
key (``.source``)      sources                           prepared files
=====================  ================================  ==============================================
``image_backbone``     ``openmoji`` | ``laion``          ``images/backbone.npz``, ``backbone_heldout.npz``
``image_adaptation``   ``emoji`` | ``imagefolder``       ``images/<style or folder>_<split>.npz``
``text_backbone``      ``analogues`` | ``alpaca``        ``text/backbone.jsonl``
``text_tasks``         ``analogues`` | ``paper``         ``text/tasks/<task>_<split>.jsonl``
``benchmarks``         ``analogues`` | ``paper``         ``text/eval/<set>.jsonl``
=====================  ================================  ==============================================

The out-of-backbone pool (Tab. 2) is always Symbola renders.
"""

from __future__ import annotations

import random
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bat import paths, validate
from bat.config import build, load_section, run_cli
from bat.errors import ConfigError
from bat.image import hub as image_hub
from bat.image.data import STYLES, Concept, load_concepts, render_source, save_image_set
from bat.io import atomic_directory, write_json, write_jsonl
from bat.stages.fetch import require_raw
from bat.text import data as text_data
from bat.text import hub as text_hub
from bat.text.benchmarks import load_hub_items, write_items
from bat.text.sources import read_gcide, read_wikipedia, read_wordnet


@dataclass(frozen=True)
class HubDataset:
    """The arguments of ``datasets.load_dataset`` for one dataset.

    ``path``: a hub id, a local copy of one, or a builder (``parquet``, ``json``, ``webdataset``,
    ``imagefolder``) reading ``data_files`` (a file, a glob or a list of them; null for a hub id);
    ``name``: the hub configuration (WinoGrande's ``winogrande_xl``) or null; ``split``.
    """

    path: str
    name: str | None
    split: str
    data_files: str | list[str] | None

    @classmethod
    def read(cls, values, where: str) -> HubDataset:
        """From the params mapping at key ``where``, every value checked; errors name the key."""
        dataset = build(cls, values, where)
        for field in ("path", "split"):
            if not isinstance(getattr(dataset, field), str) or not getattr(dataset, field):
                raise ConfigError(f"{where}.{field}: {getattr(dataset, field)!r} must be a non-empty string")
        if dataset.name is not None and not isinstance(dataset.name, str):
            raise ConfigError(f"{where}.name: {dataset.name!r} must be a string or null")
        files = [dataset.data_files] if isinstance(dataset.data_files, str) else dataset.data_files
        if files is not None and not (isinstance(files, list) and all(isinstance(f, str) for f in files)):
            raise ConfigError(f"{where}.data_files: {dataset.data_files!r} must be a path, a glob, "
                              "a list of them, or null")
        return dataset

    def load_kwargs(self) -> dict:
        return {"name": self.name, "data_files": self.data_files}


# Each kind of prepared data: ``source`` picks where it comes from; a source other than the raw one
# reads the datasets under the key of its own name.

@dataclass(frozen=True)
class ImageBackboneSource:
    source: str  # openmoji: renders of data/raw | laion: a LAION-format image–caption set, streamed
    laion: HubDataset
    shuffle_buffer: int  # laion: rows a seeded shuffle draws from as it streams

    def __post_init__(self):
        validate.choice("prepare.image_backbone.source", self.source, ("openmoji", "laion"))
        object.__setattr__(self, "laion", HubDataset.read(self.laion, "prepare.image_backbone.laion"))
        validate.positive("prepare.image_backbone.shuffle_buffer", self.shuffle_buffer, integer=True)


@dataclass(frozen=True)
class ImageFolder:
    """One DreamBooth / Textual-Inversion set: ``load_dataset(path, data_dir=data_dir)`` (``path``
    ``imagefolder`` with a local folder, or a hub id with the set's folder in it), the class noun
    of its subject or style (the images' caption), and the rare identifier of its prompts."""

    name: str  # the stem of its prepared files: <name>_train.npz, ...
    path: str
    data_dir: str | None
    class_name: str
    identifier: str

    def __post_init__(self):
        where = "prepare.image_adaptation.imagefolder"
        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_]*", self.name):
            raise ConfigError(f"{where}: name {self.name!r} must be lower-case letters, digits and _ "
                              "(it names the prepared files)")
        if self.name.startswith("backbone") or self.name == "out_of_backbone":
            raise ConfigError(f"{where}: name {self.name!r} is taken by a backbone set")
        for field in ("path", "class_name", "identifier"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field).strip():
                raise ConfigError(f"{where}[{self.name}].{field}: {getattr(self, field)!r} must be a "
                                  "non-empty string")


@dataclass(frozen=True)
class ImageAdaptationSource:
    source: str  # emoji: the styles rendered from data/raw | imagefolder: the folders below
    imagefolder: tuple[ImageFolder, ...]

    def __post_init__(self):
        where = "prepare.image_adaptation.imagefolder"
        validate.choice("prepare.image_adaptation.source", self.source, ("emoji", "imagefolder"))
        folders = tuple(build(ImageFolder, folder, where) for folder in self.imagefolder)
        if self.source == "imagefolder" and not folders:
            raise ConfigError(f"{where}: source imagefolder needs at least one set "
                              "{name, path, data_dir, class_name, identifier}")
        if len({folder.name for folder in folders}) < len(folders):
            raise ConfigError(f"{where}: two sets share a name")
        object.__setattr__(self, "imagefolder", folders)


@dataclass(frozen=True)
class TextBackboneSource:
    source: str  # analogues: WordNet / Wikipedia instructions | alpaca: Alpaca-cleaned
    alpaca: HubDataset

    def __post_init__(self):
        validate.choice("prepare.text_backbone.source", self.source, ("analogues", "alpaca"))
        object.__setattr__(self, "alpaca", HubDataset.read(self.alpaca, "prepare.text_backbone.alpaca"))


@dataclass(frozen=True)
class PaperSets:
    """Analogues built from data/raw, or the paper's datasets (``paper``: one per name of ``NAMES``)."""

    source: str  # analogues | paper
    paper: dict[str, HubDataset]
    KEY: typing.ClassVar[str]
    NAMES: typing.ClassVar[tuple[str, ...]]

    def __post_init__(self):
        validate.choice(f"prepare.{self.KEY}.source", self.source, ("analogues", "paper"))
        where = f"prepare.{self.KEY}.paper"
        if not isinstance(self.paper, dict) or sorted(self.paper) != sorted(self.NAMES):
            got = sorted(self.paper) if isinstance(self.paper, dict) else self.paper
            raise ConfigError(f"{where}: needs the datasets {list(self.NAMES)}, got {got}")
        object.__setattr__(self, "paper", {name: HubDataset.read(self.paper[name], f"{where}.{name}")
                                           for name in self.NAMES})


class TextTaskSource(PaperSets):
    KEY, NAMES = "text_tasks", text_hub.TASKS  # MedQuad, WinoGrande, XSum


class BenchmarkSource(PaperSets):
    KEY, NAMES = "benchmarks", tuple(text_hub.BENCHMARKS)  # the eight lm-eval tasks


@dataclass(frozen=True)
class PrepareConfig:
    seed: int
    image_size: int  # pixels; the UNet needs a multiple of 8
    image_backbone: ImageBackboneSource
    backbone_images: int  # |D^B| for images: a cap for OpenMoji (~1.4k drawable), LAION's sample size
    backbone_heldout_size: int  # D^B-distributed images kept out of D^B: do samples follow unseen prompts?
    image_adaptation: ImageAdaptationSource
    styles: tuple[str, ...]  # image_adaptation emoji: the styles rendered
    style_train_size: int  # the few-shot D^A (paper: 5 images)
    style_oracle_size: int  # the larger disjoint split that θ* is trained on (Sec. 5.1.1)
    style_heldout_size: int  # concepts generated at evaluation, with real references
    out_of_backbone_size: int
    held_out_percent: int  # share of words/titles kept out of the text D^B
    text_backbone: TextBackboneSource
    text_backbone_size: int
    text_tasks: TextTaskSource
    task_train_size: int
    task_oracle_size: int
    task_test_size: int
    benchmarks: BenchmarkSource
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
        for name in ("image_backbone", "image_adaptation", "text_backbone", "text_tasks", "benchmarks"):
            # Read from the params mapping; already built when a config is copied (dataclasses.replace).
            cls = typing.get_type_hints(PrepareConfig)[name]
            if not isinstance(getattr(self, name), cls):
                object.__setattr__(self, name, build(cls, getattr(self, name), f"prepare.{name}"))


def _stack(images: dict[str, np.ndarray], concepts: list[Concept]) -> np.ndarray:
    return np.stack([images[c.emoji] for c in concepts])


SPLITS = ("train", "oracle", "heldout")


def _split_sizes(config: PrepareConfig) -> dict[str, int]:
    return dict(zip(SPLITS, (config.style_train_size, config.style_oracle_size, config.style_heldout_size)))


def openmoji_backbone(config: PrepareConfig, raw: Path, concepts: list[Concept], rng: random.Random,
                      out: Path) -> tuple[list[Concept], dict[str, int]]:
    """D^B and its held-out concepts from OpenMoji renders; returns D^B's concepts and the sizes."""
    backbone_images = render_source(raw, "openmoji", concepts, config.image_size)
    drawable = [c for c in concepts if c.emoji in backbone_images]
    heldout = sorted(rng.sample(drawable, config.backbone_heldout_size), key=lambda c: c.emoji)
    remaining = [c for c in drawable if c not in heldout]
    backbone = sorted(rng.sample(remaining, min(config.backbone_images, len(remaining))),
                      key=lambda c: c.emoji)
    save_image_set(out / "backbone.npz", _stack(backbone_images, backbone), backbone, "openmoji")
    save_image_set(out / "backbone_heldout.npz", _stack(backbone_images, heldout), heldout, "openmoji")
    return backbone, {"images/backbone": len(backbone), "images/backbone_heldout": len(heldout)}


def laion_backbone(config: PrepareConfig, out: Path) -> dict[str, int]:
    """D^B and its held-out images: one seeded sample of the LAION-format set, the first
    ``backbone_heldout_size`` images held out, the next ``backbone_images`` the backbone's."""
    laion = config.image_backbone.laion
    held = config.backbone_heldout_size
    images, ids, captions = image_hub.sample_captioned(
        laion.path, config.backbone_images + held, config.seed, config.image_backbone.shuffle_buffer,
        config.image_size, split=laion.split, **laion.load_kwargs())
    concepts = [Concept(key, caption) for key, caption in zip(ids, captions, strict=True)]
    save_image_set(out / "backbone_heldout.npz", images[:held], concepts[:held], "laion")
    save_image_set(out / "backbone.npz", images[held:], concepts[held:], "laion")
    return {"images/backbone": len(concepts) - held, "images/backbone_heldout": held}


def emoji_styles(config: PrepareConfig, raw: Path, concepts: list[Concept], rng: random.Random,
                 out: Path) -> dict[str, int]:
    """Disjoint train / oracle / held-out splits of each style's renders of ``concepts``."""
    splits, sizes = _split_sizes(config), {}
    for style in config.styles:
        style_images = render_source(raw, style, concepts, config.image_size)
        available = [c for c in concepts if c.emoji in style_images]
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
    return sizes


def folder_sets(config: PrepareConfig, out: Path) -> dict[str, int]:
    """The splits of each DreamBooth / Textual-Inversion folder, as the paper uses such a set.

    A folder holds a few images of one subject, not many concepts, so its splits are nested
    rather than disjoint: in one seeded order, ``train`` is the first ``style_train_size``
    images, ``oracle`` the first ``style_oracle_size`` (the paper trains θ* on the whole 5-image
    set, and on 91 Star Wars images around the 10 that BAT sees, App. B), ``heldout`` the first
    ``style_heldout_size``: the subject's real images that samples are compared with.
    """
    splits, sizes = _split_sizes(config), {}
    for folder in config.image_adaptation.imagefolder:
        images, ids = image_hub.load_folder(folder.path, config.image_size, folder.data_dir)
        if len(ids) < max(splits.values()):
            raise ConfigError(f"prepare.image_adaptation.imagefolder[{folder.name}]: {len(ids)} images, "
                              f"fewer than the {max(splits.values())} that prepare.style_train_size, "
                              "style_oracle_size and style_heldout_size ask for")
        order = random.Random(config.seed).sample(range(len(ids)), len(ids))
        for split, size in splits.items():
            chosen = order[:size]
            save_image_set(out / f"{folder.name}_{split}.npz", images[chosen],
                           [Concept(ids[i], folder.class_name) for i in chosen], folder.name)
            sizes[f"images/{folder.name}_{split}"] = size
    return sizes


def prepare_images(config: PrepareConfig, raw: Path, out: Path) -> dict[str, int]:
    rng = random.Random(config.seed)
    concepts = load_concepts(raw)
    if config.image_backbone.source == "openmoji":
        # Only concepts the backbone has seen: personalisation teaches a style, not new objects.
        seen, sizes = openmoji_backbone(config, raw, concepts, rng, out)
    else:
        seen, sizes = concepts, laion_backbone(config, out)
    if config.image_adaptation.source == "emoji":
        sizes.update(emoji_styles(config, raw, seen, rng, out))
    else:
        sizes.update(folder_sets(config, out))
    pool_images = render_source(raw, "symbola", concepts, config.image_size)
    pool = [c for c in concepts if c.emoji in pool_images]
    pool = sorted(rng.sample(pool, min(config.out_of_backbone_size, len(pool))), key=lambda c: c.emoji)
    save_image_set(out / "out_of_backbone.npz", _stack(pool_images, pool), pool, "symbola")
    sizes["images/out_of_backbone"] = len(pool)
    return sizes


def analogue_text(config: PrepareConfig, raw: Path) -> tuple[list, dict, dict]:
    """The text sets built from WordNet, Wikipedia and GCIDE: (D^B records, D^A task records by
    task, multiple-choice items by set), all from one seeded draw, so none shares a key with D^B."""
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

    backbone = text_data.backbone_instructions(backbone_synsets, by_key, backbone_articles,
                                               config.text_backbone_size, rng)
    # Held-out keys are dealt out once, so that tasks and evaluation sets never share an item.
    vocabulary = sorted({s.lemmas[0] for s in synsets})
    cloze = text_data.example_cloze_items(held_synsets, vocabulary, rng)
    cloze_keys = {item["key"] for item in cloze}
    other_synsets = [s for s in held_synsets if s.lemmas[0] not in cloze_keys]
    task_size = config.task_train_size + config.task_oracle_size + config.task_test_size
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
    return backbone, tasks, evaluation


def prepare_text(config: PrepareConfig, raw: Path, out: Path) -> dict[str, int]:
    sources = (config.text_backbone.source, config.text_tasks.source, config.benchmarks.source)
    backbone, tasks, evaluation = analogue_text(config, raw) if "analogues" in sources else (None, None, None)
    sizes = {}
    if config.text_backbone.source == "alpaca":
        alpaca = config.text_backbone.alpaca
        backbone = text_data.take(text_hub.load_records(
            "alpaca", config.text_backbone_size, config.seed, alpaca.path, alpaca.split,
            **alpaca.load_kwargs()), config.text_backbone_size, "backbone")
    write_jsonl(out / "backbone.jsonl", backbone)
    sizes["text/backbone"] = len(backbone)

    task_sizes = {"train": config.task_train_size, "oracle": config.task_oracle_size,
                  "test": config.task_test_size}
    if config.text_tasks.source == "paper":
        tasks = {}
        for name, source in config.text_tasks.paper.items():
            task = text_hub.RECORD_SETS[name][0]
            tasks[task] = text_hub.load_records(name, sum(task_sizes.values()), config.seed, source.path,
                                                source.split, **source.load_kwargs())
    for task, records in tasks.items():
        start = 0
        for split, size in task_sizes.items():
            chosen = text_data.take(records[start:start + size], size, f"{task}-{split}")
            start += size
            if len(chosen) < size:
                raise ValueError(f"prepare: task {task} has too few held-out items for its {split} split")
            write_jsonl(out / "tasks" / f"{task}_{split}.jsonl", chosen)
            sizes[f"text/tasks/{task}_{split}"] = len(chosen)

    eval_size = config.eval_set_size
    if config.benchmarks.source == "paper":
        for name, source in config.benchmarks.paper.items():
            # The first eval_set_size rows, as lm-eval's --limit takes them; all of a shorter
            # split (OpenBookQA's test split has 500), summary.json tells how many.
            set_name, schema = text_hub.BENCHMARKS[name]
            items = load_hub_items(source.path, f"{source.split}[:{eval_size}]", schema,
                                   **source.load_kwargs())
            if not items:
                raise ConfigError(f"prepare.benchmarks.paper.{name}: {source.path} {source.split} is empty")
            write_items(out / "eval" / f"{set_name}.jsonl", items)
            sizes[f"text/eval/{set_name}"] = len(items)
        return sizes
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
        summary = {"sizes": sizes, "eval_sets": text_data.EVAL_SETS,
                   "adaptation_tasks": text_data.ADAPTATION_TASKS}
        if config.image_adaptation.source == "imagefolder":
            # What a DreamBooth prompt needs beyond the images: the class noun and the identifier.
            summary["image_folders"] = {folder.name: {"class_name": folder.class_name,
                                                      "identifier": folder.identifier}
                                        for folder in config.image_adaptation.imagefolder}
        write_json(partial / "summary.json", summary)
    return sizes


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: prepare(load_section("prepare", PrepareConfig)))


if __name__ == "__main__":
    sys.exit(main())
