"""Personalization metrics on feature vectors (paper App. D.1, Tab. 1).

Every function takes already-extracted features, ``[N, D]`` torch tensors or numpy arrays (one row
per image or prompt), so the metrics do not depend on which encoder produced them: DINOv2 and CLIP
in the paper profile, whatever the tiny profile uses otherwise. All arithmetic is float64 numpy;
the results are Python floats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bat.errors import ConfigError

Features = np.ndarray | torch.Tensor


def as_features(features: Features, name: str = "features") -> np.ndarray:
    """Return ``features`` as a float64 ``[N, D]`` array with N, D >= 1 and finite entries."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ConfigError(f"{name}: expected a non-empty [N, D] array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ConfigError(f"{name}: contains NaN or infinite values")
    return array


def _unit_rows(array: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ConfigError(f"{name}: has all-zero rows, whose cosine similarity is undefined")
    return array / norms


def _same_shape(a: np.ndarray, b: np.ndarray, a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise ConfigError(
            f"{a_name} and {b_name}: matched pairs need equal shapes, got {a.shape} and {b.shape}"
        )


def cosine_matrix(a: Features, b: Features) -> np.ndarray:
    """``[N, M]`` cosine similarities cos(a_i, b_j) = a_i·b_j / (‖a_i‖ ‖b_j‖)."""
    a = _unit_rows(as_features(a, "a"), "a")
    b = _unit_rows(as_features(b, "b"), "b")
    if a.shape[1] != b.shape[1]:
        raise ConfigError(f"a and b: feature sizes differ, {a.shape[1]} and {b.shape[1]}")
    return a @ b.T


def mean_cosine(generated: Features, reference: Features) -> float:
    """Mean cosine similarity over matched pairs: (1/N) Σ_i cos(g_i, r_i).

    Row i of ``generated`` is compared only with row i of ``reference`` (the same prompt or
    concept). Formula: paper App. D.1, "Cosine Similarity".
    """
    generated = as_features(generated, "generated")
    reference = as_features(reference, "reference")
    _same_shape(generated, reference, "generated", "reference")
    pair_cosines = np.sum(
        _unit_rows(generated, "generated") * _unit_rows(reference, "reference"), axis=1
    )
    return float(np.mean(pair_cosines))


def set_cosine(generated: Features, reference: Features) -> float:
    """Mean cosine similarity over all pairs: (1/(N M)) Σ_i Σ_j cos(g_i, r_j).

    This is DreamBooth's DINO score (Ruiz et al. 2023: "average pairwise cosine similarity between
    the ViT-S/16 DINO embeddings of generated and real images"), the score the paper's Tab. 1
    "Cosine Sim" column follows for DreamBooth and LoCon, where generated images of a subject are
    compared with that subject's few real images and no one-to-one pairing exists.
    """
    return float(np.mean(cosine_matrix(generated, reference)))


def centroid_distance(features: Features) -> float:
    """Sum of squared distances to the centroid: Σ_i ‖v_i − c‖², c = (1/N) Σ_i v_i.

    Paper App. D.1, "Squared Centroid Distance"; lower means more consistent outputs. Computed on
    the raw features, as the formula states: the value scales with the square of the feature
    scale and grows with N, so compare it only across runs with the same encoder and N.
    """
    features = as_features(features)
    return float(np.sum((features - features.mean(axis=0)) ** 2))


@dataclass(frozen=True)
class ClipScore:
    """Two conventions for one text–image similarity; both are reported because sources differ.

    ``cosine``: mean over matched pairs of cos(t_i, i_i), paper App. D.1 "CLIP Similarity" (the
    paper's Tab. 1 values, 0.27–0.49, are on this scale).
    ``torchmetrics``: max(100 · mean_i cos(t_i, i_i), 0), what ``torchmetrics`` ``CLIPScore``
    returns. Its docstring writes max(100 cos, 0) per pair, but its code clamps the mean, so we do
    too. (Hessel et al. 2021's CLIPScore is 2.5 · max(cos, 0) per pair, a third convention.)
    """

    cosine: float
    torchmetrics: float


def clip_score(text_features: Features, image_features: Features) -> ClipScore:
    """CLIP-style score between prompt i's text features and image i's features (matched rows)."""
    text_features = as_features(text_features, "text_features")
    image_features = as_features(image_features, "image_features")
    _same_shape(text_features, image_features, "text_features", "image_features")
    cosine = mean_cosine(text_features, image_features)
    return ClipScore(cosine=cosine, torchmetrics=max(100.0 * cosine, 0.0))


def vendi_score(features: Features) -> float:
    """Vendi score, the effective number of distinct samples (Friedman & Dieng 2023, TMLR).

    VS = exp(−Σ_k λ_k log λ_k), λ_k the eigenvalues of K/N, with K_ij = k(x_i, x_j) a positive
    semi-definite kernel with k(x, x) = 1. Here k is the cosine kernel (rows normalised to unit
    length, K = X Xᵀ), the default of the reference package ``vendi-score`` (``score_X``). VS lies
    in [1, N]: 1 when all samples are the same, N when they are mutually orthogonal. Lower means
    less diverse outputs, which the paper reads as a more concentrated identity.

    The paper's App. D.1 defines it instead as ∫ min(P(x), Q(x)) dx, an overlap of two
    distributions. That formula is wrong: it is the overlap coefficient (one minus the total
    variation distance), not the Vendi score, which is a one-set diversity measure with no Q.
    """
    unit = _unit_rows(as_features(features), "features")
    # float64 and eigvalsh: the kernel is symmetric and the entropy needs small eigenvalues right.
    eigenvalues = np.linalg.eigvalsh(unit @ unit.T / unit.shape[0])
    # Round-off leaves tiny negative eigenvalues; 0 log 0 = 0 drops them and exact zeros alike.
    positive = eigenvalues[eigenvalues > 0]
    return float(np.exp(-np.sum(positive * np.log(positive))))


def retrieval_accuracy(query_features: Features, key_features: Features) -> float:
    """Fraction of queries i whose most cosine-similar key is key i.

    Row i of both arrays belongs to the same item (e.g. prompt i's text features and image i's
    features). Used to check that an encoder tells items apart and that generated samples carry
    their prompt; chance level is 1/N. Ties go to the lowest key index.
    """
    query_features = as_features(query_features, "query_features")
    key_features = as_features(key_features, "key_features")
    if query_features.shape[0] != key_features.shape[0]:
        raise ConfigError(
            "query_features and key_features: need one key per query, got "
            f"{query_features.shape[0]} queries and {key_features.shape[0]} keys"
        )
    nearest = np.argmax(cosine_matrix(query_features, key_features), axis=1)
    return float(np.mean(nearest == np.arange(query_features.shape[0])))


def pairwise_preference(query_features: Features, key_features: Features) -> float:
    """Mean over queries i of the share of other keys j ≠ i that are less similar to i than key i.

    "How often is a sample nearer to its own prompt's reference than to another prompt's" —
    a rank statistic (the AUC of the own key against the rest), chance 0.5, far less noisy than
    top-1 :func:`retrieval_accuracy` when samples are weak. Ties count one half.
    """
    query_features = as_features(query_features, "query_features")
    key_features = as_features(key_features, "key_features")
    if query_features.shape[0] != key_features.shape[0] or query_features.shape[0] < 2:
        raise ConfigError("query_features and key_features: need the same number (at least 2) of rows")
    similarity = cosine_matrix(query_features, key_features)
    own = np.diag(similarity)[:, None]
    others = ~np.eye(len(similarity), dtype=bool)
    wins = ((similarity < own) + 0.5 * (similarity == own))[others].reshape(len(similarity), -1)
    return float(wins.mean())


def kernel_distance(generated: Features, reference: Features) -> float:
    """KID: the unbiased estimate of MMD² between two sets under the cubic polynomial kernel.

    k(x, y) = (xᵀy / D + 1)³ on the raw ``[N, D]`` and ``[M, D]`` features (Bińkowski et al. 2018,
    "Demystifying MMD GANs", the kernel ``torchmetrics``' ``KernelInceptionDistance`` uses):
    mean k within ``generated`` and within ``reference`` (diagonals left out), minus twice the mean
    across. Its expectation is 0 when both sets are drawn from one distribution, so a single
    estimate can be slightly negative; compare it with a real-vs-real value on the same encoder.
    """
    generated = as_features(generated, "generated")
    reference = as_features(reference, "reference")
    if generated.shape[1] != reference.shape[1]:
        raise ConfigError(f"generated and reference: feature sizes differ, {generated.shape[1]} and {reference.shape[1]}")
    if min(len(generated), len(reference)) < 2:
        raise ConfigError("generated and reference: the unbiased estimate needs at least 2 rows in each")
    dim = generated.shape[1]

    def kernel(a, b):
        return (a @ b.T / dim + 1) ** 3

    def within(a):
        matrix = kernel(a, a)
        return (matrix.sum() - np.trace(matrix)) / (len(a) * (len(a) - 1))

    return float(within(generated) + within(reference) - 2 * kernel(generated, reference).mean())
