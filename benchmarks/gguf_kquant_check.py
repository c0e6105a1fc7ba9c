"""lmzoo's K-quant files against llama.cpp's own quantiser: the same GGML type for every tensor and the
same bytes (issue 10).

    LLAMACPP_PYTHON=.venv-llamacpp/bin/python python benchmarks/gguf_kquant_check.py

Two float32 GGUF sources: a small random-weight Llama (2 layers, n_embd 256, ffn 512: every row a whole
number of 256-blocks; SmolLM2's vocabulary) and the default SmolLM2 model re-written as F32 (n_embd 576:
most rows are not, so llama.cpp substitutes 32-block types). Each is quantised to Q4_K_M, Q5_K_M and
Q6_K by llama.cpp's `llama_model_quantize` (no importance matrix) and by `lmzoo convert --to gguf
--type ...`; every tensor's type and bytes are compared. Not run in CI (llama.cpp is built by
benchmarks/setup_llamacpp.sh).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

QUANTIZE = """
import sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_" + sys.argv[3])
p.nthread = 2
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))
"""


def main() -> None:
    import gguf
    import numpy as np
    from vs_llamacpp import CACHE, random_llama, requantize

    from lmzoo.checkpoints.assets import default_model_path

    py = os.environ.get("LLAMACPP_PYTHON")
    if not py:
        raise SystemExit("set LLAMACPP_PYTHON to a python with llama-cpp-python (benchmarks/setup_llamacpp.sh)")
    sources = {"random Llama, n_embd 256": random_llama(default_model_path(), "f32", n_layer=2, n_embd=256, n_head=4,
                                                        n_kv_head=2, ffn=512, tag="k256"),
               "SmolLM2-135M, n_embd 576": requantize(default_model_path(), "f32")}
    failed = 0
    for label, src in sources.items():
        for ftype, ours_type in (("MOSTLY_Q4_K_M", "q4_k_m"), ("MOSTLY_Q5_K_M", "q5_k_m"), ("MOSTLY_Q6_K", "q6_k")):
            theirs_path = CACHE / f"{src.stem}.llamacpp-{ours_type}.gguf"
            ours_path = CACHE / f"{src.stem}.lmzoo-{ours_type}.gguf"
            subprocess.run([py, "-c", QUANTIZE, str(src), str(theirs_path), ftype], check=True, capture_output=True)
            subprocess.run([sys.executable, "-m", "lmzoo", "convert", str(src), "--to", "gguf", "--type", ours_type,
                            "--out", str(ours_path), "--overwrite", "--quiet"], check=True)
            theirs = {t.name: t for t in gguf.GGUFReader(theirs_path).tensors}
            ours = {t.name: t for t in gguf.GGUFReader(ours_path).tensors}
            kinds, same_type, same_bytes, diffs = {}, 0, 0, []
            for name, t in theirs.items():
                o = ours.get(name)
                kinds[t.tensor_type.name] = kinds.get(t.tensor_type.name, 0) + 1
                if o is None or o.tensor_type != t.tensor_type:
                    diffs.append(f"{name}: llama.cpp {t.tensor_type.name}, lmzoo {o.tensor_type.name if o else 'absent'}")
                    continue
                same_type += 1
                if np.array_equal(np.asarray(t.data).view(np.uint8), np.asarray(o.data).view(np.uint8)):
                    same_bytes += 1
                else:
                    diffs.append(f"{name}: {t.tensor_type.name} bytes differ")
            failed += len(diffs) + len(set(ours) - set(theirs))
            mix = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
            print(f"{label} -> {ours_type}: {len(theirs)} tensors ({mix}); same type {same_type}, same bytes "
                  f"{same_bytes}" + "".join(f"\n    {d}" for d in diffs[:8]), flush=True)
    print("all equal" if not failed else f"{failed} difference(s)")


if __name__ == "__main__":
    main()
