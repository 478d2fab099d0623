"""The paper's image sets (App. B), read with ``datasets``, as prepared image sets.

- D^B: a sample of LAION (Stable Diffusion's pre-training data), or any image–caption set in its
  format, streamed: parquet rows with the image's bytes (``jpg``, ``image``, ``png``, ``webp``) or
  its address (LAION's ``URL``, or ``url``: a web address or a local path) and a caption (LAION's
  ``TEXT``, or ``caption``, ``txt``, ``text``); webdataset tar shards with ``jpg`` + ``txt`` (what
  ``img2dataset`` writes) read the same. :func:`sample_captioned`.
- D^A: DreamBooth / Textual-Inversion sets, a folder of a few images of one subject or style,
  read by ``datasets``' ``imagefolder`` builder (or a hub repository of image files).
  :func:`load_folder`.

Images are centre-cropped to a square and resized (``PIL.ImageOps.fit``), transparency laid on
white as the emoji renders are, and kept as uint8 ``[N, size, size, 3]``: the arrays of
:func:`bat.image.data.save_image_set`.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from bat import validate
from bat.errors import ConfigError

# Candidate columns, in the order they are tried: bytes before an address, LAION's names first.
IMAGE_COLUMNS = ("jpg", "image", "png", "webp", "URL", "url")
CAPTION_COLUMNS = ("TEXT", "caption", "txt", "text")
ID_COLUMNS = ("__key__", "key")  # webdataset's sample key, img2dataset's parquet key


def square(image: Image.Image, size: int) -> np.ndarray:
    """``image`` centre-cropped to a square, resized to ``size`` pixels (bicubic), on white."""
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    fitted = ImageOps.fit(rgb, (size, size), method=Image.Resampling.BICUBIC)
    return np.asarray(fitted, dtype=np.uint8)


def _column(columns: list[str], candidates: tuple[str, ...], what: str, where: str) -> str:
    for column in candidates:
        if column in columns:
            return column
    raise ConfigError(f"{where}: no {what} column; expected one of {list(candidates)}, "
                      f"the rows have {columns}")


def _decode(value: dict) -> Image.Image:
    from datasets import Image as ImageFeature

    image = ImageFeature().decode_example(value)
    image.load()  # read now: a truncated file fails here, not later
    return image


def sample_captioned(path: str, size: int, seed: int, shuffle_buffer: int, image_size: int,
                     split: str = "train", **load_dataset_kwargs: Any
                     ) -> tuple[np.ndarray, list[str], list[str]]:
    """``size`` (images, ids, captions) drawn from an image–caption set, streamed.

    ``load_dataset(path, split=split, streaming=True, **load_dataset_kwargs)`` reads the rows
    (``path``: a hub id, a local folder, or ``parquet`` / ``webdataset`` with ``data_files``);
    ``IterableDataset.shuffle(seed, buffer_size=shuffle_buffer)`` draws them, so one seed gives
    one sample. Rows whose image cannot be read (LAION's addresses rot: a dead link, a page that
    is not an image) and repeated ids are skipped. Images: uint8 ``[size, image_size,
    image_size, 3]``; ids: the sample key, else the address, else the image bytes' SHA-1.
    Raises :class:`ConfigError` when no image or caption column is found (naming the candidates)
    or the stream ends with fewer than ``size`` images.
    """
    validate.positive("size", size, integer=True)
    validate.positive("shuffle_buffer", shuffle_buffer, integer=True)
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    where = f"{path} {split}"
    rows = load_dataset(path, split=split, streaming=True, **load_dataset_kwargs)
    columns = rows.column_names or list(next(iter(rows)))  # JSON streams do not know theirs
    image_column = _column(columns, IMAGE_COLUMNS, "image", where)
    caption_column = _column(columns, CAPTION_COLUMNS, "caption", where)
    address_column = next((c for c in ("URL", "url") if c in columns and c != image_column), None)
    # Bytes, a local path and a web address all become {"bytes", "path"}, decoded by datasets.
    rows = rows.cast_column(image_column, ImageFeature(decode=False))
    images, ids, captions, seen, skipped = [], [], [], set(), 0
    for row in rows.shuffle(seed=seed, buffer_size=shuffle_buffer):
        value = row[image_column]
        key = next((str(row[c]) for c in ID_COLUMNS if row.get(c)), None) \
            or (row[address_column] if address_column else value["path"]) \
            or hashlib.sha1(value["bytes"]).hexdigest()
        caption = row[caption_column]
        if key in seen or not isinstance(caption, str) or not caption.strip():
            continue
        seen.add(key)
        try:
            image = _decode(value)
        except Exception:  # a dead link fails in many ways: HTTP status, DNS, a page not an image
            skipped += 1
            continue
        images.append(square(image, image_size))
        ids.append(key)
        captions.append(" ".join(caption.split()))
        if len(images) == size:
            return np.stack(images), ids, captions
    raise ConfigError(f"{where}: {len(images)} readable images with captions ({skipped} unreadable), "
                      f"fewer than the {size} asked for")


def load_folder(path: str, image_size: int, data_dir: str | None = None, split: str = "train",
                **load_dataset_kwargs: Any) -> tuple[np.ndarray, list[str]]:
    """Every image of a DreamBooth / Textual-Inversion set, sorted by file name: (images, ids).

    ``load_dataset(path, data_dir=data_dir, split=split)``: ``path`` ``imagefolder`` with
    ``data_dir`` a local folder of images, or a hub id with ``data_dir`` the set's folder in it
    (``google/dreambooth`` with ``dataset/dog``). Images: uint8 ``[N, image_size, image_size, 3]``;
    ids: the file names. Raises :class:`ConfigError` when the rows have no ``image`` column.
    """
    from datasets import Image as ImageFeature
    from datasets import load_dataset

    rows = load_dataset(path, data_dir=data_dir, split=split, **load_dataset_kwargs)
    if "image" not in rows.column_names:
        raise ConfigError(f"{path} {data_dir or ''}: expected an imagefolder with the column 'image', "
                          f"the rows have {rows.column_names}")
    files = rows.cast_column("image", ImageFeature(decode=False))["image"]
    files = sorted(files, key=lambda value: os.path.basename(value["path"]))
    images = np.stack([square(_decode(value), image_size) for value in files])
    return images, [os.path.basename(value["path"]) for value in files]
