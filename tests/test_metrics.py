"""The metrics' math against closed forms and independent implementations, and the
fastgan-fmnist FID's behaviour on real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastgan.metrics import FeatureStats, frechet_distance, inception_score, kid


def _rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


def test_frechet_closed_forms():
    rng = np.random.default_rng(0)
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1, rel=1e-12)
    # commuting covariances (shared eigenvectors): sum (sqrt(a) - sqrt(b))^2 + |dmu|^2
    d = 40
    q = _rotation(d, 1)
    a, b = rng.uniform(0.1, 5, d), rng.uniform(0.1, 5, d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-10)
    # identical Gaussians, and torch tensors accepted
    assert abs(frechet_distance(torch.tensor(mu1), torch.tensor(s1), mu1, s1)) < 1e-9
    # rank-deficient covariances (fewer samples than dimensions) stay finite and >= 0
    x, y = rng.standard_normal((10, d)), rng.standard_normal((10, d)) + 1
    v = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert np.isfinite(v) and v > 0


@pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")
def test_frechet_matches_pytorch_fid():
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    rng = np.random.default_rng(2)
    for d, n in ((16, 200), (64, 500), (128, 2000)):
        x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3 + 2
        y = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3
        m1, s1 = x.mean(0), np.cov(x, rowvar=False)
        m2, s2 = y.mean(0), np.cov(y, rowvar=False)
        want = fid_score.calculate_frechet_distance(m1, s1, m2, s2)
        assert frechet_distance(m1, s1, m2, s2) == pytest.approx(want, rel=1e-7)


def test_frechet_shape_errors():
    with pytest.raises(ValueError, match="sigma2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


def test_feature_stats_independent_of_batching():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1000, 12)) * 0.01 + 1e4   # |mean| >> std
    results = []
    for bs in (1000, 7, 250):
        st = FeatureStats(12)
        for i in range(0, 1000, bs):
            st.update(torch.tensor(x[i:i + bs]))
        results.append(st.mean_cov())
    centred = x - 1e4   # exact: float64 resolves 1e4 to ~2e-12
    for mu, sigma in results:
        np.testing.assert_allclose(mu - 1e4, centred.mean(0), rtol=0, atol=1e-10)
        np.testing.assert_allclose(sigma, np.cov(centred, rowvar=False), rtol=1e-7, atol=1e-14)
    a, b = results[0][1], results[1][1]
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-13)  # entries ~1e-4; float64 rounding


def _kid_direct(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, written out pair by pair."""
    d, m, n = x.shape[1], len(x), len(y)
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_against_direct_computation():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((30, 5)), rng.standard_normal((30, 5)) * 1.5 + 0.5
    mean, std = kid(x, y, subsets=1, subset_size=30)   # one subset = all of both sets
    assert mean == pytest.approx(_kid_direct(x, y), rel=1e-10) and std == 0
    # subsets: mean of per-subset values, reproducible with the seed
    assert kid(x, y, subsets=5, subset_size=10) == kid(x, y, subsets=5, subset_size=10)
    # two samples of one distribution: near 0; of different ones: clearly positive
    a, b = rng.standard_normal((2, 400, 5))
    near, _ = kid(a, b, subsets=20, subset_size=200)
    far, _ = kid(a, b * 1.5 + 0.5, subsets=20, subset_size=200)
    assert abs(near) < 0.1 * far
    with pytest.raises(ValueError, match="same D|one D"):
        kid(x, y[:, :3])


def test_inception_score_closed_forms():
    k = 10
    uniform = np.full((100, k), 1 / k)
    assert inception_score(uniform, splits=5)[0] == pytest.approx(1.0)
    confident = np.eye(k)[np.arange(100) % k]          # sure of each class, classes balanced
    mean, std = inception_score(confident * (1 - 1e-12) + 1e-13, splits=10)
    assert mean == pytest.approx(k, rel=1e-6) and std < 1e-6
