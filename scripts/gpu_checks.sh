#!/usr/bin/env bash
# The GPU checks, as one run on a lent device machine (the `device` tool, ~10 min):
# the gpu-marked tests of the Triton kernels (bn_act, gan_loss, the fused convolutions
# and their chain, bias_act, upfirdn2d), then `fastgan bench` on CUDA with the fused chain (fastgan[triton])
# beside the same backend around ATen's convolutions, eager and torch.compile.
#   device run: bash scripts/gpu_checks.sh      (logs and results under $OUT)
# It runs on the device's own PyTorch and Triton from the source tree (no fastgan._C:
# the triton and reference backends), so no build and nothing to install there.
set -uo pipefail
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
torch.cuda.get_device_name())" 2>&1 | tee "$OUT/versions.log"
timeout 360 python3 -m pytest -q -p no:cacheprovider -m gpu -x \
  tests/test_conv_bn_act.py tests/test_bn_act_triton.py tests/test_gan_loss_triton.py \
  tests/test_bias_act_triton.py tests/test_upfirdn2d_triton.py tests/test_cbn_act_triton.py 2>&1 \
  | tee "$OUT/gpu_tests.log"
timeout 200 python3 -m fastgan bench --device cuda --dtype bf16 --batch 128 --backends triton \
  --rounds 10 --no-first-step --out "$OUT/bench" 2>&1 | tee "$OUT/bench.log"
