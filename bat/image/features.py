"""Image feature extractors for the image metrics.

``pixel_features`` needs no training: an ``8×8`` colour thumbnail, centred per image, so cosine
similarity compares layout and colour rather than overall brightness. It is the stand-in for
DINOv2 until the trained encoders exist, and is good enough to tell whether a 32-pixel sample
looks like its prompt's reference more than like other references.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def pixel_features(images: np.ndarray, size: int = 8) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` → float64 ``[N, 3·size²]`` area-averaged, mean-centred thumbnails."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).double() / 255
    thumbnails = F.adaptive_avg_pool2d(tensor, size).flatten(1)
    return (thumbnails - thumbnails.mean(dim=1, keepdim=True)).numpy()
