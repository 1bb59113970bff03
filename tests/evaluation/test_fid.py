"""FID against scipy's matrix square root and the closed form of diagonal Gaussians; KID's unbiasedness on samples
of one distribution and its sign on shifted ones."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from spade_deploy.evaluation.fid import feature_statistics, fid, frechet_distance, kid


def _random_gaussian(rng: np.random.Generator, size: int, rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A mean and a covariance `A A^T` (of rank `rank`, default full) with eigenvalues spread over decades."""
    factor = rng.standard_normal((size, rank or size)) * np.logspace(-2, 1, rank or size)
    return rng.standard_normal(size), factor @ factor.T


def _scipy_frechet(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The textbook formula with a general matrix square root, as pytorch-fid computes it."""
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * np.real(root)))


@pytest.mark.parametrize("size", [1, 5, 64])
def test_frechet_distance_equals_scipy_on_random_gaussians(size: int) -> None:
    rng = np.random.default_rng(size)
    first, second = _random_gaussian(rng, size), _random_gaussian(rng, size)
    expected = _scipy_frechet(*first, *second)
    assert frechet_distance(*first, *second) == pytest.approx(expected, rel=1e-8, abs=1e-8)
    assert frechet_distance(*second, *first) == pytest.approx(expected, rel=1e-8, abs=1e-8)  # symmetric


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form() -> None:
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    var1, var2 = rng.uniform(0.01, 4, 10), rng.uniform(0.01, 4, 10)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-12)


def test_singular_covariances_need_no_epsilon() -> None:
    """Fewer images than dimensions: rank-deficient covariances, which a general square root handles badly."""
    rng = np.random.default_rng(1)
    first, second = _random_gaussian(rng, 32, rank=5), _random_gaussian(rng, 32, rank=5)
    distance = frechet_distance(*first, *second)
    assert np.isfinite(distance) and distance > 0
    assert distance == pytest.approx(_scipy_frechet(*first, *second), rel=1e-6)
    # Round-off only: the rank tolerance keeps the null space's eigenvalues out of the square roots.
    assert frechet_distance(*first, *first) == pytest.approx(0, abs=1e-10 * np.trace(first[1]))


def test_fid_of_features() -> None:
    rng = np.random.default_rng(2)
    features = rng.standard_normal((50, 8)) @ rng.standard_normal((8, 8))
    assert fid(features, features) == pytest.approx(0, abs=1e-9)
    assert fid(features, features[::-1]) == pytest.approx(0, abs=1e-9)  # order does not matter
    shifted = features + 3.0
    assert fid(features, shifted) == pytest.approx(8 * 9.0)  # same covariance: |mean difference|^2
    mu, sigma = feature_statistics(features)
    np.testing.assert_allclose(sigma, np.cov(features.T))  # unbiased covariance, as pytorch-fid's
    np.testing.assert_allclose(mu, features.mean(axis=0))


@pytest.mark.parametrize("count1, count2", [(2, 2), (20, 31), (63, 40)])
def test_fid_of_fewer_images_than_features_is_that_of_their_statistics(count1: int, count2: int) -> None:
    """Below D images, fid takes singular values of an N1 x N2 matrix instead of D x D eigendecompositions."""
    rng = np.random.default_rng(count1)
    mixing = rng.standard_normal((64, 64))
    first = rng.standard_normal((count1, 64)) @ mixing
    second = rng.standard_normal((count2, 64)) @ mixing + 0.3
    statistics = (*feature_statistics(first), *feature_statistics(second))
    assert fid(first, second) == pytest.approx(frechet_distance(*statistics), rel=1e-9)
    assert fid(first, second) == pytest.approx(_scipy_frechet(*statistics), rel=1e-6)
    assert fid(first, first) == pytest.approx(0, abs=1e-9 * np.trace(statistics[1]))


def test_fid_of_large_samples_approaches_the_gaussians_distance() -> None:
    rng = np.random.default_rng(3)
    first, second = _random_gaussian(rng, 4), _random_gaussian(rng, 4)
    samples = [rng.multivariate_normal(mu, sigma, size=200_000) for mu, sigma in (first, second)]
    assert fid(*samples) == pytest.approx(frechet_distance(*first, *second), rel=0.02)


def test_kid_is_unbiased_for_one_distribution_and_positive_for_shifted() -> None:
    rng = np.random.default_rng(4)
    first, second = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
    same = kid(first, second, subsets=20, subset_size=100)
    # An unbiased estimate of 0: it lies within a few of its subset spreads of 0, negative as often as positive.
    assert abs(same.mean) < 3 * same.std / np.sqrt(same.subsets) + 1e-3
    shifted = kid(first, second + 0.5, subsets=20, subset_size=100)
    assert shifted.mean > 10 * abs(same.mean) and shifted.mean > 5 * shifted.std / np.sqrt(shifted.subsets)
    assert (shifted.subsets, shifted.subset_size) == (20, 100)


def test_kid_by_hand_and_subsets_capped() -> None:
    """Two images each: the unbiased MMD^2 written out term by term; a subset larger than the sets takes them all."""
    x = np.array([[1.0, 0.0], [0.0, 2.0]])
    y = np.array([[1.0, 1.0], [2.0, 0.0]])

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (a @ b / 2 + 1) ** 3

    expected = (2 * k(x[0], x[1]) / 2 + 2 * k(y[0], y[1]) / 2
                - 2 * sum(k(a, b) for a in x for b in y) / 4)
    result = kid(x, y, subsets=3, subset_size=1000)
    assert result.subset_size == 2 and result.mean == pytest.approx(expected) and result.std == pytest.approx(0)
    assert kid(x, y, seed=5) == kid(x, y, seed=5)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"features1 must be \[N, D\] features of at least 2 images, got shape "
                                         r"\[1, 3\]"):
        fid(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="one width, got 3 and 4"):
        kid(np.zeros((4, 3)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="KID subset size must be at least 2"):
        kid(np.zeros((4, 3)), np.zeros((4, 3)), subset_size=1)
    with pytest.raises(ValueError, match="KID subsets must be at least 1"):
        kid(np.zeros((4, 3)), np.zeros((4, 3)), subsets=0)
    with pytest.raises(ValueError, match=r"Gaussian 2 must be a mean \[2\] and a covariance \[2, 2\]"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
