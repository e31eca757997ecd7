"""The mode metric and class accuracy (fastgan/metrics/modes.py): the rule on synthetic
histograms, then honesty with the shipped classifier both ways (real held-out stacked data
covers ~1000 modes, ten-mode data ~10), class accuracy of real and shuffled labels, and the
`fastgan eval` / `--eval-every` paths."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from fastgan.cli import main
from fastgan.data import load_dataset
from fastgan.data.fashion_mnist import stacked_of_modes
from fastgan.metrics import modes as M
from fastgan.metrics.evaluate import compute_metrics, uint8_batches
from fastgan.metrics.features import joint_probs


def _probs(classes: torch.Tensor, confidence: float) -> torch.Tensor:
    """Channel probabilities (N, C, 10) putting `confidence` on the given classes (N, C)."""
    p = torch.full((*classes.shape, 10), (1 - confidence) / 9, dtype=torch.float64)
    return p.scatter_(-1, classes[..., None], confidence)


def test_mode_numbering_matches_dataset_and_joint_probs():
    triples = torch.tensor([[3, 0, 7], [9, 9, 1], [0, 0, 0]])
    p = _probs(triples, 0.9)
    assert M.joint_labels(p).tolist() == [307, 991, 0]
    assert joint_probs(p).argmax(1).tolist() == [307, 991, 0]
    torch.testing.assert_close(joint_probs(p).sum(1), torch.ones(3, dtype=torch.float64))
    images, modes = stacked_of_modes([307, 991], 2, seed=1)
    assert images.shape == (4, 3, 28, 28) and modes.tolist() == [307, 307, 991, 991]


def test_rule_on_synthetic_histograms():
    uniform = torch.full((1000,), 7)
    assert int(M.covered(uniform).sum()) == 1000
    h = torch.zeros(1000, dtype=torch.long)
    h[[123, 456]] = 1000
    h[124] = 149      # 14.9% of its neighbour 123 (third channel differs): leakage
    h[133] = 151      # 15.1% of 123 (second channel): a mode
    h[457] = 40       # a neighbour of 456
    h[789] = 1        # one image, no big neighbour: a mode
    assert torch.nonzero(M.covered(h)).flatten().tolist() == [123, 133, 456, 789]
    # two channels away is not a neighbour: 0 (0,0,0) is not compared with 123 (1,2,3)
    h[0] = 1
    assert bool(M.covered(h)[0])


def test_mode_metrics_confidence_and_kl():
    g = torch.Generator().manual_seed(0)
    classes = torch.randint(10, (5000, 3), generator=g)
    p = _probs(classes, 0.95)
    p[:1000, 1] = _probs(classes[:1000, 1], 0.5)  # 1000 images with one unsure channel
    res = M.mode_metrics(p)
    assert res["modes_counted"] == pytest.approx(0.8)
    counts = torch.bincount(M.joint_labels(p)[1000:], minlength=1000)
    assert res["modes"] == int(M.covered(counts).sum()) > 850  # 4 a mode: a few missed
    q = counts[counts > 0].double() / 4000
    assert res["modes_kl"] == pytest.approx(float((q * (q * 1000).log()).sum()))
    assert abs(res["modes_uniform"] - res["modes"]) < 20  # 4000 uniform draws: as many
    ten = _probs(torch.tensor([[c, c, c] for c in range(10)] * 30), 0.99)
    res = M.mode_metrics(ten)
    assert res["modes"] == 10 and res["modes_kl"] == pytest.approx(math.log(100))
    assert M.uniform_modes(100) < 100 and M.uniform_modes(100_000) == 1000
    none = M.mode_metrics(_probs(classes[:10], 0.3))
    assert none["modes"] == 0 and none["modes_counted"] == 0 and none["modes_uniform"] == 0
    with pytest.raises(ValueError, match=r"\(N, 3, 10\)"):
        M.mode_metrics(p[:, :1])


def _modes(images: torch.Tensor) -> dict:
    return compute_metrics(uint8_batches(images), None, None, ("modes",))


def test_modes_honest_both_ways():
    """The shipped classifier (92% per channel) through `fastgan eval`'s path: the 10,000
    held-out stacked test images cover >= 95% of the modes, nearly uniformly; 10,000 images
    of 10 random modes count 10 to 12 (scripts/check_mode_metric.py: 10 or 11 in 10 draws),
    of the 10 hardest-to-tell modes (c, c, c) at most 15."""
    real = _modes(load_dataset("stacked-fashion-mnist", 32, "test"))
    assert real["modes"] >= 950 and real["modes_kl"] < 0.15, real   # measured 983, 0.091
    ten = torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:10].tolist()
    few = _modes(torch.nn.functional.pad(stacked_of_modes(ten, 1000, seed=0)[0], (2, 2, 2, 2)))
    assert 10 <= few["modes"] <= 12, few
    assert abs(few["modes_kl"] - math.log(100)) < 0.7, few                # measured 4.09
    diag = stacked_of_modes([111 * c for c in range(10)], 1000, seed=0)[0]
    assert 10 <= _modes(torch.nn.functional.pad(diag, (2, 2, 2, 2)))["modes"] <= 15


def _npz(path, images: torch.Tensor, labels: torch.Tensor) -> str:
    np.savez(path, images=images.permute(0, 2, 3, 1).numpy(), labels=labels.numpy())
    return str(path)


def test_class_accuracy_of_real_and_shuffled_labels(tmp_path, capsys):
    images, labels = load_dataset("fashion-mnist", 32, "test", labels=True)
    images, labels = images[:2000], labels[:2000]
    js = str(tmp_path / "a.json")
    assert main(["eval", "--images", _npz(tmp_path / "t.npz", images, labels), "--metrics",
                 "accuracy", "--json", js]) == 0
    res = json.load(open(js))
    assert 0.9 < res["class_accuracy"] < 0.95 and "fid" not in res and "reference" not in res
    assert "class accuracy" in capsys.readouterr().out
    shuffled = labels[torch.randperm(2000, generator=torch.Generator().manual_seed(0))]
    assert main(["eval", "--images", _npz(tmp_path / "s.npz", images, shuffled), "--metrics",
                 "accuracy", "--json", js]) == 0
    assert 0.07 < json.load(open(js))["class_accuracy"] < 0.13
    # errors: no labels, modes of 1-channel images
    np.savez(tmp_path / "n.npz", images=images.permute(0, 2, 3, 1).numpy())
    capsys.readouterr()
    for argv, needle in (
            (["--images", str(tmp_path / "n.npz"), "--metrics", "accuracy"], "no `labels`"),
            (["--images", str(tmp_path / "t.npz"), "--metrics", "modes"], "3-channel"),
            (["--images", str(tmp_path), "--metrics", "accuracy"], "needs labels")):
        assert main(["eval", *argv]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err


def test_eval_every_on_stacked_conditional_data(tmp_path, monkeypatch):
    """--eval-every on stacked-fashion-mnist with --conditional adds modes, modes_kl and
    class_accuracy (of the 1000 mode classes) to metrics.jsonl and panels to losses.png;
    `fastgan eval RUN --metrics modes,accuracy` gives the same kind of numbers. (A 1,024-image
    cut of the data and 500 samples keep it quick; its own statistics cache.)"""
    import fastgan.data
    import fastgan.train.loop as loop
    from fastgan.data.fashion_mnist import load_stacked_fashion_mnist
    from fastgan.train import TrainConfig, train

    small = [t[:1024] for t in load_stacked_fashion_mnist("train")]
    monkeypatch.setattr(fastgan.data, "load_stacked_fashion_mnist", lambda split: small)
    monkeypatch.setenv("FASTGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(loop, "EVAL_N", 500)
    out = str(tmp_path / "run")
    cfg = TrainConfig(data="stacked-fashion-mnist", conditional=True, image_size=16, ngf=8,
                      ndf=8, nz=16, batch_size=8, steps=2, eval_every=2, log_every=1,
                      sample_every=0, ckpt_every=0, device="cpu", out=out)
    assert train(cfg, quiet=True) == 0
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rec = [json.loads(line) for line in f][-1]
    assert {"fid", "modes", "modes_kl", "modes_counted", "class_accuracy"} <= set(rec), rec
    assert 0 <= rec["modes"] <= 1000 and 0 <= rec["class_accuracy"] <= 1
    assert os.path.getsize(os.path.join(out, "losses.png")) > 0
    js = str(tmp_path / "m.json")
    assert main(["eval", out, "--n", "200", "--metrics", "modes,accuracy,fid", "--json", js]) == 0
    res = json.load(open(js))
    assert res["features"] == "fastgan-fmnist-stacked" and {"modes", "class_accuracy"} <= set(res)
