"""Stage ``train_encoders``: the metric encoders, and whether they know the concepts they score.

Usage: ``python -m bat.stages.encoders``, with the ``encoders`` section of params.yaml and
``runtime``'s device. Tiny profile: trains the small CLIP on D^B; paper profile: records DINOv2's
and CLIP's ids (:func:`bat.image.encoders.build_or_load`). Writes

- ``models/encoders``: what every image grid scores samples with;
- ``runs/encoders`` (:mod:`bat.analysis.results`), which the ``encoders`` notebook plots:
  ``result.json`` holds ``source``, ``runtime`` (the section it ran under), ``parameters`` (count), ``log`` (``steps``: per step
  ``step``, ``loss``, ``temperature``; ``seconds``; ``null`` when nothing was trained) and
  ``retrieval``: a list, one record per group of concepts (``group``: its name, then the
  :func:`bat.image.encoders.retrieval_report`), in the order of the figure's rows;
  ``arrays.npz`` holds ``examples`` (uint8 ``[EXAMPLES, H, W, 3]``: OpenMoji concepts held out of
  D^B), their ``captions`` and the caption the CLIP side ``retrieved`` for each among all held-out
  captions.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bat import validate
from bat.analysis.results import write_result
from bat.config import build_parts
from bat.core.runtime import RuntimeConfig
from bat.stages import run_model_stage
from bat.errors import ConfigError
from bat.image.data import STYLES, load_image_set
from bat.image.encoders import EncoderConfig, build_or_load, retrieval_report
from bat.image.metrics import cosine_matrix

SECTION = "encoders"
EXAMPLES = 8  # held-out concepts the figure shows with the caption the encoder reads in them


@dataclass(frozen=True)
class RetrievalConfig:
    """The checking half of the ``encoders`` section."""

    styles: tuple[str, ...]  # D^A styles whose held-out concepts are retrieved against D^B's renders
    seen_concepts: int  # D^B concepts in the "seen" row, evenly spread

    def __post_init__(self):
        if isinstance(self.styles, (str, bytes)) or not hasattr(self.styles, "__iter__"):
            raise ConfigError(f"{SECTION}.styles: {self.styles!r} must be a list of {list(STYLES)}")
        object.__setattr__(self, "styles", tuple(self.styles))
        for style in self.styles:
            validate.choice(f"{SECTION}.styles", style, STYLES)
        validate.positive(f"{SECTION}.seen_concepts", self.seen_concepts, integer=True)


def run(params: dict, runtime: RuntimeConfig, prepared: Path, model_folder: Path, result_folder: Path) -> Path:
    """Build or load the encoders into ``model_folder``, check them, write ``result_folder``.

    ``params``: the ``encoders`` section; a bad or unknown key raises ConfigError. ``runtime``:
    its device is where they train and compute (float32: they are small, or scorers only).
    """
    config, retrieval = build_parts(params, SECTION, EncoderConfig, RetrievalConfig)
    image_dir = prepared / "images"
    backbone = load_image_set(image_dir / "backbone.npz")
    heldout = load_image_set(image_dir / "backbone_heldout.npz")
    encoders, log = build_or_load(config, backbone, model_folder, runtime.device_name)
    reports = [{"group": "D^B, seen", **retrieval_report(encoders, backbone.spread(retrieval.seen_concepts))},
               {"group": "OpenMoji, held out of D^B", **retrieval_report(encoders, heldout)}]
    for style in retrieval.styles:
        style_set = load_image_set(image_dir / f"{style}_heldout.npz")
        reports.append({"group": f"{style}, held-out concepts",
                        **retrieval_report(encoders, style_set, backbone)})
    examples = heldout.spread(EXAMPLES)
    similarity = cosine_matrix(encoders.clip_image_features(examples.images),
                               encoders.clip_text_features(list(heldout.captions)))
    retrieved = [heldout.captions[i] for i in np.argmax(similarity, axis=1)]
    measured = {"source": config.source, "runtime": asdict(runtime), "parameters": encoders.parameter_count(), "log": log,
                "retrieval": reports}
    arrays = {"examples": examples.images, "captions": np.array(examples.captions),
              "retrieved": np.array(retrieved)}
    return write_result(result_folder, params, measured, arrays)


def main(argv: list[str] | None = None) -> int:
    return run_model_stage(run, SECTION)


if __name__ == "__main__":
    sys.exit(main())
