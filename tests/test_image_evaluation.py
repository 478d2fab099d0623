"""Personalization scores on a tiny pipeline: every score per seed, and exact values where known."""

import json

import numpy as np
import pytest

from bat.config import build
from bat.image.encoders import EncoderConfig, train_encoders
from bat.errors import ConfigError
from bat.image.backbone import ImageBackboneConfig, build_pipeline
from bat.image.data import load_image_set
from bat.image.track import style_prompts
from bat.image.evaluation import SCORES, evaluate_personalization, first_generator, score_images
from tests.test_encoders import SMOKE as ENCODERS_SMOKE
from tests.test_image_backbone import SMOKE as BACKBONE_SMOKE


@pytest.fixture(scope="module")
def style_set(smoke_root):
    return load_image_set(smoke_root / "data" / "prepared" / "images" / "noto_heldout.npz").spread(3)


@pytest.fixture(scope="module")
def pipe():
    pipe = build_pipeline(build(ImageBackboneConfig, BACKBONE_SMOKE, "backbone_image"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def encoders(smoke_root):
    backbone = load_image_set(smoke_root / "data" / "prepared" / "images" / "backbone.npz")
    config = build(EncoderConfig, {**ENCODERS_SMOKE, "steps": 2}, "encoders")
    return train_encoders(config, backbone.images[:8], backbone.captions[:8])[0]


@pytest.fixture(scope="module")
def result(pipe, encoders, style_set):
    return evaluate_personalization(pipe, encoders, style_prompts(style_set.captions), style_set.images,
                                    seeds=[0, 1], steps=2, guidance_scale=3.0, clip_texts=style_set.captions)


def test_style_prompts():
    assert style_prompts(["red heart", "cat"]) == ["red heart in sks style", "cat in sks style"]
    assert style_prompts(["cat"], identifier="zwx") == ["cat in zwx style"]
    with pytest.raises(ConfigError, match="identifier"):
        style_prompts(["cat"], identifier=" ")


def test_every_score_for_every_seed(result, style_set):
    assert list(result.per_seed.index) == [0, 1] and list(result.per_seed.columns) == list(SCORES)
    assert np.isfinite(result.per_seed.to_numpy()).all()
    for seed, samples in result.samples.items():
        assert samples.shape == (len(style_set), 16, 16, 3) and samples.dtype == np.uint8
    assert not np.array_equal(result.samples[0], result.samples[1])  # seeds do not share noise
    assert result.mean["vendi"] == pytest.approx(result.per_seed["vendi"].mean())
    assert (result.per_seed["vendi"] >= 1 - 1e-9).all() and (result.per_seed["vendi"] <= len(style_set) + 1e-9).all()
    assert result.per_seed["clip_torchmetrics"].tolist() == [max(100 * c, 0) for c in result.per_seed["clip_cosine"]]
    table = result.table()
    assert list(table.index) == ["0", "1", "mean", "std"]
    record = json.loads(json.dumps(result.to_dict()))  # JSON-ready
    assert record["seeds"] == 2 and record["prompts"] == len(style_set) and set(record["mean"]) == set(SCORES)


def test_scores_recompute_from_the_samples(result, encoders, style_set):
    """Scoring the returned samples directly gives the per-seed rows (two ways, one number)."""
    references = encoders.image_features(style_set.images)
    for seed, samples in result.samples.items():
        direct = score_images(encoders, samples, style_set.captions, references)
        assert direct == pytest.approx(result.per_seed.loc[seed].to_dict(), rel=1e-12)


def test_samples_equal_to_the_references_have_cosine_one(pipe, encoders, result, style_set):
    same = evaluate_personalization(pipe, encoders, style_prompts(style_set.captions), result.samples[1],
                                    seeds=[1], steps=2, guidance_scale=3.0, clip_texts=style_set.captions)
    assert same.per_seed.loc[1, "cosine"] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(same.samples[1], result.samples[1])  # generation is deterministic
    for name in ("centroid_distance", "vendi", "clip_cosine"):
        assert same.per_seed.loc[1, name] == pytest.approx(result.per_seed.loc[1, name], rel=1e-12)
    assert same.std["cosine"] is None  # one seed: no spread


def test_seed_offsets_are_disjoint():
    count = 5
    ranges = [set(range(first_generator(seed, count), first_generator(seed, count) + count)) for seed in range(4)]
    assert all(not (a & b) for i, a in enumerate(ranges) for b in ranges[i + 1:])


@pytest.mark.parametrize("changes, message", [
    ({"seeds": []}, "seeds: give at least one seed"),
    ({"seeds": [0, 0]}, "repeats a seed"),
    ({"seeds": [-1]}, "must be an integer >= 0"),
    ({"steps": 0}, "steps: 0 must be a positive integer"),
    ({"references": "short"}, "need one row each per concept"),
])
def test_bad_arguments_are_refused_before_generating(pipe, encoders, style_set, changes, message):
    arguments = dict(prompts=style_prompts(style_set.captions), references=style_set.images, seeds=[0], steps=2,
                     guidance_scale=3.0)
    if changes.get("references") == "short":
        changes = {"references": style_set.images[:1]}
    with pytest.raises(ConfigError, match=message):
        evaluate_personalization(pipe, encoders, **{**arguments, **changes})
