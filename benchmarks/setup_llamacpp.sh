#!/usr/bin/env bash
# llama.cpp for benchmarks/vs_llamacpp.py: llama-cpp-python built from its PyPI sdist in its own
# virtual environment, for AVX2 + FMA (lmzoo's kernels' instruction set; a native build on a Sapphire
# Rapids VM enabled AMX and segfaulted on every multi-token batch), no examples/tests. ~15-25 min on 2 cores: never in CI. Then:
#   LLAMACPP_PYTHON=.venv-llamacpp/bin/python python benchmarks/vs_llamacpp.py
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-llamacpp
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
  .venv-llamacpp/bin/pip install -q --no-cache-dir --no-binary llama-cpp-python 'llama-cpp-python==0.3.36' numpy
.venv-llamacpp/bin/python -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
