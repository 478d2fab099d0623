import numpy as np
import pytest
import torch

from bat.image import metrics as im
from bat.errors import ConfigError


def random_features(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


# vendi-score 0.0.3 touches the deprecated scipy.sparse.csr namespace.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_vendi_matches_reference_package():
    vendi = pytest.importorskip("vendi_score.vendi")
    for seed, (n, d) in enumerate([(5, 3), (12, 16), (30, 8)]):
        features = random_features(n, d, seed)
        assert im.vendi_score(features) == pytest.approx(vendi.score_X(features), rel=1e-10)


def test_vendi_matches_direct_eigen_computation():
    features = random_features(9, 4, seed=1)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    eigenvalues = np.clip(np.linalg.eigvals(unit @ unit.T).real / len(unit), 1e-300, None)
    expected = np.exp(-np.sum(eigenvalues * np.log(eigenvalues)))
    assert im.vendi_score(torch.tensor(features)) == pytest.approx(expected, rel=1e-8)


def test_vendi_counts_identical_and_orthogonal_points():
    point = random_features(1, 6, seed=2)
    assert im.vendi_score(np.repeat(point, 7, axis=0)) == pytest.approx(1.0)
    # Scaled orthogonal directions: the cosine kernel ignores length, so n distinct points.
    assert im.vendi_score(np.diag([1.0, 2.0, 3.0, 4.0, 5.0])) == pytest.approx(5.0)
    # Two clusters of identical points, equal sizes: two effective samples.
    clusters = np.vstack(
        [np.repeat(np.eye(3)[:1], 4, axis=0), np.repeat(np.eye(3)[1:2], 4, axis=0)]
    )
    assert im.vendi_score(clusters) == pytest.approx(2.0)


def test_vendi_is_invariant_to_permutation_and_row_scaling():
    features = random_features(10, 5, seed=3)
    rng = np.random.default_rng(4)
    shuffled = features[rng.permutation(10)] * rng.uniform(0.1, 10.0, size=(10, 1))
    assert im.vendi_score(shuffled) == pytest.approx(im.vendi_score(features), rel=1e-10)


def test_cosines_are_scale_and_permutation_invariant():
    generated, reference = random_features(6, 8, seed=5), random_features(6, 8, seed=6)
    scaled = 3.0 * generated
    assert im.mean_cosine(scaled, reference) == pytest.approx(im.mean_cosine(generated, reference))
    order = np.random.default_rng(7).permutation(6)
    # Matched pairs stay matched when both sides are permuted together.
    assert im.mean_cosine(generated[order], reference[order]) == pytest.approx(
        im.mean_cosine(generated, reference)
    )
    # The set score does not care about pairing at all.
    assert im.set_cosine(generated[order], 0.5 * reference) == pytest.approx(
        im.set_cosine(generated, reference)
    )


def test_cosines_against_torch():
    generated, reference = (
        torch.randn(5, 7, dtype=torch.float64),
        torch.randn(4, 7, dtype=torch.float64),
    )
    pairwise = torch.nn.functional.cosine_similarity(generated[:, None], reference[None], dim=-1)
    assert im.set_cosine(generated, reference) == pytest.approx(pairwise.mean().item())
    matched = torch.nn.functional.cosine_similarity(generated[:4], reference, dim=-1)
    assert im.mean_cosine(generated[:4], reference) == pytest.approx(matched.mean().item())
    assert im.mean_cosine(reference, reference) == pytest.approx(1.0)


def test_centroid_distance_invariances():
    features = random_features(8, 5, seed=8)
    distance = im.centroid_distance(features)
    per_point = sum(np.sum((v - features.mean(axis=0)) ** 2) for v in features)
    assert distance == pytest.approx(per_point)
    assert im.centroid_distance(features[::-1]) == pytest.approx(distance)
    assert im.centroid_distance(features + 100.0) == pytest.approx(distance)
    assert im.centroid_distance(2.0 * features) == pytest.approx(4.0 * distance)
    assert im.centroid_distance(np.repeat(features[:1], 4, axis=0)) == 0.0


def test_clip_score_conventions():
    text, image = random_features(6, 4, seed=9), random_features(6, 4, seed=10)
    score = im.clip_score(text, image)
    assert score.cosine == pytest.approx(im.mean_cosine(text, image))
    assert score.torchmetrics == pytest.approx(max(100 * score.cosine, 0.0))
    # Opposite embeddings: cosine -1, torchmetrics clamps the mean at 0.
    opposite = im.clip_score(text, -text)
    assert opposite.cosine == pytest.approx(-1.0)
    assert opposite.torchmetrics == 0.0
    assert im.clip_score(text, 2.0 * text).torchmetrics == pytest.approx(100.0)


def test_retrieval_accuracy():
    keys = random_features(20, 32, seed=11)
    assert im.retrieval_accuracy(keys + 0.01 * random_features(20, 32, seed=12), keys) == 1.0
    rolled = np.roll(keys, 1, axis=0)
    assert im.retrieval_accuracy(rolled, keys) == 0.0
    # Unrelated queries find their own key about 1 time in N.
    queries, keys = random_features(400, 16, seed=13), random_features(400, 16, seed=14)
    assert im.retrieval_accuracy(queries, keys) < 5 / 400


@pytest.mark.parametrize(
    "call",
    [
        lambda: im.mean_cosine(np.ones((3, 4)), np.ones((2, 4))),
        lambda: im.set_cosine(np.ones((3, 4)), np.ones((2, 5))),
        lambda: im.centroid_distance(np.ones(4)),
        lambda: im.vendi_score(np.zeros((2, 3))),
        lambda: im.vendi_score(np.ones((0, 3))),
        lambda: im.clip_score(np.ones((2, 3)), np.full((2, 3), np.nan)),
        lambda: im.retrieval_accuracy(np.ones((3, 2)), np.ones((4, 2))),
    ],
)
def test_bad_shapes_and_values_raise(call):
    with pytest.raises(ConfigError):
        call()


def test_pairwise_preference_is_one_for_perfect_and_half_for_unrelated_samples():
    from bat.image.metrics import pairwise_preference

    rng = np.random.default_rng(0)
    keys = rng.normal(size=(40, 16))
    assert pairwise_preference(keys, keys) == 1.0
    # Independent samples: the own key is a random one among the rest.
    assert abs(pairwise_preference(rng.normal(size=(400, 16)), rng.normal(size=(400, 16))) - 0.5) < 0.02
    # The AUC by brute force on a small case.
    query, key = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    from bat.image.metrics import cosine_matrix
    sim = cosine_matrix(query, key)
    brute = np.mean([np.mean([sim[i, j] < sim[i, i] for j in range(5) if j != i]) for i in range(5)])
    assert pairwise_preference(query, key) == pytest.approx(brute)


def test_kernel_distance_is_zero_on_average_for_one_distribution_and_grows_with_a_shift():
    """KID is unbiased: over many pairs of sets from one distribution its mean is ≈ 0; a shifted set scores
    far above that; a set against itself (the diagonal counted only across) scores below the floor."""
    same = [im.kernel_distance(random_features(32, 8, 2 * s), random_features(32, 8, 2 * s + 1)) for s in range(50)]
    shifted = im.kernel_distance(random_features(32, 8, 0) + 1.0, random_features(32, 8, 1))
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))
    assert shifted > max(same)
    assert im.kernel_distance(random_features(32, 8, 0), random_features(32, 8, 0)) < min(same)


def test_kernel_distance_matches_its_formula_by_loops():
    x, y = random_features(5, 3, 0), random_features(4, 3, 1)

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(a, b) for a in x for b in y) / 20
    assert im.kernel_distance(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    with pytest.raises(ConfigError, match="feature sizes differ"):
        im.kernel_distance(x, random_features(4, 2, 1))
