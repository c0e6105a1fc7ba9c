"""ggml's K-quant reference quantisers (ggml-quants.c: quantize_row_q4_K_ref, quantize_row_q5_K_ref,
quantize_row_q6_K_ref and their helpers make_qkx2_quants / make_qx_quants), one element at a time in
float32 scalars, statement by statement as the C code runs — the independent reference the vectorised
encoders of lmzoo.checkpoints.kquants are tested against (slow: a few blocks only)."""

from __future__ import annotations

import numpy as np

f = np.float32
QK_K = 256


def nearest_int(v) -> int:
    # 1.5 * 2^23 added in float32 drops the fraction, rounding half to even
    return int(np.rint(f(v)))


def fp16(v) -> np.float16:
    return np.float16(f(v))


def make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep):
    n = len(x)
    L = [0] * n
    mn = x[0]
    mx = x[0]
    sum_w = weights[0]
    sum_x = f(sum_w * x[0])
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        w = weights[i]
        sum_w = f(sum_w + w)
        sum_x = f(sum_x + f(w * x[i]))
    if mn > 0:
        mn = f(0)
    if mx == mn:
        return [0] * n, f(0), f(-mn)
    iscale = f(f(nmax) / f(mx - mn))
    scale = f(f(1) / iscale)
    best_mad = f(0)
    for i in range(n):
        L[i] = max(0, min(nmax, nearest_int(f(iscale * f(x[i] - mn)))))
        diff = f(f(f(scale * f(L[i])) + mn) - x[i])
        diff = f(diff * diff)
        best_mad = f(best_mad + f(weights[i] * diff))
    for step in range(nstep + 1):
        iscale = f(f(f(f(rmin) + f(f(rdelta) * f(step))) + f(nmax)) / f(mx - mn))
        Laux = [0] * n
        sum_l = sum_l2 = sum_xl = f(0)
        for i in range(n):
            l_ = max(0, min(nmax, nearest_int(f(iscale * f(x[i] - mn)))))
            Laux[i] = l_
            w = weights[i]
            sum_l = f(sum_l + f(w * f(l_)))
            sum_l2 = f(sum_l2 + f(f(w * f(l_)) * f(l_)))
            sum_xl = f(sum_xl + f(f(w * f(l_)) * x[i]))
        D = f(f(sum_w * sum_l2) - f(sum_l * sum_l))
        if D > 0:
            this_scale = f(f(f(sum_w * sum_xl) - f(sum_x * sum_l)) / D)
            this_min = f(f(f(sum_l2 * sum_x) - f(sum_l * sum_xl)) / D)
            if this_min > 0:
                this_min = f(0)
                this_scale = f(sum_xl / sum_l2)
            mad = f(0)
            for i in range(n):
                diff = f(f(f(this_scale * f(Laux[i])) + this_min) - x[i])
                diff = f(diff * diff)
                mad = f(mad + f(weights[i] * diff))
            if mad < best_mad:
                L = Laux
                best_mad = mad
                scale = this_scale
                mn = this_min
    return L, scale, f(-mn)


def _scale_min_block(x, nmax, rmin, nstep):
    """The part Q4_K and Q5_K share, for one 256-block: (L codes, d, dmin, 12 scale bytes)."""
    L = [0] * QK_K
    scales, mins = [f(0)] * 8, [f(0)] * 8
    max_scale = max_min = f(0)
    for j in range(8):
        sub = [f(v) for v in x[32 * j:32 * j + 32]]
        sum_x2 = f(0)
        for v in sub:
            sum_x2 = f(sum_x2 + f(v * v))
        av_x = f(np.sqrt(f(sum_x2 / f(32))))
        weights = [f(av_x + f(abs(v))) for v in sub]
        Lj, scales[j], mins[j] = make_qkx2_quants(sub, weights, nmax, rmin, 0.1, nstep)
        L[32 * j:32 * j + 32] = Lj
        max_scale = max(max_scale, scales[j])
        max_min = max(max_min, mins[j])
    inv_scale = f(f(63) / max_scale) if max_scale > 0 else f(0)
    inv_min = f(f(63) / max_min) if max_min > 0 else f(0)
    sc = [0] * 12
    for j in range(8):
        ls = min(63, nearest_int(f(inv_scale * scales[j])) & 0xFF)
        lm = min(63, nearest_int(f(inv_min * mins[j])) & 0xFF)
        if j < 4:
            sc[j] = ls
            sc[j + 4] = lm
        else:
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
            sc[j - 4] |= (ls >> 4) << 6
            sc[j] |= (lm >> 4) << 6
    d, dmin = fp16(f(max_scale / f(63))), fp16(f(max_min / f(63)))
    for j in range(8):
        if j < 4:
            s, m = sc[j] & 63, sc[j + 4] & 63
        else:
            s, m = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)
        dj = f(f(d) * f(s))
        if dj == 0:
            continue
        dm = f(f(dmin) * f(m))
        for i in range(32):
            L[32 * j + i] = max(0, min(nmax, nearest_int(f(f(f(x[32 * j + i]) + dm) / dj))))
    return L, d, dmin, sc


def q4_k_block(x) -> bytes:
    L, d, dmin, sc = _scale_min_block(x, 15, -1.0, 20)
    qs = []
    for j in range(0, QK_K, 64):
        qs += [L[j + i] | (L[j + i + 32] << 4) for i in range(32)]
    return d.tobytes() + dmin.tobytes() + bytes(sc) + bytes(qs)


def q5_k_block(x) -> bytes:
    L, d, dmin, sc = _scale_min_block(x, 31, -0.5, 15)
    qh, ql = [0] * 32, []
    m1, m2 = 1, 2
    for n in range(0, QK_K, 64):
        for j in range(32):
            l1, l2 = L[n + j], L[n + j + 32]
            if l1 > 15:
                l1 -= 16
                qh[j] |= m1
            if l2 > 15:
                l2 -= 16
                qh[j] |= m2
            ql.append(l1 | (l2 << 4))
        m1 <<= 2
        m2 <<= 2
    return d.tobytes() + dmin.tobytes() + bytes(sc) + bytes(qh) + bytes(ql)


def make_qx_quants(x, nmax):  # rmse_type 1, no importance weights
    n = len(x)
    mx = amax = f(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = f(abs(v)), v
    if amax < f(1e-15):
        return [0] * n, f(0)

    def sums(iscale):
        sumlx = suml2 = f(0)
        ls = []
        for v in x:
            l_ = max(-nmax, min(nmax - 1, nearest_int(f(iscale * v))))
            ls.append(l_)
            w = f(v * v)
            sumlx = f(sumlx + f(f(w * v) * f(l_)))
            suml2 = f(suml2 + f(f(w * f(l_)) * f(l_)))
        return ls, sumlx, suml2

    ls, sumlx, suml2 = sums(f(f(-nmax) / mx))
    L = [v + nmax for v in ls]
    scale = f(sumlx / suml2) if suml2 else f(0)
    best = f(scale * sumlx)
    for step in range(-9, 10):
        if step == 0:
            continue
        ls, sumlx, suml2 = sums(f(f(-(f(f(nmax) + f(f(0.1) * f(step))))) / mx))
        if suml2 > 0 and f(sumlx * sumlx) > f(best * suml2):
            L = [v + nmax for v in ls]
            scale = f(sumlx / suml2)
            best = f(scale * sumlx)
    return L, scale


def q6_k_block(x) -> bytes:
    L = [0] * QK_K
    scales = [f(0)] * 16
    max_scale = max_abs = f(0)
    for ib in range(16):
        Lb, scales[ib] = make_qx_quants([f(v) for v in x[16 * ib:16 * ib + 16]], 32)
        L[16 * ib:16 * ib + 16] = Lb
        if abs(scales[ib]) > max_abs:
            max_abs, max_scale = f(abs(scales[ib])), scales[ib]
    if max_abs < f(1e-15):
        return bytes(210)
    iscale = f(f(-128) / max_scale)
    d = fp16(f(f(1) / iscale))
    sc = [min(127, nearest_int(f(iscale * s))) for s in scales]
    for j in range(16):
        dj = f(f(d) * f(sc[j]))
        if dj == 0:
            continue
        for i in range(16):
            L[16 * j + i] = max(-32, min(31, nearest_int(f(f(x[16 * j + i]) / dj)))) + 32
    ql, qh = [0] * 128, [0] * 64
    for h, j in enumerate(range(0, QK_K, 128)):
        for i in range(32):
            q1, q2, q3, q4 = (L[j + i + 32 * k] for k in range(4))
            ql[64 * h + i] = (q1 & 0xF) | ((q3 & 0xF) << 4)
            ql[64 * h + i + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4)
            qh[32 * h + i] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
    return bytes(ql) + bytes(qh) + np.array(sc, np.int8).tobytes() + d.tobytes()
