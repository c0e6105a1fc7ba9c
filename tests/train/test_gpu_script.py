"""The prepared GPU checks run in their CPU form: benchmarks/gpu/train.py (a LoRA and a full step on a
tiny Llama shape through the same code, losses finite and falling or flat) and benchmarks/gpu/pretrain.py
(the Trainer with FSDP2, bf16 mixed precision and compiled blocks on a tiny shape)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_training_script_cpu_form():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "train.py"), "--smoke", "--steps", "2"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["method"] for x in rows] == ["lora", "full"]
    assert rows[0]["trainable"] < rows[0]["params"] and rows[1]["trainable"] == rows[1]["params"]
    assert all(x["tokens_per_s"] > 0 and x["loss_last"] <= x["loss_first"] + 1e-3 for x in rows)


def test_gpu_pretrain_script_cpu_form():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "pretrain.py"), "--smoke", "--steps", "4",
                        "--warmup", "2"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert row["compile"] and row["steps"] == 4 and row["tokens_per_s"] > 0
    assert row["loss_last"] < row["loss_first"], row
