"""GGUF K-quant encoders: Q4_K, Q5_K and Q6_K, the blocks llama.cpp's Q4_K_M files are made of, which the
`gguf` package cannot write (its quantize() has no K-quants).

The algorithms are ggml's reference quantisers without an importance matrix (ggml-quants.c,
`quantize_row_q{4,5,6}_K_ref`, what `llama-quantize` runs when it has none), in
float32 with the same operations in the same order, so a file written here holds the bytes llama.cpp's
own quantiser writes (benchmarks/gguf_llamacpp_check.py --kquants compares them). Each loop over the
elements of a sub-block runs once, vectorised across all sub-blocks of the tensor.

    Q4_K  256 weights: d, dmin (f16), 8 x (6-bit scale, 6-bit min) in 12 bytes, 128 bytes of nibbles
          w = d * sc_j * q - dmin * m_j,  q in 0..15, sub-block j of 32 weights
    Q5_K  the same with 5-bit codes (q in 0..31), their fifth bits in 32 more bytes
    Q6_K  256 weights: 128 bytes of low nibbles, 64 of high 2-bit pairs, 16 int8 scales, d (f16)
          w = d * sc_j * (q - 32),  q in 0..63, sub-block j of 16 weights
"""

from __future__ import annotations

import numpy as np

QK_K = 256
F32 = np.float32


def _nearest(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int (adding 1.5 * 2^23 in float32): round half to even, as np.rint does."""
    return np.rint(v).astype(np.int32)


def _f16(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16)


def _qkx2(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """make_qkx2_quants for every row of x (S, n) with weights w: (L (S, n) codes, scale (S,), min (S,)
    as the positive offset subtracted: x ~ scale * L - min). Squared error, not absolute."""
    S, n = x.shape
    mn, mx = x[:, 0].copy(), x[:, 0].copy()
    sum_w = w[:, 0].copy()
    sum_x = sum_w * x[:, 0]
    for i in range(1, n):
        mn = np.minimum(mn, x[:, i])
        mx = np.maximum(mx, x[:, i])
        sum_w = sum_w + w[:, i]
        sum_x = sum_x + w[:, i] * x[:, i]
    mn = np.where(mn > 0, F32(0), mn)
    flat = mx == mn
    rng = np.where(flat, F32(1), mx - mn)
    iscale = F32(nmax) / rng
    scale = F32(1) / iscale
    L = np.clip(_nearest(iscale[:, None] * (x - mn[:, None])), 0, nmax)
    best = np.zeros(S, F32)
    for i in range(n):
        diff = scale * L[:, i].astype(F32) + mn - x[:, i]
        best = best + w[:, i] * (diff * diff)
    for step in range(nstep + 1):
        # the range from the best min so far: the reference updates `min` as it finds better fits
        iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / np.where(flat, F32(1), mx - mn)
        La = np.clip(_nearest(iscale[:, None] * (x - mn[:, None])), 0, nmax)
        Lf = La.astype(F32)
        sum_l = np.zeros(S, F32)
        sum_l2 = np.zeros(S, F32)
        sum_xl = np.zeros(S, F32)
        for i in range(n):
            wl = w[:, i] * Lf[:, i]
            sum_l = sum_l + wl
            sum_l2 = sum_l2 + wl * Lf[:, i]
            sum_xl = sum_xl + wl * x[:, i]
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        Ds = np.where(ok, D, F32(1))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / Ds
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / Ds
        pos = this_min > 0
        this_min = np.where(pos, F32(0), this_min)
        this_scale = np.where(pos, sum_xl / np.where(sum_l2 == 0, F32(1), sum_l2), this_scale)
        err = np.zeros(S, F32)
        for i in range(n):
            diff = this_scale * Lf[:, i] + this_min - x[:, i]
            err = err + w[:, i] * (diff * diff)
        better = ok & (err < best)
        L = np.where(better[:, None], La, L)
        best = np.where(better, err, best)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    L = np.where(flat[:, None], 0, L)
    scale = np.where(flat, F32(0), scale)
    return L, scale.astype(F32), (-mn).astype(F32)


def _scale_min_k(a: np.ndarray, nmax: int, rmin: float, nstep: int):
    """Q4_K / Q5_K's common part: per 32-weight sub-block (scale, min) by make_qkx2_quants, both
    quantised to 6 bits against the super-block's largest (d, dmin in float16), then the codes again
    against the rounded values. -> (codes (nb, 8, 32), d, dmin (nb,) float16, 12 packed scale bytes)."""
    rows, K = a.shape
    nb = rows * K // QK_K
    x = a.reshape(nb * 8, 32)  # sub-blocks of 32, 8 per super-block
    sum_x2 = np.zeros(nb * 8, F32)
    for i in range(32):
        sum_x2 = sum_x2 + x[:, i] * x[:, i]
    av_x = np.sqrt(sum_x2 / F32(32))
    w = av_x[:, None] + np.abs(x)
    L, scales, mins = _qkx2(x, w, nmax, rmin, 0.1, nstep)
    scales, mins, L = scales.reshape(nb, 8), mins.reshape(nb, 8), L.reshape(nb, 8, 32)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    inv_scale = np.where(max_scale > 0, F32(63) / np.where(max_scale > 0, max_scale, F32(1)), F32(0))
    inv_min = np.where(max_min > 0, F32(63) / np.where(max_min > 0, max_min, F32(1)), F32(0))
    ls = np.minimum(_nearest(inv_scale[:, None] * scales) & 0xFF, 63).astype(np.uint8)
    lm = np.minimum(_nearest(inv_min[:, None] * mins) & 0xFF, 63).astype(np.uint8)
    sc = np.zeros((nb, 12), np.uint8)  # 8 (scale, min) pairs in 6 bits each
    sc[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    sc[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    sc[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    d = _f16(max_scale / F32(63))
    dmin = _f16(max_min / F32(63))
    # the codes again against the rounded scales (sub-blocks whose scale rounds to 0 keep theirs)
    dj = d.astype(F32)[:, None] * ls.astype(F32)
    mj = dmin.astype(F32)[:, None] * lm.astype(F32)
    xb = a.reshape(nb, 8, 32)
    safe = np.where(dj == 0, F32(1), dj)
    L2 = np.clip(_nearest((xb + mj[..., None]) / safe[..., None]), 0, nmax)
    return np.where((dj == 0)[..., None], L, L2).astype(np.uint8), d, dmin, sc


def _head(d: np.ndarray, dmin: np.ndarray, sc: np.ndarray, size: int) -> np.ndarray:
    nb = len(d)
    out = np.empty((nb, size), np.uint8)
    out[:, 0:2] = d.view(np.uint8).reshape(nb, 2)
    out[:, 2:4] = dmin.view(np.uint8).reshape(nb, 2)
    out[:, 4:16] = sc
    return out


def quantize_q4_k(a: np.ndarray) -> np.ndarray:
    """float32 (rows, K), K a multiple of 256 -> Q4_K blocks as uint8 (rows, K / 256 * 144)."""
    a = np.ascontiguousarray(a, dtype=F32)
    rows, K = a.shape
    L, d, dmin, sc = _scale_min_k(a, 15, -1.0, 20)
    q = L.reshape(len(d), 4, 2, 32)  # 64-weight chunks: bytes of (element l, element l + 32)
    out = _head(d, dmin, sc, 144)
    out[:, 16:] = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(len(d), 128)
    return out.reshape(rows, K // QK_K * 144)


def quantize_q5_k(a: np.ndarray) -> np.ndarray:
    """float32 (rows, K), K a multiple of 256 -> Q5_K blocks as uint8 (rows, K / 256 * 176): Q4_K's
    layout with 5-bit codes, the fifth bits in 32 bytes (bit 2c of byte l: element l of chunk c's
    first 32, bit 2c + 1: of its second 32)."""
    a = np.ascontiguousarray(a, dtype=F32)
    rows, K = a.shape
    L, d, dmin, sc = _scale_min_k(a, 31, -0.5, 15)
    nb = len(d)
    q = L.reshape(nb, 4, 2, 32)
    lo = q & 0xF
    hi = (q >> 4).astype(np.uint8)  # (nb, chunk, half, 32)
    qh = np.zeros((nb, 32), np.uint8)
    for c in range(4):
        qh |= hi[:, c, 0] << (2 * c)
        qh |= hi[:, c, 1] << (2 * c + 1)
    out = _head(d, dmin, sc, 176)
    out[:, 16:48] = qh
    out[:, 48:] = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(nb, 128)
    return out.reshape(rows, K // QK_K * 176)


GROUP_MAX_EPS = F32(1e-15)


def _qx(x: np.ndarray, nmax: int):
    """make_qx_quants with rmse_type 1 (weights x^2) for every row of x (S, n): (L codes in
    0..2 nmax - 1, scale (S,)); x ~ scale * (L - nmax)."""
    S, n = x.shape
    ax = np.abs(x)
    arg = np.argmax(ax, axis=1)  # the first largest |x|, as the reference's strict '>' scan keeps
    amax = ax[np.arange(S), arg]
    mx = x[np.arange(S), arg]
    zero = amax < GROUP_MAX_EPS
    mxs = np.where(zero, F32(1), mx)
    w = x * x

    def sums(iscale):
        ll = np.clip(_nearest(iscale[:, None] * x), -nmax, nmax - 1)
        lf = ll.astype(F32)
        sumlx = np.zeros(S, F32)
        suml2 = np.zeros(S, F32)
        for i in range(n):
            sumlx = sumlx + w[:, i] * x[:, i] * lf[:, i]
            suml2 = suml2 + w[:, i] * lf[:, i] * lf[:, i]
        return ll, sumlx, suml2

    iscale = F32(-nmax) / mxs
    ll, sumlx, suml2 = sums(iscale)
    L = ll + nmax
    scale = np.where(suml2 != 0, sumlx / np.where(suml2 != 0, suml2, F32(1)), F32(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(F32(nmax) + F32(0.1) * F32(step)) / mxs
        ll, sumlx, suml2 = sums(iscale)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = np.where(better[:, None], ll + nmax, L)
        new_scale = sumlx / np.where(suml2 > 0, suml2, F32(1))
        scale = np.where(better, new_scale, scale)
        best = np.where(better, new_scale * sumlx, best)
    L = np.where(zero[:, None], 0, L)
    scale = np.where(zero, F32(0), scale)
    return L, scale.astype(F32)


def quantize_q6_k(a: np.ndarray) -> np.ndarray:
    """float32 (rows, K), K a multiple of 256 -> Q6_K blocks as uint8 (rows, K / 256 * 210)."""
    a = np.ascontiguousarray(a, dtype=F32)
    rows, K = a.shape
    nb = rows * K // QK_K
    L, scales = _qx(a.reshape(nb * 16, 16), 32)
    L, scales = L.reshape(nb, 16, 16), scales.reshape(nb, 16)
    arg = np.argmax(np.abs(scales), axis=1)
    max_scale = scales[np.arange(nb), arg]
    zero = np.abs(max_scale) < GROUP_MAX_EPS
    iscale = F32(-128) / np.where(zero, F32(1), max_scale)
    d = _f16(np.where(zero, F32(0), F32(1) / iscale))
    sc = np.minimum(_nearest(iscale[:, None] * scales), 127).astype(np.int8)
    dj = d.astype(F32)[:, None] * sc.astype(F32)
    xb = a.reshape(nb, 16, 16)
    safe = np.where(dj == 0, F32(1), dj)
    L2 = np.clip(_nearest(xb / safe[..., None]), -32, 31) + 32
    L = np.where((dj == 0)[..., None], L, L2).astype(np.uint8).reshape(nb, 2, 4, 32)  # 128-halves, quarters
    ql = np.concatenate([L[:, :, 0] & 0xF | ((L[:, :, 2] & 0xF) << 4),
                         L[:, :, 1] & 0xF | ((L[:, :, 3] & 0xF) << 4)], axis=2).reshape(nb, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4)
          | ((L[:, :, 3] >> 4) << 6)).reshape(nb, 64)
    out = np.zeros((nb, 210), np.uint8)
    out[:, 0:128] = ql
    out[:, 128:192] = qh
    out[:, 192:208] = np.where(zero[:, None], 0, sc).astype(np.int8).view(np.uint8)
    out[:, 208:210] = np.where(zero, np.float16(0), d).view(np.uint8).reshape(nb, 2)
    return out.reshape(rows, K // QK_K * 210)
