#!/usr/bin/env bash
# llama.cpp for benchmarks/vs_llamacpp.py: llama-cpp-python built from its PyPI sdist in its own
# virtual environment, no examples/tests. ~15-25 min on 2 cores: never in CI.
#
#   bash benchmarks/setup_llamacpp.sh          # AVX2 + FMA (what a laptop without AVX-512 runs)
#                                              #   -> .venv-llamacpp
#   bash benchmarks/setup_llamacpp.sh avx512   # + AVX-512 F/BW/VL/VNNI/BF16/VBMI, as lmzoo's kernels use
#                                              #   on such a host -> .venv-llamacpp-avx512
#   python benchmarks/vs_llamacpp.py   # plain `llamacpp`: the build matching lmzoo's kernels here
#
# The instruction sets are named, not GGML_NATIVE: a native build on a Sapphire Rapids VM enabled AMX
# and segfaulted on every multi-token batch. Compare like with like: lmzoo picks AVX-512 kernels where
# the CPU has them (LMZOO_CPU_ISA=avx2 forces the AVX2 ones), so on an AVX-512 host benchmark it against
# the avx512 build, and its avx2 kernels against the avx2 build.
set -euo pipefail
cd "$(dirname "$0")/.."
isa="${1:-avx2}"
flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
case "$isa" in
  avx2) venv=.venv-llamacpp ;;
  avx512) venv=.venv-llamacpp-avx512
          flags="$flags -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VBMI=ON" ;;
  *) echo "setup_llamacpp.sh: unknown instruction set '$isa'; expected avx2 or avx512" >&2; exit 2 ;;
esac
python3 -m venv "$venv"
CMAKE_ARGS="$flags -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
  "$venv/bin/pip" install -q --no-cache-dir --no-binary llama-cpp-python 'llama-cpp-python==0.3.36' numpy
"$venv/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
