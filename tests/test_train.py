"""`fastgan train` / `fastgan sample`: a real short run learns, every loss and regulariser
runs, the impls agree, resume is bit-exact, checkpoints survive kills, bad input is one
clear line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from fastgan.cli import main
from fastgan.runs.checkpoint import load_checkpoint, write_atomic
from fastgan.train import TrainConfig, train

TINY = dict(image_size=16, ngf=8, ndf=8, nz=16, batch_size=8, log_every=1, sample_every=0,
            ckpt_every=0, device="cpu")


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory) -> str:
    """64 grey 16x16 images: a bright disc on black, of random radius and place."""
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    imgs = []
    for _ in range(64):
        cy, cx, r = g.uniform(5, 11), g.uniform(5, 11), g.uniform(2.5, 5)
        imgs.append(np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, 230, 10))
    path = tmp_path_factory.mktemp("data") / "discs.npz"
    np.savez(path, images=np.stack(imgs).astype(np.uint8))
    return str(path)


@pytest.fixture(scope="module")
def labelled_data(tmp_path_factory) -> str:
    """The discs of npz_data in 3 classes by size (`labels`), 16x16."""
    g = np.random.default_rng(1)
    yy, xx = np.mgrid[:16, :16]
    imgs, labels = [], []
    for i in range(64):
        k = i % 3
        cy, cx, r = g.uniform(6, 10), g.uniform(6, 10), 2.5 + 1.5 * k
        imgs.append(np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, 230, 10))
        labels.append(k)
    path = tmp_path_factory.mktemp("data") / "classes.npz"
    np.savez(path, images=np.stack(imgs).astype(np.uint8), labels=np.array(labels))
    return str(path)


def run(tmp_path, name: str, data: str, **kw) -> str:
    cfg = TrainConfig(**{**TINY, "data": data, "steps": 3, "out": str(tmp_path / name), **kw})
    assert train(cfg, quiet=True) == 0
    return cfg.out


def metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_run_directory(tmp_path, npz_data):
    out = run(tmp_path, "r", npz_data, steps=4, sample_every=2, ckpt_every=2)
    for f in ("config.json", "metrics.jsonl", "losses.png", "checkpoints/last.pt",
              "checkpoints/step_000002.pt", "checkpoints/step_000004.pt",
              "samples/step_000002.png", "samples/step_000004.png"):
        assert os.path.isfile(os.path.join(out, f)), f
    recs = metrics(out)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    for r in recs:
        assert {"step", "d_loss", "g_loss", "d_real", "d_fake", "img_per_s"} <= set(r)
        assert all(np.isfinite(v) for v in r.values())
    from PIL import Image
    assert Image.open(os.path.join(out, "samples/step_000004.png")).size == (8 * 18 + 2,) * 2
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["steps"] == 4 and cfg["image_size"] == 16
    assert load_checkpoint(out)["step"] == 4


def _mean_image_gap(G, data: torch.Tensor, nz: int) -> float:
    from fastgan.runs.generator import generate
    fake = generate(G, nz, 256, seed=1)
    real = data.float() / 127.5 - 1
    return (fake.mean(0) - real.mean(0)).square().mean().item()


def test_generator_learns_fashion_mnist(tmp_path):
    """150 steps on the built-in data at 16x16: the samples' mean image must move most of
    the way to the data's, and FID (fastgan-fmnist, --eval-every) must fall well below
    the untrained generator's. A generator that is not updated (or updated the wrong way)
    stays at the initial grey: the gap would stay where it started (~0.3)."""
    from fastgan.data import load_dataset
    from fastgan.metrics.evaluate import generator_metrics, reference_stats
    from fastgan.metrics.features import get_extractor
    from fastgan.runs.generator import build_models, sampling_generator
    from fastgan.train.loop import EVAL_N

    cfg = TrainConfig(**{**TINY, "ngf": 16, "ndf": 16, "batch_size": 32, "steps": 150,
                         "log_every": 50, "out": str(tmp_path / "fm"), "lr": 5e-4,
                         "eval_every": 75})
    data = load_dataset("fashion-mnist", 16)[:2048]
    G0, _ = build_models(cfg, 1)
    G0 = sampling_generator(G0, cfg.nz, "cpu", 0)
    before = _mean_image_gap(G0, data, cfg.nz)
    assert train(cfg, quiet=True) == 0
    from fastgan.runs.generator import load_generator
    G, _, _ = load_generator(cfg.out)
    after = _mean_image_gap(G, data, cfg.nz)
    assert after < 0.25 * before, (before, after)
    evals = [r for r in metrics(cfg.out) if "fid" in r]
    assert [r["step"] for r in evals] == [75, 150]
    assert all({"kid", "is", "d_loss"} <= set(r) for r in evals)
    ex = get_extractor("fastgan-fmnist")
    fid0 = generator_metrics(G0, cfg.nz, EVAL_N, reference_stats("fashion-mnist", "train", 16, ex),
                             ex, ("fid",))["fid"]
    assert evals[-1]["fid"] < 0.8 * fid0, (fid0, evals)  # measured 27 vs 39 (a frozen G: equal)


@pytest.mark.parametrize("kw", [
    dict(loss="minimax"), dict(loss="ns"), dict(loss="lsgan"), dict(loss="hinge"),
    dict(loss="wgan", clip=0.01, n_critic=2), dict(loss="wgan", gp=10.0, n_critic=2),
    dict(loss="ns", r1=1.0), dict(loss="hinge", spectral_norm=True), dict(amp="bf16"),
    dict(ema=0.0), dict(impl="eager", r1=0.5, gp=1.0), dict(r2=0.5),
    dict(arch="r3gan", loss="hinge", r1=0.1, r2=0.1), dict(arch="r3gan", impl="eager"),
    dict(arch="resnet"), dict(arch="resnet", impl="eager"), dict(loss="rpgan", r1=0.5),
], ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_every_loss_and_regulariser_runs(tmp_path, npz_data, kw):
    out = run(tmp_path, "r", npz_data, **kw)
    recs = metrics(out)
    assert len(recs) == 3
    assert all(np.isfinite(r[k]) for r in recs for k in ("d_loss", "g_loss", "penalty"))
    if kw.get("gp") or kw.get("r1") or kw.get("r2"):
        assert any(r["penalty"] > 0 for r in recs)
    if kw.get("clip"):
        D = load_checkpoint(out)["D"]
        assert max(v.abs().max().item() for k, v in D.items()
                   if "weight" in k or "bias" in k) <= kw["clip"] + 1e-7


def test_eager_and_fastgan_give_the_same_losses(tmp_path, npz_data):
    a = metrics(run(tmp_path, "fastgan", npz_data, impl="fastgan", steps=4))
    b = metrics(run(tmp_path, "eager", npz_data, impl="eager", steps=4))
    for ra, rb in zip(a, b):
        for k in ("d_loss", "g_loss", "d_real", "d_fake"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-3, abs=1e-4), (ra["step"], k)


@pytest.mark.slow
def test_compile_impl_trains_like_eager(tmp_path, npz_data):
    """--impl compile (torch.compile of G, D and the loss; a penalised D step through the
    module itself, since compiled graphs have no double backward) gives eager's losses."""
    a = metrics(run(tmp_path, "compile", npz_data, impl="compile", r1=1.0, steps=2))
    b = metrics(run(tmp_path, "eager", npz_data, impl="eager", r1=1.0, steps=2))
    for ra, rb in zip(a, b):
        for k in ("d_loss", "g_loss", "d_real", "d_fake", "penalty"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-3, abs=1e-4), (ra["step"], k)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["fastgan", "eager"])
@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_train_on_cuda(tmp_path, npz_data, impl, amp):
    out = run(tmp_path, "cuda", npz_data, device="cuda", impl=impl, amp=amp, r1=1.0, steps=4)
    recs = metrics(out)
    assert all(np.isfinite(r[k]) for r in recs for k in ("d_loss", "g_loss", "penalty"))
    assert main(["sample", out, "--n", "8", "--npz", str(tmp_path / "s.npz")]) == 0


def _state_equal(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _state_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _state_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.parametrize("kw", [
    dict(), dict(loss="wgan", gp=10.0, n_critic=2, spectral_norm=True),
    dict(arch="r3gan", loss="rpgan", r1=0.1, r2=0.1, betas=(0.0, 0.99), conditional=True),
    dict(arch="resnet", loss="hinge", spectral_norm=True, conditional=True),
    dict(arch="dcgan", conditional=True)],
    ids=["ns", "wgan-gp", "r3gan-rpgan-r1-r2-conditional", "resnet-conditional",
         "dcgan-conditional"])
def test_resume_is_bit_exact(tmp_path, npz_data, labelled_data, kw):
    """N steps + resume + N steps == 2N steps straight: weights, EMA, optimizers, data
    order, RNG states and the metrics."""
    data = labelled_data if kw.get("conditional") else npz_data
    straight = run(tmp_path, "straight", data, steps=6, **kw)
    split = run(tmp_path, "split", data, steps=3, **kw)
    assert main(["train", "--resume", split, "--steps", "6", "--quiet"]) == 0
    a, b = load_checkpoint(straight), load_checkpoint(split)
    a["config"].pop("out"), b["config"].pop("out")
    _state_equal(a, b)
    ma, mb = metrics(straight), metrics(split)
    for r in ma + mb:
        r.pop("img_per_s")
    assert ma == mb


def test_write_atomic_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "f.bin")
    write_atomic(path, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomic(path, broken)
    assert open(path, "rb").read() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # as open() would make it


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastgan", *args]


def _train_args(data: str, out: str, steps: int, *extra: str) -> list[str]:
    return _cli("train", "--data", data, "--image-size", "16", "--ngf", "8", "--ndf", "8",
                "--nz", "16", "--batch-size", "8", "--device", "cpu", "--steps", str(steps),
                "--out", out, "--log-every", "1", "--sample-every", "0", *extra)


def _wait_for(path: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


def test_checkpoints_survive_sigkill(tmp_path, npz_data):
    """SIGKILL at arbitrary moments of a run that checkpoints every step: the last
    checkpoint always loads, and the run resumes from it."""
    out = str(tmp_path / "k")
    last = os.path.join(out, "checkpoints", "last.pt")
    proc = subprocess.Popen(_train_args(npz_data, out, 10_000, "--ckpt-every", "1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(last, proc)
        for delay in (0.013, 0.029, 0.047, 0.071):
            time.sleep(delay)
            load_checkpoint(last)  # concurrently with writes: never torn
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    step = load_checkpoint(last)["step"]
    assert step >= 1
    assert main(["train", "--resume", out, "--steps", str(step + 2), "--quiet"]) == 0
    assert load_checkpoint(last)["step"] == step + 2


def test_sigint_saves_and_exits(tmp_path, npz_data):
    out = str(tmp_path / "i")
    proc = subprocess.Popen(_train_args(npz_data, out, 10_000, "--ckpt-every", "0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(os.path.join(out, "metrics.jsonl"), proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, stderr
    assert "Traceback" not in stderr
    assert "--resume" in stdout
    assert load_checkpoint(out)["step"] >= 1


@pytest.mark.parametrize("arch", ["dcgan", "r3gan"])
def test_sample(tmp_path, npz_data, capsys, arch):
    out = run(tmp_path, "r", npz_data, arch=arch)
    grid, npz = str(tmp_path / "g.png"), str(tmp_path / "s.npz")
    assert main(["sample", out, "--n", "10", "--out", grid, "--npz", npz]) == 0
    from PIL import Image
    assert Image.open(grid).size == (4 * 18 + 2, 3 * 18 + 2)
    arr = np.load(npz)["images"]
    assert arr.shape == (10, 16, 16, 1) and arr.dtype == np.uint8
    # same seed, same images; the trained G differs from its EMA copy
    assert main(["sample", os.path.join(out, "checkpoints", "last.pt"), "--n", "10",
                 "--npz", str(tmp_path / "t.npz")]) == 0
    assert np.array_equal(np.load(str(tmp_path / "t.npz"))["images"], arr)
    assert main(["sample", out, "--n", "10", "--no-ema", "--npz", str(tmp_path / "u.npz")]) == 0
    assert not np.array_equal(np.load(str(tmp_path / "u.npz"))["images"], arr)


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastgan") and "error:" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_is_one_clear_line(tmp_path, npz_data, capsys):
    t = ["train", "--device", "cpu", "--steps", "1", "--quiet"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no-such-dir" in _error(capsys, [*t, "--data", str(tmp_path / "no-such-dir")])
    assert str(empty) in _error(capsys, [*t, "--data", str(empty)])
    assert "--image-size" in _error(capsys, [*t, "--data", npz_data, "--image-size", "24"])
    assert "--batch-size" in _error(capsys, [*t, "--data", npz_data, "--image-size", "16",
                                             "--batch-size", "0"])
    assert "--batch-size" in _error(capsys, [*t, "--data", npz_data, "--image-size", "16",
                                             "--batch-size", "65", "--out", str(tmp_path / "b")])
    assert "--resume" in _error(capsys, ["train", "--resume", str(empty)])
    assert "--amp fp16" in _error(capsys, [*t, "--amp", "fp16"])
    with pytest.raises(SystemExit) as e:   # argparse's own one-line error, status 2
        main([*t, "--loss", "nope"])
    assert e.value.code == 2
    assert "--loss" in capsys.readouterr().err
    # an existing run is never overwritten; its flags must agree on resume
    out = run(tmp_path, "r", npz_data)
    assert "--resume" in _error(capsys, [*t, "--data", npz_data, "--out", out])
    err = _error(capsys, ["train", "--resume", out, "--steps", "5", "--loss", "hinge"])
    assert "--loss hinge" in err and "ns" in err
    assert "already at step 3" in _error(capsys, ["train", "--resume", out, "--steps", "3"])
    # a config.json edited so that the checkpoint no longer fits
    cfg = json.load(open(os.path.join(out, "config.json")))
    cfg["ngf"] = 16
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"))
    assert "does not fit" in _error(capsys, ["train", "--resume", out, "--steps", "5"])
    # sample: not a checkpoint
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert "junk.pt" in _error(capsys, ["sample", str(junk)])
    assert "no such file" in _error(capsys, ["sample", str(tmp_path / "none.pt")])


def test_sampling_generator_standing_statistics():
    """Sampling recomputes G's BatchNorm statistics from its own samples (cumulative
    average), leaves G alone, and gives the same result converted or not."""
    import fastgan
    from fastgan.models import Generator, weights_init
    from fastgan.runs.generator import sampling_generator

    G = Generator(nz=8, ngf=4, nc=1, image_size=16).apply(weights_init)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    Gs = sampling_generator(G, 8, "cpu", seed=0, batches=3, batch_size=16)
    assert not Gs.training
    for k, v in G.state_dict().items():
        assert torch.equal(v, before[k]), k
    bn = Gs.main[1]
    assert bn.num_batches_tracked.item() == 3 and not torch.equal(bn.running_mean, before["main.1.running_mean"])
    Gf = sampling_generator(fastgan.convert(G), 8, "cpu", seed=0, batches=3, batch_size=16)
    for (k, a), b in zip(Gs.state_dict().items(), Gf.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    z = torch.randn(5, 8, 1, 1)
    torch.testing.assert_close(Gs(z), Gf(z), rtol=1e-5, atol=1e-5)


def test_conditional_run_samples_any_class(tmp_path, labelled_data, npz_data, capsys):
    """A conditional run: grids of one row per class, `fastgan sample --class K` draws
    class K (labels in the .npz), the default draws every class in rows, `fastgan eval`
    evaluates it; errors for a
    class out of range, --class on an unconditional run and data without labels."""
    out = run(tmp_path, "c", labelled_data, arch="resnet", conditional=True, steps=2,
              sample_every=2)
    from PIL import Image
    assert Image.open(os.path.join(out, "samples/step_000002.png")).size == (
        8 * 18 + 2, 3 * 18 + 2)  # 8 a row, a row per class
    npz = str(tmp_path / "k.npz")
    assert main(["sample", out, "--class", "2", "--n", "5", "--npz", npz]) == 0
    with np.load(npz) as z:
        assert z["images"].shape == (5, 16, 16, 1) and z["labels"].tolist() == [2] * 5
    grid = str(tmp_path / "g.png")
    assert main(["sample", out, "--n", "7", "--out", grid, "--npz", npz]) == 0
    with np.load(npz) as z:
        assert z["labels"].tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert Image.open(grid).size == (3 * 18 + 2, 3 * 18 + 2)
    js = str(tmp_path / "m.json")  # evaluation draws every class equally often
    assert main(["eval", out, "--n", "30", "--metrics", "fid", "--json", js]) == 0
    assert np.isfinite(json.load(open(js))["fid"])
    capsys.readouterr()
    assert main(["sample", out, "--class", "3"]) == 2
    assert "--class 3: expected a class in 0..2 (the run has 3)" in capsys.readouterr().err
    plain = run(tmp_path, "u", npz_data, steps=1)
    assert main(["sample", plain, "--class", "0"]) == 2
    assert "--class 0: the run is not class-conditional" in capsys.readouterr().err
    assert main(["eval", plain, "--metrics", "accuracy"]) == 2
    assert "--metrics accuracy: the run in" in capsys.readouterr().err
    assert main(["train", "--data", npz_data, "--conditional", "--image-size", "16",
                 "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "has no `labels` array" in capsys.readouterr().err
