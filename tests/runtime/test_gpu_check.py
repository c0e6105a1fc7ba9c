"""The prepared GPU inference check (benchmarks/gpu/check.py, run by benchmarks/gpu/check.sh) runs in
its CPU form: parity rows pass, every decode mode of every weight format produces tokens equal to
eager, and the prefill row is there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(what: str) -> list[dict]:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "check.py"), what, "--smoke"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    return [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]


def test_gpu_parity_check_cpu_form():
    rows = run("parity")
    assert len(rows) == 6 and all(r["ok"] for r in rows), rows


def test_gpu_decode_check_cpu_form():
    rows = run("decode")
    decode = [r for r in rows if "decode" in r]
    assert {(r["weights"], r["decode"]) for r in decode} == {
        (w, m) for w in ("float32", "int8", "int4") for m in ("eager", "compiled")}, rows
    assert all(r["tok_s"] > 0 and r["tokens_equal_eager"] for r in decode), rows
    assert any("prefill" in r and r["s"] > 0 for r in rows)
