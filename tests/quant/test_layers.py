"""Weight-only int8 / int4 transforms: kernels vs the dequantised reference, model-level agreement,
bad input."""

import copy

import pytest
import torch
from torch import nn

import lmzoo
from lmzoo.errors import ConfigError
from lmzoo.quant.layers import HalfLinear, Int4Linear, Int8Linear, cpu_kernels, pack_int4, quantize, unpack_int4


def reference_weight(q) -> torch.Tensor:
    """The layer's float weight from its codes, written out here (not q.dequantize())."""
    N, K, g = q.out_features, q.in_features, q.group_size
    if isinstance(q, HalfLinear):
        return q.w.float()
    if isinstance(q, Int8Linear):
        return (q.q.float().view(N, K // g, g) * q.scale[..., None]).view(N, K)
    codes = unpack_int4(q.q).float().view(N, K // g, g)
    return (codes * q.scale[..., None] + q.min[..., None]).view(N, K)


class CountingKernels:
    """Stands in for lmzoo's compiled module and counts the calls that reach it."""

    def __init__(self, real):
        self.real, self.calls, self.names = real, 0, []

    def __getattr__(self, name):
        fn = getattr(self.real, name)

        def counted(*a):
            self.calls += 1
            self.names.append(name)
            return fn(*a)
        return counted


@pytest.mark.parametrize("M", [1, 3, 40])  # decode rows use the kernel, prefill rows (2 x 40) dequantised tiles
@pytest.mark.parametrize(
    "cls,kw", [(Int8Linear, {}), (Int8Linear, {"group_size": 64}),
               (Int4Linear, {"group_size": 32}), (Int4Linear, {"group_size": 128}),
               (HalfLinear, {"dtype": torch.float16}), (HalfLinear, {"dtype": torch.bfloat16})],
)
def test_quantised_linear_matches_dequantised_weight(M, cls, kw, monkeypatch):
    import lmzoo.quant.layers as Q

    counter = CountingKernels(cpu_kernels())
    monkeypatch.setattr(Q, "cpu_kernels", lambda: counter)
    torch.manual_seed(0)
    lin = nn.Linear(256, 96, bias=True)
    q = cls.from_linear(lin, **kw)
    x = torch.randn(2, M, 256)
    with torch.inference_mode():
        y = q(x)
        ref = nn.functional.linear(x, reference_weight(q), q.bias)
    # the path the case claims to test: the row kernel, or BLAS over dequantised tiles (half weights: copies)
    assert q.kernel_rows == (16 if cls is HalfLinear else Q.KERNEL_MAX_ROWS)
    kernel = ["float_linear"] if cls is HalfLinear else [f"{q.bits}_linear"]
    if cls is not HalfLinear and cpu_kernels().isa() != "portable":  # 16-row tiles, packed on first use
        kernel = ["pack_tiles_q8", "tiles_linear_f"]
    called = [n for n in counter.names if n != "isa"]
    if 2 * M <= q.kernel_rows:
        assert called == kernel
    else:
        assert called == ([] if cls is HalfLinear else ["dequant_rows"])
    assert y.shape == (2, M, 96)
    assert (y - ref).abs().max() < 1e-4
    # and the quantisation error itself is what the bit width allows
    w = lin.weight.detach()
    err = (q.dequantize() - w).abs()
    if cls is HalfLinear:  # round to nearest: half a unit in the last place (2^-11 / 2^-8 relative;
        # float16's subnormals below 2^-14 are spaced 2^-24 apart)
        f16 = kw["dtype"] == torch.float16
        assert (err <= (w.abs() * (2.0 ** -11 if f16 else 2.0 ** -8)).clamp(min=2.0 ** -25 if f16 else 0)).all()
        return
    step = (w.abs().max() / 127) if cls is Int8Linear else (2 * w.abs().max() / 15)
    assert err.max() <= step / 2 + 1e-6


def test_cpu_kernels_compile():
    # the fast path must be there on the machines we ship for (a compiler is part of set-up)
    assert cpu_kernels() is not None


def test_int4_pack_roundtrip():
    q = torch.randint(0, 16, (5, 64))
    assert torch.equal(unpack_int4(pack_int4(q)), q.to(torch.uint8))


def _model():
    cfg = lmzoo.ModelConfig(vocab_size=128, n_layer=2, n_embd=64, n_head=4, n_kv_head=2, intermediate_size=128)
    torch.manual_seed(0)
    m = lmzoo.Transformer(cfg).eval()
    return m


def test_int8_model_close_to_fp32():
    m = _model()
    q = quantize(copy.deepcopy(m), mode="int8")
    assert all(not isinstance(x, nn.Linear) for x in q.modules())
    ids = torch.randint(0, 128, (1, 16))
    with torch.inference_mode():
        a, b = m(ids), q(ids)
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    g_ref = lmzoo.generate(m, ids, max_new_tokens=10, eos_token_id=[])
    g = lmzoo.generate(q, ids, max_new_tokens=10, eos_token_id=[])
    assert (g == g_ref).float().mean() >= 0.8


def test_quantise_errors():
    m = quantize(_model(), mode="int8")
    with pytest.raises(ConfigError, match="already quantised"):
        quantize(m, mode="int4")
    with pytest.raises(ConfigError, match="not one of"):
        quantize(_model(), mode="int3")
    with pytest.raises(ConfigError, match="group_size"):
        quantize(_model(), mode="int4", group_size=48)
    with pytest.raises(ConfigError, match="'f16' has no groups; got group_size=32"):
        quantize(_model(), mode="f16", group_size=32)


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16", "int8", "int4", "int8/q8", "int4/q8"])
def test_kernel_rows_are_independent_of_the_batch(kind):
    """A row's product is bit-identical alone or among others, and a decode step's rows (one token a
    sequence) at any batch size, past every row limit too: the engine's guarantee that batching never
    changes a request's tokens rests on it."""
    from lmzoo.quant.gemv import GemvLinear
    from lmzoo.quant.layers import set_activations

    torch.manual_seed(0)
    lin = nn.Linear(320, 72)
    if kind == "f32":
        layer = copy.deepcopy(lin)
        layer.__class__ = GemvLinear
    elif kind in ("f16", "bf16"):
        layer = HalfLinear.from_linear(lin, dtype=torch.float16 if kind == "f16" else torch.bfloat16)
    else:
        layer = (Int8Linear.from_linear(lin, group_size=64) if kind.startswith("int8") else
                 Int4Linear.from_linear(lin, group_size=64))
        set_activations(layer, "q8" if kind.endswith("/q8") else "float")
    x = torch.randn(80, 320)
    with torch.inference_mode():
        alone = torch.cat([layer(x[i:i + 1]) for i in range(80)])
        for m in (2, 3, 4, 5, 9, 16):
            assert torch.equal(layer(x[:m]), alone[:m]), m
        decode = layer(x[:, None])  # (80 sequences, 1 token, K)
        assert torch.equal(decode[:, 0], alone)


@pytest.mark.parametrize("cls", [Int8Linear, Int4Linear, HalfLinear])
def test_quant_embedding_looks_up_the_dequantised_rows(cls):
    """A table kept as codes gives each id the row the float table would hold (written out from the
    codes here), any id shape; model.to(dtype) moves its output dtype like a float table's."""
    from lmzoo.quant.layers import QuantEmbedding

    torch.manual_seed(0)
    table = cls.from_linear(nn.Linear(64, 50), **({} if cls is HalfLinear else {"group_size": 32}))
    emb = QuantEmbedding(table)
    ids = torch.tensor([[3, 0, 49], [7, 7, 12]])
    want = reference_weight(table)[ids]
    got = emb(ids)
    assert got.shape == (2, 3, 64) and got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.equal(emb.dequantize(), reference_weight(table))
    emb.to(torch.bfloat16)
    assert emb(ids).dtype == torch.bfloat16 and emb.dtype == torch.bfloat16


@pytest.mark.parametrize("cls", [Int8Linear, Int4Linear, HalfLinear])
def test_long_inputs_multiply_dequantised_tiles(cls, monkeypatch):
    """Past the row kernel's limit the product goes through BLAS on tiles of the weight's rows (here
    10 rows a tile, the last one short), and equals the dequantised weight's product; with bias."""
    import lmzoo.quant.layers as Q

    monkeypatch.setattr(Q, "TILE", 256 * 10)
    torch.manual_seed(0)
    lin = nn.Linear(256, 96, bias=True)
    q = cls.from_linear(lin) if cls is not Int4Linear else cls.from_linear(lin, group_size=64)
    x = torch.randn(90, 256)
    with torch.inference_mode():
        y = q._tiled(cpu_kernels(), x)
        ref = nn.functional.linear(x, reference_weight(q))
        assert y.shape == (90, 96) and y.is_contiguous()
        assert (y - ref).abs().max() < 1e-4
        # and the layer at that length (the tiles on AVX2 builds, the row kernel on AVX-512 ones)
        assert (q(x[None]) - (ref + q.bias)).abs().max() < 1e-4
    assert torch.equal(q.dequantize(), reference_weight(q))  # the one-pass C++ dequantisation


@pytest.mark.parametrize("cls", [Int8Linear, Int4Linear])
def test_8bit_activations_up_to_q8_max_rows_then_float(cls, monkeypatch):
    """With 8-bit activations an input of up to Q8_MAX_ROWS rows goes through the integer kernel, each
    row's result the one it gets alone; a longer one (a prompt) is multiplied with float activations
    (llama.cpp's arithmetic for long prompts is nearer that), exactly, in chunks of rows."""
    import lmzoo.quant.layers as Q
    from lmzoo.quant.layers import set_activations

    monkeypatch.setattr(Q, "ROW_CHUNK", 16)
    torch.manual_seed(0)
    q = cls.from_linear(nn.Linear(256, 40), group_size=32)
    set_activations(q, "q8")
    counter = CountingKernels(cpu_kernels())
    monkeypatch.setattr(Q, "cpu_kernels", lambda: counter)
    x = torch.randn(1, Q.Q8_MAX_ROWS + 13, 256)
    ref = nn.functional.linear(x, reference_weight(q), q.bias)
    # AVX2 / AVX-512 builds: the tiled kernel on the layer's weights, packed once; portable: the row kernel
    tiled = cpu_kernels().isa() != "portable"
    q8_kernel = "tiles_linear_q8" if tiled else f"{q.bits}_linear_q8"
    with torch.inference_mode():
        short = q(x[:, :Q.Q8_MAX_ROWS])
        alone = torch.cat([q(x[:, i:i + 1]) for i in range(Q.Q8_MAX_ROWS)], dim=1)
        assert {n for n in counter.names if n != "isa"} == ({q8_kernel, "pack_tiles_q8"} if tiled else {q8_kernel})
        assert counter.names.count("pack_tiles_q8") == (1 if tiled else 0)
        assert torch.equal(short, alone)
        assert (short - ref[:, :Q.Q8_MAX_ROWS]).abs().max() < 0.05 * ref.abs().max()  # rounded to 8 bits
        counter.names.clear()
        long = q(x)
    assert q8_kernel not in counter.names and counter.names  # the float kernel or the tiles
    assert (long - ref).abs().max() < 1e-4


@pytest.mark.parametrize("mode", ["int8", "int4", "f16", "bf16"])
def test_from_pretrained_quantize(tmp_path, mode):
    """An HF checkpoint quantised at load: its linears become the mode's layers, the rest float32 on
    CPU (so the kernels apply), LoRA-free generation runs; a bf16 checkpoint with "bf16" keeps its
    weights bit for bit and computes the float32 model's logits."""
    import transformers as tf

    from tests.helpers import perturb_

    V = 97
    torch.manual_seed(0)
    ref = perturb_(tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=128,
                                                      num_hidden_layers=2, num_attention_heads=4,
                                                      num_key_value_heads=2))).eval()
    ref.save_pretrained(tmp_path)
    if mode == "bf16":
        ref.to(torch.bfloat16).save_pretrained(tmp_path)  # a bf16 checkpoint, as most HF ones are
    m = lmzoo.from_pretrained(tmp_path, quantize=mode)
    kind = {"int8": Int8Linear, "int4": Int4Linear}.get(mode, HalfLinear)
    lin = [x for x in m.modules() if isinstance(x, kind)]
    assert len(lin) == 2 * 4 + 1 and not any(type(x) is nn.Linear for x in m.modules())
    assert m.token_dtype_device()[0] == torch.float32
    full = lmzoo.from_pretrained(tmp_path, dtype=torch.float32)
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = full(ids), m(ids)
    if mode == "bf16":
        assert torch.equal(m.layers[0].attn.qkv.w.float(), full.layers[0].attn.qkv.weight)
        assert (a - b).abs().max() < 1e-4
    else:
        # relative RMS of the logits: the weights' rounding (int4 of a random model: 0.22 measured);
        # a misplaced row or scale gives errors of order 1
        assert ((a - b).square().mean() / a.square().mean()).sqrt() < (0.02 if mode in ("int8", "f16") else 0.4)
    assert lmzoo.generate(m, ids[:1], max_new_tokens=4, eos_token_id=[]).shape == (1, 4)  # the new tokens
    if mode == "bf16":  # the CPU default for a half checkpoint: the same model as quantize="bf16"
        d = lmzoo.from_pretrained(tmp_path)
        assert d.quantization == "bf16" and d.token_dtype_device()[0] == torch.float32
        assert all(p.dtype == torch.float32 for p in d.parameters())
        with torch.inference_mode():
            assert torch.equal(d(ids), b)
        kept = lmzoo.from_pretrained(tmp_path, cpu_kernels=False)  # no kernels: the checkpoint's dtype
        assert kept.embed.weight.dtype == torch.bfloat16 and not getattr(kept, "quantization", None)


TILED = cpu_kernels() is not None and cpu_kernels().isa() != "portable"


@pytest.mark.skipif(not TILED, reason="16-row tiles are packed on AVX2 / AVX-512 kernel builds only")
@pytest.mark.parametrize("cls,g,dtypes,sym", [(Int4Linear, 32, (torch.float16, torch.float16), False),
                                              (Int4Linear, 128, (torch.float32, torch.float32), False),
                                              (Int4Linear, 64, (torch.float16, torch.float32), False),
                                              (Int4Linear, 32, (torch.float16, torch.float16), True),
                                              (Int4Linear, 64, (torch.float16, torch.float32), True),
                                              (Int8Linear, 32, (torch.float16,), False),
                                              (Int8Linear, None, (torch.float32,), False)])
def test_tiles_are_the_only_copy(cls, g, dtypes, sym, monkeypatch):
    """After the first tiled kernel call (int4; int8 with 8-bit activations) a layer holds its weights
    once, as 16-row tiles (40 rows: the last tile part-filled); every other use reads the row-major
    form back from them exactly: state_dict (dtypes included), row lookups, prompt tiles, dequantize;
    reading .q / .scale / .min, load_state_dict or .to() put the row-major buffers back, and the next
    tiled kernel call packs again. sym: int4 whose mins are -8 * scale (GGUF Q4_0) keeps no mins in
    its tiles."""
    import lmzoo.quant.layers as Q
    from lmzoo.quant.layers import set_activations

    monkeypatch.setattr(Q, "TILE", 256 * 10)  # prompt tiles of 10 rows: within one 16-row tile or across two

    def make(lin):
        q = cls.from_linear(lin, group_size=g)
        for name, dt in zip(cls.ROWS[1:], dtypes):
            setattr(q, name, getattr(q, name).to(dt))
        if sym:  # GGUF Q4_0's form
            q.min = q.scale.to(dtypes[1]) * -8
        return set_activations(q, "q8" if cls is Int8Linear else "float")

    torch.manual_seed(0)
    q = make(nn.Linear(256, 40, bias=True))
    state = {k: v.clone() for k, v in q.state_dict().items()}
    weight = reference_weight(q)
    x = torch.randn(3, 256)
    prompt = torch.randn(1, 60, 256)  # past KERNEL_MAX_ROWS: BLAS on dequantised tiles of rows
    with torch.inference_mode():
        before, long_before = q(x), q(prompt)
        assert set(dict(q.named_buffers())) == {"tiles_q", "tiles_scale", "tiles_extra"}
        # 3 tiles of 16 rows: the code bytes of a row; per 32-block a scale, and int4's min (float16
        # if both were) or int8's int16 sum of codes
        codes = 128 if cls is Int4Linear else 256
        size = 2 if all(dt == torch.float16 for dt in dtypes[:1 if sym else 2]) else 4
        per_block = size if sym else 2 * size if cls is Int4Linear else size + 2
        assert sum(b.numel() * b.element_size() for b in q.buffers()) == 48 * (codes + 8 * per_block)
        assert torch.equal(q(x), before)
        assert torch.equal(q(prompt), long_before)
        got = q.state_dict()
        assert list(got) == list(state)
        for k, v in state.items():
            assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
        ids = torch.tensor([39, 0, 17, 16, 17])
        assert torch.equal(q.dequantize_rows(ids), weight[ids])
        assert torch.equal(q.dequantize(), weight)
        assert "tiles_q" in q._buffers  # all of the above read the tiles as they are
        # reading the codes puts them back in rows; the next product packs again
        assert torch.equal(q.q, state["q"]) and "tiles_q" not in q._buffers and "q" in q._buffers
        assert torch.equal(q(x), before) and "tiles_q" in q._buffers
        if cls is Int8Linear:  # float activations multiply the same tiles
            float_y = set_activations(q, "float")(x)
            assert "tiles_q" in q._buffers and "q" not in q._buffers
            assert (float_y - nn.functional.linear(x, weight, q.bias)).abs().max() < 1e-4
            set_activations(q, "q8")
        # loading new weights into a packed layer: the product uses them; a load without them keeps
        # the tiles, and a strict one names the weights missing
        q(x)
        assert q.load_state_dict({}, strict=False).missing_keys == list(state)
        assert "tiles_q" in q._buffers and torch.equal(q(x), before)
        with pytest.raises(RuntimeError, match="Missing key"):
            q.load_state_dict({})
        new = make(nn.Linear(256, 40, bias=True))
        q.load_state_dict(new.state_dict())
        assert torch.equal(q(x), new(x))
        assert (q(x) - before).abs().max() > 0.01
    q.to(torch.float64)  # dtype changes apply to the row-major form
    assert q.scale.dtype == torch.float64 and "tiles_q" not in q._buffers


@pytest.mark.slow
@pytest.mark.skipif(not TILED, reason="16-row tiles are packed on AVX2 / AVX-512 kernel builds only")
def test_compiled_int4_layer_multiplies_its_tiles():
    """torch.compile traces a packed int4 layer through the tiles' custom op (the same product)."""
    torch.manual_seed(0)
    q = Int4Linear.from_linear(nn.Linear(256, 40), group_size=32)
    x = torch.randn(2, 256)
    with torch.inference_mode():
        eager = q(x)
        assert "tiles_q" in q._buffers
        assert torch.equal(torch.compile(q, dynamic=False)(x), eager)
        assert "tiles_q" in q._buffers


@pytest.mark.skipif(not TILED, reason="16-row tiles are packed on AVX2 / AVX-512 kernel builds only")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_symmetric_int4_tiles_give_the_stored_mins_products(dtype):
    """Tiles packed without mins (min = -8 * scale) multiply to the same bits as the same weights
    packed with their mins stored, float and 8-bit activations, 1 to 9 rows; a layer whose mins are
    -8 * scale but for one value keeps its mins."""
    k = cpu_kernels()
    g = torch.Generator().manual_seed(0)
    for N, K, gs in ((40, 96, 32), (33, 128, 64), (16, 256, 128)):
        q = torch.randint(0, 256, (N, K // 2), dtype=torch.uint8, generator=g)
        scale = (torch.rand(N, K // gs, generator=g) * 0.02 + 1e-3).to(dtype)
        stored = k.pack_tiles_q8(q, scale, scale * -8, gs)
        packed = k.pack_tiles_q8(q, scale, scale.new_empty(0), gs)
        assert packed[2].shape == (stored[0].shape[0], 0, 16)
        for M in (1, 3, 9):
            x = torch.randn(M, K, generator=g)
            for f in (k.tiles_linear_f, k.tiles_linear_q8):
                assert torch.equal(f(x, *packed, N), f(x, *stored, N))
    layer = Int4Linear.from_codes(q, scale, scale * -8)
    layer.min[3, 0] += 1e-3
    with torch.inference_mode():
        layer(torch.randn(1, 256))
    assert layer._buffers["tiles_extra"].shape == layer._buffers["tiles_scale"].shape


@pytest.mark.skipif(not TILED, reason="16-row tiles are packed on AVX2 / AVX-512 kernel builds only")
@pytest.mark.parametrize("cls", [Int4Linear, Int8Linear])
def test_rows_read_from_tiles(cls):
    """dequant_tiles gives dequant_rows' values for any rows of the tiles (a lookup of repeated and
    unordered ids, the last tile part-filled), and refuses rows past the layer's N (rows that pad
    the last tile included) with the offending row."""
    k = cpu_kernels()
    torch.manual_seed(0)
    q = cls.from_linear(nn.Linear(96, 40))
    rows = torch.tensor([39, 0, 17, 17, 5])
    ref = torch.empty(40, 96)
    k.dequant_rows(3 if cls is Int4Linear else 1, list(q._codes()), q.group_size, 0, ref)
    tiles = k.pack_tiles_q8(q.q, q.scale, q.min if cls is Int4Linear else None, q.group_size)
    out = torch.empty(5, 96)
    k.dequant_tiles(*tiles, 40, rows, out)
    assert torch.equal(out, ref[rows])
    with pytest.raises(RuntimeError, match="row 40 outside the 40 weight rows"):
        k.dequant_tiles(*tiles, 40, torch.tensor([3, 40]), torch.empty(2, 96))
