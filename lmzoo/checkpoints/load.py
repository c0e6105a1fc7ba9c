"""`from_pretrained`: build a Transformer from an HF checkpoint directory or a GGUF file (through
the shared builder, checkpoints.build)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from lmzoo.checkpoints.build import instantiate
from lmzoo.dtypes import resolve_dtype
from lmzoo.errors import CheckpointError, ConfigError, LmzooError, ModelNotFoundError
from lmzoo.nn.transformer import Transformer


def from_pretrained(path, dtype=None, device=None, *, cpu_kernels: bool = True,
                    keep_quantized: bool = True, mla_cache: str | None = None, adapter=None,
                    activations: str = "float", quantize: str | None = None, huge_pages: bool = False) -> Transformer:
    """Load a model from an HF checkpoint directory or a `.gguf` file.

    dtype: None keeps the checkpoint's dtype (float32 for GGUF), except on CPU with cpu_kernels, where a
    float16 / bfloat16 HF checkpoint loads as quantize="f16" / "bf16" does: its linear weights kept
    exactly, in half precision, and the rest and every activation float32 (the decode kernels: ~2.3x
    the bf16 model's decode speed on SmolLM2, the same memory). device: None -> cpu.
    cpu_kernels: on CPU, route few-row fp32 products through lmzoo's GEMV kernel
    (lmzoo.quant.gemv; about 1.8x faster decode on 2 cores, same weights and results). The kernels
    only serve products autograd does not record: with gradients enabled and a parameter or input
    that requires them, the layers take F.linear, so a model loaded this way trains correctly.
    keep_quantized: GGUF only — block-quantised matrices stay int8/int4 (the file's own codes, so
    the same function as dequantising them) and F16 / BF16 ones half precision, instead of being
    expanded to float32.
    mla_cache: DeepSeek (MLA) models only — "latent" caches the compressed latent instead of per-head
    keys and values ("expanded", the default); see lmzoo.nn.mla.
    adapter: a PEFT LoRA/DoRA adapter directory applied on top (lmzoo.checkpoints.peft).
    activations: how the int8/int4 layers' CPU kernels take their input: "float" (exact: the same
    function as the dequantised weights) or "q8" (each row quantised per 32 values to int8 first and
    multiplied in integers, as llama.cpp does: faster decode, llama.cpp's numerics; lmzoo.quant.layers).
    quantize: "int8" | "int4" | "f16" | "bf16" — the float checkpoint's linear layers quantised at load
    (lmzoo.quant.layers.quantize; on CPU the rest loads as float32 unless dtype says otherwise, so the
    decode kernels apply: an HF bf16 checkpoint with "bf16" keeps its weights exactly, in half the
    memory of float32). A GGUF file's blocks are already quantised: refused.
    huge_pages: with cpu_kernels on CPU (Linux), hold the linear layers' weights in transparent huge
    pages (lmzoo.quant.hugepages): one-token decode 4-25% faster (the default model's GGUF forms, a 1B
    shape), for more load time faulting them in (0.1-0.5 s on the default model, 1.3 s on the 1B one
    on the VM of benchmarks/RESULTS.md; far less on bare metal). Worth it for a long-running process
    (`lmzoo serve` and `lmzoo chat` turn it on), not for one short answer.
    """
    from lmzoo.quant.layers import ACTIVATIONS, HALF, MODES, set_activations, widen_unquantized
    from lmzoo.quant.layers import quantize as quantize_model

    if activations not in ACTIVATIONS:
        raise ConfigError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
    modes = tuple(m for m in MODES if m != "nf4")  # NF4 is training's frozen base (lmzoo finetune --method qlora)
    if quantize is not None and quantize not in modes:
        raise ConfigError(f"quantize must be one of {modes}, got {quantize!r}")
    if quantize is not None and keep_quantized and Path(path).expanduser().is_file():
        raise ConfigError(f"quantize={quantize!r}: {Path(path).name} is a GGUF file whose matrices are already "
                          "quantised; quantize applies to float checkpoints (keep_quantized=False decodes a GGUF's "
                          "blocks to floats first)")
    on_cpu = torch.device(device or "cpu").type == "cpu"
    stored = _stored_half(path) if on_cpu and dtype is None else None
    if stored is not None and quantize is None and cpu_kernels:  # the CPU default for half checkpoints
        quantize = {torch.float16: "f16", torch.bfloat16: "bf16"}[stored]
    # quantised on CPU: the rest float32, so the decode kernels apply. Half weights that stay half load as
    # stored (no float32 copy of the model on the way) and the rest is widened after quantising
    as_stored = quantize is not None and stored is not None and HALF.get(quantize) == stored
    load_dtype = stored if as_stored else torch.float32 if quantize is not None and dtype is None and on_cpu else dtype
    model = _load(path, load_dtype, device, keep_quantized)
    if quantize is not None:
        quantize_model(model, mode=quantize)
        if as_stored:
            widen_unquantized(model)
    if adapter is not None:
        from lmzoo.checkpoints.peft import load_adapter

        load_adapter(model, adapter)
    if mla_cache is not None:  # the default form of the caches made for this model
        if model.config.attention != "mla":
            raise ConfigError(f"mla_cache applies to MLA models (DeepSeek-V2/V3); this model has "
                              f"attention={model.config.attention!r}")
        model.config = model.config.replace(mla_cache=mla_cache)  # validates the value
    if model.token_dtype_device()[1].type == "cpu":
        reuse_freed_memory()
    if cpu_kernels and on_cpu:
        from lmzoo.quant.gemv import use_cpu_kernels

        use_cpu_kernels(model, huge_pages=huge_pages)
    return set_activations(model, activations)


@functools.cache
def reuse_freed_memory() -> None:
    """glibc's malloc gives every freed block of 128 KiB or more back to the kernel until a large
    enough free raises that threshold (dynamically, up to 32 MiB). A CPU forward's temporaries (a
    prefill's dequantised weights and activations, 1-10 MB each) were then mapped and page-faulted
    afresh on every call, unless the load happened to free a big array first: the default model's
    256-token prefill ran at 2/3 speed (benchmarks/RESULTS.md, 2026-12-06). Pin the thresholds at
    glibc's own maximum so such blocks are reused. Once per process; a no-op off glibc."""
    from lmzoo.quant.hugepages import glibc

    libc = glibc()
    if libc is None:
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
    libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)


def _load(path, dtype, device, keep_quantized: bool) -> Transformer:
    from lmzoo.checkpoints.checkpoint import open_checkpoint_dir

    p = Path(path).expanduser()
    device = torch.device(device or "cpu")
    dtype = resolve_dtype(dtype)
    if not p.exists():
        raise ModelNotFoundError(f"model path {str(p)!r} does not exist; expected an HF checkpoint directory or a .gguf file")
    if p.is_file():
        if _is_gguf(p) or p.suffix.lower() == ".gguf":  # a .gguf with a bad magic is reported as corrupt
            from lmzoo.checkpoints.gguf import load_gguf
            return load_gguf(p, dtype=dtype or torch.float32, device=device, keep_quantized=keep_quantized)
        raise ModelNotFoundError(f"{p} is a file but not a GGUF file; expected a .gguf file or a checkpoint directory")
    hf, adapter, cfg = read_hf_config(p)
    cfg_path = p / "config.json"
    if dtype is None:
        stored = stored_dtype(hf)
        try:
            dtype = resolve_dtype(stored)
        except ValueError as e:
            raise ConfigError(f"{cfg_path}: torch_dtype {stored!r}: {e}") from None
    _check_size(cfg, p)
    source = open_checkpoint_dir(p)
    try:
        weights = adapter.weights(hf) if callable(adapter.weights) else adapter.weights
        transforms = adapter.transforms(hf) if callable(adapter.transforms) else adapter.transforms
        model = instantiate(cfg, source, weights, ignore=adapter.ignore, transforms=transforms,
                            dtype=dtype, device=device)
    finally:
        source.close()
    from lmzoo.checkpoints.peft import CheckpointLayout

    model.checkpoint_layout = CheckpointLayout(hf["model_type"], hf, str(p))
    return model


def _check_size(cfg, p: Path) -> None:
    """Refuse, before allocating anything, a config.json whose model could not be what the checkpoint's
    files hold (n_layer 10**12 would otherwise build modules until memory runs out). The estimate is
    the float32 size of the dense layers; files may store 16 or 8 bits, hence the factor of 4 + 1 GiB."""
    mlp = 3 * cfg.n_embd * max(cfg.intermediate_size, cfg.moe_intermediate_size or 0) * max(1, cfg.n_experts)
    attn = cfg.n_embd * cfg.head_dim * (2 * cfg.n_head + 2 * cfg.n_kv_head)
    est = 4 * (cfg.n_layer * (mlp + attn) + 2 * cfg.vocab_size * cfg.n_embd)
    stored = sum(f.stat().st_size for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    if est > 4 * stored + (1 << 30):
        raise ConfigError(f"{p / 'config.json'} describes a model of about {est / 2**30:.1f} GiB in float32, but the "
                          f"checkpoint's files hold {stored / 2**30:.2f} GiB; check n_layer / n_embd / vocab_size")


def _is_gguf(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"


def _stored_half(path) -> torch.dtype | None:
    """float16 / bfloat16 when `path` is an HF checkpoint directory stored in it (config.json's
    torch_dtype), else None (a GGUF file, a float32 checkpoint, an unreadable config: loading reports it)."""
    from lmzoo.checkpoints.checkpoint import read_json

    try:
        stored = stored_dtype(read_json(Path(path).expanduser() / "config.json"))
    except (OSError, LmzooError, AttributeError):
        return None
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(stored)


def stored_dtype(hf: dict) -> str:
    """The dtype a config.json says its weights are stored in (transformers writes torch_dtype, v5 dtype)."""
    return hf.get("torch_dtype") or hf.get("dtype") or "float32"


def read_hf_config(p: Path):
    """An HF checkpoint directory's config.json -> (the raw dict, its family adapter, the ModelConfig),
    every user mistake in it a one-line error naming the file."""
    cfg_path = p / "config.json"
    if not cfg_path.is_file():
        what = "a directory named config.json" if cfg_path.exists() else "no config.json"
        raise ModelNotFoundError(f"{p} has {what}; expected an HF checkpoint directory")
    from lmzoo.checkpoints.checkpoint import read_json

    hf = read_json(cfg_path)
    if not isinstance(hf, dict):
        raise CheckpointError(f"{cfg_path} must hold a JSON object, got a {type(hf).__name__}")
    from lmzoo.checkpoints.hf import get_adapter

    adapter = get_adapter(hf.get("model_type"))
    try:
        cfg = adapter.config(hf)
    except KeyError as e:  # the family's translation reads a key the file lacks
        raise ConfigError(f"{cfg_path} has no {e.args[0]!r}, which a {hf.get('model_type')!r} checkpoint needs") from None
    except (TypeError, ValueError, AttributeError, ArithmeticError, IndexError) as e:  # a value of the wrong type,
        if isinstance(e, LmzooError):                                          # form or range (0 heads)
            raise
        raise ConfigError(f"{cfg_path}: a value has the wrong type, form or range ({type(e).__name__}: "
                          f"{' '.join(str(e).split())})") from None
    return hf, adapter, cfg
