"""`fastgan bench` runs end to end (tiny sizes) and writes its table, JSON and chart."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_fastgan_bench_quick(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "fastgan", "bench", "--quick", "--batch", "2",
                        "--rounds", "2", "--out", str(out)], capture_output=True, text=True,
                       timeout=900)
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
        assert r["impl"] == impl and r["steps"] == 2
        assert r["first_step_s"] > 0 and r["img_per_s_with_warmup"] > 0
