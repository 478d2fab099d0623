"""Image and text encoders for the personalization metrics (paper App. D.1, Tab. 1).

The paper scores samples with DINOv2 image features (cosine similarity, centroid distance, Vendi)
and CLIP text–image similarity. Every stage reads them through one object with three methods::

    encoders.image_features(images)      # uint8 [N, H, W, 3] -> [N, D]  the DINOv2 role
    encoders.clip_image_features(images) # uint8 [N, H, W, 3] -> [N, E]  CLIP's image side
    encoders.clip_text_features(texts)   # list of N strings  -> [N, E]  CLIP's text side

returned by :func:`load_encoders`, whatever the profile.

Tiny profile (``source: train``): nothing can be downloaded, so this stage trains a small CLIP on
D^B itself. The image tower is a conv net (one 3×3 conv, GroupNorm, GELU and 2×2 average pooling
per entry of ``channels``) whose output is average-pooled to a 4×4 grid and flattened
(16 · channels[-1] numbers) and LayerNorm'd; a linear map projects that to ``embedding_dim``. The
grid keeps the layout that global pooling would discard: emoji of one concept share their layout
across styles, and in development runs of the ``encoders`` notebook's cross-style checks a 4×4
grid matched concepts across styles more often than one globally pooled vector did. The text
tower is the frozen all-MiniLM-L6-v2 (sentence embedding: masked mean of the last hidden states,
L2-normalised, as sentence-transformers computes it), computed once per caption, followed by a
learnable linear map. Both are trained with CLIP's symmetric InfoNCE loss and a learnable
temperature (Radford et al. 2021). ``image_features`` is the image tower's output *before* the
projection (LayerNorm'd, as DINOv2's CLS token is its final LayerNorm's output);
``clip_image_features`` is the same after the projection. The pre-projection
features also keep what the contrastive loss does not need (colour, layout), which an
image-similarity score should see, so the small CLIP's image tower doubles as the DINO stand-in.

Augmentation: each image is shrunk by a random factor in [0.8, 1] and translated by up to 1/16 of
its side, the uncovered border filled with white (the images are centred glyphs on white; glyph
size and position differ a little between styles). No flips (they turn "left arrow" into "right
arrow" and mirror flags and signs), no colour jitter (colour is part of the concept: "red heart"
vs "blue heart").

Paper profile (``source: pretrained``): ``image_model_id`` is DINOv2 (``AutoModel``, CLS token of
the last hidden state, i.e. ``pooler_output``) and ``clip_model_id`` a ``CLIPModel``
(``get_image_features`` / ``get_text_features``), each with its own processor, loaded by hub id
or local folder. The paper names neither size. We default to ``facebook/dinov2-base`` and
``openai/clip-vit-base-patch32``: ViT-B/32 is the CLIP of the usual personalization CLIP-T/CLIP-I
evaluations, and the paper's DreamBooth CLIP values (0.27–0.32) sit on that scale (DreamBooth
reports CLIP-T ≈ 0.30 on Stable Diffusion); ViT-L/14 (torchmetrics' default) is one parameter away.

Saved format (``models/encoders/``): ``encoders.json`` (what was trained and how, or the two ids)
and, for trained encoders, ``model.safetensors``; written to a temporary folder and swapped in.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bat import paths, validate
from bat.core.mixing import epoch_batches
from bat.core.runtime import DEVICES
from bat.errors import ConfigError
from bat.image.data import images_to_tensor

SOURCES = ("train", "pretrained")
CONFIG_FILE = "encoders.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "bat-encoders/1"
SHIFT_FRACTION = 1 / 16  # largest random translation, as a share of the image side (augmentation)
POOL_GRID = 4  # the tower output is average-pooled to a 4x4 grid, not to one vector: layout counts
MIN_SCALE = 0.8  # smallest random shrink: glyphs vary in size between styles
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learnt inverse temperature at 100


@dataclass(frozen=True)
class EncoderConfig:
    source: str  # "train": train the small CLIP on D^B here; "pretrained": load the two ids
    image_model_id: str  # DINOv2 by hub id or folder (paper profile)
    clip_model_id: str  # CLIPModel by hub id or folder (paper profile)
    text_encoder: str  # frozen sentence encoder of the small CLIP's text side (tiny profile)
    channels: tuple[int, ...]  # one conv block per entry; each halves the image side
    embedding_dim: int  # the shared CLIP space
    steps: int
    batch_size: int  # InfoNCE contrasts every pair in a batch: larger is harder
    learning_rate: float
    seed: int

    def __post_init__(self):
        if isinstance(self.channels, (str, bytes)) or not hasattr(self.channels, "__iter__"):
            raise ConfigError(f"encoders.channels: {self.channels!r} must be a list of positive integers")
        object.__setattr__(self, "channels", tuple(self.channels))
        validate.choice("encoders.source", self.source, SOURCES)
        for name in ("image_model_id", "clip_model_id", "text_encoder"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"encoders.{name}: {value!r} must be a non-empty hub id or folder")
        if not self.channels:
            raise ConfigError("encoders.channels: needs at least one conv block, e.g. [32, 64, 128, 128]")
        for channel in self.channels:
            validate.positive("encoders.channels", channel, integer=True)
        for name in ("embedding_dim", "steps", "batch_size"):
            validate.positive(f"encoders.{name}", getattr(self, name), integer=True)
        validate.positive("encoders.learning_rate", self.learning_rate)
        validate.non_negative("encoders.seed", self.seed, integer=True)


# --------------------------------------------------------------------------- the small CLIP


def _groups(channels: int) -> int:
    """GroupNorm groups: 8 where they divide the channels, else the largest divisor below 8."""
    return max(g for g in range(1, 9) if channels % g == 0)


class SmallClip(nn.Module):
    """Conv image tower + linear maps into a shared space, and CLIP's learnable temperature."""

    def __init__(self, channels: tuple[int, ...], embedding_dim: int, text_dim: int):
        super().__init__()
        blocks, previous = [], 3
        for width in channels:
            blocks += [nn.Conv2d(previous, width, 3, padding=1), nn.GroupNorm(_groups(width), width), nn.GELU()]
            blocks.append(nn.AvgPool2d(2, ceil_mode=True))
            previous = width
        self.tower = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(previous * POOL_GRID ** 2)
        self.image_projection = nn.Linear(previous * POOL_GRID ** 2, embedding_dim, bias=False)
        self.text_projection = nn.Linear(text_dim, embedding_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial value

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` in [-1, 1] → tower output pooled to a 4×4 grid, flattened, LayerNorm'd."""
        return self.norm(F.adaptive_avg_pool2d(self.tower(pixels), POOL_GRID).flatten(1))

    def clip_image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_projection(self.image_features(pixels))

    def loss(self, pixels: torch.Tensor, sentence_embeddings: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE: image i's positive is caption i, every other caption a negative."""
        image = F.normalize(self.clip_image_features(pixels), dim=-1)
        text = F.normalize(self.text_projection(sentence_embeddings), dim=-1)
        logits = self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * image @ text.T
        targets = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def random_affine(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shrink each image by a random factor in [``MIN_SCALE``, 1] and translate it by up to
    ``SHIFT_FRACTION`` of its side; uncovered pixels repeat the border (white on these images)."""
    count = len(pixels)
    scale = MIN_SCALE + (1 - MIN_SCALE) * torch.rand(count, generator=generator)
    shift = (2 * torch.rand(count, 2, generator=generator) - 1) * 2 * SHIFT_FRACTION
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)


def resize(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Images of another side (e.g. generated at another resolution) → the tower's resolution."""
    if pixels.shape[-1] == size and pixels.shape[-2] == size:
        return pixels
    return F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class SentenceEncoder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: masked mean pooling, then L2 norm."""

    def __init__(self, folder: str | Path, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        folder = paths.ROOT / folder  # relative paths are the project's; absolute ones stay
        if not (folder / "config.json").exists():
            raise ConfigError(f"encoders.text_encoder: {folder} holds no model (config.json missing); "
                              "run `make data` to fetch all-MiniLM-L6-v2")
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval().requires_grad_(False).to(device)
        self.device = device

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def __call__(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        chunks = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                    return_tensors="pt").to(self.device)
            states = self.model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            chunks.append(F.normalize(pooled, dim=-1))
        return torch.cat(chunks)


class TrainedEncoders:
    """The small CLIP of the tiny profile behind the common three-method interface."""

    source = "train"

    def __init__(self, model: SmallClip, sentences: SentenceEncoder, resolution: int, meta: dict,
                 device: str = "cpu", batch_size: int = 256):
        self.model = model.eval().requires_grad_(False).to(device)
        self.sentences = sentences
        self.resolution = resolution
        self.meta = meta  # what encoders.json records: the config and the training resolution
        self.device = device
        self.batch_size = batch_size

    def _images(self, method, images: np.ndarray) -> np.ndarray:
        pixels = images_to_tensor(images)
        with torch.no_grad():
            # float(): under a CPU bf16 autocast (bat.image.track) the features come out in bf16
            out = [method(resize(pixels[i:i + self.batch_size], self.resolution).to(self.device)).float().cpu()
                   for i in range(0, len(pixels), self.batch_size)]
        return torch.cat(out).numpy()

    def image_features(self, images: np.ndarray) -> np.ndarray:
        """The DINO stand-in: the image tower's pooled, LayerNorm'd features, before the projection."""
        return self._images(self.model.image_features, images)

    def clip_image_features(self, images: np.ndarray) -> np.ndarray:
        return self._images(self.model.clip_image_features, images)

    def clip_text_features(self, texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            return self.model.text_projection(self.sentences(list(texts))).float().cpu().numpy()

    def parameter_count(self) -> int:
        """Trainable parameters (the frozen sentence encoder is not counted)."""
        return sum(p.numel() for p in self.model.parameters())


def _pooled(output) -> torch.Tensor:
    """transformers 5 returns a model output from ``get_*_features``; 4.x returned the tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class PretrainedEncoders:
    """DINOv2 (CLS token) and a CLIPModel, loaded by hub id or local folder (paper profile)."""

    source = "pretrained"

    def __init__(self, image_model_id: str, clip_model_id: str, device: str = "cpu", batch_size: int = 32):
        from transformers import AutoImageProcessor, AutoModel, AutoProcessor

        try:
            self.image_processor = AutoImageProcessor.from_pretrained(image_model_id)
            self.image_model = AutoModel.from_pretrained(image_model_id).eval().requires_grad_(False).to(device)
            self.clip_processor = AutoProcessor.from_pretrained(clip_model_id)
            self.clip_model = AutoModel.from_pretrained(clip_model_id).eval().requires_grad_(False).to(device)
        except (OSError, ValueError) as error:
            raise ConfigError(f"could not load encoders {image_model_id!r} / {clip_model_id!r}: "
                              f"{str(error).splitlines()[0]}") from None
        for name, model in (("get_image_features", self.clip_model), ("get_text_features", self.clip_model)):
            if not hasattr(model, name):
                raise ConfigError(f"encoders.clip_model_id: {clip_model_id!r} is a "
                                  f"{type(model).__name__}, not a CLIP model with {name}")
        self.meta = {"format": FORMAT, "source": "pretrained", "image_model_id": str(image_model_id),
                     "clip_model_id": str(clip_model_id)}
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def _images(self, processor, run, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        images_to_tensor(images[:1])  # the same shape check as the trained encoders
        out = []
        for start in range(0, len(images), self.batch_size):
            pixels = processor(images=list(images[start:start + self.batch_size]),
                               return_tensors="pt")["pixel_values"].to(self.device)
            out.append(run(pixels).float().cpu())
        return torch.cat(out).numpy()

    def image_features(self, images: np.ndarray) -> np.ndarray:
        """DINOv2's CLS token after its final LayerNorm (``pooler_output``)."""
        return self._images(self.image_processor,
                            lambda pixels: self.image_model(pixel_values=pixels).pooler_output, images)

    def clip_image_features(self, images: np.ndarray) -> np.ndarray:
        return self._images(self.clip_processor.image_processor,
                            lambda pixels: _pooled(self.clip_model.get_image_features(pixel_values=pixels)),
                            images)

    @torch.no_grad()
    def clip_text_features(self, texts: list[str]) -> np.ndarray:
        out = []
        texts = list(texts)
        for start in range(0, len(texts), self.batch_size):
            tokens = self.clip_processor.tokenizer(texts[start:start + self.batch_size], padding=True,
                                                   truncation=True, return_tensors="pt").to(self.device)
            out.append(_pooled(self.clip_model.get_text_features(**tokens)).float().cpu())
        return torch.cat(out).numpy()

    def parameter_count(self) -> int:
        return sum(p.numel() for m in (self.image_model, self.clip_model) for p in m.parameters())


Encoders = TrainedEncoders | PretrainedEncoders


# --------------------------------------------------------------------------- training


def _learning_rate_factor(step: int, steps: int) -> float:
    """Linear warm-up over the first 5 % of steps, then cosine decay to 10 %."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def train_encoders(config: EncoderConfig, images: np.ndarray, captions: list[str], device: str = "cpu"):
    """Train the small CLIP on image–caption pairs on ``device``; return the encoders and the loss log.

    Deterministic given ``config.seed`` (and the number of threads): initial weights, batch order
    and shifts all come from seeded generators.
    """
    if config.source != "train":
        raise ConfigError("encoders.source is 'pretrained': load them with load_encoders")
    if len(images) != len(captions):
        raise ConfigError(f"encoders: {len(images)} images but {len(captions)} captions")
    if len(images) < 2:
        raise ConfigError("encoders: contrastive training needs at least two image–caption pairs")
    pixels = images_to_tensor(images)
    resolution = pixels.shape[-1]
    if pixels.shape[-2] != resolution:
        raise ConfigError(f"encoders: images must be square, got {tuple(pixels.shape[-2:])}")
    started = time.perf_counter()
    sentences = SentenceEncoder(config.text_encoder, device)
    text = sentences(list(captions)).to(device)  # frozen: computed once
    torch.manual_seed(config.seed)
    model = SmallClip(config.channels, config.embedding_dim, sentences.dim).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _learning_rate_factor(step, config.steps))
    generator = torch.Generator().manual_seed(config.seed)
    log = []
    for step, index in enumerate(epoch_batches(len(pixels), config.batch_size, config.steps,
                                                          generator, carry_remainder=False), start=1):
        batch = random_affine(pixels[index], generator).to(device)
        loss = model.loss(batch, text[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        log.append({"step": step, "loss": loss.item(),
                    "temperature": float(1 / model.logit_scale.detach().clamp(max=MAX_LOGIT_SCALE).exp())})
    meta = {"format": FORMAT, "source": "train", "resolution": resolution, "text_dim": sentences.dim,
            "config": asdict(config), "pairs": len(captions), "seconds": time.perf_counter() - started}
    meta["config"]["channels"] = list(config.channels)
    return TrainedEncoders(model, sentences, resolution, meta, device), log


# --------------------------------------------------------------------------- save and load


def save_encoders(encoders: Encoders, folder: str | Path) -> Path:
    """``encoders.json`` (+ ``model.safetensors`` when trained), swapped into ``folder`` at once."""
    from safetensors.torch import save_file

    from bat.io import atomic_directory

    folder = Path(folder)
    with atomic_directory(folder) as tmp:
        if isinstance(encoders, TrainedEncoders):
            state = {name: tensor.detach().cpu().contiguous()
                     for name, tensor in encoders.model.state_dict().items()}
            save_file(state, tmp / WEIGHTS_FILE, metadata={"format": FORMAT})
        meta = {key: value for key, value in encoders.meta.items() if key != "seconds"}
        # Fixed bytes for the same model: sorted keys, no timings.
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return folder


def _load_trained(folder: Path, meta: dict, device: str) -> TrainedEncoders:
    from safetensors.torch import load_file

    config = meta["config"]
    model = SmallClip(tuple(config["channels"]), config["embedding_dim"], meta["text_dim"])
    model.load_state_dict(load_file(folder / WEIGHTS_FILE))
    sentences = SentenceEncoder(config["text_encoder"], device)
    return TrainedEncoders(model, sentences, meta["resolution"], meta, device)


def load_encoders(path_or_ids: str | Path | tuple[str, str], device: str = "cpu") -> Encoders:
    """One loader for both profiles.

    ``path_or_ids`` is a folder written by :func:`save_encoders` (``models/encoders``: trained
    weights, or the two ids the paper profile recorded), or a pair ``(image_model_id,
    clip_model_id)`` of hub ids or ``save_pretrained`` folders. ``device``: where they compute
    (``cpu``, ``cuda``, ``cuda:N``); features come back on the CPU either way.
    """
    validate.device("device", device, DEVICES)
    if isinstance(path_or_ids, (tuple, list)):
        if len(path_or_ids) != 2:
            raise ConfigError(f"load_encoders: give (image_model_id, clip_model_id), got {path_or_ids!r}")
        return PretrainedEncoders(str(path_or_ids[0]), str(path_or_ids[1]), device)
    folder = Path(path_or_ids)
    if not (folder / CONFIG_FILE).exists():
        raise ConfigError(f"{folder} holds no encoders ({CONFIG_FILE} missing); run `dvc repro train_encoders`")
    meta = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{folder / CONFIG_FILE}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta["source"] == "pretrained":
        return PretrainedEncoders(meta["image_model_id"], meta["clip_model_id"], device)
    return _load_trained(folder, meta, device)


def build_or_load(config: EncoderConfig, backbone, folder: str | Path, device: str = "cpu"):
    """Tiny profile: train on D^B (``backbone``: an ImageSet) and save; paper: record the two ids.

    Either way the encoders returned are loaded back from ``folder`` onto ``device``, so what the
    stage reports on is what later stages read. The log is ``None`` when nothing was trained.
    """
    if config.source == "pretrained":
        encoders = PretrainedEncoders(config.image_model_id, config.clip_model_id, device)
        save_encoders(encoders, folder)
        return load_encoders(folder, device), None
    encoders, log = train_encoders(config, backbone.images, list(backbone.captions), device)
    save_encoders(encoders, folder)
    return load_encoders(folder, device), {"steps": log, "seconds": encoders.meta["seconds"]}


# --------------------------------------------------------------------------- checks


def match_concepts(image_set, other_set):
    """The images of ``image_set`` and ``other_set`` that show the same concepts, in the same order.

    For a style set and D^B: the same concept drawn in two styles. Returns ``(images, other_images,
    captions)``.
    """
    position = {emoji: i for i, emoji in enumerate(other_set.emoji)}
    pairs = [(i, position[emoji]) for i, emoji in enumerate(image_set.emoji) if emoji in position]
    if not pairs:
        raise ConfigError(f"no concept of the {image_set.source} set is in the {other_set.source} set")
    mine, theirs = (list(index) for index in zip(*pairs))
    return image_set.images[mine], other_set.images[theirs], [image_set.captions[i] for i in mine]


def retrieval_report(encoders: Encoders, image_set, seen_set=None) -> dict:
    """How well the encoders know the concepts of ``image_set``; chance is 1 / len(image_set).

    ``image_to_text``: for each image, is its own caption the nearest in CLIP space among the
    set's captions? With ``seen_set`` (the same concepts in another style, e.g. D^B's OpenMoji):
    ``image_to_image`` asks the same of ``image_features`` against ``seen_set``'s renders, and
    ``pixels_image_to_image`` of 8×8 thumbnails (:func:`bat.image.features.pixel_features`), the
    baseline a learnt feature should beat.
    """
    from bat.image.features import pixel_features
    from bat.image.metrics import retrieval_accuracy

    images, captions = image_set.images, list(image_set.captions)
    report = {"count": len(captions), "chance": 1 / len(captions),
              "image_to_text": retrieval_accuracy(encoders.clip_image_features(images),
                                                  encoders.clip_text_features(captions))}
    if seen_set is not None and not set(image_set.emoji) & set(seen_set.emoji):
        # A D^B of other concepts (LAION, paper profile) has no render of these: nothing to pair.
        report.update(pairs=0, pairs_chance=None, image_to_image=None, pixels_image_to_image=None)
    elif seen_set is not None:
        images, others, _ = match_concepts(image_set, seen_set)
        report["pairs"] = len(images)
        report["pairs_chance"] = 1 / len(images)
        report["image_to_image"] = retrieval_accuracy(encoders.image_features(images),
                                                      encoders.image_features(others))
        report["pixels_image_to_image"] = retrieval_accuracy(pixel_features(images), pixel_features(others))
    return report
