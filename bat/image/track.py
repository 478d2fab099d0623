"""The image track: the text-to-image backbone's UNet, its D^B, the sets of D^A, and evaluation.

Implements :class:`bat.core.track.Track` for the oracle and grid stages. Image examples are the
frozen VAE's latents and the frozen text encoder's caption states, computed once (the backbone is
frozen for every adapter but DreamBooth, whose UNet alone trains), so an adaptation step costs
only the UNet.

D^A is either the emoji styles (``prepare.image_adaptation.source: emoji``) or DreamBooth /
Textual-Inversion image folders (``imagefolder``), as ``prepare`` wrote them. Their prompts follow
DreamBooth: the rare identifier before what it names, ``"grinning face in sks style"`` for a style
(class prompt ``"grinning face"``) and ``"a photo of sks teapot"`` for a subject (class prompt
``"a photo of teapot"``, diffusers' ``train_dreambooth.py`` example), with each folder's own
identifier and class noun from ``summary.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bat import paths, validate
from bat.core.adapters import DREAMBOOTH_IDENTIFIER
from bat.core.protocols import Batch
from bat.core.runtime import RuntimeConfig
from bat.core.track import heldout_loss
from bat.errors import ConfigError
from bat.image.backbone import encode_captions, encode_images, load_image_backbone, noise_task, with_unet
from bat.image.data import STYLES, ImageSet, images_to_tensor, load_image_set
from bat.image.encoders import load_encoders
from bat.image.evaluation import evaluate_personalization
from bat.image.prior import class_examples, class_images, class_prompts
from bat.io import read_json

ADAPTERS = ("dreambooth", "locon", "loha", "lokr")
MIXING = "per_batch"  # App. B: backbone images join each batch at ratio γ
SEEDED_EVALUATION = True  # a run's samples are drawn with its seed
HELDOUT_DRAWS = 4  # fixed noise / timestep draws per held-out concept, the same for every run
POOLS = {"backbone": "backbone.npz", "out_of_backbone": "out_of_backbone.npz"}
STYLE_TEMPLATE = "{caption} in {identifier} style"
SUBJECT_TEMPLATE = "a photo of {identifier} {caption}"  # the caption of a folder's image is its class noun
SUBJECT_CLASS_TEMPLATE = "a photo of {caption}"


def datasets(params: dict) -> tuple[str, ...]:
    """The D^A datasets ``prepare`` writes under ``params`` (the whole params.yaml): the emoji
    ``prepare.styles``, or the names of ``prepare.image_adaptation.imagefolder`` with source
    ``imagefolder``. Oracles and grids name these (``<dataset>_oracle`` for an oracle)."""
    prepare = params.get("prepare") or {}
    adaptation = prepare.get("image_adaptation") or {}
    if adaptation.get("source") == "imagefolder":
        return tuple(folder["name"] for folder in adaptation.get("imagefolder") or [])
    return tuple(prepare.get("styles") or STYLES)


def style_prompts(captions: list[str], identifier: str = DREAMBOOTH_IDENTIFIER,
                  template: str = STYLE_TEMPLATE) -> list[str]:
    """``"<caption> in <identifier> style"`` for each caption: prompts for a personalized style."""
    if not isinstance(identifier, str) or not identifier.strip():
        raise ConfigError(f"identifier: {identifier!r} must be a non-empty word, e.g. 'sks'")
    return [template.format(caption=caption, identifier=identifier) for caption in captions]


@torch.no_grad()
def image_examples(pipe, image_set: ImageSet, prompts: list[str] | None = None) -> Batch:
    """``{"latents", "encoder_hidden_states"}`` of ``image_set``; captions as prompts by default."""
    prompts = list(image_set.captions) if prompts is None else prompts
    if len(prompts) != len(image_set):
        raise ValueError(f"{len(prompts)} prompts for {len(image_set)} images")
    return {"latents": encode_images(pipe, images_to_tensor(image_set.images)),
            "encoder_hidden_states": encode_captions(pipe, prompts)}


class ImageTrack:
    """The UNet of the image backbone, its D^B (or the out-of-backbone pool), the sets of D^A
    and the personalization scores (:mod:`bat.image.evaluation`).

    ``pool`` picks the backbone pool: ``"backbone"`` (OpenMoji, D^B) or ``"out_of_backbone"``
    (Symbola renders, Tab. 2). ``prepared``: the prepared ``images`` folder (default
    ``data/prepared/images``; image folders' identifiers are read from the ``summary.json`` beside
    it). ``sample_steps`` and ``guidance_scale`` set the evaluation samples
    (and the class images of prior preservation); ``prior_loss_weight`` is λ of eq. 27.
    ``runtime`` places the whole pipeline (UNet, VAE, text encoder) on its device in its dtype;
    sampling and evaluation run under its autocast. The encoders (scores) compute on the same
    device, float32 weights under that autocast.
    The encoders are loaded on the first evaluation; the pool on first use.
    """

    def __init__(self, models: str | Path, pool: str = "backbone", sample_steps: int = 6,
                 guidance_scale: float = 7.5, prior_loss_weight: float = 1.0,
                 prepared: str | Path | None = None, runtime: RuntimeConfig | None = None):
        validate.choice("pool", pool, tuple(POOLS))
        self.models = Path(models)
        self.prepared = Path(prepared) if prepared is not None else paths.PREPARED / "images"
        self.pool_file = POOLS[pool]
        self.sample_steps, self.guidance_scale = sample_steps, guidance_scale
        self.runtime = runtime or RuntimeConfig()
        self.pipe = load_image_backbone(self.models / "backbone_image",
                                        self.runtime.dtype).to(self.runtime.torch_device)
        self.task = noise_task(self.pipe, prior_loss_weight)
        self.start_model = self.pipe.unet
        self._pool_set, self._encoders, self._retention = None, None, None
        summary = self.prepared.parent / "summary.json"
        self.folders = read_json(summary).get("image_folders", {}) if summary.exists() else {}

    @property
    def datasets(self) -> tuple[str, ...]:
        """The D^A datasets prepared here: the image folders', or else the emoji styles."""
        return tuple(self.folders) or STYLES

    def prompts(self, dataset: str, captions: list[str]) -> tuple[list[str], list[str]]:
        """DreamBooth's instance and class prompt for each caption of ``dataset`` (module docstring)."""
        validate.choice("dataset", dataset, self.datasets)
        folder = self.folders.get(dataset)
        if folder is None:
            return style_prompts(captions), class_prompts(captions)
        return (style_prompts(captions, folder["identifier"], SUBJECT_TEMPLATE),
                class_prompts(captions, SUBJECT_CLASS_TEMPLATE))

    def _set(self, name: str) -> ImageSet:
        return load_image_set(self.prepared / f"{name}.npz")

    def _encode(self, image_set: ImageSet, prompts=None) -> Batch:
        return image_examples(self.pipe, image_set, prompts)

    def examples(self, split: str) -> Batch:
        """A split ``<dataset>_<train|oracle|heldout>`` of D^A with its instance prompts."""
        image_set = self._set(split)
        return self._encode(image_set, self.prompts(split.rsplit("_", 1)[0], list(image_set.captions))[0])

    @property
    def pool_set(self) -> ImageSet:
        if self._pool_set is None:
            self._pool_set = self._set(self.pool_file.removesuffix(".npz"))
        return self._pool_set

    def backbone_size(self) -> int:
        return len(self.pool_set)

    def backbone_examples(self, indices: list[int] | None = None) -> Batch:
        """The pool's examples with their own captions (D^B is trained on its captions)."""
        pool = self.pool_set
        if indices is None:
            return self._encode(pool)
        chosen = ImageSet(pool.images[indices], [pool.emoji[i] for i in indices],
                          [pool.captions[i] for i in indices], pool.source)
        return self._encode(chosen)

    def evaluation_data(self, dataset: str, eval_size: int) -> dict:
        validate.choice("dataset", dataset, self.datasets)
        train_set, heldout = self._set(f"{dataset}_train"), self._set(f"{dataset}_heldout")
        sampled = heldout.spread(eval_size)  # sampling is the dear part: a subset
        instance, classes = self.prompts(dataset, list(train_set.captions))
        return {"adaptation": self._encode(train_set, instance),
                "heldout": self._encode(heldout, self.prompts(dataset, list(heldout.captions))[0]),
                "class_prompts": classes,
                "prompts": self.prompts(dataset, list(sampled.captions))[0], "captions": list(sampled.captions),
                "references": sampled.images}

    def prior_examples(self, data: dict, count: int, seed: int) -> Batch:
        """``count`` class images of the style's concepts drawn by the backbone (``prior`` True),
        for DreamBooth's prior preservation; a seed fixes them (:func:`bat.image.prior.class_images`)."""
        with self.runtime.autocast():
            images, prompts = class_images(self.pipe, data["class_prompts"], count, seed,
                                           self.sample_steps, self.guidance_scale)
        return class_examples(self.pipe, images, prompts)

    @property
    def retention_examples(self) -> Batch:
        """OpenMoji concepts held out of D^B, with their own captions: the backbone's distribution,
        on which an adapter that forgets what the backbone knew loses (the retention control)."""
        if self._retention is None:
            self._retention = self._encode(self._set("backbone_heldout"))
        return self._retention

    def evaluate(self, model, data: dict, seed: int, with_benchmarks: bool) -> tuple[dict, np.ndarray]:
        """Held-out noise loss on every held-out concept, personalization scores on the sampled ones."""
        if self._encoders is None:
            self._encoders = load_encoders(self.models / "encoders", self.runtime.device_name)
        unet = model.get_base_model() if hasattr(model, "get_base_model") else model
        unet.eval()
        with self.runtime.autocast():
            scores = evaluate_personalization(
                with_unet(self.pipe, unet), self._encoders, data["prompts"], data["references"],
                [seed], self.sample_steps, self.guidance_scale, data["captions"])
            row = {"heldout_loss": heldout_loss(model, self.task, data["heldout"], draws=HELDOUT_DRAWS),
                   "retention_loss": heldout_loss(model, self.task, self.retention_examples,
                                                  draws=HELDOUT_DRAWS),
                   **scores.per_seed.loc[seed].to_dict()}
        return row, scores.samples[seed]


def load(models: str | Path, runtime: RuntimeConfig | None = None, **options) -> ImageTrack:
    """The image track of ``models``, its backbone placed as ``runtime`` says (:class:`ImageTrack`)."""
    return ImageTrack(models, runtime=runtime, **options)
