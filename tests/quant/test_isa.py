"""Every instruction-set variant of the CPU kernels computes what the reference does. The kernels
compile the widest code the CPU supports (AVX-512, else AVX2, else portable C++), so on a wide CI host
the narrower branches would never run; LMZOO_CPU_ISA builds them here, and the kernel tests run
against each build in a subprocess (a process loads one build)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# the kernel checks: each kernel against the dequantised / float reference, rows independent of the
# batch, the fused decode block against the modules, float16 scales, greedy ids, attention vs SDPA
CHECKS = ["tests/quant/test_layers.py", "tests/quant/test_fused.py", "tests/quant/test_gemv.py"]


def _run(isa: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LMZOO_CPU_ISA": isa}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx2", "portable"])
def test_kernel_checks_pass_on_the_narrower_builds(isa):
    flags = _run(isa, "-c", "from lmzoo.quant.kernels import _flags; print(' '.join(_flags()))")
    assert flags.returncode == 0, flags.stderr
    assert "-mavx512f" not in flags.stdout and ("-mavx2" in flags.stdout) == (isa == "avx2")
    r = _run(isa, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *CHECKS)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def test_bad_isa_is_one_warning_and_the_model_still_runs():
    r = _run("avx1024", "-c", "import warnings, torch; from lmzoo.quant.kernels import cpu_kernels\n"
             "with warnings.catch_warnings(record=True) as w:\n"
             "    warnings.simplefilter('always'); k = cpu_kernels()\n"
             "print(k is None, [str(x.message) for x in w])")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("True") and "LMZOO_CPU_ISA='avx1024': expected one of portable, avx2, avx512" in r.stdout
