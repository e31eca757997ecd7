"""`fastgan bench` runs end to end (tiny sizes) and writes its table, JSON and chart."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def test_fastgan_bench_quick(tmp_path):
    out = tmp_path / "out"
    # (--archs: dcgan's step is the same code path as the others', and its torch.compile
    # cold compile would cost CI another ~20 s)
    r = subprocess.run([sys.executable, "-m", "fastgan", "bench", "--quick", "--batch", "2",
                        "--rounds", "2", "--archs", "resnet", "r3gan", "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "vs eager" in r.stdout and "torch.compile ms" in r.stdout
    data = json.loads((out / "results.json").read_text())
    assert data["rows"], data
    for row in data["rows"]:
        # torch.compile's column may fail (an inductor error is reported, not fatal)
        assert "eager" in row["impls"]
        assert "torch.compile" in row["impls"] or "torch.compile" in row["failed"]
        assert any(k.startswith("fastgan[") for k in row["impls"])
        for impl in row["impls"].values():
            assert impl.get("median_ms", 1.0) > 0
    assert os.path.getsize(out / "chart.png") > 1000
    # bench_archs: a fastgan train step of every architecture (tiny in --quick), each with
    # the saved-for-backward bytes of G's and D's forward for eager and fastgan
    steps = {row["name"].split()[0]: row for row in data["rows"]
             if row["kind"] == "train step" and " train step (" in row["name"]}
    assert set(steps) == {"resnet", "r3gan"}, [r["name"] for r in data["rows"]]
    assert data["config"]["archs"] == ["resnet", "r3gan"]
    for row in steps.values():
        assert row["rounds"] == 2
        for impl in ("eager", "fastgan[cpu]"):
            parts = row["impls"][impl]["saved_parts_mb"]
            assert set(parts) == {"G", "D"} and all(v > 0 for v in parts.values())
            assert row["impls"][impl]["saved_mb"] == pytest.approx(sum(parts.values()))
    assert "D step runs D uncompiled" in steps["r3gan"]["note"]
    assert "D step runs D uncompiled" in steps["resnet"]["note"]
    for row in steps.values():  # the trainer runs every arch under --impl compile
        assert "torch.compile" in row["impls"], row["failed"]


def test_fastgan_bench_rejects_unusable_backend():
    r = subprocess.run([sys.executable, "-m", "fastgan", "bench", "--device", "cpu",
                        "--backends", "cuda"], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "not usable" in r.stderr


def test_train_cold_start_worker():
    """bench_train's fresh-process measurement (the time-to-first-step row) runs and
    reports sane numbers (not timed here: benchmarks are not asserted in tests)."""
    from fastgan.bench.bench_train import cold_start

    for impl in ("eager", "fastgan"):
        r = cold_start(impl, steps=2, batch_size=8, image_size=16, device="cpu")
        assert r["impl"] == impl and r["steps"] == 2 and r["arch"] == "dcgan"
        assert r["first_step_s"] > 0 and r["img_per_s_with_warmup"] > 0
    # another architecture, conditional, with its preset (tiny widths)
    r = cold_start("fastgan", steps=1, batch_size=4, image_size=16, device="cpu", arch="r3gan",
                   conditional=True, width=8)
    assert r["arch"] == "r3gan" and r["conditional"] and r["first_step_s"] > 0


def test_train_config_applies_arch_presets():
    """bench_train's runs are what `fastgan train --arch` makes: the default run unchanged,
    the architectures' presets applied."""
    from fastgan.bench.bench_train import compiled_parts, describe, train_config
    from fastgan.runs.config import TrainConfig

    cfg = train_config("eager", 64, 32, "cpu")
    assert cfg == TrainConfig(impl="eager", batch_size=64, image_size=32, device="cpu", out="")
    assert describe(cfg) == "dcgan, ns loss"
    assert compiled_parts(cfg) == "compile: G, D and the loss compiled"
    res = train_config("fastgan", 8, 16, "cpu", "resnet", conditional=True, width=8)
    assert (res.loss, res.spectral_norm, res.betas) == ("hinge", True, (0.0, 0.9))
    assert res.conditional and res.ngf == res.ndf == 8 and res.batch_size == 8
    r3 = train_config("compile", 8, 32, "cpu", "r3gan")
    assert (r3.loss, r3.r1, r3.r2, r3.betas) == ("rpgan", 0.05, 0.05, (0.0, 0.99))
    assert describe(r3) == "r3gan, rpgan loss, R1 0.05, R2 0.05"
    assert "double backward" in compiled_parts(r3) and "spectral" in compiled_parts(res)
    assert train_config("eager", 8, 32, "cpu", "r3gan", loss="hinge").loss == "hinge"
