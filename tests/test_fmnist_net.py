"""fastgan.metrics.fmnist_net, the feature network of the offline metrics: the shipped weights
(their checksum, their test accuracy), the network's outputs, `prepare`, the loader's errors,
and the bitwise determinism of scripts/train_feature_net.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from fastgan.data import load_dataset, load_fashion_mnist, to_float
from fastgan.metrics.fmnist_net import (FEATURE_DIM, NAME, WEIGHTS_FILE, FmnistNet, load_fmnist_net,
                                        prepare, sha256_file)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train_feature_net.py")
META_FILE = os.path.splitext(WEIGHTS_FILE)[0] + ".json"


@pytest.fixture(scope="module")
def meta() -> dict:
    with open(META_FILE) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def net() -> FmnistNet:
    return load_fmnist_net()


def test_shipped_weights_match_their_record(meta, net):
    assert sha256_file(WEIGHTS_FILE) == meta["sha256"]
    assert meta["name"] == NAME == "fastgan-fmnist"
    assert meta["feature_dim"] == FEATURE_DIM == 128
    assert not net.training
    params = sum(p.numel() for p in net.parameters())
    assert params * 4 < 1_000_000  # fp32 bytes: small enough to ship in the package
    state = torch.load(WEIGHTS_FILE, weights_only=True)
    assert all(v.dtype == torch.float32 for k, v in state.items()
               if not k.endswith("num_batches_tracked"))


def test_test_accuracy(meta, net):
    # The images as the net was trained on them (28x28 padded to 32), in the script's batches
    # of 1000, so that the sums and hence the predictions are the script's.
    images = load_dataset("fashion-mnist", 32, split="test")
    _, labels = load_fashion_mnist("test")
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(images), 1000):
            correct += int((net(prepare(images[i:i + 1000])).argmax(1) == labels[i:i + 1000]).sum())
    acc = correct / len(images)
    assert acc >= 0.90
    # One image of 10,000 may flip where another CPU rounds a near-tie the other way.
    assert abs(acc - meta["test_accuracy"]) <= 1e-4 + 1e-12


def test_features_and_logits(net):
    x = prepare(load_dataset("fashion-mnist", 32, split="test")[:64])
    with torch.inference_mode():
        features, logits = net.features_and_logits(x)
        assert features.shape == (64, FEATURE_DIM) and features.dtype == torch.float32
        assert logits.shape == (64, 10) and logits.dtype == torch.float32
        assert (features >= 0).all()  # averages of ReLU outputs
        torch.testing.assert_close(logits, net(x))


def test_prepare_uint8_equals_float():
    g = torch.Generator().manual_seed(0)
    for c, s in ((1, 32), (3, 32), (1, 64), (3, 16)):
        images = torch.randint(0, 256, (4, c, s, s), dtype=torch.uint8, generator=g)
        out = prepare(images)
        assert out.shape == (4, 1, 32, 32) and out.dtype == torch.float32
        assert out.min() >= -1 and out.max() <= 1
        # to_float is how the generator's [-1, 1] range relates to uint8 images.
        assert torch.equal(out, prepare(to_float(images, "cpu")))


def test_prepare_rgb_is_luma():
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
    r, gr, b = (rgb[:, i:i + 1].double() / 255 for i in range(3))
    want = (0.299 * r + 0.587 * gr + 0.114 * b) * 2 - 1
    torch.testing.assert_close(prepare(rgb).double(), want, atol=1e-6, rtol=0)
    gray = rgb[:, :1]
    torch.testing.assert_close(prepare(gray.expand(-1, 3, -1, -1)), prepare(gray), atol=1e-6, rtol=0)


def test_prepare_resizes_to_32():
    # Left half white, right half black at 64x64: a 32x32 image with the same halves, apart
    # from the antialiasing filter's blur across the edge.
    images = torch.zeros(2, 1, 64, 64, dtype=torch.uint8)
    images[..., :32] = 255
    out = prepare(images)
    assert out.shape == (2, 1, 32, 32)
    torch.testing.assert_close(out[..., :15], torch.ones(2, 1, 32, 15))
    torch.testing.assert_close(out[..., 17:], -torch.ones(2, 1, 32, 15))
    x = torch.randn(2, 1, 64, 64)
    want = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True,
                                           align_corners=False).clamp(-1, 1)
    torch.testing.assert_close(prepare(x), want)


def test_prepare_clamps_and_rejects():
    x = torch.full((1, 1, 32, 32), 1.5)
    assert torch.equal(prepare(x), torch.ones(1, 1, 32, 32))
    assert x[0, 0, 0, 0] == 1.5  # the caller's tensor untouched
    with pytest.raises(TypeError, match="uint8"):
        prepare(torch.zeros(1, 1, 32, 32, dtype=torch.int64))
    for shape in ((1, 2, 32, 32), (1, 1, 32, 16), (1, 32, 32)):
        with pytest.raises(ValueError, match="square images"):
            prepare(torch.zeros(shape))


def test_training_is_bitwise_deterministic(tmp_path):
    pts = []
    for run in ("a", "b"):
        out = tmp_path / run
        cmd = [sys.executable, SCRIPT, "--limit", "256", "--epochs", "1", "--out", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "epoch 1/1" in r.stdout
        with open(out / "fmnist_net.json") as f:
            record = json.load(f)
        assert record["sha256"] == sha256_file(str(out / "fmnist_net.pt"))
        assert record["train_images"] == 256 and record["epochs"] == 1 and record["seed"] == 0
        pts.append((out / "fmnist_net.pt").read_bytes())
    assert pts[0] == pts[1]
    load_fmnist_net(path=str(tmp_path / "a" / "fmnist_net.pt"))  # its own record vouches for it


def test_corrupt_or_missing_weights_are_a_clear_error(tmp_path):
    pt, meta = tmp_path / "fmnist_net.pt", tmp_path / "fmnist_net.json"
    shutil.copy(WEIGHTS_FILE, pt)
    shutil.copy(META_FILE, meta)
    load_fmnist_net(path=str(pt))
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match=re.escape(f"{pt}: the feature network's weights have")):
        load_fmnist_net(path=str(pt))
    pt.unlink()
    with pytest.raises(RuntimeError, match=re.escape(f"{pt}: cannot read")):
        load_fmnist_net(path=str(pt))
    meta.unlink()
    with pytest.raises(RuntimeError, match=re.escape(f"{meta}: cannot read")):
        load_fmnist_net(path=str(pt))
