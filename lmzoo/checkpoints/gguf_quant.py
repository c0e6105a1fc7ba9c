"""GGUF block-quantised tensors straight into lmzoo's quantised layers, with no float copy of the
weights: each block format is re-expressed as integer codes + per-group scale (and min):

    Q8_0  32-blocks: d, 32 x int8            w = d * q             -> Int8Linear, group 32
    Q6_K  256-blocks: 16 x (16 six-bit q, int8 scale), d
                                            w = d * sc * (q - 32)  -> Int8Linear, group 16
    Q4_0  32-blocks: d, 16 bytes of nibbles  w = d * q - 8 d       -> Int4Linear, group 32
    Q4_1  32-blocks: d, m, nibbles           w = d * q + m         -> Int4Linear, group 32
    Q4_K  256-blocks: d, dmin, 8 x 6-bit (sc, m), 128 bytes of nibbles
                                            w = d*sc * q - dmin*m  -> Int4Linear, group 32
    Q5_0  32-blocks: d, 32 high bits, nibbles  w = d * (q - 16)    -> Int8Linear, group 32
    Q3_K  256-blocks: 32 bytes of high bits, 64 of 2-bit pairs, 16 x 6-bit scales, d
                                            w = d*(sc - 32) * q, q in -4..3   -> Int8Linear, group 16
    F16 / BF16  the values as they are                                  -> HalfLinear
    Q5_1  32-blocks: d, m, high bits, nibbles  w = d * q + m
    Q5_K  256-blocks: d, dmin, 8 x 6-bit (sc, m), high bits, nibbles    w = d*sc * q - dmin*m
    Q2_K  256-blocks: 16 x (4-bit sc | 4-bit m), 64 bytes of 2-bit codes, d, dmin
                                            w = d*sc * q - dmin*m, per 16
The last three carry a per-group offset beside 5- or 2-bit codes: no lmzoo layer holds that (Int8Linear
has no offset, Int4Linear's groups are >= 32), so they load as floats, decoded here (`dequantize`).

Q4_0/Q4_1 nibbles already sit in Int4Linear's layout (byte j: element j low, j+16 high); Q4_K
keeps each 32-element sub-block's nibbles in either the low or the high half of 32 bytes, so those
are repacked. Formats: ggml-quants.c (llama.cpp).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from lmzoo.checkpoints.gguf_file import GGUFFile, GGUFTensor
from lmzoo.quant.kernels import cpu_kernels
from lmzoo.quant.layers import HalfLinear, Int4Linear, Int8Linear, pack_int4, tiles_kernels

QUANTISED = ("Q8_0", "Q6_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q3_K")  # kept as integer layers
HALF = {"F16": torch.float16, "BF16": torch.bfloat16}  # kept as they are: HalfLinear
DECODED = ("Q5_0", "Q5_1", "Q5_K", "Q3_K", "Q2_K")  # decoded by `dequantize` (the others: gguf_file)


def _f16(b: np.ndarray) -> np.ndarray:
    return _half(b).astype(np.float32)


def _half(b: np.ndarray) -> np.ndarray:
    """A block field of two bytes as the float16 it is (a layer keeps Q8_0 / Q4_0 / Q4_1 scales so:
    exact, and half the bytes a decode step streams for them)."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0]


def _codes(raw: np.ndarray, kind: str, K: int) -> tuple[str, np.ndarray, np.ndarray, np.ndarray | None]:
    """raw (N, bytes) -> (int8|int4, codes (N, K), scale (N, G), min (N, G) or None)."""
    N = raw.shape[0]
    if kind == "Q8_0":
        b = raw.reshape(N, K // 32, 34)
        return "int8", b[..., 2:].view(np.int8).reshape(N, K), _half(b[..., 0:2]), None
    if kind == "Q6_K":
        b = raw.reshape(N * K // 256, 210)
        ql, qh = b[:, :128], b[:, 128:192]
        parts = []
        for h in range(2):
            L, H = ql[:, h * 64:(h + 1) * 64], qh[:, h * 32:(h + 1) * 32]
            parts += [(L[:, :32] & 0xF) | (((H >> 0) & 3) << 4), (L[:, 32:] & 0xF) | (((H >> 2) & 3) << 4),
                      (L[:, :32] >> 4) | (((H >> 4) & 3) << 4), (L[:, 32:] >> 4) | (((H >> 6) & 3) << 4)]
        q = (np.concatenate(parts, axis=1).astype(np.int16) - 32).astype(np.int8)
        sc = b[:, 192:208].view(np.int8).astype(np.float32)  # one scale per 16 elements, in order
        d = np.ascontiguousarray(b[:, 208:210]).view(np.float16).astype(np.float32)  # (blocks, 1)
        return "int8", q.reshape(N, K), (d * sc).reshape(N, K // 16), None
    if kind in ("Q4_0", "Q4_1"):
        size = 18 if kind == "Q4_0" else 20
        b = raw.reshape(N, K // 32, size)
        d = _half(b[..., 0:2])
        if kind == "Q4_0":  # -8 d: exact in float16 too
            return "int4", b[..., 2:18].reshape(N, K // 2), d, np.float16(-8.0) * d
        return "int4", b[..., 4:20].reshape(N, K // 2), d, _half(b[..., 2:4])
    if kind == "Q4_K":
        b = raw.reshape(N * K // 256, 144)
        d = np.ascontiguousarray(b[:, 0:2]).view(np.float16).astype(np.float32)
        dmin = np.ascontiguousarray(b[:, 2:4]).view(np.float16).astype(np.float32)
        scales, mins = _k_scales(b[:, 4:16].astype(np.int32), d[:, 0], dmin[:, 0])
        qs = b[:, 16:144].reshape(-1, 4, 32)  # 4 chunks of 32 bytes = 8 sub-blocks
        vals = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(-1, 8, 32)  # sub-block order
        codes = torch.from_numpy(vals.reshape(N, K).astype(np.int64))
        return ("int4", pack_int4(codes).numpy(), np.stack(scales, 1).reshape(N, K // 32),
                np.stack(mins, 1).reshape(N, K // 32))
    if kind in ("Q5_0", "Q5_1"):
        size = 22 if kind == "Q5_0" else 24
        b = raw.reshape(N, K // 32, size)
        o = 2 if kind == "Q5_0" else 4
        qh = np.ascontiguousarray(b[..., o:o + 4]).view("<u4")  # (N, K/32, 1): bit j = element j's 5th bit
        high = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4  # (N, K/32, 32)
        qs = b[..., o + 4:o + 20]
        q = np.concatenate([qs & 0xF, qs >> 4], axis=-1) | high
        d = _f16(b[..., 0:2])
        if kind == "Q5_0":
            return "int8", (q.astype(np.int16) - 16).astype(np.int8).reshape(N, K), d, None
        return "int8", q.astype(np.int8).reshape(N, K), d, _f16(b[..., 2:4])
    if kind == "Q5_K":
        b = raw.reshape(N * K // 256, 176)
        d = np.ascontiguousarray(b[:, 0:2]).view(np.float16).astype(np.float32)
        dmin = np.ascontiguousarray(b[:, 2:4]).view(np.float16).astype(np.float32)
        scales, mins = _k_scales(b[:, 4:16].astype(np.int32), d[:, 0], dmin[:, 0])
        qh = b[:, 16:48]  # bit s of byte l: the 5th bit of element l of sub-block s
        qs = b[:, 48:176].reshape(-1, 4, 32)  # chunk c: sub-blocks 2c (low nibbles), 2c + 1 (high)
        low = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(-1, 8, 32)
        high = ((qh[:, None, :] >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1) << 4
        q = (low | high).astype(np.int8)
        return "int8", q.reshape(N, K), np.stack(scales, 1).reshape(N, K // 32), np.stack(mins, 1).reshape(N, K // 32)
    if kind in ("Q2_K", "Q3_K"):
        # both: element (h, j, g, l) = half, 2-bit shift, group of 16, lane, from byte h*32 + g*16 + l
        # of the 64 code bytes, shifted by 2j; its scale is number h*8 + j*2 + g, i.e. one per 16 in order
        size = 84 if kind == "Q2_K" else 110
        b = raw.reshape(N * K // 256, size)
        qs = b[:, 16:80] if kind == "Q2_K" else b[:, 32:96]
        shifts = (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]
        q = (qs.reshape(-1, 2, 1, 32) >> shifts) & 3  # (blocks, h, j, 32 = g*16 + l)
        if kind == "Q2_K":
            sc = b[:, 0:16]
            d = _f16(b[:, 80:82])[:, None]
            dmin = _f16(b[:, 82:84])[:, None]
            scale = d * (sc & 0xF).astype(np.float32)
            mn = -(dmin * (sc >> 4).astype(np.float32))
            return "int8", q.astype(np.int8).reshape(N, K), scale.reshape(N, K // 16), mn.reshape(N, K // 16)
        hm = b[:, 0:32]  # bit h*4 + j of byte g*16 + l set: the code as is; clear: code - 4
        bits = (hm[:, None, None, :] >> (4 * np.arange(2)[:, None] + np.arange(4)[None, :]).astype(np.uint8)
                [None, :, :, None]) & 1
        q = q.astype(np.int8) - 4 * (1 - bits.astype(np.int8))
        s = b[:, 96:108].astype(np.int32)
        i = np.arange(16)
        sc = ((s[:, i % 8] >> (4 * (i // 8))) & 0xF) | (((s[:, 8 + i % 4] >> (2 * (i // 4))) & 3) << 4)
        d = _f16(b[:, 108:110])[:, None]
        scale = d * (sc - 32).astype(np.float32)
        return "int8", q.reshape(N, K), scale.reshape(N, K // 16), None
    raise ValueError(kind)


def _k_scales(s: np.ndarray, d: np.ndarray, dmin: np.ndarray):
    """Q4_K / Q5_K: 12 bytes -> 8 (6-bit scale, 6-bit min) pairs -> d*sc, -dmin*m per sub-block."""
    scales, mins = [], []
    for j in range(8):
        if j < 4:
            sc, m = s[:, j] & 63, s[:, j + 4] & 63
        else:
            sc = (s[:, j + 4] & 0xF) | ((s[:, j - 4] >> 6) << 4)
            m = (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)
        scales.append(d * sc)
        mins.append(-(dmin * m))
    return scales, mins


def dequantize(raw: np.ndarray, kind: str, K: int) -> np.ndarray:
    """Rows of block bytes (N, bytes per row) of a DECODED kind, or Q4_0 / Q4_1 -> float32 (N, K):
    code * scale (+ min), the products ggml's own dequantisers compute."""
    width, q, scale, mn = _codes(np.ascontiguousarray(raw), kind, K)
    N, G = scale.shape
    if width == "int4":  # packed in 16-byte blocks: byte j holds element j (low nibble) and j + 16 (high)
        b = q.reshape(N, K // 32, 16)
        q = np.concatenate([b & 0x0F, b >> 4], axis=-1)
    w = q.reshape(N, G, K // G).astype(np.float32) * scale[..., None].astype(np.float32)
    if mn is not None:
        w = w + mn[..., None].astype(np.float32)
    return w.reshape(N, K)


class RowConcat(nn.Module):
    """Output rows from several layers side by side: a fused projection (qkv, gate|up) whose parts
    were quantised with different formats (e.g. attn_v in Q6_K beside attn_q/attn_k in Q4_K)."""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.parts], dim=-1)


# block kinds whose codes go into the layers as they are: (block bytes, first code byte, has a min)
SPLIT = {"Q8_0": (34, 2, False), "Q4_0": (18, 2, False), "Q4_1": (20, 4, True)}


def _half_linear(f: GGUFFile, tensors: list[GGUFTensor], row_orders: list[np.ndarray | None], kind: str,
                 K: int) -> HalfLinear:
    """`quantised_linear` for F16 / BF16 tensors: their 16-bit values copied once into the layer."""
    parts = []
    with warnings.catch_warnings():  # read-only memory map, only ever read
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for t, order in zip(tensors, row_orders):
            w = torch.from_numpy(f.raw(t)).view(torch.int16).view(-1, K)
            parts.append(w[torch.from_numpy(np.ascontiguousarray(order, dtype=np.int64))] if order is not None
                         else w.clone())
            f.release(t)
    w = parts[0] if len(parts) == 1 else torch.cat(parts)
    return HalfLinear.from_weight(w.view(HALF[kind]))


TILE_CHUNK = 1024  # rows split and packed at a time by _split_linear on tiled builds (a multiple of 16)


def _split_linear(f: GGUFFile, tensors: list[GGUFTensor], row_orders: list[np.ndarray | None], kind: str,
                  K: int) -> nn.Module:
    """`quantised_linear` for the SPLIT kinds through the kernel that splits blocks into codes, scales
    and mins in one pass, each tensor's rows written straight into the layer's buffers (the numpy
    path copies each byte two to four times, mostly in slow strided copies).

    Where the kernels multiply 16-row tiles (AVX2 / AVX-512 builds) the layer is made packed: rows are
    split and packed TILE_CHUNK at a time into the tiles, which the first product would otherwise do
    from the whole row-major matrix — holding both at once, a Q8_0 LM head's size again (30 MB on the
    default model, 100 MB for a 2048-wide one) at the peak of the process's memory."""
    bs, qo, has_min = SPLIT[kind]
    counts = [int(np.prod(t.ne[1:])) if o is None else len(o) for t, o in zip(tensors, row_orders)]
    N, G = sum(counts), K // 32
    k = cpu_kernels()
    tiled = tiles_kernels(k)
    chunk = TILE_CHUNK if tiled else N
    starts = np.cumsum([0] + counts)
    orders = [None if o is None else torch.from_numpy(np.ascontiguousarray(o, dtype=np.int64)) for o in row_orders]
    no_order = torch.empty(0, dtype=torch.long)
    tiles: list[torch.Tensor] = []
    with warnings.catch_warnings():  # the file's bytes are a read-only memory map, only ever read
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for a in range(0, N, chunk):
            b = min(N, a + chunk)
            q = torch.empty(b - a, G * (bs - qo), dtype=torch.uint8)
            d = torch.empty(b - a, G, dtype=torch.float16)
            mn = torch.empty(b - a, G, dtype=torch.float16) if has_min else None
            for i, t in enumerate(tensors):  # the tensors' rows that fall in [a, b)
                lo, hi = max(a, starts[i]), min(b, starts[i + 1])
                if lo >= hi:
                    continue
                r0, r1 = lo - starts[i], hi - starts[i]
                raw = f.raw(t)
                raw, rows = (raw[r0:r1], no_order) if orders[i] is None else (raw, orders[i][r0:r1])
                k.split_blocks(torch.from_numpy(raw), bs, qo, rows, q[lo - a:hi - a], d[lo - a:hi - a],
                               None if mn is None else mn[lo - a:hi - a])
                if hi == starts[i + 1]:
                    f.release(t)
            if kind == "Q8_0":
                q = q.view(torch.int8)
            if not tiled:
                if kind == "Q8_0":
                    return Int8Linear.from_codes(q, d)
                return Int4Linear.from_codes(q, d, d * -8.0 if mn is None else mn)  # Q4_0: w = d q - 8 d (exact)
            # Q4_0's tiles keep no mins (empty: the kernels take -8 d from the scales; see _QuantLinear)
            part = k.pack_tiles_q8(q, d, None if kind == "Q8_0" else d.new_empty(0) if mn is None else mn, 32)
            if not tiles:
                tiles = [p.new_empty((-(-N // 16),) + tuple(p.shape[1:])) for p in part]
            for whole, p in zip(tiles, part):
                whole[a // 16:a // 16 + len(p)] = p
    if kind == "Q8_0":
        return Int8Linear.from_tiles(tiles, (torch.int8, torch.float16), in_features=K, out_features=N)
    return Int4Linear.from_tiles(tiles, (torch.uint8, torch.float16, torch.float16), in_features=K, out_features=N)


def quantised_linear(f: GGUFFile, tensors: list[GGUFTensor], row_orders: list[np.ndarray | None]) -> nn.Module:
    """One layer from one or more GGUF tensors stacked along rows (all must be QUANTISED or HALF kinds)."""
    kinds = {t.type_name for t in tensors}
    if len(kinds) > 1:
        return RowConcat([quantised_linear(f, [t], [o]) for t, o in zip(tensors, row_orders)])
    kind = kinds.pop()
    K = tensors[0].ne[0]
    if kind in HALF:
        return _half_linear(f, tensors, row_orders, kind, K)
    if kind in SPLIT and cpu_kernels() is not None:
        return _split_linear(f, tensors, row_orders, kind, K)
    raws = []
    for t, order in zip(tensors, row_orders):
        r = f.raw(t)
        raws.append(r[order] if order is not None else r)
    raw = np.ascontiguousarray(np.concatenate(raws, axis=0))
    width, q, scale, mn = _codes(raw, kind, K)

    def tensor(a: np.ndarray, dtype=None) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=dtype))

    # scales stay float16 where the format stores them so (Q8_0, Q4_0, Q4_1), else float32 products
    dt = np.float16 if scale.dtype == np.float16 and (mn is None or mn.dtype == np.float16) else np.float32
    if width == "int8":
        return Int8Linear.from_codes(tensor(q), tensor(scale, dt))
    return Int4Linear.from_codes(tensor(q), tensor(scale, dt), tensor(mn, dt))
