#!/usr/bin/env bash
# The GPU check (issue 16 item 4), one command for a short GPU window (< 8 minutes on one H200):
# parity of the tiny cases on CUDA (fp32, bf16), then bf16 / int8 / int4 decode of a Llama-2-7B shape
# (eager and compiled) with a 4 x 2048 prefill, then the fine-tuning step of benchmarks/gpu/train.py.
# Uses the machine's own torch / transformers (no installs); output is one JSON line per number.
#   bash benchmarks/gpu/check.sh            # on the GPU machine
#   bash benchmarks/gpu/check.sh --smoke    # the same code on CPU, tiny shapes
set -uo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
for part in "benchmarks/gpu/check.py parity" "benchmarks/gpu/check.py decode" "benchmarks/gpu/train.py"; do
  echo "== $part $*"
  timeout 300 $PY $part "$@" || { echo "!! $part failed (exit $?)"; status=1; }
done
exit $status
