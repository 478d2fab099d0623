"""Image–caption sets from the raw emoji sources: D^B (OpenMoji), styles D^A, out-of-backbone pool.

A *concept* is one fully-qualified emoji without skin-tone modifiers, captioned by its English
CLDR name (``grinning face``). Each source renders the concepts it has in its own art style; all
renders go through the same crop–pad–resize so that only the style differs between sources.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageChops, ImageDraw, ImageFont

from bat.errors import ConfigError
from bat.io import write_npz

VARIATION_SELECTOR = "\ufe0f"
RENDER_SIZE = 96  # glyphs are drawn large, then downsampled, which anti-aliases them evenly
# Point sizes at which each font's glyphs fill about RENDER_SIZE; Noto is a bitmap font that only
# exists at 109 pt.
FONT_POINTS = {"openmoji": 72, "noto": 109, "symbola": 72}
FONT_FILES = {"openmoji": "openmoji/glyf_colr0.ttf", "noto": "noto/NotoColorEmoji.ttf",
              "symbola": "symbola/Symbola_hint.ttf"}
IMAGE_SOURCES = ("openmoji", "noto", "emojione", "symbola")
STYLES = ("noto", "emojione")  # the adaptation styles D^A; OpenMoji is D^B, Symbola out of it


@dataclass(frozen=True)
class Concept:
    emoji: str
    name: str  # caption, e.g. "grinning face"


def load_concepts(raw: Path) -> list[Concept]:
    """Fully-qualified emoji (status 2 in the ``emoji`` package) without skin-tone variants."""
    table = json.loads((raw / "emoji" / "emoji.json").read_text(encoding="utf-8"))
    concepts = []
    for emoji, entry in table.items():
        name = entry["en"].strip(":").replace("_", " ")
        if entry["status"] == 2 and "skin tone" not in name:
            concepts.append(Concept(emoji, name))
    return sorted(concepts, key=lambda concept: concept.emoji)


def _to_square(image: Image.Image, size: int) -> np.ndarray:
    """Crop to the drawn pixels, pad to a centred square with a margin, put on white, resize."""
    box = image.getchannel("A").getbbox()
    if box is None:
        raise ValueError("empty render")
    glyph = image.crop(box)
    side = int(max(glyph.size) * 1.1)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    rgb = canvas.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8)


class FontRenderer:
    """Draws concepts with a colour (COLR/CBDT) or outline font; ``None`` where it has no glyph."""

    def __init__(self, raw: Path, source: str):
        self.font = ImageFont.truetype(str(raw / FONT_FILES[source]), FONT_POINTS[source])
        self.missing = self._draw("\U0010fffd")  # the .notdef box, for comparison

    def _draw(self, text: str) -> Image.Image:
        image = Image.new("RGBA", (RENDER_SIZE * 3, RENDER_SIZE * 2), (0, 0, 0, 0))
        ImageDraw.Draw(image).text((RENDER_SIZE // 2, RENDER_SIZE // 2), text, font=self.font,
                                   embedded_color=True, fill=(0, 0, 0, 255))
        return image

    def render(self, concept: Concept, size: int) -> np.ndarray | None:
        drawn = self._draw(concept.emoji)
        box = drawn.getchannel("A").getbbox()
        if box is None or ImageChops.difference(drawn, self.missing).getbbox() is None:
            return None
        width, height = box[2] - box[0], box[3] - box[1]
        # A sequence the font cannot ligate falls apart into several glyphs side by side.
        if width > 1.3 * height:
            return None
        return _to_square(drawn, size)


class PngRenderer:
    """EmojiOne 2 ships one PNG per emoji, named by its code points."""

    def __init__(self, raw: Path):
        index = json.loads((raw / "emojione" / "index.json").read_text(encoding="utf-8"))
        self.folder = raw / "emojione" / "png"
        self.files = {entry["moji"].replace(VARIATION_SELECTOR, ""): entry["unicode"]
                      for entry in index.values()}

    def render(self, concept: Concept, size: int) -> np.ndarray | None:
        code = self.files.get(concept.emoji.replace(VARIATION_SELECTOR, ""))
        path = self.folder / f"{code}.png"
        if code is None or not path.exists():
            return None
        return _to_square(Image.open(path).convert("RGBA"), size)


def renderer(raw: Path, source: str) -> FontRenderer | PngRenderer:
    if source == "emojione":
        return PngRenderer(raw)
    return FontRenderer(raw, source)


def render_source(raw: Path, source: str, concepts: list[Concept], size: int) -> dict[str, np.ndarray]:
    """Every concept ``source`` can draw, keyed by emoji, in the order of ``concepts``."""
    draw = renderer(raw, source)
    images = {}
    for concept in concepts:
        image = draw.render(concept, size)
        if image is not None:
            images[concept.emoji] = image
    return images


def save_image_set(path: Path, images: np.ndarray, concepts: list[Concept], source: str) -> None:
    """An image set is one ``.npz``: uint8 images ``[N, H, W, 3]`` with emoji and captions.

    Written with :func:`bat.io.write_npz`, so the same images give the same bytes and DVC's hash
    of ``data/prepared`` is stable across runs.
    """
    write_npz(path, {"images": images, "emoji": np.array([c.emoji for c in concepts]),
                     "captions": np.array([c.name for c in concepts]), "source": np.array(source)})


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray
    emoji: list[str]
    captions: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.captions)

    def spread(self, count: int) -> "ImageSet":
        """``count`` items evenly spaced over the set (sets are sorted by code point)."""
        index = np.linspace(0, len(self) - 1, min(count, len(self))).round().astype(int)
        return ImageSet(self.images[index], [self.emoji[i] for i in index],
                        [self.captions[i] for i in index], self.source)


def load_image_set(path: Path) -> ImageSet:
    with np.load(path) as archive:
        return ImageSet(archive["images"], archive["emoji"].tolist(), archive["captions"].tolist(),
                        str(archive["source"]))


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` → float32 ``[N, 3, H, W]`` in [-1, 1] (the VAE's and encoders' range).

    Raises :class:`ConfigError` for any other dtype or shape.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ConfigError(f"images: expected uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
