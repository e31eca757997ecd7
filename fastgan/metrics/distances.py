"""The math of FID, KID and IS, in float64 and independent of the batch size.

- `FeatureStats` accumulates feature means and covariances batch by batch with Chan et
  al.'s pairwise merge of (count, mean, centred scatter) in float64, so the result does
  not depend on how the features were batched (beyond float64 rounding), and never forms
  a raw sum of squares (which loses everything when |mean| >> std).
- `frechet_distance` (Heusel et al. 2017) takes the trace of the matrix square root
  through two symmetric eigendecompositions: tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2),
  where the inner matrix is symmetric positive semi-definite, so no complex parts, no
  iterative sqrtm and no "singular product" retries; negative eigenvalues from rounding
  are clipped to 0.
- `kid` is the unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3 over random
  subsets (Binkowski et al. 2018), mean and standard deviation over the subsets.
- `inception_score` is exp(E_x KL(p(y|x) || p(y))) per split (Salimans et al. 2016), mean
  and standard deviation over the splits.
"""

from __future__ import annotations

import numpy as np
import torch


def _f64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


class FeatureStats:
    """Running count, mean and centred scatter (sum of outer products of deviations) of
    D-dimensional features, in float64."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self.mean = np.zeros(dim)
        self.scatter = np.zeros((dim, dim))

    def update(self, features) -> None:
        x = _f64(features).reshape(-1, self.dim)
        nb = x.shape[0]
        if nb == 0:
            return
        mb = x.mean(0)
        d = x - mb
        sb = d.T @ d
        n = self.n + nb
        delta = mb - self.mean
        self.scatter += sb + np.outer(delta, delta) * (self.n * nb / n)
        self.mean += delta * (nb / n)
        self.n = n

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma): the mean and the unbiased covariance (as np.cov)."""
        if self.n < 2:
            raise ValueError(f"FeatureStats: need at least 2 samples for a covariance, got {self.n}")
        return self.mean.copy(), self.scatter / (self.n - 1)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2): the Fréchet distance between
    the Gaussians N(mu1, S1) and N(mu2, S2), computed in float64."""
    mu1, mu2 = _f64(mu1).reshape(-1), _f64(mu2).reshape(-1)
    s1, s2 = np.atleast_2d(_f64(sigma1)), np.atleast_2d(_f64(sigma2))
    d = mu1.shape[0]
    for name, m in (("mu2", mu2), ("sigma1", s1), ("sigma2", s2)):
        want = (d,) if name == "mu2" else (d, d)
        if m.shape != want:
            raise ValueError(f"frechet_distance: {name} has shape {m.shape}, expected {want} "
                             f"(mu1 has {d} dimensions)")
    r1 = _sqrt_psd(s1)
    inner = r1 @ s2 @ r1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _poly_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = x.shape[0], y.shape[0]
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.sum() / (m * n))


def kid(features1, features2, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, std) over `subsets` random subsets of
    min(subset_size, n1, n2) features from each set (drawn without replacement, seeded) of
    the unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3."""
    x, y = _f64(features1), _f64(features2)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"kid: expected two (N, D) feature arrays of one D, got {x.shape} "
                         f"and {y.shape}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"kid: need at least 2 features in each set, got {x.shape[0]} and "
                         f"{y.shape[0]}")
    if subsets < 1:
        raise ValueError(f"kid: subsets must be >= 1, got {subsets}")
    rng = np.random.default_rng(seed)
    vals = [_poly_mmd2(x[rng.choice(x.shape[0], m, replace=False)],
                       y[rng.choice(y.shape[0], m, replace=False)]) for _ in range(subsets)]
    return float(np.mean(vals)), float(np.std(vals))


def inception_score(probs, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over `splits` consecutive splits of exp(mean KL(p(y|x) || p(y)))."""
    p = _f64(probs)
    if p.ndim != 2 or p.shape[0] < splits or splits < 1:
        raise ValueError(f"inception_score: expected (N, classes) probabilities with N >= "
                         f"splits = {splits}, got shape {p.shape}")
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(0, keepdims=True)
        kl = (part * (np.log(np.clip(part, 1e-30, None)) - np.log(np.clip(py, 1e-30, None)))).sum(1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


__all__ = ["FeatureStats", "frechet_distance", "kid", "inception_score"]
