#!/bin/bash
# img/s of `fastgan train` on the CPU: 1 process with 2 threads, 1 process with 1 thread,
# 2 processes under torchrun with 1 thread each (BENCHMARKS.md, "Scale-out"). Run from a
# scratch directory; writes m1/, m1t/, m2/ there.
set -euo pipefail
F="--steps 60 --log-every 10 --batch-size 64 --sample-every 0 --ckpt-every 0 --ema 0 --device cpu --quiet"
export PYTHONWARNINGS=ignore
get() { python -c "import json,sys; r=[json.loads(l) for l in open('$1/metrics.jsonl')][2:]; print('%.0f' % (sum(x['img_per_s'] for x in r)/len(r)))"; }
for rep in 1 2; do
  rm -rf m1 m1t m2
  python -m fastgan train $F --out m1; echo "rep $rep 1 process x 2 threads: $(get m1) img/s"
  OMP_NUM_THREADS=1 python -m fastgan train $F --out m1t; echo "rep $rep 1 process x 1 thread: $(get m1t) img/s"
  OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 --master_port 29633 -m fastgan train $F --out m2 2>/dev/null; echo "rep $rep 2 processes x 1 thread: $(get m2) img/s"
done
