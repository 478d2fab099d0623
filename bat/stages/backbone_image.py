"""Stage ``pretrain_image``: the image backbone, and whether its samples carry their prompt.

Usage: ``python -m bat.stages.backbone_image``, with the ``backbone_image`` and ``runtime`` sections
of params.yaml. Tiny profile: pre-trains the pipeline on D^B; paper profile: loads ``model_id``
(:func:`bat.image.backbone.build_or_load`); on ``runtime``'s device, loaded in its dtype. Writes

- ``models/backbone_image``: the pipeline every image stage loads;
- ``runs/backbone_image`` (:mod:`bat.analysis.results`), which the ``backbone_image`` notebook plots:
  ``result.json`` holds ``source``, ``runtime`` (the section it ran under), ``log`` (``vae`` and ``unet``: lists of ``{step, loss}``;
  ``timings`` in seconds; ``null`` when nothing was trained) and ``prompt_fidelity``: a list, one
  record per group (``seen``: captions of D^B, then ``heldout``: OpenMoji concepts held out of
  D^B) with its ``group``, ``label``, ``count``, ``thumbnail_`` and ``encoder_preference`` and
  ``_accuracy`` and their chances, ``kid`` and its real-vs-real ``kid_floor`` in the feature space
  of ``models/encoders``, ``vae_psnr``, and ``nearest_caption_`` preference and accuracy, the
  scores of D^B renders looked up by caption (:func:`bat.image.backbone.prompt_fidelity`);
  ``arrays.npz`` holds, per group, ``<group>_samples`` and ``<group>_images`` (uint8
  ``[eval_prompts, H, W, 3]``: one sample per caption, and the real renders) and ``<group>_captions``.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bat import paths, validate
from bat.analysis.results import write_result
from bat.config import build_parts
from bat.core.runtime import RuntimeConfig
from bat.stages import run_model_stage
from bat.image.backbone import ImageBackboneConfig, build_or_load, prompt_fidelity
from bat.image.data import ImageSet, load_image_set
from bat.image.encoders import load_encoders

SECTION = "backbone_image"
# group -> (label in the figure, prepared image set); one sample per caption of a spread of it
GROUPS = {"seen": ("seen in D^B", "backbone.npz"), "heldout": ("held out of D^B", "backbone_heldout.npz")}


@dataclass(frozen=True)
class FidelityConfig:
    """The sampling half of the ``backbone_image`` section."""

    eval_prompts: int  # captions per group, evenly spread over the set
    sample_steps: int  # denoising steps per sample
    guidance_scale: float  # classifier-free guidance

    def __post_init__(self):
        validate.positive(f"{SECTION}.eval_prompts", self.eval_prompts, integer=True)
        validate.positive(f"{SECTION}.sample_steps", self.sample_steps, integer=True)
        validate.non_negative(f"{SECTION}.guidance_scale", self.guidance_scale)


def load_sets(prepared: Path) -> dict[str, ImageSet]:
    """Group -> its prepared image set (``seen`` is D^B itself)."""
    return {group: load_image_set(prepared / "images" / file) for group, (_, file) in GROUPS.items()}


def other_renders(backbone: ImageSet, shown: ImageSet) -> np.ndarray:
    """As many D^B renders as ``shown`` has, evenly spread over the concepts not in it: the
    real-vs-real reference of the KID floor."""
    others = [i for i, emoji in enumerate(backbone.emoji) if emoji not in set(shown.emoji)]
    index = np.linspace(0, len(others) - 1, min(len(shown), len(others))).round().astype(int)
    return backbone.images[np.asarray(others)[index]]


def evaluate(pipe, sets: dict[str, ImageSet], seed: int, fidelity: FidelityConfig, encoders) -> tuple[list, dict]:
    """:func:`prompt_fidelity` of every group on ``eval_prompts`` captions spread over its set.

    Returns the per-group records and the arrays (samples, real renders, captions) of the result.
    """
    scores, arrays = [], {}
    for group, (label, _) in GROUPS.items():
        shown = sets[group].spread(fidelity.eval_prompts)
        measured = prompt_fidelity(pipe, shown, seed, fidelity.sample_steps, fidelity.guidance_scale, encoders,
                                   other_renders(sets["seen"], shown), sets["seen"])
        arrays[f"{group}_samples"] = measured.pop("samples")
        arrays[f"{group}_images"] = shown.images
        arrays[f"{group}_captions"] = np.array(shown.captions)
        scores.append({"group": group, "label": label, **measured})
    return scores, arrays


def run(params: dict, runtime: RuntimeConfig, prepared: Path, model_folder: Path, result_folder: Path,
        encoder_folder: Path) -> Path:
    """Build or load the backbone into ``model_folder``, sample it, write ``result_folder``.

    ``params``: the ``backbone_image`` section; a bad or unknown key raises ConfigError.
    ``runtime``: where it trains and samples, and the dtype it is loaded in.
    ``encoder_folder``: the trained ``encoders`` stand-in whose image features judge the samples.
    """
    config, fidelity = build_parts(params, SECTION, ImageBackboneConfig, FidelityConfig)
    sets = load_sets(prepared)
    encoders = load_encoders(encoder_folder, runtime.device_name)
    pipe, log = build_or_load(config, sets["seen"], model_folder, runtime)
    with runtime.autocast():
        scores, arrays = evaluate(pipe, sets, config.seed, fidelity, encoders)
    return write_result(result_folder, params, {"source": config.source, "runtime": asdict(runtime), "log": log,
                                                "prompt_fidelity": scores}, arrays)


def main(argv: list[str] | None = None) -> int:
    return run_model_stage(run, SECTION, paths.MODELS / "encoders")


if __name__ == "__main__":
    sys.exit(main())
