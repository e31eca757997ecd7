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


# --- feature networks and fastgan eval --------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402

from fastgan.cli import main  # noqa: E402
from fastgan.errors import UserError  # noqa: E402
from fastgan.metrics import evaluate  # noqa: E402
from fastgan.metrics.features import get_extractor  # noqa: E402


class _StandInInception(torch.nn.Module):
    """The call interface of the TorchScript inception-2015-12-05.pt (uint8 RGB in; 2048
    features with return_features=True, 1008 probabilities with no_output_bias=True)."""

    def forward(self, x: torch.Tensor, return_features: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        f = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1)
        f = f.repeat(1, 43)[:, :2048]
        if return_features:
            return f
        return torch.softmax(f[:, :1008] * 10, 1)


@pytest.fixture(scope="module")
def standin_weights(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("w") / "inception-2015-12-05.pt")
    import warnings

    with warnings.catch_warnings():  # the real file is TorchScript, deprecated or not
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(_StandInInception()).save(path)
    return path


def test_inception_torchscript_path(standin_weights):
    ex = get_extractor("inception", standin_weights)
    assert ex.name == "Inception" and ex.dim == 2048 and ex.key.startswith("inception-ts-")
    imgs = torch.randint(0, 256, (5, 1, 32, 32), dtype=torch.uint8)   # gray -> RGB
    f, p = ex(imgs, probs=True)
    assert f.shape == (5, 2048) and f.dtype == torch.float64
    assert p.shape == (5, 1008) and torch.allclose(p.sum(1), torch.ones(5, dtype=torch.float64))


def test_inception_needs_a_file(tmp_path):
    with pytest.raises(UserError, match="inception-2015-12-05.pt"):
        get_extractor("inception")
    with pytest.raises(UserError, match="no such file"):
        get_extractor("inception", str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"junk")
    with pytest.raises(UserError, match="junk.pth"):
        get_extractor("inception", str(junk))
    with pytest.raises(UserError, match="--features"):
        get_extractor("resnet")


@pytest.fixture(scope="module")
def fmnist():
    from fastgan.data import load_dataset

    return load_dataset("fashion-mnist", 32, split="test"), get_extractor("fastgan-fmnist")


def _fid(images, ref, ex):
    return evaluate.compute_metrics(evaluate.uint8_batches(images), ref, ex, ("fid",))["fid"]


def test_fid_orders_real_degraded_and_noise(fmnist):
    """Against the train split: the test split is close, a blurred copy of it farther,
    noise far; the reference statistics are cached and reused."""
    test, ex = fmnist
    ref = evaluate.reference_stats("fashion-mnist", "train", 32, ex, quiet=True)
    assert int(ref["n"]) == 60000 and ref["mu"].shape == (ex.dim,)
    assert len(os.listdir(evaluate.cache_dir())) >= 1
    again = evaluate.reference_stats("fashion-mnist", "train", 32, ex, quiet=True)
    np.testing.assert_array_equal(again["sigma"], ref["sigma"])
    real = _fid(test, ref, ex)
    blurred = torch.nn.functional.avg_pool2d(test.float(), 3, 1, 1).round().to(torch.uint8)
    degraded = _fid(blurred, ref, ex)
    noise = _fid(torch.randint(0, 256, test.shape, dtype=torch.uint8), ref, ex)
    assert real < degraded < noise, (real, degraded, noise)
    assert real < 0.05 * noise


def test_fid_independent_of_batch_size(fmnist, monkeypatch):
    test, ex = fmnist
    ref = evaluate.reference_stats("fashion-mnist", "train", 32, ex, quiet=True)
    a = _fid(test[:3000], ref, ex)
    monkeypatch.setattr(evaluate, "BATCH", 37)
    b = _fid(test[:3000], ref, ex)
    assert a == pytest.approx(b, rel=1e-6)


def test_fastgan_eval_cli(tmp_path, standin_weights, capsys):
    from fastgan.train import TrainConfig, train

    out = str(tmp_path / "run")
    cfg = TrainConfig(image_size=16, ngf=8, ndf=8, nz=16, batch_size=16, steps=2, out=out,
                      log_every=1, sample_every=0, ckpt_every=0, device="cpu")
    assert train(cfg, quiet=True) == 0
    js = str(tmp_path / "m.json")
    assert main(["eval", out, "--n", "500", "--json", js]) == 0
    res = json.load(open(js))
    assert {"fid", "kid", "kid_std", "is", "is_std"} <= set(res)
    assert res["features"] == "fastgan-fmnist" and res["reference"]["n"] == 60000
    printed = capsys.readouterr().out
    assert "FID (fastgan-fmnist)" in printed and "not with published Inception" in printed
    # images from an npz, against the built-in test split, Inception from a local file
    npz = str(tmp_path / "s.npz")
    assert main(["sample", out, "--n", "40", "--npz", npz]) == 0
    assert main(["eval", "--images", npz, "--image-size", "16", "--split", "test", "--metrics",
                 "fid,is", "--features", "inception", "--weights", standin_weights,
                 "--json", js]) == 0
    res = json.load(open(js))
    assert res["features"] == "Inception" and "kid" not in res and res["n"] == 40
    capsys.readouterr()
    for argv, needle in ((["eval"], "either a checkpoint"),
                         (["eval", out, "--metrics", "fid,lpips"], "--metrics"),
                         (["eval", out, "--features", "inception"], "--weights PATH")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err


def test_inception_pytorch_fid_path(tmp_path, monkeypatch):
    """pytorch-fid's weights file, end to end through pytorch-fid's own network: a file
    with its FID Inception's keys (random weights: the real file is not here) loads
    without any download, and gives 2048-d pool3 features of uint8 images."""
    pfi = pytest.importorskip("pytorch_fid.inception")
    with monkeypatch.context() as m:   # build pytorch-fid's network without its weights
        m.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None)
        state = pfi.fid_inception_v3().state_dict()
    path = str(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    torch.save(state, path)

    def no_download(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(pfi, "load_state_dict_from_url", no_download)
    ex = get_extractor("inception", path)
    assert ex.key.startswith("inception-pfid-") and not ex.has_probs
    assert pfi.load_state_dict_from_url is no_download     # restored after loading
    f, p = ex(torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8))
    assert f.shape == (2, 2048) and p is None and torch.isfinite(f).all()
    with pytest.raises(UserError, match="TorchScript"):
        ex(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), probs=True)
