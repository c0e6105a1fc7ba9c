"""CPU decode kernels (lmzoo/quant/kernels/cpu.cpp), compiled once per (torch version, Python,
compiler flags, source) with torch.utils.cpp_extension and kept in ~/.cache/lmzoo/kernels/<key>/
(LMZOO_KERNEL_CACHE overrides the root). Environments with the same torch share the build; a new
torch, new flags or an edited source builds its own instead of invalidating another's. A one-line
notice goes to stderr while a build runs (about a minute on 2 cores). Without a compiler everything
still runs, through plain PyTorch ops, only slower. LMZOO_CPU_ISA=avx2|portable caps the instruction
set (the tests build the narrower variants that way on wide CPUs)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path

import torch

_KERNELS: object | None = None
_TRIED = False
SOURCE = Path(__file__).parent / "cpu.cpp"


ISAS = ("portable", "avx2", "avx512")  # LMZOO_CPU_ISA: the most the kernels may use (default: what the CPU has)


def _flags() -> list[str]:
    # -fopenmp: at::parallel_for is an OpenMP pragma in a header; without it, one thread
    # -ffp-contract=off: no FMAs the source did not write, so a row's arithmetic is the same in every
    # template instance (a row's result must not depend on how many rows share its pass)
    flags = ["-O3", "-fopenmp", "-ffp-contract=off"]
    cap = os.environ.get("LMZOO_CPU_ISA", "avx512")  # lower: test the narrower code paths on a wider CPU
    if cap not in ISAS:
        raise ValueError(f"LMZOO_CPU_ISA={cap!r}: expected one of {', '.join(ISAS)}")
    if cap != "portable" and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma", "-mf16c"]  # every AVX2 CPU has F16C (float16 scales widened in one instruction)
        cpu = _cpu_flags() if cap == "avx512" else set()
        if {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"} <= cpu:  # 512-bit q8 decode kernel
            flags += ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni"]
        elif "avx_vnni" in cpu:  # 8-bit dot products in one instruction (the q8 kernels)
            flags.append("-mavxvnni")
    return flags


def _cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere: the portable AVX2 code is used)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def build_key(flags: list[str]) -> str:
    h = hashlib.sha256()
    for part in (torch.__version__, sys.version, " ".join(flags)):
        h.update(part.encode() + b"\0")
    h.update(SOURCE.read_bytes())
    return h.hexdigest()[:16]


def _build(name: str, build: Path, flags: list[str]):
    """Compile under an OS lock: flock is released by the kernel when its holder dies, so a build
    killed half-way (SIGKILL, a CI timeout) never blocks later runs. torch's own FileBaton `lock`
    file is not: one left by a killed build would make every later build wait forever, so it is
    removed while we hold the flock (no other lmzoo build can be running then)."""
    import fcntl

    with open(build / "lmzoo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process building the same key: wait for it
        built = build / f"{name}.so"
        if not built.exists():
            (build / "lock").unlink(missing_ok=True)
            print("lmzoo: building the CPU kernels for this torch (once; about a minute)...", file=sys.stderr,
                  flush=True)
        import logging

        from torch.utils.cpp_extension import load

        log = logging.getLogger("torch.utils.cpp_extension")  # its multi-line compiler-ABI banner
        level = log.level
        log.setLevel(logging.ERROR)
        try:
            return load(name=name, sources=[str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"],
                        build_directory=str(build), verbose=False)
        finally:
            log.setLevel(level)


def _compiler() -> str | None:
    """The C++ compiler torch's build would run ($CXX, else c++), as a full path; None if absent."""
    import shutil

    return shutil.which(os.environ.get("CXX", "c++"))


def cpu_kernels():
    """The compiled module (float_linear, int8_linear, int4_linear, ...), or None if it cannot be built."""
    global _KERNELS, _TRIED
    if _TRIED:
        return _KERNELS
    _TRIED = True
    try:
        flags = _flags()
        key = build_key(flags)
        root = Path(os.environ.get("LMZOO_KERNEL_CACHE", Path.home() / ".cache" / "lmzoo" / "kernels"))
        build = root / key
        build.mkdir(parents=True, exist_ok=True)
        name = f"lmzoo_cpu_{key}"
        built = build / f"{name}.so"
        if built.exists():  # the key covers source, flags and torch: import it directly (no ninja run)
            spec = importlib.util.spec_from_file_location(name, built)
            _KERNELS = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(_KERNELS)
            return _KERNELS
        cxx = _compiler()
        failed = build / "failed"  # "<compiler>\n<message>" of a build that failed with that compiler
        if cxx is None:
            raise RuntimeError(f"no C++ compiler ({os.environ.get('CXX', 'c++')} not found; install g++ or set CXX)")
        if failed.exists() and failed.read_text().split("\n", 1)[0] == cxx:
            raise RuntimeError(f"{failed.read_text().split(chr(10), 1)[-1]}; not retried with the same compiler "
                               f"until {failed} is removed")
        try:
            _KERNELS = _build(name, build, flags)
        except Exception as e:
            failed.write_text(f"{cxx}\n{_first_line(e)}")
            raise
    except Exception as e:  # no compiler / ninja: correct, just slower
        warnings.warn(f"lmzoo: CPU kernels unavailable ({_first_line(e)}); using plain PyTorch ops (slower)",
                      stacklevel=2)
        _KERNELS = None
    return _KERNELS


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
