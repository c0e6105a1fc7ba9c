"""Load time and peak RSS of lmzoo.from_pretrained for a checkpoint, in a fresh process each.

    python benchmarks/load.py                 # the default SmolLM2-135M-Instruct Q4_1 GGUF
    python benchmarks/load.py --model PATH
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def worker(path: str, keep_quantized: bool) -> None:
    t0 = time.perf_counter()
    import torch  # noqa: F401  (import cost counted separately from loading)

    import lmzoo

    t1 = time.perf_counter()
    lmzoo.from_pretrained(path, keep_quantized=keep_quantized)
    t2 = time.perf_counter()
    print(json.dumps(dict(import_s=t1 - t0, load_s=t2 - t1,
                          peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--worker", choices=["quantized", "float"])
    a = ap.parse_args()
    if a.worker:
        worker(a.model, a.worker == "quantized")
        return
    if not a.model:
        from lmzoo.checkpoints.assets import default_model_path

        a.model = str(default_model_path())
    print("| mode | import s | load s | peak RSS MB |\n|---|---|---|---|")
    for mode in ("quantized", "float"):
        r = subprocess.run([sys.executable, __file__, "--model", a.model, "--worker", mode],
                           capture_output=True, text=True, check=True)
        d = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"| {mode} | {d['import_s']:.2f} | {d['load_s']:.2f} | {d['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
