"""GGUF -> HF conversion: time and peak RSS of loading the model and saving it (lmzoo export's way, and
`lmzoo convert --to hf` before it streamed) against `convert_to_hf` streaming tensor by tensor, each in
a fresh process, alternating.

    python benchmarks/convert.py                    # a random Llama of 1B shape, Q4_1 (made once, cached)
    python benchmarks/convert.py --model PATH [--dtype bfloat16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(way: str, path: str, out: str, dtype: str) -> None:
    import torch

    import lmzoo
    from lmzoo.checkpoints.convert import convert_to_hf
    from lmzoo.checkpoints.save import save_hf

    t = time.perf_counter()
    dt = getattr(torch, dtype)
    if way == "load+save":
        save_hf(lmzoo.from_pretrained(path, keep_quantized=False, cpu_kernels=False), out, dtype=dt)
    else:
        convert_to_hf(path, out, dtype=dt)
    size = sum(f.stat().st_size for f in Path(out).iterdir())
    print(json.dumps({"s": time.perf_counter() - t, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "out_mib": size / 2**20}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--worker", nargs=3, metavar=("WAY", "PATH", "OUT"))
    a = ap.parse_args()
    if a.worker:
        worker(*a.worker, a.dtype)
        return
    if not a.model:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from vs_llamacpp import random_llama

        from lmzoo.checkpoints.assets import default_model_path

        a.model = str(random_llama(default_model_path(), "q4_1"))
    src_mib = Path(a.model).stat().st_size / 2**20
    res: dict[str, list] = {"load+save": [], "stream": []}
    for _ in range(a.rounds):
        for way in res:
            out = Path(tempfile.mkdtemp()) / "hf"
            r = subprocess.run([sys.executable, __file__, "--worker", way, a.model, str(out), "--dtype", a.dtype],
                               capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            res[way].append(json.loads(r.stdout.strip().splitlines()[-1]))
            shutil.rmtree(out.parent)
    print(f"{Path(a.model).name} ({src_mib:.0f} MiB) -> HF {a.dtype}, {a.rounds} rounds")
    print("| way | seconds | peak RSS MiB | written MiB |\n|---|---|---|---|")
    for way, rs in res.items():
        s, m = [r["s"] for r in rs], [r["peak_mib"] for r in rs]
        print(f"| {way} | {min(s):.1f}-{max(s):.1f} | {min(m):.0f}-{max(m):.0f} | {rs[0]['out_mib']:.0f} |")


if __name__ == "__main__":
    main()
