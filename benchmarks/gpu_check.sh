#!/usr/bin/env bash
# One-call GPU check for a bare GPU machine (torch 2.11 and the scientific stack, no package index).
#
#   make gpu-wheels                                  # here, once: the missing packages as wheels in .whl/
#   bash benchmarks/gpu_check.sh [gpu_check.py options]   # there, with .whl/ beside the repo
#
# Installs the wheels from .whl/ (if present) into a private folder, then runs benchmarks/gpu_check.py: the GPU
# tests, the encoder benchmark in exact and fast mode, a profile of each, and one shard through the encode job.
# Results: $OUT/gpu_check.jsonl (one JSON line per step), gpu_check.log (full output). About 5-8 minutes on an H200.
# Dry-run on a CPU (what tests/test_gpu_check.py runs): GPU_CHECK_INSTALL=0 bash benchmarks/gpu_check.sh --device cpu --segments 2 --profile-segments 2 --shard-segments 2
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ "${GPU_CHECK_INSTALL:-1}" != 0 ] && compgen -G ".whl/*.whl" >/dev/null; then
  site=${GPU_CHECK_SITE:-/tmp/neucodec-gpu-site}
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl ||
    { echo "gpu_check: installing the wheels in .whl/ failed" >&2; exit 1; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
