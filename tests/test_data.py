"""fastgan.data: the shipped Fashion-MNIST files, the loaders of `--data` (built-in,
image folders, .npz), their errors, fit_to_size, and the resumable batch stream."""

from __future__ import annotations

import gzip
import hashlib
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fastgan.data import (BUILTIN_DATASETS, Batches, fit_to_size, load_dataset, load_fashion_mnist,
                          load_image_folder, load_npz, to_float)
from fastgan.data.fashion_mnist import DEFAULT_ROOT, FILES
from fastgan.errors import UserError


@pytest.fixture(scope="module")
def fmnist_train():
    t0 = time.perf_counter()
    images, labels = load_fashion_mnist("train")
    seconds = time.perf_counter() - t0
    print(f"\nFashion-MNIST train (60,000 images) loaded in {seconds:.3f} s")
    assert seconds < 5
    return images, labels


# ---------------------------------------------------------------------------- Fashion-MNIST


def test_shipped_files_match_sha256sums():
    with open(os.path.join(DEFAULT_ROOT, "SHA256SUMS")) as f:
        sums = dict(reversed(line.split()) for line in f)
    assert sorted(sums) == sorted(name for pair in FILES.values() for name in pair)
    for name, digest in sums.items():
        with open(os.path.join(DEFAULT_ROOT, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, name
    assert os.path.isfile(os.path.join(DEFAULT_ROOT, "LICENSE"))


def test_fashion_mnist_splits(fmnist_train):
    images, labels = fmnist_train
    assert images.shape == (60000, 1, 28, 28) and images.dtype == torch.uint8
    assert images.is_contiguous()
    assert labels.shape == (60000,) and labels.dtype == torch.int64
    assert labels.min() == 0 and labels.max() == 9
    assert images.max() == 255 and images.float().mean() > 50  # real pictures, not zeros
    test_images, test_labels = load_fashion_mnist("test")
    assert test_images.shape == (10000, 1, 28, 28) and test_labels.shape == (10000,)
    assert test_labels.bincount().tolist() == [1000] * 10


def test_stacked_fashion_mnist(fmnist_train):
    """3 channels, each an independent image of the split: every image once per channel,
    labels 100 a + 10 b + c of the channels' classes, all 1000 modes, the same images on
    every call; the test split from the test images; 'stacked-fmnist' an alias."""
    images, labels = fmnist_train
    x, modes = load_dataset("stacked-fashion-mnist", 32, labels=True)
    assert x.shape == (60000, 3, 32, 32) and x.dtype == torch.uint8 and modes.shape == (60000,)
    assert torch.equal(x, load_dataset("stacked-fmnist", 32))
    inner = x[:, :, 2:30, 2:30].reshape(60000, 3, -1)
    flat = images.reshape(60000, -1)
    first = {bytes(r.numpy()): i for i, r in enumerate(flat[:300])}
    for k in range(3):  # each channel a permutation of the split (checked on its classes)
        assert torch.bincount(modes // 10 ** (2 - k) % 10).tolist() == labels.bincount().tolist()
        hits = [first.get(bytes(r.numpy())) for r in inner[:, k]]
        found = [(i, j) for i, j in enumerate(hits) if j is not None]
        assert len(found) >= 300  # (duplicate images exist in Fashion-MNIST)
        for i, j in found[:50]:
            assert modes[i] // 10 ** (2 - k) % 10 == labels[j]
    channel_classes = torch.stack([modes // 100, modes // 10 % 10, modes % 10])
    corr = torch.corrcoef(channel_classes.double())
    assert (corr - torch.eye(3)).abs().max() < 0.02  # independent channels
    assert modes.bincount(minlength=1000).min() > 20
    xt, mt = load_dataset("stacked-fashion-mnist", 32, "test", labels=True)
    assert xt.shape == (10000, 3, 32, 32) and (mt.bincount(minlength=1000) > 0).all()
    assert "stacked-fashion-mnist" in BUILTIN_DATASETS


def _copy_fmnist(tmp_path):
    for pair in FILES.values():
        for name in pair:
            with open(os.path.join(DEFAULT_ROOT, name), "rb") as f:
                (tmp_path / name).write_bytes(f.read())


def test_fashion_mnist_corrupt_files(tmp_path):
    _copy_fmnist(tmp_path)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz.*corrupt"):
        load_fashion_mnist("test", root=str(tmp_path))
    # wrong magic number: a labels file where images are expected
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(
        (tmp_path / "train-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz.*magic number 2049, expected 2051"):
        load_fashion_mnist("test", root=str(tmp_path))
    # truncated data
    raw = gzip.decompress((tmp_path / "train-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz.*59990 data bytes"):
        load_fashion_mnist("train", root=str(tmp_path))
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(UserError, match="train-images-idx3-ubyte.gz: Fashion-MNIST file missing"):
        load_fashion_mnist("train", root=str(tmp_path))


def test_load_dataset_fashion_mnist_padded_to_32(fmnist_train):
    raw = fmnist_train[0]
    assert BUILTIN_DATASETS == ("fashion-mnist", "stacked-fashion-mnist")
    x = load_dataset("fashion-mnist", 32)
    assert x.shape == (60000, 1, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
    assert torch.equal(x[:, :, 2:30, 2:30], raw)
    border = x.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.count_nonzero() == 0
    assert load_dataset("FMNIST", 32, split="test").shape == (10000, 1, 32, 32)


# ---------------------------------------------------------------------------- fit_to_size


def test_fit_to_size():
    x = torch.randint(0, 256, (5, 3, 20, 20), dtype=torch.uint8)
    assert fit_to_size(x, 20) is x
    flat = torch.full((2, 1, 24, 40), 77, dtype=torch.uint8)  # non-square, constant
    y = fit_to_size(flat, 16)
    assert y.shape == (2, 1, 16, 16) and y.dtype == torch.uint8 and (y == 77).all()
    # a left/right split survives the short-side resize and center crop of a wide image
    wide = torch.zeros((1, 1, 32, 64), dtype=torch.uint8)
    wide[..., 32:] = 200
    z = fit_to_size(wide, 16)
    assert (z[..., :, :6] == 0).all() and (z[..., :, 10:] == 200).all()
    # upscaling a square keeps the mean (bilinear, rounding back to uint8)
    up = fit_to_size(x, 64)
    assert up.shape == (5, 3, 64, 64)
    assert abs(up.float().mean() - x.float().mean()) < 2


# ---------------------------------------------------------------------------- image folders


def _save(path, size, color, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_image_folder_rgb_nested(tmp_path):
    # a red square in the middle of a wide blue image: the center crop keeps the red
    img = Image.new("RGB", (120, 60), (0, 0, 255))
    img.paste((255, 0, 0), (40, 10, 80, 50))
    (tmp_path / "a" / "b").mkdir(parents=True)
    img.save(tmp_path / "a" / "b" / "wide.PNG")
    _save(tmp_path / "a" / "c.jpg", (40, 70), (0, 255, 0))
    _save(tmp_path / "z.JPEG", (16, 16), (10, 20, 30))
    _save(tmp_path / "rgba.png", (33, 33), (255, 255, 0, 128), mode="RGBA")
    Image.new("P", (20, 20), 0).save(tmp_path / "palette.png")
    (tmp_path / "notes.txt").write_text("not an image")
    x = load_image_folder(str(tmp_path), 16)
    assert x.shape == (5, 3, 16, 16) and x.dtype == torch.uint8 and x.is_contiguous()
    # sorted paths: a/b/wide.PNG, a/c.jpg, palette.png, rgba.png, z.JPEG
    wide = x[0]
    assert wide[:, 8, 8].tolist() == [255, 0, 0]  # the red square fills the center
    assert wide[0, 8, 0] < 60 and wide[2, 8, 0] > 200  # blue at the crop's left edge
    green = x[1].float().mean(dim=(1, 2))
    assert green[1] > 240 and green[0] < 15 and green[2] < 15  # JPEG: approximately
    assert (x[4].float().mean(dim=(1, 2)) - torch.tensor([10.0, 20, 30])).abs().max() < 3
    assert torch.equal(load_dataset(str(tmp_path), 16), x)


def test_image_folder_grayscale(tmp_path):
    _save(tmp_path / "g1.png", (30, 20), 100, mode="L")
    _save(tmp_path / "sub" / "g2.jpg", (20, 20), 200, mode="L")
    x = load_dataset(str(tmp_path), 16)
    assert x.shape == (2, 1, 16, 16)
    assert (x[0] == 100).all() and (x[1].float() - 200).abs().max() <= 2


def test_image_folder_progress_bar(tmp_path, monkeypatch, capsys):
    pytest.importorskip("tqdm")
    monkeypatch.setattr("fastgan.data.images.PROGRESS_MIN_FILES", 2)
    for i in range(3):
        _save(tmp_path / f"{i}.png", (16, 16), (i, i, i))
    assert load_image_folder(str(tmp_path), 16).shape == (3, 3, 16, 16)
    assert "3/3" in capsys.readouterr().err


# ---------------------------------------------------------------------------- npz


def test_npz(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (4, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "gray.npz", images=gray)
    x = load_dataset(str(tmp_path / "gray.npz"), 16)
    assert x.shape == (4, 1, 16, 16) and torch.equal(x[:, 0], torch.from_numpy(gray))
    rgb = np.random.default_rng(1).integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    np.savez_compressed(tmp_path / "rgb.npz", images=rgb, labels=np.arange(3))
    y = load_npz(str(tmp_path / "rgb.npz"), 32)
    assert y.shape == (3, 3, 32, 32) and y.dtype == torch.uint8 and y.is_contiguous()
    same = load_npz(str(tmp_path / "rgb.npz"), 16)
    assert same.shape == (3, 3, 16, 16)
    fm = np.zeros((2, 28, 28), np.uint8)
    np.savez(tmp_path / "fm.npz", images=fm + 9)
    padded = load_npz(str(tmp_path / "fm.npz"), 32)
    assert padded.shape == (2, 1, 32, 32) and padded[0, 0, 0, 0] == 0 and padded[0, 0, 2, 2] == 9


# ---------------------------------------------------------------------------- bad inputs


def test_bad_inputs(tmp_path):
    def raises(match, spec, size=16):
        with pytest.raises(UserError, match=match):
            load_dataset(str(spec), size)

    raises(r"--data: .*nowhere.*expected fashion-mnist, stacked-fashion-mnist, a folder",
           tmp_path / "nowhere")
    raises(r"--data: 'mnist' is not a built-in", "mnist")
    (tmp_path / "file.txt").write_text("x")
    raises(r"--data: .*file.txt is neither a folder nor an .npz", tmp_path / "file.txt")
    for size in (0, 15, 24, 48, 100, 31.0):
        raises(rf"--image-size: got {size}, expected a power of two >= 16", "fashion-mnist", size)

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    raises(f"--data: no PNG or JPEG images under {empty}", empty)
    with pytest.raises(UserError, match="does not exist"):
        load_image_folder(str(tmp_path / "gone"), 16)

    corrupt = tmp_path / "corrupt"
    _save(corrupt / "ok.png", (16, 16), (1, 2, 3))
    (corrupt / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    raises(r"--data: cannot read image .*broken.jpg", corrupt)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    Image.effect_noise((64, 64), 50).convert("RGB").save(truncated / "t.png")
    data = (truncated / "t.png").read_bytes()
    (truncated / "t.png").write_bytes(data[: len(data) // 2])
    raises(r"--data: cannot read image .*t.png", truncated)

    deep = tmp_path / "deep"
    deep.mkdir()
    Image.fromarray(np.full((16, 16), 4096, np.uint16)).save(deep / "i16.png")
    raises(r"^--data: \S*i16.png is a 16/32-bit image \(mode I;16\); convert it to 8-bit", deep)

    mixed = tmp_path / "mixed"
    _save(mixed / "a_gray.png", (16, 16), 5, mode="L")
    _save(mixed / "b_rgb.png", (16, 16), (5, 6, 7))
    raises(r"mixes grayscale and color images \(e.g. .*a_gray.png is grayscale, .*b_rgb.png is RGB\); "
           "convert them", mixed)

    raises(r"--data: .*missing.npz does not exist", tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    raises(r"--data: .*text.npz is not a readable .npz", tmp_path / "text.npz")
    np.save(tmp_path / "plain.npy", np.zeros((2, 16, 16), np.uint8))
    os.rename(tmp_path / "plain.npy", tmp_path / "plain.npz")
    raises(r"--data: .*plain.npz is not an .npz archive", tmp_path / "plain.npz")
    np.savez(tmp_path / "nokey.npz", x=np.zeros((2, 16, 16), np.uint8), y=np.zeros(2))
    raises(r"nokey.npz has no `images` array \(found: x, y\)", tmp_path / "nokey.npz")
    np.savez(tmp_path / "float.npz", images=np.zeros((2, 16, 16), np.float32))
    raises(r"float.npz: `images` has dtype float32; expected uint8", tmp_path / "float.npz")
    np.savez(tmp_path / "chw.npz", images=np.zeros((2, 3, 16, 16), np.uint8))
    raises(r"chw.npz: `images` has shape \(2, 3, 16, 16\)", tmp_path / "chw.npz")
    np.savez(tmp_path / "flat.npz", images=np.zeros((2, 256), np.uint8))
    raises(r"flat.npz: `images` has shape \(2, 256\)", tmp_path / "flat.npz")
    np.savez(tmp_path / "none.npz", images=np.zeros((0, 16, 16), np.uint8))
    raises(r"none.npz: `images` holds no images", tmp_path / "none.npz")


# ---------------------------------------------------------------------------- Batches


def _ids(n=103):
    """Images whose first pixel is their index (n <= 256), so a batch names its images."""
    x = torch.zeros((n, 1, 2, 2), dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return x


def _take(batches, k):
    return [batches.next()[:, 0, 0, 0].tolist() for _ in range(k)]


def test_batches_epochs_and_seed():
    data = _ids()
    b = Batches(data, 10, seed=3)
    assert b.batches_per_epoch == 10
    batch = b.next()
    assert batch.shape == (10, 1, 2, 2) and batch.dtype == torch.uint8
    epoch0 = [batch[:, 0, 0, 0].tolist()] + _take(b, 9)
    seen = sum(epoch0, [])
    assert len(set(seen)) == 100  # no repetition; 3 of the 103 images dropped this epoch
    assert b.state_dict() == {"epoch": 1, "index": 0, "seed": 3}
    epoch1 = _take(b, 10)
    assert len(set(sum(epoch1, []))) == 100 and epoch1 != epoch0
    assert _take(Batches(data, 10, seed=3), 20) == epoch0 + epoch1
    assert _take(Batches(data, 10, seed=4), 10) != epoch0
    torch.manual_seed(123)  # the global RNG plays no part
    assert _take(Batches(data, 10, seed=3), 10) == epoch0
    assert [x[:, 0, 0, 0].tolist() for _, x in zip(range(3), Batches(data, 10, seed=3))] == epoch0[:3]


@pytest.mark.parametrize("stop", [4, 9, 10, 13])  # mid-epoch, last batch, boundary, next epoch
def test_batches_resume(stop):
    data = _ids()
    straight = _take(Batches(data, 10, seed=7), 25)
    first = Batches(data, 10, seed=7)
    assert _take(first, stop) == straight[:stop]
    state = first.state_dict()
    resumed = Batches(data, 10, seed=0)  # the state carries the seed
    resumed.load_state_dict(dict(state))
    assert _take(resumed, 25 - stop) == straight[stop:]


def test_batches_two_ranks():
    data = _ids()
    single = _take(Batches(data, 8, seed=5), 12)  # 103 // 8 = 12 batches
    r0 = _take(Batches(data, 4, seed=5, rank=0, world_size=2), 12)  # 103 // 8 = 12 steps
    r1 = _take(Batches(data, 4, seed=5, rank=1, world_size=2), 12)
    ids0, ids1 = sum(r0, []), sum(r1, [])
    assert not set(ids0) & set(ids1)
    assert sorted(ids0 + ids1) == sorted(sum(single, []))
    assert [a + b for a, b in zip(r0, r1)] == single  # each step is one single-rank batch


def test_batches_bad_sizes():
    data = _ids(50)
    for bs in (0, -1, 51):
        with pytest.raises(UserError, match=rf"--batch-size: got {bs}, expected 1 to 50 \(the data has 50 images\)"):
            Batches(data, bs, seed=0)
    with pytest.raises(UserError, match="--batch-size: got 26, expected 1 to 25 .*over 2 ranks"):
        Batches(data, 26, seed=0, world_size=2)
    assert Batches(data, 50, seed=0).batches_per_epoch == 1
    b = Batches(data, 10, seed=0)
    with pytest.raises(UserError, match="--batch-size: the saved data position"):
        b.load_state_dict({"epoch": 0, "index": 5, "seed": 0})


def test_to_float():
    x = torch.tensor([0, 127, 128, 255], dtype=torch.uint8)
    y = to_float(x, "cpu")
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, torch.tensor([-1.0, 127 / 127.5 - 1, 128 / 127.5 - 1, 1.0]))
    assert to_float(x, "cpu", torch.bfloat16).dtype == torch.bfloat16


# ---------------------------------------------------------------------------- labels


def test_labels_of_every_source(tmp_path):
    """--conditional's labels: Fashion-MNIST's shipped ones, a folder's sub-folders (sorted
    names; deeper folders belong to their top class), an .npz's `labels`; the batches
    carry each image's own label."""
    x, y = load_dataset("fashion-mnist", 32, split="test", labels=True)
    assert y.shape == (10000,) and y.dtype == torch.long and set(y.tolist()) == set(range(10))
    assert torch.equal(x, load_dataset("fashion-mnist", 32, split="test"))
    for cls, shade in (("zebra", 10), ("apple", 200), ("zebra/deep", 30)):
        _save(tmp_path / "f" / cls / f"{shade}.png", (16, 16), shade, mode="L")
    images, labels = load_dataset(str(tmp_path / "f"), 16, labels=True)
    # files in sorted order: apple/200.png, zebra/10.png, zebra/deep/30.png
    assert labels.tolist() == [0, 1, 1] and images[:, 0, 0, 0].tolist() == [200, 10, 30]
    _save(tmp_path / "f" / "loose.png", (16, 16), 1, mode="L")
    with pytest.raises(UserError, match=r"images outside class sub-folders .*loose.png"):
        load_dataset(str(tmp_path / "f"), 16, labels=True)
    rgb = np.zeros((4, 16, 16, 3), np.uint8) + np.arange(4, dtype=np.uint8)[:, None, None, None]
    np.savez(tmp_path / "l.npz", images=rgb, labels=np.array([3, 0, 2, 3], np.uint8))
    images, labels = load_dataset(str(tmp_path / "l.npz"), 16, labels=True)
    assert labels.tolist() == [3, 0, 2, 3] and labels.dtype == torch.long
    batches = Batches(images, 2, seed=1, labels=labels)
    for _ in range(4):
        xb, yb = batches.next_labelled()
        assert [{0: 3, 1: 0, 2: 2, 3: 3}[int(v)] for v in xb[:, 0, 0, 0]] == yb.tolist()
    np.savez(tmp_path / "none.npz", images=rgb)
    with pytest.raises(UserError, match=r"none.npz has no `labels` array"):
        load_dataset(str(tmp_path / "none.npz"), 16, labels=True)
    for bad in (np.array([0.0, 1, 2, 3]), np.array([0, 1, 2]), np.array([0, -1, 2, 3])):
        np.savez(tmp_path / "bad.npz", images=rgb, labels=bad)
        with pytest.raises(UserError, match=r"`labels` has .*expected integer class indices"):
            load_dataset(str(tmp_path / "bad.npz"), 16, labels=True)
