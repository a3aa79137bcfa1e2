#!/usr/bin/env bash
# The GPU check (issue 15), prepared for a machine with a GPU: under 8 minutes, one command.
#
#   benchmarks/gpu_check.sh                 # on a GPU machine; DEVICE=cpu checks the script here
#   (this workplace's device tool: run(command="benchmarks/gpu_check.sh", carry=[".whl"]))
#
# What it measures (benchmarks/bench_gpu.py): predict_shard on CUDA with float16 autocast at
# batch 8/32/64 against a bare loop, decode on CPU vs decode_jpeg(device="cuda"), and two
# partition runs contending for one GPU lease. Figures go to $OUT (or benchmarks/gpu-results)
# as gpu.txt and gpu.json; copy them into benchmarks/README.md with the machine and date.
#
# Install: with a project .venv (make setup) it uses it. On a bare GPU machine whose python3
# already holds torch, torchvision, pyarrow, numpy, pillow, pandas and tqdm (this workplace's
# H200 image), the two other imports travel as wheels in .whl/ (git-ignored), made where pip
# has the index:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl msgspec==0.23.0 pycocotools==2.0.11
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/gpu-results}
mkdir -p "$OUT"
if [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
  if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/al-site .whl/*.whl
    export PYTHONPATH=/tmp/al-site
  fi
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; } \
  | tee "$OUT/machine.txt"
timeout 450 "$PY" benchmarks/bench_gpu.py --device "${DEVICE:-cuda}" --json "$OUT/gpu.json" "$@" \
  2>&1 | tee "$OUT/gpu.txt"
