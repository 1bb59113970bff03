"""Fréchet Inception distance (FID) and kernel Inception distance (KID) between two sets of Inception features
(numpy only; the features come from `spade_deploy.evaluation.inception`).

Our own rather than pytorch-fid's or torch-fidelity's functions: those packages import torchvision (see `inception`).

- FID (Heusel et al., 2017): the Fréchet distance between Gaussians fitted to the two sets,
  `|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`, covariances with `N - 1` as pytorch-fid's. It is biased upward
  for small sets (published numbers use 10k-50k images); compare FIDs of equal set sizes only.
- KID (Bińkowski et al., 2018): the unbiased estimate of the squared maximum mean discrepancy with the kernel
  `k(x, y) = (x.y / d + 1)^3`, averaged over random subsets (100 of 1000 by default, as torch-fidelity and the
  paper); unbiased, so it can be compared across set sizes, and near 0 (possibly negative) for one distribution.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's Inception weights, which published FIDs use
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def _features(name: str, features: ArrayLike) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or len(array) < 2:
        raise ValueError(f"{name} must be [N, D] features of at least 2 images, got shape {list(array.shape)}")
    return array


def _check_pair(first: np.ndarray, second: np.ndarray) -> None:
    if first.shape[1] != second.shape[1]:
        raise ValueError(f"the two feature sets must have one width, got {first.shape[1]} and {second.shape[1]}")


def feature_statistics(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean `[D]` and covariance `[D, D]` (normalised by N - 1) of `[N, D]` features."""
    array = _features("features", features)
    return array.mean(axis=0), np.cov(array, rowvar=False)


def _psd_eigenvalues(values: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric positive semi-definite matrix with those below round-off (numpy's rank tolerance:
    largest * size * eps) set to 0. A singular covariance (fewer images than dimensions) has zero eigenvalues that
    come out as +-1e-13 or so, and their square roots (3e-7) would add up to a visible error."""
    tolerance = values.max(initial=0) * len(values) * np.finfo(np.float64).eps
    return np.where(values > tolerance, values, 0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The square root of a symmetric positive semi-definite matrix."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(_psd_eigenvalues(values))) @ vectors.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """`|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))` for two Gaussians, in float64.

    `Tr (S1 S2)^(1/2)` is the sum of the square roots of the eigenvalues of `S1^(1/2) S2 S1^(1/2)`, a symmetric
    positive semi-definite matrix with the eigenvalues of `S1 S2`: two symmetric eigendecompositions give it,
    without the complex round-off of a general matrix square root or an epsilon for singular covariances (fewer
    images than feature dimensions)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.ndim != 1:
        raise ValueError(f"mu1 must be a mean vector [D], got shape {list(mu1.shape)}")
    size = len(mu1)
    for name, mu, sigma in (("1", mu1, sigma1), ("2", mu2, sigma2)):
        if mu.shape != (size,) or sigma.shape != (size, size):
            raise ValueError(f"Gaussian {name} must be a mean [{size}] and a covariance [{size}, {size}], got "
                             f"{list(mu.shape)} and {list(sigma.shape)}")
    root = _psd_sqrt((sigma1 + sigma1.T) / 2)  # symmetrised: np.cov's output is symmetric only to round-off
    product = root @ sigma2 @ root
    trace_sqrt = np.sqrt(_psd_eigenvalues(np.linalg.eigvalsh((product + product.T) / 2))).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def fid(features1: ArrayLike, features2: ArrayLike) -> float:
    """FID between two sets of `[N, D]` features (see the module docstring); sets may differ in size."""
    first, second = _features("features1", features1), _features("features2", features2)
    _check_pair(first, second)
    if max(len(first), len(second)) < first.shape[1]:
        return _frechet_distance_of_few(first, second)
    return frechet_distance(*feature_statistics(first), *feature_statistics(second))


def _frechet_distance_of_few(first: np.ndarray, second: np.ndarray) -> float:
    """`frechet_distance` of the two sets' statistics without a `[D, D]` matrix, for sets smaller than D (2048
    features: an evaluation on fewer maps than that, as most here are, costs N^2 D instead of D^3).

    With `S_i = A_i^T A_i` (`A_i`: the centred features / sqrt(N_i - 1)), `S1 S2 = A1^T (A1 A2^T A2)` has the
    non-zero eigenvalues of `(A1 A2^T A2) A1^T = B B^T`, `B = A1 A2^T`: the squared singular values of B. So
    `Tr (S1 S2)^(1/2)` is the sum of B's singular values, and `Tr S_i` the sum of squares of `A_i`."""
    mu1, mu2 = first.mean(axis=0), second.mean(axis=0)
    a1 = (first - mu1) / np.sqrt(len(first) - 1)
    a2 = (second - mu2) / np.sqrt(len(second) - 1)
    trace_sqrt = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.sum(a1 ** 2) + np.sum(a2 ** 2) - 2 * trace_sqrt)


@dataclass(frozen=True)
class Kid:
    mean: float  # over the subsets
    std: float  # of the subsets' estimates (population std): the spread of the subsampling, not a confidence bound
    subsets: int
    subset_size: int  # images drawn from each set, without replacement, per subset


def _mmd2_unbiased(first: np.ndarray, second: np.ndarray) -> float:
    """The unbiased squared MMD of two equal-size samples with the cubic polynomial kernel: within-set means leave
    out the diagonal (each x with itself); the cross term has no such pairs."""
    width, count = first.shape[1], len(first)

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a @ b.T / width + 1) ** 3

    within_first, within_second = kernel(first, first), kernel(second, second)
    off_diagonal = count * (count - 1)
    return float((within_first.sum() - np.trace(within_first)) / off_diagonal
                 + (within_second.sum() - np.trace(within_second)) / off_diagonal
                 - 2 * kernel(first, second).mean())


def check_kid_options(subsets: int, subset_size: int) -> None:
    """Raise `ValueError` unless `kid` can run with these options (callers check before computing features)."""
    if subsets < 1:
        raise ValueError(f"KID subsets must be at least 1, got {subsets}")
    if subset_size < 2:
        raise ValueError(f"KID subset size must be at least 2 (the estimate pairs distinct images), got "
                         f"{subset_size}")


def kid(features1: ArrayLike, features2: ArrayLike, *, subsets: int = KID_SUBSETS,
        subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> Kid:
    """KID between two sets of `[N, D]` features (see the module docstring): `subsets` estimates, each on
    `min(subset_size, N1, N2)` images drawn from each set by a generator seeded with `seed`."""
    check_kid_options(subsets, subset_size)
    first, second = _features("features1", features1), _features("features2", features2)
    _check_pair(first, second)
    size = min(subset_size, len(first), len(second))
    rng = np.random.default_rng(seed)
    estimates = [_mmd2_unbiased(first[rng.choice(len(first), size, replace=False)],
                                second[rng.choice(len(second), size, replace=False)]) for _ in range(subsets)]
    return Kid(float(np.mean(estimates)), float(np.std(estimates)), subsets, size)
