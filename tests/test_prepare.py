"""The prepared sets: sizes as configured, disjoint splits, nothing of D^A or evaluation in D^B."""

import hashlib

import numpy as np
import pytest

from bat.config import build
from bat.image.data import load_image_set
from bat.io import read_jsonl
from bat.stages.prepare import PrepareConfig, prepare
from bat.text.data import EVAL_SETS


def text_sets(prepared):
    text = prepared / "text"
    sets = {f"tasks/{p.stem}": read_jsonl(p) for p in sorted((text / "tasks").glob("*.jsonl"))}
    sets.update({f"eval/{p.stem}": read_jsonl(p) for p in sorted((text / "eval").glob("*.jsonl"))})
    return read_jsonl(text / "backbone.jsonl"), sets


def test_sizes_follow_the_config(smoke_root, smoke_params):
    config = smoke_params["prepare"]
    images = smoke_root / "data" / "prepared" / "images"
    for style in config["styles"]:
        assert len(load_image_set(images / f"{style}_train.npz")) == config["style_train_size"]
        assert len(load_image_set(images / f"{style}_heldout.npz")) == config["style_heldout_size"]
        assert load_image_set(images / f"{style}_oracle.npz").images.shape[1:] == (
            config["image_size"], config["image_size"], 3)
    backbone, sets = text_sets(smoke_root / "data" / "prepared")
    assert len(backbone) == config["text_backbone_size"]
    assert {name.split("/")[1] for name in sets if name.startswith("eval/")} == set(EVAL_SETS)
    assert all(len(items) == config["eval_set_size"] for name, items in sets.items() if name.startswith("eval/"))


def test_no_text_item_of_adaptation_or_evaluation_is_in_the_backbone(smoke_root):
    backbone, sets = text_sets(smoke_root / "data" / "prepared")
    backbone_keys = {record["key"].lower() for record in backbone}
    backbone_texts = {record["instruction"] for record in backbone} | {record["response"] for record in backbone}
    seen_keys: dict[str, str] = {}
    for name, items in sets.items():
        for item in items:
            assert item["key"].lower() not in backbone_keys, f"{name}: {item['key']} is in D^B"
            prompt = item.get("instruction", item.get("context"))
            assert prompt not in backbone_texts, f"{name}: {prompt!r} is in D^B"
            # Splits of one task share no key with each other or with any other set.
            task = name.split("/")[1].rsplit("_", 1)[0] if name.startswith("tasks/") else name
            owner = seen_keys.setdefault(item["key"].lower(), task)
            assert owner == task, f"{item['key']} is in both {owner} and {task}"


def test_image_splits_are_disjoint_and_not_in_the_backbone(smoke_root, smoke_params):
    images = smoke_root / "data" / "prepared" / "images"
    backbone = load_image_set(images / "backbone.npz")
    backbone_pixels = {hashlib.sha1(image.tobytes()).hexdigest() for image in backbone.images}
    for style in smoke_params["prepare"]["styles"]:
        concepts = []
        for split in ("train", "oracle", "heldout"):
            image_set = load_image_set(images / f"{style}_{split}.npz")
            assert image_set.source == style
            concepts += image_set.emoji
            for image in image_set.images:
                assert hashlib.sha1(image.tobytes()).hexdigest() not in backbone_pixels
            # A style teaches how to draw concepts the backbone already knows.
            assert set(image_set.emoji) <= set(backbone.emoji)
        assert len(concepts) == len(set(concepts))
    heldout = load_image_set(images / "backbone_heldout.npz")
    assert len(heldout) == smoke_params["prepare"]["backbone_heldout_size"]
    assert not set(heldout.emoji) & set(backbone.emoji)


def test_prepare_is_deterministic(tmp_path, raw, smoke_params, smoke_root):
    again = tmp_path / "prepared"
    prepare(build(PrepareConfig, smoke_params["prepare"], "prepare"), raw, again)
    first = smoke_root / "data" / "prepared"
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for relative in files:
        assert (first / relative).read_bytes() == (again / relative).read_bytes(), relative


def test_a_failing_prepare_leaves_the_previous_output(tmp_path, raw, smoke_params, smoke_root):
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "summary.json").write_text("{}")
    too_many = {**smoke_params["prepare"], "style_heldout_size": 100000}
    with pytest.raises(ValueError, match="style noto has"):
        prepare(build(PrepareConfig, too_many, "prepare"), raw, target)
    assert (target / "summary.json").read_text() == "{}"


def test_images_are_real_renders(smoke_root):
    images = load_image_set(smoke_root / "data" / "prepared" / "images" / "noto_train.npz").images
    # Not blank, not one flat colour: every image has drawn pixels and several colours.
    assert all((image < 250).any() and len(np.unique(image.reshape(-1, 3), axis=0)) > 10 for image in images)
