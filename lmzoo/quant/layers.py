"""Weight-only quantisation as a transform on a built model (the gpt-fast habit: the model code knows
nothing about it).

    quantize(model, mode="int8")                   per-output-channel int8 (group = whole row)
    quantize(model, mode="int4", group_size=32)    group-wise asymmetric int4: w = scale * q + min

Every `nn.Linear` inside the blocks (and the LM head) becomes an `Int8Linear` / `Int4Linear` holding
integer weights and float scales. Decode speed on CPU comes from `lmzoo/quant/kernels/cpu.cpp`
(compiled on first use, see lmzoo/kernels): matrix-vector products that dequantise in
registers. torchao's weight-only int8 on CPU dequantises to a float copy per call (slower than fp32
here) and its int4 layout needs a GPU library, hence our own kernels on CPU. Elsewhere (GPU, bf16
activations, long prefills) the layer dequantises into a temporary float weight and calls F.linear.

The int4 layout is GGUF's Q4_0/Q4_1 block layout, so GGUF tensors can be loaded straight into it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmzoo.errors import ConfigError
from lmzoo.quant.kernels import cpu_kernels

# Rows of activations (tokens) -> the path a product takes on CPU (float32 activations, inference).
# Decode rows (one token a sequence) always take the row kernels; longer inputs switch to BLAS on
# dequantised tiles past KERNEL_MAX_ROWS rows (the crossover measured with LMZOO_CPU_ISA=avx2: ~48
# rows; 512-bit row kernels only tied BLAS there on an AMD EPYC and lost to it by a third on a Xeon
# with AMX: benchmarks/RESULTS.md 2026-12-06, 2026-12-07). activations="q8" applies to inputs of up
# to Q8_MAX_ROWS tokens a sequence, float activations beyond:
KERNEL_MAX_ROWS = 48  # int8 / int4 weights
Q8_MAX_ROWS = 48  # 8-bit activations up to here: llama.cpp's prompts of more tokens are nearer float
# activations (its last-position logits, mean |diff| over the vocabulary, default model, q8 / float:
# 4-48 tokens 0.10-0.27 / 0.17-0.51; 56-256 tokens 0.29-0.50 / 0.12-0.31; benchmarks/RESULTS.md)
GEMV_MAX_ROWS = 16  # float weights (float32 / half)
ROW_CHUNK = 256  # rows per kernel call past the limits (they stay in cache)
TILE = 1 << 19  # floats in one dequantised tile (2 MiB): multiplied while it is still in cache
# kernel_spec's kinds -> the compiled function (x2, *tensors, arg)
KERNELS = {1: lambda k: k.int8_linear, 2: lambda k: k.int8_linear_q8, 3: lambda k: k.int4_linear,
           4: lambda k: k.int4_linear_q8, 5: lambda k: k.tiles_linear_q8, 6: lambda k: k.tiles_linear_q8,
           7: lambda k: k.tiles_linear_f}


def by_chunks(fn, x2: torch.Tensor) -> torch.Tensor:
    """fn(x2) with x2's rows in calls of at most ROW_CHUNK (a decode step's few rows: one call, no copy)."""
    if x2.shape[0] <= ROW_CHUNK:
        return fn(x2)
    return torch.cat([fn(x2[i:i + ROW_CHUNK]) for i in range(0, x2.shape[0], ROW_CHUNK)])


def needs_autograd(*tensors) -> bool:
    """Whether autograd would record a product of these: the C++ kernels have no backward, so such
    products take the differentiable path (a quantised or accelerated model stays trainable,
    e.g. LoRA on top of it)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _groups(in_features: int, group_size: int | None, multiple: int) -> int:
    g = in_features if group_size is None else group_size
    if g <= 0 or in_features % g or g % multiple:
        raise ConfigError(
            f"group_size {group_size} must divide in_features={in_features} and be a multiple of {multiple}"
        )
    return g


# The kernels as PyTorch custom ops so torch.compile traces through them (lmzoo.runtime.compiled);
# eager calls go straight to the extension.
@torch.library.custom_op("lmzoo::float_linear", mutates_args=())
def float_linear_op(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return cpu_kernels().float_linear(x, w)


@float_linear_op.register_fake
def _(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], w.shape[0]))


@torch.library.custom_op("lmzoo::int8_linear", mutates_args=())
def int8_linear_op(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, group: int) -> torch.Tensor:
    return cpu_kernels().int8_linear(x, q, scale, group)


@int8_linear_op.register_fake
def _(x, q, scale, group):
    return x.new_empty((x.shape[0], q.shape[0]))


@torch.library.custom_op("lmzoo::int4_linear", mutates_args=())
def int4_linear_op(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor,
                   group: int) -> torch.Tensor:
    return cpu_kernels().int4_linear(x, q, scale, mn, group)


@int4_linear_op.register_fake
def _(x, q, scale, mn, group):
    return x.new_empty((x.shape[0], q.shape[0]))


@torch.library.custom_op("lmzoo::tiles_linear_f", mutates_args=())
def tiles_linear_f_op(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, mins: torch.Tensor,
                      N: int) -> torch.Tensor:
    return cpu_kernels().tiles_linear_f(x, codes, scale, mins, N)


@tiles_linear_f_op.register_fake
def _(x, codes, scale, mins, N):
    return x.new_empty((x.shape[0], N))


TILES = ("tiles_q", "tiles_scale", "tiles_extra")  # a layer's weights in 16-row tiles (cpu.cpp, q8_tiles)


def tiles_kernels(k) -> bool:
    """Whether the compiled kernels `k` multiply 16-row tiles (AVX2 and AVX-512 builds)."""
    return k is not None and k.isa() != "portable"


def _row_buffer(name: str) -> property:
    """A quantised layer's row-major buffer (q, scale, min), unpacked from the tiles first if the layer
    holds those: whoever reads or writes the codes gets the real tensors."""

    def get(self):
        self._unpack_()
        b = self._buffers
        if name not in b:
            raise AttributeError(name)
        return b[name]

    def set(self, value):
        self._unpack_()
        self._buffers[name] = value

    return property(get, set)


class _QuantLinear(nn.Module):
    """Shared forward: few fp32 CPU rows -> the integer kernel; anything else -> dequantise + GEMM.

    activations (a runtime choice, `set_activations`): "float" multiplies the float32 rows by the
    integer weights exactly (dequant(W) @ x, up to summation order); "q8" first quantises each row
    per 32 values to int8, as llama.cpp does, and multiplies integers (dequant(W) @ dequant(q8(x))).

    Int8Linear / Int4Linear hold their weights in one of two forms at a time. The row-major buffers
    (ROWS: q (N, K) int8 or (N, K/2) uint8, scale [, min] (N, K/g)) are the checkpoint's form:
    state_dict, other devices. The kernels that multiply 16-row tiles (AVX2 / AVX-512 builds, K and the
    group size multiples of 32) pack them on first use and drop them (GGUF loading packs its blocks
    straight into tiles, `from_tiles`): buffers tiles_q (T, K/8 or K/4, 16) int32, tiles_scale and
    tiles_extra (T, K/32, 16: int4's mins, int8's sums of codes; (T, 0, 16) for int4 whose mins are
    -8 * scale, GGUF's Q4_0: 10% fewer bytes), T = ceil(N / 16). A model then holds its codes once, as
    its file does. Embedding lookups and prompt tiles read rows from the tiles (`dequant_tiles`),
    state_dict() unpacks temporary copies, and what needs the buffers themselves puts them back:
    load_state_dict with this layer's weights, moves and dtype changes (.to() to where the layer
    already is keeps the tiles), any use of .q / .scale / .min, a kernel on row-major codes (int8 with
    two scales a 32-block and 8-bit activations). The next tiled kernel packs them again.
    """

    bits = ""
    activations = "float"
    kernel_rows = KERNEL_MAX_ROWS  # the most activation rows the kernel takes
    ROWS: tuple[str, ...] = ()  # the row-major buffers (codes first); none: the layer has no tiles

    def kernel_spec(self, rows: int = 1) -> tuple[int, tuple[torch.Tensor, ...], int]:
        """(kind, tensors, arg) of the kernel for an input of `rows` rows, as the fused decode kernel
        takes them (cpu.cpp, prenorm_decode_block): arg is the group size, or the tiled kinds' N."""
        raise NotImplementedError

    def _codes(self, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The row-major tensors (codes, scales[, mins]) of weight rows `rows` (all when None), as
        dequant_rows and pack_tiles_q8 take them: the buffers, or copies read from the tiles."""
        b = self._buffers
        if "tiles_q" not in b:
            return tuple(b[n] if rows is None else b[n][rows] for n in self.ROWS)
        if rows is None:
            return self._from_tiles(0, self.out_features)
        # row n is lane n % 16 of tile n // 16: tiles_q[t, :, i] (R, C) int32 = the rows' code bytes
        t, i, every = rows // 16, rows % 16, self.group_size // 32
        return self._mins_back((b["tiles_q"][t, :, i].contiguous().view(self._row_dtypes[0]),
                                *(b[n][t, ::every, i].to(dt) for n, dt in zip(TILES[1:], self._row_dtypes[1:]))))

    def _from_tiles(self, n0: int, n1: int) -> tuple[torch.Tensor, ...]:
        """Row-major codes, scales [, mins] of the tiles holding rows [n0, n1), from tile n0 // 16's
        first row (torch ops: any device)."""
        b = self._buffers
        t0, t1 = n0 // 16, (n1 + 15) // 16
        n = min(self.out_features, 16 * t1) - 16 * t0
        # tiles_q (T, C, 16): column c of lane i is bytes 4c..4c+3 of the tile's row i
        q = b["tiles_q"][t0:t1].transpose(1, 2).contiguous().view(self._row_dtypes[0]).flatten(0, 1)
        every = self.group_size // 32  # the tiles repeat a group's values for each 32-block of it
        return self._mins_back((q[:n], *(b[name][t0:t1, ::every].transpose(1, 2).flatten(0, 1)[:n].to(dt).contiguous()
                                         for name, dt in zip(TILES[1:], self._row_dtypes[1:]))))

    def _mins_back(self, rows: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Rows read from the tiles, with the mins of symmetric int4 tiles (stored as none, see
        _pack_) put back: -8 * scale, the very values _pack_ checked them to be."""
        if len(rows) == 3 and self._buffers["tiles_extra"].numel() == 0:
            return rows[0], rows[1], rows[1].to(self._row_dtypes[2]) * -8
        return rows

    def _pack_(self, k) -> tuple[torch.Tensor, ...]:
        """Pack the row-major buffers into tiles and keep only those (see the class); the tiles."""
        t = self._codes()
        mins = t[2] if len(t) > 2 else None
        if mins is not None and torch.equal(mins, t[1].to(mins.dtype) * -8):
            mins = mins.new_empty(0)  # GGUF Q4_0 (w = d q - 8 d): the kernels take the mins from the scales
        tiles = k.pack_tiles_q8(t[0], t[1], mins, self.group_size)
        for n in self.ROWS:
            del self._buffers[n]
        return self._hold_tiles_(tiles, tuple(v.dtype for v in t))

    def _hold_tiles_(self, tiles, row_dtypes: tuple[torch.dtype, ...]) -> tuple[torch.Tensor, ...]:
        """Keep pack_tiles_q8's tensors as the layer's weights; row_dtypes: the row-major buffers'
        dtypes, restored on unpacking (float16 scales beside float32 mins pack as float32)."""
        self._row_dtypes = row_dtypes
        for n, v in zip(TILES, tiles):
            self._buffers[n] = v
            self._non_persistent_buffers_set.add(n)
        return tuple(tiles)

    def _unpack_(self) -> None:
        """Put the row-major buffers back in place of the tiles (nothing to do when they are there)."""
        b = self._buffers
        if "tiles_q" not in b:
            return
        rows = self._from_tiles(0, self.out_features)
        for n in TILES:
            del b[n]
            self._non_persistent_buffers_set.discard(n)
        b.update(zip(self.ROWS, rows))

    def _apply(self, fn, recurse=True):
        b = self._buffers
        if "tiles_q" in b:  # moves and dtype changes apply to the checkpoint's form; .to() a no-op keeps the tiles
            probes = [b[n].new_empty(0) for n in TILES]
            if any(fn(p) is not p for p in probes):
                self._unpack_()
        return super()._apply(fn, recurse)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if "tiles_q" in self._buffers:  # the tiles are not persistent: the row-major form, unpacked
            destination.update((prefix + n, t) for n, t in zip(self.ROWS, self._codes()))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # weights to load go into the row-major buffers; without any, the tiles stay as they are and
        # the weights count as missing, as the buffers' would (an error only for a strict load)
        kept = "tiles_q" in self._buffers and not any(prefix + n in state_dict for n in self.ROWS)
        if not kept:
            self._unpack_()
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if kept:
            missing_keys.extend(prefix + n for n in self.ROWS)

    def _row_spec(self, kind: int) -> tuple[int, tuple[torch.Tensor, ...], int]:
        """The row-major kernel `kind` over the row-major buffers (put back if the layer holds tiles)."""
        self._unpack_()
        return kind, self._codes(), self.group_size

    def _q8(self, rows: int) -> bool:
        return self.activations == "q8" and rows <= Q8_MAX_ROWS

    def _tiles_spec(self, tiled: int, row_major: int) -> tuple[int, tuple[torch.Tensor, ...], int]:
        """The tiled kernel `tiled` (5 / 6: 8-bit activations, 7: float ones) over this
        layer's 16-row tiles on AVX2 and AVX-512 builds, packed on first use; on portable builds (or
        off the CPU) the row-major kernel `row_major`."""
        if t := self._tiles():
            return tiled, t, self.out_features
        k = cpu_kernels()
        if not tiles_kernels(k) or self._buffers[self.ROWS[0]].device.type != "cpu":
            return row_major, self._codes(), self.group_size
        return tiled, self._pack_(k), self.out_features

    def tiles_now(self) -> tuple[torch.Tensor, ...]:
        """The layer's tiles, packed now where a one-row product multiplies tiles (else none)."""
        self.kernel_spec(1)
        return self._tiles()

    def _tiles(self) -> tuple[torch.Tensor, ...]:
        """The tiles (pack_tiles_q8's tensors) the layer holds now; () when it holds its rows."""
        b = self._buffers
        return tuple(b[n] for n in TILES) if "tiles_q" in b else ()

    def _kernel(self, k, x2: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """x2's product through the kernel, its activation mode chosen for `rows` tokens a sequence
        (default: x2's rows; a long input goes in chunks, all of them multiplied alike)."""
        if torch.compiler.is_compiling():  # the ops torch.compile traces (float activations)
            if t := self._tiles():
                return tiles_linear_f_op(x2, *t, self.out_features)
            return self.compiled_op(x2, *self._codes(), self.group_size)
        kind, t, arg = self.kernel_spec(rows or x2.shape[0])
        return KERNELS[kind](k)(x2, *t, arg)

    def dequantize_rows(self, rows: torch.Tensor | None = None, dtype=torch.float32) -> torch.Tensor:
        raise NotImplementedError

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        k = cpu_kernels() if dtype == torch.float32 and next(iter(self._buffers.values())).device.type == "cpu" else None
        if k is None:
            return self.dequantize_rows(None, dtype)
        out = torch.empty(self.out_features, self.in_features)  # one pass in C++ (PyTorch's ops take ~2.5x)
        self._dequant_into(k, 0, out)
        return out

    def _dequant_into(self, k, n0: int, out: torch.Tensor) -> None:
        """Weight rows [n0, n0 + len(out)) as float32 into out."""
        if t := self._tiles():
            k.dequant_tiles(*t, self.out_features, torch.arange(n0, n0 + len(out)), out)
        else:
            k.dequant_rows(3 if len(self.ROWS) > 2 else 1, list(self._codes()), self.group_size, n0, out)

    def _tile_rows(self, rows: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
        """Weight rows `rows` as float32 by the kernel, straight from the tiles (an embedding lookup);
        None where the layer holds none or another dtype is asked for."""
        t = self._tiles()
        if rows is None or dtype != torch.float32 or not t:
            return None
        out = torch.empty(len(rows), self.in_features)
        cpu_kernels().dequant_tiles(*t, self.out_features, rows.long().contiguous(), out)
        return out

    def _tiled(self, k, x2: torch.Tensor) -> torch.Tensor:
        """x2 (M, K) @ W^T through BLAS on dequantised tiles of W's rows: y^T row blocks, each
        tile @ x2^T while the tile is in cache (no float copy of the whole matrix)."""
        N, K = self.out_features, self.in_features
        rows = min(N, max(1, TILE // K))
        yT = x2.new_empty(N, x2.shape[0])
        buf = x2.new_empty(rows, K)
        for n0 in range(0, N, rows):
            w = buf[:min(rows, N - n0)]
            self._dequant_into(k, n0, w)
            torch.mm(w, x2.t(), out=yT[n0:n0 + len(w)])
        return yT.t().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a decode step calls this ~120 times: buffers are read from _buffers (nn.Module's __getattr__
        # costs a microsecond per name) and the checks are ordered cheapest first
        K = x.shape[-1]
        bias = self.bias
        k = cpu_kernels() if x.dtype == torch.float32 and x.device.type == "cpu" else None
        if k is None or needs_autograd(x, bias) or (x.numel() > self.kernel_rows * K and torch.compiler.is_compiling()):
            return F.linear(x, self.dequantize(x.dtype), None if bias is None else bias.to(x.dtype))
        x2 = x.reshape(-1, K).contiguous()
        M = x2.shape[0]
        # tokens per sequence (a 2-D input: its rows) choose the activations, and one token (decode)
        # always takes the kernel: a decode row's product is then the same in a batch of any size
        T = x.shape[-2] if x.dim() > 2 else M
        if M <= self.kernel_rows:
            y = self._kernel(k, x2, T)
        elif T == 1:
            y = by_chunks(lambda c: self._kernel(k, c, T), x2)
        else:
            y = self._tiled(k, x2)
        if bias is not None:
            y += bias
        return y.view(x.shape[:-1] + (self.out_features,))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.bits}, group={self.group_size}"

    @classmethod
    def from_codes(cls, q: torch.Tensor, scale: torch.Tensor, mn: torch.Tensor | None = None):
        """A layer around existing codes and scales (min: Int4Linear's offsets), taking the tensors
        as they are: no zero-filled buffers to overwrite (loading GGUF blocks, lmzoo.checkpoints)."""
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        N = q.shape[0]
        K = q.shape[1] * (2 if cls is Int4Linear else 1)
        m.in_features, m.out_features = K, N
        m.group_size = _groups(K, K // scale.shape[1], 32 if cls is Int4Linear else 8)
        m.register_buffer("q", q)
        m.register_buffer("scale", scale)
        if cls is Int4Linear:
            m.register_buffer("min", mn)
        m.bias = None
        return m

    @classmethod
    def from_tiles(cls, tiles, row_dtypes: tuple[torch.dtype, ...], *, in_features: int, out_features: int):
        """A layer holding pack_tiles_q8's tensors (group 32) from the start, as if packed on first use
        (row_dtypes: the row-major form's; loading GGUF blocks on tiled kernel builds)."""
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        m.in_features, m.out_features, m.group_size, m.bias = in_features, out_features, 32, None
        m._hold_tiles_(tiles, row_dtypes)
        return m


class Int8Linear(_QuantLinear):
    """y = x @ (scale * q)^T + bias with q int8 (N, K) and scale (N, K // group_size), float32 — or
    float16 where the checkpoint stores it so (GGUF Q8_0; from_codes keeps the given dtype)."""

    bits = "int8"
    compiled_op = staticmethod(int8_linear_op)
    ROWS = ("q", "scale")
    q, scale = (_row_buffer(n) for n in ROWS)

    def __init__(self, in_features: int, out_features: int, *, group_size: int | None = None,
                 bias: bool = False, device=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.group_size = _groups(in_features, group_size, 8)
        G = in_features // self.group_size
        self.register_buffer("q", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.ones(out_features, G, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None

    @classmethod
    def from_linear(cls, lin: nn.Linear, *, group_size: int | None = None) -> Int8Linear:
        N, K = lin.weight.shape
        m = cls(K, N, group_size=group_size, bias=lin.bias is not None, device=lin.weight.device)
        w = lin.weight.detach().float().view(N, K // m.group_size, m.group_size)
        scale = w.abs().amax(-1).clamp(min=1e-12) / 127.0  # symmetric: absmax -> 127
        m.q.copy_((w / scale[..., None]).round().clamp(-127, 127).to(torch.int8).view(N, K))
        m.scale.copy_(scale)
        if lin.bias is not None:
            m.bias.data.copy_(lin.bias.detach().float())
        return m

    def dequantize_rows(self, rows: torch.Tensor | None = None, dtype=torch.float32) -> torch.Tensor:
        """Weight rows `rows` (all when None) as float: (len(rows), K)."""
        if (w := self._tile_rows(rows, dtype)) is not None:
            return w
        q, scale = self._codes(rows)
        N, K, g = q.shape[0], self.in_features, self.group_size
        return (q.view(N, K // g, g).to(dtype) * scale[..., None].to(dtype)).view(N, K)

    def kernel_spec(self, rows: int = 1) -> tuple[int, tuple[torch.Tensor, ...], int]:
        """1 int8_linear, 2 int8_linear_q8, 5 tiles_linear_q8, 7 tiles_linear_f."""
        g = self.group_size
        q8 = self._q8(rows)
        if self.in_features % 32 == 0 and g % 32 == 0:  # 16-row tiles: 32-blocks of one scale each
            return self._tiles_spec(5, 2) if q8 else self._tiles_spec(7, 1)
        return self._row_spec(2 if q8 and g == 16 and self.in_features % 32 == 0 else 1)



class HalfLinear(_QuantLinear):
    """y = x @ w^T + bias with w (N, K) kept in float16 or bfloat16 (a GGUF's F16 / BF16 tensors,
    `quantize(mode="f16" | "bf16")`). The kernel multiplies it widened in registers (exact: the float32
    weights' product up to summation order), streaming half of float32's bytes; past GEMV_MAX_ROWS rows
    BLAS multiplies float tiles (see the row limits above)."""

    kernel_rows = GEMV_MAX_ROWS

    def __init__(self, in_features: int, out_features: int, *, dtype: torch.dtype = torch.float16,
                 bias: bool = False, device=None) -> None:
        super().__init__()
        if dtype not in (torch.float16, torch.bfloat16):
            raise ConfigError(f"HalfLinear holds float16 or bfloat16 weights, got {dtype}")
        self.in_features, self.out_features = in_features, out_features
        self.group_size = in_features
        self.register_buffer("w", torch.zeros(out_features, in_features, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None

    @property
    def bits(self) -> str:
        return {torch.float16: "f16", torch.bfloat16: "bf16"}.get(self.w.dtype, str(self.w.dtype))

    @classmethod
    def from_weight(cls, w: torch.Tensor) -> HalfLinear:
        """A layer around an existing (N, K) float16 / bfloat16 tensor, taken as it is."""
        m = cls.__new__(cls)
        nn.Module.__init__(m)
        m.out_features, m.in_features = w.shape
        m.group_size = m.in_features
        m.register_buffer("w", w)
        m.bias = None
        return m

    @classmethod
    def from_linear(cls, lin: nn.Linear, *, dtype: torch.dtype = torch.float16) -> HalfLinear:
        """The layer's weight rounded to `dtype`; one already in it is taken as it is (no copy: a half
        checkpoint loaded as stored keeps its tensors)."""
        w = lin.weight.detach()
        if w.dtype == dtype and w.is_contiguous():
            m = cls.from_weight(w)
            if lin.bias is not None:
                m.bias = nn.Parameter(lin.bias.detach().float())
            return m
        N, K = w.shape
        m = cls(K, N, dtype=dtype, bias=lin.bias is not None, device=w.device)
        m.w.copy_(w)
        if lin.bias is not None:
            m.bias.data.copy_(lin.bias.detach().float())
        return m

    def dequantize_rows(self, rows: torch.Tensor | None = None, dtype=torch.float32) -> torch.Tensor:
        w = self._buffers["w"]
        return (w if rows is None else w[rows]).to(dtype)

    def kernel_spec(self, rows: int = 1) -> tuple[int, tuple[torch.Tensor, ...], int]:
        """0 float_linear."""
        return 0, (self._buffers["w"],), 0

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return self.dequantize_rows(None, dtype)  # a widening copy: nothing for a kernel to do

    def _dequant_into(self, k, n0: int, out: torch.Tensor) -> None:
        out.copy_(self._buffers["w"][n0:n0 + len(out)])

    def _kernel(self, k, x2: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        w = self._buffers["w"]
        return float_linear_op(x2, w) if torch.compiler.is_compiling() else k.float_linear(x2, w)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {self.bits}"


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(N, K) values 0..15 -> (N, K/2) uint8 in 32-element blocks: byte j = q[j] | q[j+16] << 4."""
    N, K = q.shape
    b = q.to(torch.uint8).view(N, K // 32, 2, 16)
    return (b[:, :, 0] | (b[:, :, 1] << 4)).reshape(N, K // 2)


def unpack_int4(p: torch.Tensor) -> torch.Tensor:
    N, H = p.shape
    b = p.view(N, H // 16, 16)
    return torch.stack((b & 0x0F, b >> 4), dim=2).reshape(N, H * 2)


class Int4Linear(_QuantLinear):
    """y = x @ (scale * q + min)^T + bias, q in 0..15 packed two per byte, per group of K; scale and
    min float32, or float16 as GGUF's Q4_0 / Q4_1 store them (4 bytes per 32 weights instead of 8).
    On AVX2 / AVX-512 builds the first kernel call packs them into tiles (see _QuantLinear)."""

    bits = "int4"
    compiled_op = staticmethod(int4_linear_op)
    ROWS = ("q", "scale", "min")
    q, scale, min = (_row_buffer(n) for n in ROWS)

    def __init__(self, in_features: int, out_features: int, *, group_size: int = 32,
                 bias: bool = False, device=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.group_size = _groups(in_features, group_size, 32)
        G = in_features // self.group_size
        self.register_buffer("q", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scale", torch.ones(out_features, G, device=device))
        self.register_buffer("min", torch.zeros(out_features, G, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None

    @classmethod
    def from_linear(cls, lin: nn.Linear, *, group_size: int = 32) -> Int4Linear:
        N, K = lin.weight.shape
        m = cls(K, N, group_size=group_size, bias=lin.bias is not None, device=lin.weight.device)
        w = lin.weight.detach().float().view(N, K // m.group_size, m.group_size)
        lo, hi = w.amin(-1), w.amax(-1)
        scale = (hi - lo).clamp(min=1e-12) / 15.0
        q = ((w - lo[..., None]) / scale[..., None]).round().clamp(0, 15).view(N, K)
        m.q.copy_(pack_int4(q))
        m.scale.copy_(scale)
        m.min.copy_(lo)
        if lin.bias is not None:
            m.bias.data.copy_(lin.bias.detach().float())
        return m

    def dequantize_rows(self, rows: torch.Tensor | None = None, dtype=torch.float32) -> torch.Tensor:
        """Weight rows `rows` (all when None) as float: (len(rows), K)."""
        if (w := self._tile_rows(rows, dtype)) is not None:
            return w
        q, scale, mn = self._codes(rows)
        N, K, g = q.shape[0], self.in_features, self.group_size
        w = unpack_int4(q).view(N, K // g, g).to(dtype)
        return (w * scale[..., None].to(dtype) + mn[..., None].to(dtype)).view(N, K)

    def kernel_spec(self, rows: int = 1) -> tuple[int, tuple[torch.Tensor, ...], int]:
        """3 int4_linear, 4 int4_linear_q8, 6 tiles_linear_q8, 7 tiles_linear_f."""
        return self._tiles_spec(6, 4) if self._q8(rows) else self._tiles_spec(7, 3)



class QuantEmbedding(nn.Module):
    """A token embedding table kept as a quantised layer's codes (a GGUF's token_embd in its blocks;
    with tied embeddings the LM head's own layer, shared, not copied): a lookup dequantises the rows
    it reads, the products the float table would hold (code * scale (+ min), float32). A 1B model's
    49k x 2048 table is 400 MB as float32, 60 MB as Q4_1 blocks; loading no longer decodes it whole."""

    def __init__(self, table: Int8Linear | Int4Linear | HalfLinear, *, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.table = table
        self.num_embeddings, self.embedding_dim = table.out_features, table.in_features
        # the output dtype, as an empty float buffer so that model.to(dtype) / .half() move it like a table
        self.register_buffer("like", torch.empty(0, dtype=dtype, device=next(table.buffers()).device),
                             persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.like.dtype

    @property
    def device(self) -> torch.device:
        return self.like.device

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table.dequantize_rows(ids.reshape(-1), self.like.dtype).view(*ids.shape, self.embedding_dim)

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return self.table.dequantize(dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.table.bits} codes"


# NormalFloat-4 (Dettmers et al. 2023, "QLoRA", appendix E): the 16 quantiles of N(0, 1) rescaled to
# [-1, 1] with an exact zero, as bitsandbytes' published code defines them
NF4_CODE = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
            -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
            0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
            0.7229568362236023, 1.0)


class NF4Linear(_QuantLinear):
    """QLoRA's frozen base: w = NF4_CODE[q] * absmax, one fp32 absmax per block of `group_size`
    consecutive weights of a row (bitsandbytes' blocksize, 64 by default), q packed two per byte.
    Forward dequantises to the activation dtype and calls F.linear (gradients reach the input, which is
    all a LoRA over it needs); no CPU kernel."""

    bits = "nf4"

    def __init__(self, in_features: int, out_features: int, *, group_size: int = 64, bias: bool = False,
                 device=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.group_size = _groups(in_features, group_size, 32)
        G = in_features // self.group_size
        self.register_buffer("q", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("absmax", torch.ones(out_features, G, device=device))
        self.register_buffer("code", torch.tensor(NF4_CODE, device=device), persistent=False)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None

    @classmethod
    def from_linear(cls, lin: nn.Linear, *, group_size: int = 64) -> NF4Linear:
        N, K = lin.weight.shape
        m = cls(K, N, group_size=group_size, bias=lin.bias is not None, device=lin.weight.device)
        w = lin.weight.detach().float().view(N, K // m.group_size, m.group_size)
        absmax = w.abs().amax(-1)
        normed = w / absmax.clamp(min=torch.finfo(torch.float32).tiny)[..., None]
        # nearest code value: compare with the midpoints between neighbours (ties go up, as bitsandbytes)
        mids = (m.code[1:] + m.code[:-1]) / 2
        q = torch.bucketize(normed.contiguous(), mids, right=True).view(N, K)
        m.q.copy_(pack_int4(q))
        m.absmax.copy_(absmax)
        if lin.bias is not None:
            m.bias.data.copy_(lin.bias.detach().float())
        return m

    def codes(self) -> torch.Tensor:
        return unpack_int4(self.q)

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        N, K, g = self.out_features, self.in_features, self.group_size
        w = self.code[self.codes().long()].view(N, K // g, g) * self.absmax[..., None]
        return w.view(N, K).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


ACTIVATIONS = ("float", "q8")


def set_activations(model: nn.Module, activations: str) -> nn.Module:
    """How the int8/int4 layers' CPU kernels take their input rows (see _QuantLinear), in place."""
    if activations not in ACTIVATIONS:
        raise ConfigError(f"activations {activations!r} is not one of {ACTIVATIONS}")
    for m in model.modules():
        if isinstance(m, (Int8Linear, Int4Linear)):
            m.activations = activations
    return model


def widen_unquantized(model: nn.Module) -> nn.Module:
    """Every floating parameter and buffer outside the quantised layers as float32 (a half-precision
    checkpoint loaded as stored and quantised: its norms, embeddings, biases), so activations are
    float32 and the CPU kernels apply; the quantised layers' own tensors stay as they are."""
    inside = {id(t) for m in model.modules() if isinstance(m, _QuantLinear) for t in [*m.parameters(), *m.buffers()]}
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in inside and t.is_floating_point() and t.dtype != torch.float32:
            t.data = t.data.float()
    return model


MODES = ("int8", "int4", "nf4", "f16", "bf16")
HALF = {"f16": torch.float16, "bf16": torch.bfloat16}


def quantize(model: nn.Module, *, mode: str = "int8", group_size: int | None = None,
             include_head: bool = True) -> nn.Module:
    """Replace the model's Linear layers by weight-only quantised ones, in place; returns the model.

    mode: "int8" (group_size None = per output channel), "int4" (group_size default 32) or "nf4"
    (QLoRA's NormalFloat-4, group_size default 64; training's frozen base, no CPU kernel), "f16" /
    "bf16" (the weights rounded to half precision, or kept exactly where the checkpoint stored them
    so: an HF bf16 checkpoint loaded as float32 takes half the memory and decode reads half the bytes;
    no group_size).
    """
    if mode not in MODES:
        raise ConfigError(f"quantisation mode {mode!r} is not one of {MODES}")
    if getattr(model, "quantization", None):
        raise ConfigError(f"model is already quantised ({model.quantization}); load it again to re-quantise")
    if mode in HALF and group_size is not None:
        raise ConfigError(f"quantisation mode {mode!r} has no groups; got group_size={group_size}")
    if mode == "int4" and group_size is None:
        group_size = 32
    if mode == "nf4" and group_size is None:
        group_size = 64

    def convert(lin: nn.Linear) -> nn.Module:
        if mode == "int8":
            return Int8Linear.from_linear(lin, group_size=group_size)
        if mode == "nf4":
            return NF4Linear.from_linear(lin, group_size=group_size)
        if mode in HALF:
            return HalfLinear.from_linear(lin, dtype=HALF[mode])
        return Int4Linear.from_linear(lin, group_size=group_size)

    for _name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and (include_head or child is not getattr(model, "lm_head", None)):
                setattr(module, child_name, convert(child))
    model.quantization = f"{mode}" + (f"/g{group_size}" if group_size else "")
    return model
