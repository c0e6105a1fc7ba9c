#!/usr/bin/env bash
# litgpt pins huggingface-hub<1.4 and transformers<4.57, which conflict with the transformers the
# tests use, so it gets its own virtual environment. Then:
#   LITGPT_PYTHON=.venv-litgpt/bin/python python benchmarks/decode.py --shape llama-d768
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-litgpt
.venv-litgpt/bin/pip install -q torch==2.13.0 'litgpt==0.5.*'
.venv-litgpt/bin/python -c "import litgpt; print('litgpt', litgpt.__version__ if hasattr(litgpt, '__version__') else 'ok')"
