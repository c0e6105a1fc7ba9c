"""lmzoo vs llama.cpp on the same GGUF, side by side (issue 16): load time, prefill and decode tok/s,
peak RSS, greedy agreement. Each (backend, round) is a fresh process; backends alternate.

    bash benchmarks/setup_llamacpp.sh [avx512]  # once: llama-cpp-python built from its sdist (~15-25 min)
    python benchmarks/vs_llamacpp.py [--model X.gguf]
        [--rounds 3] [--prompt 256] [--new 128] [--threads 2] [--forms q4_1,q8_0,f16] [--shape 1b]
        [--agree 4] [--agree-chat] [--backends lmzoo,lmzoo-q8,llamacpp]

A backend may name the instruction set it runs with, `backend:isa`: lmzoo:avx2 builds lmzoo's kernels
for AVX2 (LMZOO_CPU_ISA; a laptop without AVX-512), llamacpp:avx512 runs the llama.cpp of
.venv-llamacpp-avx512 (`setup_llamacpp.sh avx512`), llamacpp:avx2 that of .venv-llamacpp. Plain
lmzoo builds the widest kernels the CPU allows and plain llamacpp is the llama.cpp built for the
same instruction set (LLAMACPP_PYTHON overrides it). Each lmzoo backend's ratio is taken against the
llama.cpp of its own instruction set when that is listed, else against the first llama.cpp listed.
Both builds on an AVX-512 host: `--backends lmzoo:avx512,llamacpp:avx512,lmzoo:avx2,llamacpp:avx2`.

--forms re-writes the model in other GGUF block types with the `gguf` package (dequantise every
tensor, quantise again; metadata copied) into ~/.cache/lmzoo/bench/; --shape 1b writes a Llama with
1B-class dimensions and random weights (SmolLM2's vocabulary) instead of the default model.
Every backend gets the same prompt ids (random, seeded), greedy decoding, no stop token; llama.cpp
through its Python binding's low-level eval (one `eval` for the prompt, then one per token).
Not run in CI (llama.cpp takes too long to build there).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "lmzoo" / "bench"


def prompt_ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    import random

    r = random.Random(seed)
    return [r.randrange(100, vocab) for _ in range(n)]


def peak_mb() -> float:
    """This process's peak RSS: VmHWM (ru_maxrss would start at the parent's RSS across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_lmzoo(path: str, prompt: int, new: int, threads: int, activations: str = "float",
                 extra_prompts: list[list[int]] = (), kv_dtype: str | None = None, huge_pages: bool = False) -> dict:
    import torch

    torch.set_num_threads(threads)
    import lmzoo

    t0 = time.perf_counter()
    opts = ({} if activations == "float" else {"activations": activations}) | ({"huge_pages": True} if huge_pages else {})
    model = lmzoo.from_pretrained(path, **opts)  # only the options set: a baseline checkout may predate them
    load = time.perf_counter() - t0
    ids = torch.tensor([prompt_ids(prompt, model.config.vocab_size)])
    out, times = [], []
    t0 = time.perf_counter()
    kw = {"kv_dtype": kv_dtype} if kv_dtype else {}
    for tok in lmzoo.stream_generate(model, ids, max_new_tokens=new, eos_token_id=[], **kw):
        times.append(time.perf_counter())
        out.append(int(tok))
    extra = [[int(t) for t in lmzoo.stream_generate(model, torch.tensor([p]), max_new_tokens=new, eos_token_id=[],
                                                    **kw)]
             for p in extra_prompts]  # greedy tokens for more prompts (untimed)
    return dict(load_s=load, prefill_tps=prompt / (times[0] - t0), decode_tps=(new - 1) / (times[-1] - times[0]),
                peak_mb=peak_mb(), tokens=out, extra=extra)


def worker_llamacpp(path: str, prompt: int, new: int, threads: int, extra_prompts: list[list[int]] = ()) -> dict:
    import numpy as np
    from llama_cpp import Llama

    t0 = time.perf_counter()
    llm = Llama(model_path=path, n_ctx=prompt + new + 8, n_threads=threads, n_threads_batch=threads,
                n_batch=512, verbose=False)
    load = time.perf_counter() - t0
    ids = prompt_ids(prompt, llm.n_vocab())
    times = []
    t0 = time.perf_counter()
    n_vocab = llm.n_vocab()

    def last_logits():  # the binding keeps only the last position's logits (logits_all=False)
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    def greedy(ids, on_token=None) -> list[int]:
        toks = []
        llm.reset()
        llm.eval(ids)
        for _ in range(new):
            tok = int(np.argmax(last_logits()))
            if on_token:
                on_token()
            toks.append(tok)
            if len(toks) < new:
                llm.eval([tok])
        return toks

    out = greedy(ids, lambda: times.append(time.perf_counter()))
    extra = [greedy(p) for p in extra_prompts]
    return dict(load_s=load, prefill_tps=prompt / (times[0] - t0), decode_tps=(new - 1) / (times[-1] - times[0]),
                peak_mb=peak_mb(), tokens=out, extra=extra)


# --- model files ----------------------------------------------------------------------------------
def finish(w, dst: Path) -> Path:
    """Write GGUFWriter `w` (opened on dst + ".tmp") out and move it into place."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(str(dst) + ".tmp", dst)
    return dst


def copy_fields(r, w, keep) -> None:
    """Metadata fields of GGUFReader `r` whose name passes `keep`, into GGUFWriter `w`, as they are."""
    import gguf

    for name, field in r.fields.items():
        if not keep(name):
            continue
        vt = field.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            sub = field.types[1]
            vals = [bytes(field.parts[i]).decode("utf-8", "surrogateescape") if sub == gguf.GGUFValueType.STRING
                    else field.parts[i].tolist()[0] for i in field.data]
            w.add_array(name, vals)
        elif vt == gguf.GGUFValueType.STRING:
            w.add_string(name, bytes(field.parts[field.data[0]]).decode("utf-8", "surrogateescape"))
        else:
            w.add_key_value(name, field.parts[field.data[0]].tolist()[0], vt)


def requantize(src: Path, kind: str) -> Path:
    """src re-written with every 2-D weight in `kind` (F16 / Q8_0 / Q4_1 ...), norms kept F32."""
    import gguf
    import numpy as np

    dst = CACHE / f"{src.stem}.{kind}.gguf"
    if dst.exists():
        return dst
    CACHE.mkdir(parents=True, exist_ok=True)
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"]
    w = gguf.GGUFWriter(str(dst) + ".tmp", bytes(arch.parts[arch.data[0]]).decode())
    copy_fields(r, w, lambda name: not name.startswith("GGUF.") and name != "general.architecture")
    qt = gguf.GGMLQuantizationType[kind.upper()]
    for t in r.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if data.ndim == 2:
            w.add_tensor(t.name, gguf.quants.quantize(data, qt), raw_dtype=qt)
        else:
            w.add_tensor(t.name, data)
    return finish(w, dst)


def random_llama(src: Path, kind: str, *, n_layer=16, n_embd=2048, n_head=32, n_kv_head=8, ffn=8192,
                 tag: str = "1b") -> Path:
    """A Llama of 1B-class shape (or another, named by tag) with random weights in `kind`, SmolLM2's
    tokenizer metadata."""
    import gguf
    import numpy as np

    dst = CACHE / f"llama-{tag}-random.{kind}.gguf"
    if dst.exists():
        return dst
    CACHE.mkdir(parents=True, exist_ok=True)
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(str(dst) + ".tmp", "llama")
    copy_fields(r, w, lambda name: name.startswith("tokenizer."))
    vocab = len(r.fields["tokenizer.ggml.tokens"].data)
    hd = n_embd // n_head
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv_head)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    rng = np.random.default_rng(0)
    qt = gguf.GGMLQuantizationType[kind.upper()]

    def mat(name, rows, cols, std=0.02):
        w.add_tensor(name, gguf.quants.quantize(rng.normal(0, std, (rows, cols)).astype(np.float32), qt), raw_dtype=qt)

    mat("token_embd.weight", vocab, n_embd)
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(n_embd, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, np.float32))
        mat(p + "attn_q.weight", n_embd, n_embd)
        mat(p + "attn_k.weight", n_kv_head * hd, n_embd)
        mat(p + "attn_v.weight", n_kv_head * hd, n_embd)
        mat(p + "attn_output.weight", n_embd, n_embd)
        mat(p + "ffn_gate.weight", ffn, n_embd)
        mat(p + "ffn_up.weight", ffn, n_embd)
        mat(p + "ffn_down.weight", n_embd, ffn)
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    return finish(w, dst)


LLAMACPP = "llamacpp"
WORKERS = ("lmzoo", "lmzoo-q8", "lmzoo-hp", "lmzoo-q8-hp", LLAMACPP, "baseline")


def split_backend(backend: str) -> tuple[str, str | None]:
    """'lmzoo-q8:avx2' -> ('lmzoo-q8', 'avx2'); 'llamacpp' -> ('llamacpp', None)."""
    kind, _, isa = backend.partition(":")
    if kind not in WORKERS or isa not in ("", "avx2", "avx512"):
        raise SystemExit(f"--backends: unknown backend {backend!r}; expected one of {', '.join(WORKERS)}, "
                         "each optionally followed by :avx2 / :avx512")
    return kind, isa or None


def host_isa() -> str:
    """The instruction set lmzoo's kernels are built for on this CPU by default (avx512 or avx2)."""
    from lmzoo.quant.kernels import _flags

    return "avx512" if "-mavx512f" in _flags() else "avx2"


def llamacpp_python(isa: str | None) -> str:
    """The python of the llama.cpp build for `isa` (setup_llamacpp.sh's virtual environments); None:
    LLAMACPP_PYTHON, else the build for lmzoo's default kernels here (like with like)."""
    if isa is None:
        if os.environ.get("LLAMACPP_PYTHON"):
            return os.environ["LLAMACPP_PYTHON"]
        isa = host_isa()
    python = ROOT / (".venv-llamacpp" if isa == "avx2" else f".venv-llamacpp-{isa}") / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"no llama.cpp built for {isa}: {python} is missing; run "
                         f"bash benchmarks/setup_llamacpp.sh {isa} (or set LLAMACPP_PYTHON)")
    return str(python)


def llamacpp_reference(backend: str, backends: list[str]) -> str | None:
    """The llama.cpp backend `backend`'s decode ratio is taken against: its own instruction set's when
    listed, else the first llama.cpp listed."""
    ours = [b for b in backends if split_backend(b)[0] == LLAMACPP]
    same = [b for b in ours if split_backend(b)[1] == split_backend(backend)[1]]
    return (same or ours or [None])[0]


def run(backend: str, path: Path, a) -> dict:
    kind, isa = split_backend(backend)
    python = llamacpp_python(isa) if kind == LLAMACPP else sys.executable
    cmd = [python, __file__, "--worker", kind, "--model", str(path), "--prompt", str(a.prompt),
           "--new", str(a.new), "--threads", str(a.threads)]
    cmd += ["--extra-prompts", a.extra_prompts] if a.extra_prompts else []
    cmd += ["--kv-dtype", a.kv_dtype] if a.kv_dtype and kind != LLAMACPP else []
    tree = a.baseline if kind == "baseline" else str(ROOT)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), PYTHONPATH=tree)
    if isa and kind != LLAMACPP:
        env["LMZOO_CPU_ISA"] = isa
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{backend} failed: {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# chat questions for --agree-chat: real text through the chat template gives peaked next-token
# distributions, where random ids give flat ones (near-ties that summation order decides)
CHAT_PROMPTS = ["What is the capital of France?", "Write a short poem about the sea.",
                "Explain in two sentences why the sky is blue.", "List three uses of a paperclip.",
                "How do I boil an egg?", "What is 17 times 23?", "Tell me a fun fact about octopuses.",
                "Summarise the plot of Romeo and Juliet in one paragraph."]


def extra_prompts(a, src: Path) -> str | None:
    """The untimed agreement prompts as a JSON file of id lists (both backends read the same ids):
    --agree N random prompts (seeds 1..N), --agree-chat the chat questions."""
    import tempfile

    vocab = None
    prompts = []
    if a.agree:
        import gguf

        vocab = len(gguf.GGUFReader(src).fields["tokenizer.ggml.tokens"].data)
        prompts += [prompt_ids(a.prompt, vocab, seed) for seed in range(1, a.agree + 1)]
    if a.agree_chat:
        from lmzoo.tokenizer import load_tokenizer

        tok = load_tokenizer(src)
        prompts += [tok.encode_chat([{"role": "user", "content": q}]) for q in CHAT_PROMPTS]
    if not prompts:
        return None
    f = Path(tempfile.mkdtemp()) / "prompts.json"
    f.write_text(json.dumps(prompts))
    return str(f)


def agreement(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", choices=WORKERS)
    ap.add_argument("--baseline", help="another lmzoo checkout (git worktree add /tmp/old <commit>): adds its "
                    "lmzoo as backend 'baseline'")
    ap.add_argument("--model")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--agree-chat", action="store_true", help="greedy agreement also over the chat questions "
                    "of CHAT_PROMPTS (the model's chat template; untimed): peaked distributions, unlike random ids")
    ap.add_argument("--extra-prompts", help=argparse.SUPPRESS)  # workers: a JSON file of id lists
    ap.add_argument("--agree", type=int, default=0, help="greedy agreement also over this many more prompts "
                    "(other seeds, untimed): one prompt's near-tie decides less")
    ap.add_argument("--forms", default="", help="comma list of GGUF types to re-write the model in, e.g. q8_0,f16")
    ap.add_argument("--shape", choices=["1b"], help="a random-weight Llama of this shape instead")
    ap.add_argument("--kv-dtype", help="the lmzoo backends' KV cache dtype (float16: llama.cpp's own cache type)")
    ap.add_argument("--backends", default="lmzoo,lmzoo-q8,llamacpp",
                    help="lmzoo (exact float activations), lmzoo-q8 (--activations q8), lmzoo-hp / lmzoo-q8-hp "
                    "(the same with huge_pages=True), llamacpp; each may end in :avx2 or :avx512 (the "
                    "instruction set its kernels are built for)")
    a = ap.parse_args()
    if a.worker:
        extra = json.loads(Path(a.extra_prompts).read_text()) if a.extra_prompts else []
        if a.worker == "llamacpp":
            out = worker_llamacpp(a.model, a.prompt, a.new, a.threads, extra)
        else:
            out = worker_lmzoo(a.model, a.prompt, a.new, a.threads, "q8" if "-q8" in a.worker else "float",
                               extra, a.kv_dtype, huge_pages=a.worker.endswith("-hp"))
        print(json.dumps(out))
        return
    from lmzoo.checkpoints.assets import default_model_path
    from lmzoo.tools.bench import read_bandwidth_gbs

    backends = (["baseline"] if a.baseline else []) + a.backends.split(",")
    for b in backends:  # unknown names and missing llama.cpp builds stop here, before any model is written
        kind, isa = split_backend(b)
        if kind == LLAMACPP:
            print(f"# {b}: {llamacpp_python(isa)}")
    src = Path(a.model) if a.model else default_model_path()
    files = {"file": src} if not a.shape else {}
    for kind in filter(None, a.forms.split(",")):
        files[kind] = random_llama(src, kind) if a.shape else requantize(src, kind)
    a.extra_prompts = extra_prompts(a, src)
    print(f"# {time.strftime('%Y-%m-%d')}, {a.threads} threads, prompt {a.prompt}, {a.new} new tokens, greedy; "
          f"memory read {read_bandwidth_gbs(a.threads):.1f} GB/s; {a.rounds} rounds alternating")
    print("| weights | backend | load s | prefill tok/s | decode tok/s | peak RSS MB | decode vs llama.cpp | "
          "greedy tokens equal |\n|---|---|---|---|---|---|---|---|")
    for form, path in files.items():
        res: dict[str, list[dict]] = {b: [] for b in backends}
        for _ in range(a.rounds):
            for b in backends:
                res[b].append(run(b, path, a))

        def rng(b, key, fmt="{:.1f}", res=res):
            v = [r[key] for r in res[b]]
            return fmt.format(min(v)) + ("" if len(v) == 1 else " - " + fmt.format(max(v)))

        for b in backends:
            ratio = same = ""
            ref_name = llamacpp_reference(b, backends)
            ref = res.get(ref_name)
            if ref and split_backend(b)[0] != LLAMACPP:
                rs = [x["decode_tps"] / y["decode_tps"] for x, y in zip(res[b], ref)]
                ratio = f"{min(rs):.2f} - {max(rs):.2f}x" + (f" ({ref_name})" if ref_name != LLAMACPP else "")
                same = f"{min(agreement(x['tokens'], y['tokens']) for x, y in zip(res[b], ref))}/{a.new}"
                if res[b][0]["extra"]:  # per extra prompt, the fewest tokens equal over the rounds
                    per = [min(agreement(x["extra"][i], y["extra"][i]) for x, y in zip(res[b], ref))
                           for i in range(len(res[b][0]["extra"]))]
                    same += f"; more prompts: {', '.join(map(str, per))}"
            print(f"| {path.name if form == 'file' else form} | {b} | {rng(b, 'load_s', '{:.2f}')} | "
                  f"{rng(b, 'prefill_tps')} | {rng(b, 'decode_tps')} | {rng(b, 'peak_mb', '{:.0f}')} | {ratio} | {same} |",
                  flush=True)


if __name__ == "__main__":
    main()
