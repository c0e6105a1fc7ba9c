"""The machine, not the input: running out of memory is one line and exit 1 (not a traceback, not
"corrupt checkpoint" and exit 2); a missing or broken C++ compiler is one warning line, no torch
banner, and a broken one is not retried on every run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# the child caps its own address space a little above what it has mapped after importing lmzoo (and
# torch, or not), then runs the CLI: something must fail (torch's import, an mmap, numpy, torch's allocator)
CAPPED = """
import resource, sys
import lmzoo.cli
if sys.argv[1] == "after-torch":
    import torch
vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
lim = vm + int(sys.argv[2]) * 2**20
resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
lmzoo.cli.main(sys.argv[3:])
"""


# after torch, the default model runs in ~250 MB more (its GGUF mapped, codes and scales, KV cache;
# 300 was enough since its token table stays in blocks): 20 and 150 fail at different points of the
# load (150: in torch's allocator)
@pytest.mark.parametrize("when, headroom_mb", [("before-torch", 300), ("after-torch", 20), ("after-torch", 150)])
def test_out_of_memory_is_one_line_and_exit_1(when, headroom_mb):
    r = subprocess.run([sys.executable, "-c", CAPPED, when, str(headroom_mb), "generate", "Hello", "--max-new-tokens", "2"],
                       capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "Warning" not in ln]
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert lines[0].startswith("lmzoo: error: out of memory (") and "expected more free memory" in lines[0]


def kernels_with(cxx: str, cache) -> subprocess.CompletedProcess:
    code = "from lmzoo.quant.kernels import cpu_kernels; print(cpu_kernels())"
    env = {**os.environ, "CXX": cxx, "LMZOO_KERNEL_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_missing_compiler_is_one_warning_line(tmp_path):
    r = kernels_with(str(tmp_path / "no-such-c++"), tmp_path / "cache")
    assert r.returncode == 0 and r.stdout.strip() == "None"
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no C++ compiler" in lines[0] and "install g++ or set CXX" in lines[0], r.stderr


def test_a_broken_compiler_is_tried_once(tmp_path):
    first = kernels_with("/bin/false", tmp_path / "cache")
    second = kernels_with("/bin/false", tmp_path / "cache")
    for r in (first, second):
        assert r.returncode == 0 and r.stdout.strip() == "None"
        assert "!! WARNING" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "building the CPU kernels" in first.stderr
    assert "building" not in second.stderr and "not retried with the same compiler" in second.stderr
