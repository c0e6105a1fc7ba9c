"""Engine throughput on the default model (SmolLM2-135M-Instruct, the GGUF's Q4_1/Q8_0 weights as
lmzoo loads them by default): aggregate decode tokens/s with 1, 4 and 16 concurrent requests, and
batch-1 decode against an older lmzoo checkout side by side (alternating runs, fresh processes).

    python benchmarks/engine.py [--float]                        # 1 / 4 / 16 concurrent streams
    git worktree add /tmp/lmzoo-old <commit>
    python benchmarks/engine.py --baseline /tmp/lmzoo-old        # + batch-1 decode, old vs this tree

Each concurrency level: N requests (32-token prompts, 64 new tokens, greedy, no EOS) submitted at once
to one Engine(max_running=N); decode tokens/s = tokens generated after each request's first token,
divided by the time from the first of those to the last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def default_model():
    """The default model's path, found the way the checkout being measured finds it."""
    try:
        from lmzoo.checkpoints.assets import default_model_path
    except ImportError:  # a checkout from before the layered layout
        from lmzoo.assets import default_model_path
    return default_model_path()


def worker_concurrency(n: int, prompt: int, new: int, keep_quantized: bool) -> dict:
    import time

    import torch

    import lmzoo

    model = lmzoo.from_pretrained(default_model(), keep_quantized=keep_quantized)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, model.config.vocab_size, (prompt,), generator=g).tolist() for _ in range(n)]

    def run() -> tuple[float, int]:
        eng = lmzoo.Engine(model, max_running=n, max_len=prompt + new, step_tokens=max(512, n * prompt))
        for p in prompts:
            eng.submit(lmzoo.Request(prompt=p, max_tokens=new, stop_token_ids=[]))
        seen: set[str] = set()
        t0 = None
        count = 0
        while eng.has_work:
            events = eng.step()
            now = time.perf_counter()
            for e in events:
                if e.request_id in seen:
                    count += 1
                else:
                    seen.add(e.request_id)
            if t0 is None and len(seen) == n:  # every request has its first token: decoding from here
                t0 = now
        return count / (time.perf_counter() - t0), count

    run()  # warm-up
    best = max(run()[0] for _ in range(2))
    return {"n": n, "decode_tok_s": best}


def worker_batch1(prompt: int, new: int) -> dict:
    """Batch-1 decode through lmzoo.stream_generate (works on old and new checkouts alike)."""
    import time

    import torch

    import lmzoo

    model = lmzoo.from_pretrained(default_model())
    assert Path(lmzoo.__file__).resolve().is_relative_to(Path(os.environ["PYTHONPATH"]).resolve()), lmzoo.__file__
    ids = torch.randint(0, model.config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(0))
    lmzoo.generate(model, ids, max_new_tokens=8, eos_token_id=[])
    best = 0.0
    for _ in range(3):
        stamps = [time.perf_counter() for _ in lmzoo.stream_generate(model, ids, max_new_tokens=new, eos_token_id=[])]
        best = max(best, (len(stamps) - 1) / (stamps[-1] - stamps[0]))
    return {"decode_tok_s": best}


def spawn(args: list[str], pythonpath: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    out = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--baseline", type=Path, help="an older lmzoo checkout for the batch-1 comparison")
    ap.add_argument("--float", action="store_true", help="dequantise the GGUF to fp32 (concurrency table)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker == "batch1":
        print(json.dumps(worker_batch1(a.prompt, a.new)))
        return 0
    if a.worker:
        print(json.dumps(worker_concurrency(int(a.worker), a.prompt, a.new, not a.float)))
        return 0
    import torch

    print(f"SmolLM2-135M-Instruct (GGUF weights), prompt {a.prompt}, {a.new} new tokens, greedy, "
          f"torch {torch.__version__}, {os.cpu_count()} cpus")
    common = ["--prompt", str(a.prompt), "--new", str(a.new)]
    if a.baseline:
        rows = {"baseline": [], "this tree": []}
        for _ in range(a.rounds):  # alternate, so drifting machine load hits both
            rows["baseline"].append(spawn(["--worker", "batch1", *common], a.baseline)["decode_tok_s"])
            rows["this tree"].append(spawn(["--worker", "batch1", *common], ROOT)["decode_tok_s"])
        for k, v in rows.items():
            print(f"batch-1 decode  {k:10s} {min(v):6.1f} - {max(v):6.1f} tok/s")
        print(f"ratio this/baseline: {min(rows['this tree']) / max(rows['baseline']):.2f} - "
              f"{max(rows['this tree']) / min(rows['baseline']):.2f}")
    levels = [int(x) for x in a.concurrency.split(",")]
    res = {n: [] for n in levels}
    for _ in range(a.rounds):
        for n in levels:
            res[n].append(spawn(["--worker", str(n), *common] + (["--float"] if a.float else []), ROOT)["decode_tok_s"])
    base = max(res[levels[0]])
    print(f"weights: {'fp32 (dequantised)' if a.float else 'the GGUF blocks (Q4_1 int4, Q8_0 int8)'}")
    print(f"{'concurrent':>10} {'aggregate decode tok/s':>24} {'x one stream':>13}")
    for n in levels:
        print(f"{n:>10} {min(res[n]):>11.1f} - {max(res[n]):<10.1f} {max(res[n]) / base:>11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
