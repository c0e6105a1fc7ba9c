"""The fused CPU pieces of a decode step (lmzoo/quant/kernels/cpu.cpp) against the PyTorch
expressions they replace, and the 8-bit-activation integer products against an independent
reference: llama.cpp's activation quantisation (ggml's quantize_row_q8_1: d = max|x| / 127 per 32
values, codes round-half-even(x / d)) written here in torch, then an exact float64 product."""

import pytest
import torch
from torch import nn

from lmzoo.nn.norm import RMSNorm
from lmzoo.nn.rope import apply_rope
from lmzoo.quant.kernels import cpu_kernels
from lmzoo.quant.layers import Int4Linear, Int8Linear, set_activations

K = cpu_kernels()
pytestmark = pytest.mark.skipif(K is None, reason="no C++ compiler for the CPU kernels")


def q8_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) -> (values the 8-bit blocks stand for (M, K), each block's stored s (M, K/32)), float64.
    ggml: d = amax / 127 and s = d * sum(q) kept in float16; codes round(x * 127 / amax)."""
    xb = x.view(x.shape[0], -1, 32)
    amax = xb.abs().amax(-1)
    d = amax / 127.0
    inv = torch.where(amax != 0, 127.0 / amax, torch.zeros_like(amax))
    q = torch.round(xb * inv[..., None])  # round half to even
    assert q.abs().max() <= 127
    s = (d * q.sum(-1)).half().double()
    return (q.double() * d.half().double()[..., None]).view_as(x), s


def int4_reference(x: torch.Tensor, m: Int4Linear) -> torch.Tensor:
    """w = scale * q + min: the scale part against the blocks' values, the min part against their s."""
    xr, s = q8_reference(x)
    K, g = m.in_features, m.group_size
    codes = (m.dequantize().double() - m.min.double().repeat_interleave(g, 1))  # scale * q
    s_group = s.view(x.shape[0], K // g, g // 32).sum(-1)  # (M, G)
    return xr @ codes.T + s_group @ m.min.double().T


def int8_layer(lin: nn.Linear, group: int | None) -> Int8Linear:
    if group != 16:
        return Int8Linear.from_linear(lin, group_size=group)
    m = Int8Linear.from_linear(lin, group_size=32)  # Q6_K / Q3_K's layout: one scale per 16 values
    m.group_size = 16
    m.scale = m.scale.repeat_interleave(2, 1) * torch.rand(m.out_features, m.in_features // 16) + 0.5
    return m


@pytest.mark.parametrize("M", [1, 2, 4, 7])
@pytest.mark.parametrize("Kdim,N", [(576, 67), (1536, 40), (96, 5)])
def test_q8_products_match_reference(M, Kdim, N):
    torch.manual_seed(M * Kdim + N)
    lin = nn.Linear(Kdim, N, bias=False)
    x = torch.randn(M, Kdim) * 3
    x[0, :32] = 0.0  # an all-zero block: d = 0, codes 0
    x[-1, 32:64] *= 1000
    xr, _ = q8_reference(x)
    for g in (32, 96 if Kdim % 96 == 0 else 32):
        m = Int4Linear.from_linear(lin, group_size=g)
        y = K.int4_linear_q8(x, m.q, m.scale, m.min, g)
        ref = int4_reference(x, m)
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    for g in (32, 16, None):
        m = int8_layer(lin, g)
        y = K.int8_linear_q8(x, m.q, m.scale, m.group_size)
        ref = xr @ m.dequantize().double().T
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


# an even and an odd number of 32-blocks, then groups of several blocks (and one per row for int8)
@pytest.mark.parametrize("Kdim, g", [(576, 32), (608, 32), (1152, 64), (1184, 32 * 37)])
def test_q8_row_result_does_not_depend_on_its_batch(Kdim, g):
    """The engine batches rows that are at different points of their requests: a row's product must
    be the same bits alone or beside others (any row count, any position in a pass of rows: four on
    the 256-bit path, eight on the 512-bit one)."""
    torch.manual_seed(0)
    lin = nn.Linear(Kdim, 100)
    m8 = Int8Linear.from_linear(lin, group_size=g)
    x = torch.randn(19, Kdim)
    fs = [lambda a: K.int8_linear_q8(a, m8.q, m8.scale, g)]
    if g <= 64:
        m4 = Int4Linear.from_linear(lin, group_size=g)
        fs.append(lambda a: K.int4_linear_q8(a, m4.q, m4.scale, m4.min, g))
    for f in fs:
        batched = f(x)
        alone = torch.cat([f(x[i:i + 1].contiguous()) for i in range(19)])
        assert torch.equal(batched, alone)
        assert torch.equal(f(x[3:8].contiguous()), batched[3:8])
        assert torch.equal(f(x[5:17].contiguous()), batched[5:17])


@pytest.mark.parametrize("bits", [4, 8])
def test_q8_tiles_keep_float16_scales_and_follow_the_codes(bits):
    """GGUF stores scales (and Q4_1's mins) in float16: a layer's 16-row tiles keep them so, and its
    products still match the reference over several passes of rows and a partial last tile. The
    tiles are the layer's own copy: codes changed in place (load_state_dict) are packed again."""
    if K.isa() == "portable":
        pytest.skip("the tiled kernel is the AVX2 and AVX-512 builds' path")
    torch.manual_seed(0)

    def layer(seed: int):
        torch.manual_seed(seed)
        lin = nn.Linear(576, 40, bias=False)
        m = Int4Linear.from_linear(lin) if bits == 4 else Int8Linear.from_linear(lin, group_size=32)
        m.scale = m.scale.half()
        if bits == 4:
            m.min = m.min.half()
        return m

    def reference(x, m):
        return int4_reference(x, m) if bits == 4 else q8_reference(x)[0] @ m.dequantize().double().T

    m = layer(0)
    set_activations(m, "q8")
    x = torch.randn(19, 576) * 3
    for _ in range(2):
        with torch.inference_mode():
            y = m(x)
        ref = reference(x, m)
        torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
        kind, tiles, n = m.kernel_spec(1)
        assert (kind, n, tiles[1].dtype) == (6 if bits == 4 else 5, 40, torch.float16)
        m.load_state_dict(layer(1).state_dict())  # new codes, in place


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("half", [False, True])
@pytest.mark.parametrize("Kdim,N,g", [(576, 67, 32), (1536, 40, 32), (96, 5, 32), (1152, 33, 128)])
def test_tiles_with_float_activations(Kdim, N, g, half, bits):
    """The default decode path of int4 and int8 layers on AVX2 / AVX-512 builds: float rows times the
    16-row tiles, the exact product of the float weights (float64 reference) up to float32 summation,
    the same bits for a row alone or in any pass of rows, scales (and mins) kept float16 as GGUF
    stores them."""
    if K.isa() == "portable":
        pytest.skip("the tiled kernel is the AVX2 and AVX-512 builds' path")
    torch.manual_seed(Kdim + N)
    lin = nn.Linear(Kdim, N)
    m = Int4Linear.from_linear(lin, group_size=g) if bits == 4 else Int8Linear.from_linear(lin, group_size=g)
    if half:
        m.scale = m.scale.half()
        if bits == 4:
            m.min = m.min.half()
    codes, scale, extra = K.pack_tiles_q8(m.q, m.scale, m.min if bits == 4 else None, g)
    assert scale.dtype == (torch.float16 if half else torch.float32)
    assert extra.dtype == (scale.dtype if bits == 4 else torch.int16)
    x = torch.randn(11, Kdim) * 3
    x[0, :32] = 0.0
    y = K.tiles_linear_f(x, codes, scale, extra, N)
    ref = x.double() @ m.dequantize().double().T
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    alone = torch.cat([K.tiles_linear_f(x[i:i + 1].contiguous(), codes, scale, extra, N) for i in range(11)])
    assert torch.equal(y, alone)
    assert torch.equal(K.tiles_linear_f(x[2:9].contiguous(), codes, scale, extra, N), y[2:9])
    with pytest.raises(RuntimeError, match=f"tiles_linear_f: the tensors pack_tiles_q8 returns for {N + 16} weight rows"):
        K.tiles_linear_f(x, codes, scale, extra, N + 16)  # a tile more than packed


def test_q8_activations_in_a_layer(monkeypatch):
    torch.manual_seed(0)
    lin = nn.Linear(256, 48, bias=True)
    q = Int4Linear.from_linear(lin)
    x = torch.randn(3, 256)
    set_activations(q, "q8")
    with torch.inference_mode():
        y = q(x)
    ref = int4_reference(x, q) + q.bias.double()
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-4)
    with pytest.raises(Exception, match="activations 'int2' is not one of"):
        set_activations(q, "int2")


@pytest.mark.parametrize("shape", [(1, 1, 576), (2, 5, 64), (3, 100)])
def test_rms_norm_matches_module(shape):
    torch.manual_seed(0)
    norm = RMSNorm(shape[-1], eps=1e-5)
    norm.weight.data = torch.randn(shape[-1])
    x = torch.randn(*shape) * 4
    with torch.inference_mode():
        torch.testing.assert_close(K.rms_norm(x, norm.weight, 1e-5), norm(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("rot", [64, 32])  # full and partial rotary (Phi / StableLM / GPT-NeoX style)
@pytest.mark.parametrize("cos_batch", [1, 2])
def test_rope_heads_matches_apply_rope(rot, cos_batch):
    torch.manual_seed(0)
    B, T, H, Hkv, hd = 2, 3, 6, 2, 64
    y = torch.randn(B, T, (H + 2 * Hkv) * hd)
    ang = torch.randn(cos_batch, T, rot // 2).repeat(1, 1, 2)  # rotate-half tables repeat their halves
    cos, sin = ang.cos().contiguous(), ang.sin().contiguous()
    q, k, v = y.split((H * hd, Hkv * hd, Hkv * hd), dim=-1)
    want_q = apply_rope(q.view(B, T, H, hd).transpose(1, 2), cos, sin)
    want_k = apply_rope(k.view(B, T, Hkv, hd).transpose(1, 2), cos, sin)
    got = y.clone()
    K.rope_heads_(got, cos, sin, H + Hkv, hd)
    gq, gk, gv = got.split((H * hd, Hkv * hd, Hkv * hd), dim=-1)
    torch.testing.assert_close(gq.view(B, T, H, hd).transpose(1, 2), want_q, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gk.view(B, T, Hkv, hd).transpose(1, 2), want_k, rtol=1e-6, atol=1e-6)
    assert torch.equal(gv, v)  # values are not rotated


def test_from_pretrained_q8_activations(smollm2_path):
    """The default model with llama.cpp-style 8-bit activations: every int layer switched, and the
    next-token distribution close to the exact (float-activation) one."""
    import lmzoo
    from lmzoo.errors import ConfigError

    exact = lmzoo.from_pretrained(smollm2_path)
    fast = lmzoo.from_pretrained(smollm2_path, activations="q8")
    layers = [m for m in fast.modules() if isinstance(m, (Int4Linear, Int8Linear))]
    assert layers and all(m.activations == "q8" for m in layers)
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 1345, 314]])
    with torch.inference_mode():
        a, b = exact(ids[:, :1]), fast(ids[:, :1])  # one row: the kernel path
    assert not torch.equal(a, b)  # a different product ...
    assert (a - b).abs().max() < 0.05 * a.abs().max()  # ... of nearly the same function
    assert a[0, -1].argmax() == b[0, -1].argmax()
    with pytest.raises(ConfigError, match="activations must be one of"):
        lmzoo.from_pretrained(smollm2_path, activations="q4")


@pytest.mark.parametrize("H,Hkv", [(6, 2), (4, 4), (8, 1)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("end", [33, 150])
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
def test_decode_attention_matches_sdpa(H, Hkv, masked, end, cache_dtype):
    """One query per row against a cache: the kernel writes the new key/value at each row's slot and
    attends like SDPA over the visible slots (rows at different lengths, a subset of cache rows; with
    150 slots whole 64-key chunks of a row are masked: a short row's tail, a window's head). A float16
    cache holds the new keys and values rounded to float16, and the product is SDPA's over those
    values in float32."""
    torch.manual_seed(H * 10 + Hkv)
    B, Bc, cap, hd = 3, 5, end + 7, 32
    kc, vc = torch.randn(Bc, Hkv, cap, hd).to(cache_dtype), torch.randn(Bc, Hkv, cap, hd).to(cache_dtype)
    qkv = torch.randn(B, 1, (H + 2 * Hkv) * hd + 7)  # wider than the heads: only its first columns are read
    rows, slots = torch.tensor([4, 0, 2]), torch.tensor([end - 1, 10, 0])
    mask = (torch.arange(end)[None] <= slots[:, None]) & (torch.rand(B, end) > 0.3 if masked else True)
    mask[0, :end - 20] = False  # row 0 sees its last 20 keys only (a sliding window)
    mask[torch.arange(B), slots] = True
    want_k, want_v = kc.clone(), vc.clone()
    q = qkv[..., : H * hd].view(B, 1, H, hd).transpose(1, 2)
    for b in range(B):
        r, s = int(rows[b]), int(slots[b])
        want_k[r, :, s] = qkv[b, 0, H * hd:(H + Hkv) * hd].view(Hkv, hd)
        want_v[r, :, s] = qkv[b, 0, (H + Hkv) * hd:(H + 2 * Hkv) * hd].view(Hkv, hd)
    want = torch.nn.functional.scaled_dot_product_attention(
        q, want_k[rows, :, :end].float(), want_v[rows, :, :end].float(), attn_mask=mask[:, None, None], scale=0.3,
        enable_gqa=H != Hkv).transpose(1, 2).reshape(B, 1, H * hd)
    got = K.decode_attention(qkv, kc, vc, rows, slots, end, mask, H, Hkv, 0.3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(kc, want_k) and torch.equal(vc, want_v)
    with pytest.raises(RuntimeError, match="outside the cache"):
        K.decode_attention(qkv, kc, vc, rows, torch.tensor([0, 1, end]), end, None, H, Hkv, 0.3)


def generation_inputs(cfg, seed: int | None) -> list[dict]:
    """One row, then a left-padded batch of three whose rows start at different lengths (the masked,
    per-row-slot decode path)."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, :7] = 0
    return [{"input_ids": ids[:1]}, {"input_ids": ids, "attention_mask": mask}]


@pytest.mark.parametrize("extra,kv_dtype", [({}, None), ({"qkv_bias": True, "n_kv_head": 6}, None),
                                            ({"sliding_window": 5}, None), ({}, "float16")])
def test_decode_attention_in_generation(extra, kv_dtype):
    """Greedy generation with the kernels on equals the plain PyTorch model's, for one row and for a
    left-padded batch whose rows run at different lengths (the masked, per-row-slot path); with a
    float16 KV cache too (the plain model then reads it widened to float32)."""
    import lmzoo
    from lmzoo.nn.transformer import Transformer
    from lmzoo.quant.gemv import use_cpu_kernels

    torch.manual_seed(0)
    cfg = lmzoo.ModelConfig(**{**dict(vocab_size=97, n_layer=2, n_embd=48, n_head=6, n_kv_head=2,
                                      intermediate_size=80), **extra})
    plain = Transformer(cfg).eval()
    fast = use_cpu_kernels(Transformer(cfg).eval())
    fast.load_state_dict(plain.state_dict())
    assert all(layer.attn.decode_attention is not None for layer in fast.layers)
    calls = []
    kernel = fast.layers[0].attn.decode_attention
    fast.layers[0].attn.decode_attention = lambda qkv, *a: calls.append(qkv.shape[1]) or kernel(qkv, *a)
    for kw in generation_inputs(cfg, seed=None):
        want = lmzoo.generate(plain, max_new_tokens=12, eos_token_id=[], kv_dtype=kv_dtype, **kw)
        n = len(calls)
        got = lmzoo.generate(fast, max_new_tokens=12, eos_token_id=[], kv_dtype=kv_dtype, **kw)
        assert torch.equal(got, want)
        new = calls[n:]  # every decode step went to the kernel, and the prompt (T <= PREFILL_MAX_T) too
        assert new.count(1) == 11 and new[0] > 1


@pytest.mark.parametrize("activations", ["float", "q8"])
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.float16])
def test_prompt_whole_or_in_chunks_gives_the_same_bits(smollm2_path, activations, kv_dtype):
    """A prompt prefilled whole or in chunks (the engine's prefill_chunk, a batch's step budget)
    leaves the same cache and the same next-token logits, bit for bit: every key's score, exp and
    value product are computed alike wherever the key sits in its attention chunk and however many
    keys the chunk holds (also what keeps a row's decode the same alone and in a batch)."""
    import lmzoo
    from lmzoo.runtime.cache import KVCache

    model = lmzoo.from_pretrained(smollm2_path, activations=activations)
    ids = torch.randint(100, model.config.vocab_size, (1, 14), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        whole = KVCache(model, 1, 64, dtype=kv_dtype)
        a = model(ids, cache=whole, last_only=True)[0, -1]
        chunked = KVCache(model, 1, 64, dtype=kv_dtype)
        for s in range(0, 14, 5):
            b = model(ids[:, s:s + 5], cache=chunked, last_only=True)[0, -1]
    assert torch.equal(a, b)
    assert all(torch.equal(x[:, :, :14], y[:, :, :14]) for x, y in zip(whole.k + whole.v, chunked.k + chunked.v))


def _decode_block_pair(cfg, form: str):
    """(plain PyTorch model, the same weights with the kernels on) in weight form `form`."""
    from lmzoo.nn.transformer import Transformer
    from lmzoo.quant.gemv import use_cpu_kernels
    from lmzoo.quant.layers import quantize

    torch.manual_seed(0)
    plain = Transformer(cfg).eval()
    for p in plain.parameters():  # non-trivial norm weights and biases
        if p.dim() == 1:
            p.data.uniform_(0.5, 1.5)
    if form != "f32":
        quantize(plain, mode=form.split("/")[0])
        set_activations(plain, "q8" if form.endswith("/q8") else "float")
    fast = use_cpu_kernels(copy_model(plain))
    return plain, fast


def copy_model(m):
    import copy

    return copy.deepcopy(m)


@pytest.mark.parametrize("form", ["f32", "f16", "bf16", "int8", "int8/q8", "int4", "int4/q8"])
@pytest.mark.parametrize("extra", [{}, {"qkv_bias": True, "n_kv_head": 4}, {"sliding_window": 5}])
@pytest.mark.parametrize("path", ["stack", "blocks"])
def test_decode_block_in_generation(form, extra, path):
    """The fused one-token step — all layers in one call (stack), or block by block (blocks) — gives
    the modules' own logits, bit for bit (the same kernels in the same order), in every weight form,
    for one row and a left-padded batch at different lengths, and it ran every decode step; against
    the plain PyTorch model it agrees within the forms' tolerance and greedy tokens are identical."""
    import lmzoo

    cfg = lmzoo.ModelConfig(**{**dict(vocab_size=97, n_layer=2, n_embd=64, n_head=4, n_kv_head=2,
                                      intermediate_size=96), **extra})
    plain, fast = _decode_block_pair(cfg, form)
    ran = []
    if path == "stack":
        stack = fast.decode_layers
        assert stack is not None
        fast.decode_layers = lambda *a: ran.append(y := stack(*a)) or y
        per_step = 1
    else:
        fast.decode_layers = None
        steps = [layer.decode_step for layer in fast.layers]
        assert all(s is not None for s in steps)
        for layer, s in zip(fast.layers, steps):
            layer.decode_step = lambda *a, s=s: ran.append(y := s(*a)) or y
        per_step = cfg.n_layer
    inputs = generation_inputs(cfg, seed=1)
    for kw in inputs:
        want = lmzoo.generate(plain, max_new_tokens=10, eos_token_id=[], **kw)
        n = len(ran)
        got = lmzoo.generate(fast, max_new_tokens=10, eos_token_id=[], **kw)
        assert torch.equal(got, want)
        assert len(ran) - n == 9 * per_step and all(y is not None for y in ran[n:])
    # logits, fused vs the modules with the same kernels (fused steps off), then vs plain PyTorch
    from lmzoo.runtime.cache import KVCache

    ids, mask = inputs[1]["input_ids"], inputs[1]["attention_mask"]

    def logits(model, off: bool):
        saved = [layer.decode_step for layer in model.layers], model.decode_layers
        if off:
            for layer in model.layers:
                layer.decode_step = None
            model.decode_layers = None
        try:
            cache = KVCache(model, 3, 16)
            with torch.inference_mode():
                model(ids, cache=cache, attention_mask=mask)
                return torch.cat([model(ids[:, j:j + 1], cache=cache) for j in range(4)], 1)
        finally:
            for layer, s in zip(model.layers, saved[0]):
                layer.decode_step = s
            model.decode_layers = saved[1]

    fused = logits(fast, off=False)
    assert torch.equal(fused, logits(fast, off=True))
    tol = 5e-2 if form.endswith("/q8") else 1e-4  # q8: the activations are rounded
    torch.testing.assert_close(fused, logits(plain, off=True), rtol=0, atol=tol)


@pytest.mark.parametrize("form", ["f32", "int4", "int8"])
def test_decode_stack_follows_changes_to_the_model(form):
    """The all-layers step is prepared once per model and kept while the model is unchanged; after
    each change below the next step follows it (a stale stack would give the old logits): new weights
    loaded into a layer, another layer put in, a norm weight changed in place, the activation mode
    switched, a forward hook that changes an output (the step then runs the modules, hook
    included) and the hook removed again."""
    import lmzoo
    from lmzoo.quant.gemv import _STACKS
    from lmzoo.runtime.cache import KVCache

    cfg = lmzoo.ModelConfig(vocab_size=97, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=96)
    _, fast = _decode_block_pair(cfg, form)
    _, other = _decode_block_pair(lmzoo.ModelConfig(**{**cfg.__dict__, "name": "other"}), form)
    for t in [*other.parameters(), *other.buffers()]:  # other weights (quantised ones: their scales)
        if t.is_floating_point():
            t.data.mul_(-1.5)
    ids = torch.randint(0, cfg.vocab_size, (2, 6), generator=torch.Generator().manual_seed(4))

    def logits(fused: bool):
        saved = fast.decode_layers, [layer.decode_step for layer in fast.layers]
        if not fused:
            fast.decode_layers = None
            for layer in fast.layers:
                layer.decode_step = None
        try:
            cache = KVCache(fast, 2, 16)
            with torch.inference_mode():
                fast(ids, cache=cache)
                return torch.cat([fast(ids[:, j:j + 1], cache=cache) for j in range(3)], 1)
        finally:
            fast.decode_layers = saved[0]
            for layer, s in zip(fast.layers, saved[1]):
                layer.decode_step = s

    def check(built: bool = True):
        got = logits(True)
        assert (_STACKS[fast][1] is not None) == built
        assert torch.equal(got, logits(False))
        return got

    before = check()
    changes = [lambda: fast.layers[1].mlp.down.load_state_dict(other.layers[1].mlp.down.state_dict()),
               lambda: setattr(fast.layers[0].attn, "o", copy_model(other.layers[0].attn.o)),
               lambda: fast.layers[0].mlp_norm.weight.data.mul_(0.5)]
    if form != "f32":
        changes.append(lambda: set_activations(fast, "q8"))
    for change in changes:
        change()
        after = check()
        assert not torch.equal(after, before)
        before = after
    handle = fast.layers[1].mlp.register_forward_hook(lambda m, i, o: o * 2)
    hooked = check(built=False)
    assert not torch.equal(hooked, before)
    handle.remove()
    assert torch.equal(check(), before)


def test_decode_block_steps_aside_for_hooks_and_lora(tmp_path):
    """A forward hook on a part of the block, or a LoRA wrapped around the projections after the
    kernels were put in, makes the block run its modules (the fused step would skip them): the hook
    sees every decode step and the LoRA model generates what the plain PyTorch one does."""
    import lmzoo
    from lmzoo.checkpoints.peft import add_lora
    from tests.test_parity import build_reference

    build_reference("llama-gqa", tmp_path)
    plain = lmzoo.from_pretrained(tmp_path, dtype=torch.float32, cpu_kernels=False)
    fast = lmzoo.from_pretrained(tmp_path, dtype=torch.float32)
    assert fast.layers[1].decode_step is not None
    ids = torch.randint(0, fast.config.vocab_size, (1, 7), generator=torch.Generator().manual_seed(2))
    seen = []
    handle = fast.layers[1].attn.o.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    lmzoo.generate(fast, ids, max_new_tokens=5, eos_token_id=[])
    handle.remove()
    assert seen == [(1, 7, fast.config.n_embd)] + [(1, 1, fast.config.n_embd)] * 4
    for m in (plain, fast):
        add_lora(m, r=4)
        torch.manual_seed(3)
        for p in m.parameters():  # the same non-zero adapters in both
            if p.requires_grad:
                p.data.normal_(0, 0.5)
    want = lmzoo.generate(plain, ids, max_new_tokens=6, eos_token_id=[])
    assert torch.equal(lmzoo.generate(fast, ids, max_new_tokens=6, eos_token_id=[]), want)


@pytest.mark.parametrize("V", [5, 8, 97, 49152])
def test_greedy_ids_matches_argmax(V):
    """First index of the maximum (ties, -inf rows, the vector tail), and NaN anywhere in a row flagged."""
    torch.manual_seed(0)
    x = torch.randn(6, V)
    x[1] = float("-inf")
    x[2, V // 3] = x[2, V - 1] = x[2].max() + 1  # a tie: the first one wins
    x[3] = torch.randint(0, 3, (V,)).float()  # many ties
    x[4, -1] = 1e30  # the maximum in the tail
    ids, nan = K.greedy_ids(x)
    assert torch.equal(ids, x.argmax(-1)) and not nan
    for j in (0, V // 2, V - 1):
        y = x.clone()
        y[5, j] = float("nan")
        assert K.greedy_ids(y)[1]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("lines,streams", [(1, 4), (37, 4), (1000, 1), (1003, 8)])
def test_stream_read_reads_every_line_once(lines, streams, threads):
    """The bandwidth probe's sum is every 64-byte line's first 8-byte word, once, whatever the split."""
    words = torch.randint(-(2**40), 2**40, (lines, 8), dtype=torch.int64)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert K.stream_read(words.view(torch.uint8).flatten(), streams) == int(words[:, 0].sum())
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("g", [16, 32, 64])
@pytest.mark.parametrize("M", [1, 3, 9])
def test_float16_scales_give_the_float32_results(g, M):
    """Scales / mins kept as float16 (GGUF's Q8_0 / Q4_x store them so) are widened exactly: every
    kernel gives the bits it gives for the same values held as float32."""
    torch.manual_seed(0)
    lin = nn.Linear(608 if g != 64 else 640, 70)
    x = torch.randn(M, lin.in_features)
    m8 = Int8Linear.from_linear(lin, group_size=g)
    s16 = m8.scale.half()
    pairs = [(K.int8_linear, (m8.q,), (s16,), g), (K.int8_linear_q8, (m8.q,), (s16,), g)]
    if g != 16:
        m4 = Int4Linear.from_linear(lin, group_size=g)
        h = (m4.scale.half(), m4.min.half())
        pairs += [(K.int4_linear, (m4.q,), h, g), (K.int4_linear_q8, (m4.q,), h, g)]
    for f, codes, half, group in pairs:
        want = f(x, *codes, *(t.float() for t in half), group)
        assert torch.equal(f(x, *codes, *half, group), want), f.__name__
    with pytest.raises(RuntimeError, match="float32 or float16"):
        K.int8_linear(x, m8.q, m8.scale.double(), g)
