"""Personalization scores of a text-to-image pipeline: the four image columns of the paper's Tab. 1.

For each seed the pipeline draws one sample per prompt (a held-out concept of the adapted style,
e.g. ``"grinning face in sks style"``), and the samples are scored against the real renders of
the same concepts (paper App. D.1; the formulas are in :mod:`bat.image.metrics`):

``cosine``
    mean cosine of ``image_features`` between sample i and reference i (matched pairs);
``set_cosine``
    mean cosine over all sample–reference pairs (DreamBooth's DINO score convention);
``centroid_distance``
    Σ_i ‖v_i − c‖² over the samples' ``image_features`` (lower: more consistent outputs);
``clip_cosine``, ``clip_torchmetrics``
    CLIP-style text–image score between text i and sample i, raw cosine (the paper's scale) and
    max(100 · cosine, 0) (torchmetrics ``CLIPScore``);
``vendi``
    Vendi score of the samples' ``image_features`` (cosine kernel; lower: less diverse).

``encoders`` is whatever :func:`bat.image.encoders.load_encoders` returns (the small CLIP trained on
D^B in the tiny profile, DINOv2 and CLIP in the paper profile).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bat.image import metrics as image_metrics
from bat.errors import ConfigError
from bat.image.backbone import generate

SCORES = ("cosine", "set_cosine", "centroid_distance", "clip_cosine", "clip_torchmetrics", "vendi")
HIGHER_IS_BETTER = {"cosine": True, "set_cosine": True, "centroid_distance": False,
                    "clip_cosine": True, "clip_torchmetrics": True, "vendi": False}  # paper Tab. 1 arrows


def first_generator(seed: int, count: int) -> int:
    """Seed ``seed`` draws prompt i with generator ``seed · count + i``: seeds never share noise."""
    return seed * count


def score_images(encoders, images: np.ndarray, clip_texts: Sequence[str],
                 reference_features: np.ndarray) -> dict[str, float]:
    """The scores of one set of images (row i: ``clip_texts[i]``, reference row i)."""
    features = encoders.image_features(images)
    clip = image_metrics.clip_score(encoders.clip_text_features(list(clip_texts)),
                                    encoders.clip_image_features(images))
    return {"cosine": image_metrics.mean_cosine(features, reference_features),
            "set_cosine": image_metrics.set_cosine(features, reference_features),
            "centroid_distance": image_metrics.centroid_distance(features),
            "clip_cosine": clip.cosine, "clip_torchmetrics": clip.torchmetrics,
            "vendi": image_metrics.vendi_score(features)}


@dataclass(frozen=True)
class PersonalizationScores:
    """Per-seed scores (one row per seed, columns :data:`SCORES`) and the samples they score."""

    per_seed: pd.DataFrame
    samples: dict[int, np.ndarray]

    @property
    def mean(self) -> dict[str, float]:
        return {name: float(value) for name, value in self.per_seed.mean().items()}

    @property
    def std(self) -> dict[str, float | None]:
        """Sample standard deviation over seeds; ``None`` with a single seed."""
        if len(self.per_seed) < 2:
            return {name: None for name in self.per_seed.columns}
        return {name: float(value) for name, value in self.per_seed.std(ddof=1).items()}

    def table(self) -> pd.DataFrame:
        """The per-seed rows followed by ``mean`` (and ``std`` with two seeds or more)."""
        rows = {str(seed): row for seed, row in self.per_seed.iterrows()}
        rows["mean"] = pd.Series(self.mean)
        if len(self.per_seed) > 1:
            rows["std"] = pd.Series(self.std)
        return pd.DataFrame(rows).T[list(SCORES)]

    def to_dict(self) -> dict:
        """JSON-ready: per-seed scores, their mean and standard deviation, and the counts."""
        return {"per_seed": {str(seed): {name: float(value) for name, value in row.items()}
                             for seed, row in self.per_seed.iterrows()},
                "mean": self.mean, "std": self.std, "seeds": len(self.per_seed),
                "prompts": int(next(iter(self.samples.values())).shape[0])}


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("seeds: give at least one seed")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seeds: {seed!r} must be an integer >= 0")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds: {seeds} repeats a seed")
    return [int(seed) for seed in seeds]


def evaluate_personalization(pipe, encoders, prompts: Sequence[str], references: np.ndarray,
                             seeds: Sequence[int], steps: int, guidance_scale: float,
                             clip_texts: Sequence[str] | None = None) -> PersonalizationScores:
    """Generate every prompt once per seed and score the samples against ``references``.

    ``references[i]`` is the real image of prompt i's concept (uint8 ``[N, H, W, 3]``; its size
    need not be the pipeline's). ``clip_texts`` are the texts the CLIP score compares sample i
    with; by default the prompts themselves. Pass the plain captions to score the concept without
    the rare identifier, which a CLIP text encoder has no meaning for (DreamBooth's CLIP-T scores
    the prompt with the identifier replaced by the class noun). Seed ``s`` draws prompt i with the
    generator seeded :func:`first_generator` ``(s, N) + i``.
    """
    prompts = list(prompts)
    clip_texts = prompts if clip_texts is None else list(clip_texts)
    seeds = _check_seeds(seeds)
    if not prompts:
        raise ConfigError("prompts: give at least one prompt")
    if len(references) != len(prompts) or len(clip_texts) != len(prompts):
        raise ConfigError(f"prompts, references and clip_texts need one row each per concept, got "
                          f"{len(prompts)}, {len(references)} and {len(clip_texts)}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        raise ConfigError(f"steps: {steps!r} must be a positive integer")
    if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
        raise ConfigError(f"guidance_scale: {guidance_scale!r} must be a finite number")
    reference_features = encoders.image_features(np.asarray(references))
    rows, samples = {}, {}
    for seed in seeds:
        samples[seed] = generate(pipe, prompts, first_generator(seed, len(prompts)), steps, guidance_scale)
        rows[seed] = score_images(encoders, samples[seed], clip_texts, reference_features)
    per_seed = pd.DataFrame.from_dict(rows, orient="index")[list(SCORES)]
    per_seed.index.name = "seed"
    return PersonalizationScores(per_seed, samples)
