// Weight-only quantised matrix-vector products for CPU decode (lmzoo).
//
// Decoding one token multiplies a few activation rows x (M, K) by every weight matrix W (N, K), so
// its speed is the speed of *reading W*. Stored as int8 (1 byte) or int4 (half a byte) instead of
// fp32 (4 bytes), W is read 4x or 8x faster; the kernels below dequantise in registers and never
// write a float copy of W.
//
// Layouts (groups run along K; g = group size):
//   int8:  q (N, K) int8,               y[m,n] = sum_g scale[n,g] * sum_{k in g} x[m,k] * q[n,k]
//   int4:  q (N, K/2) uint8, in blocks of 32 elements = 16 bytes, byte j of a block holds element j
//          in its low nibble and element j+16 in its high nibble (GGUF Q4_0/Q4_1 block layout);
//          w = scale * q + min,  so  y[m,n] = sum_g scale[n,g] * dot(x_g, q_g) + min[n,g] * sum(x_g)
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define LMZOO_AVX2 1
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VNNI__)
#define LMZOO_AVX512 1
#endif
#endif

namespace {

// activation rows handled per pass over a weight row: the unpacked weights are reused RB times while
// the RB accumulators (and the 4 unpacked vectors) stay in the 16 AVX2 registers
constexpr int64_t RB = 4;
#ifdef LMZOO_AVX512
constexpr int64_t RI4 = 8;  // the float-activation int4 / int8 kernels' rows per pass (2 x 8 accumulators of 32 zmm)
#else
constexpr int64_t RI4 = RB;
#endif

#ifdef LMZOO_AVX2
inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}
#endif

// The row kernels ask for the weights PF_BYTES ahead of the row they multiply: the hardware prefetcher
// alone left the int8 LM head at 10-14 GB/s of a 21-28 GB/s memory read rate (2 threads), 2 KB ahead
// brought it to 14-20 (-20-30% time; 1-4 KB ahead all helped; benchmarks/RESULTS.md 2026-12-07).
constexpr int64_t PF_BYTES = 2048;
// `bytes` from p on into L1, a line at a time (prefetches never fault: reaching past the matrix is harmless)
inline void prefetch_rows(const void* p, int64_t bytes) {
#ifdef LMZOO_AVX2
  for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(static_cast<const char*>(p) + o, _MM_HINT_T0);
#endif
}

// block b -> its scale group b / per_group, as a table: a 64-bit division per block costs more
// than the block's whole product
inline std::vector<int64_t> group_of(int64_t nb, int64_t per_group) {
  std::vector<int64_t> t(nb);
  for (int64_t b = 0; b < nb; ++b) t[b] = b / per_group;
  return t;
}

// f(n, m0, buf): weight row n against activation rows [m0, m0 + R) (the last pass shorter), for every
// n and pass; the weight rows split across threads, and within a thread taken in tiles of 16 rows,
// each tile against one pass of rows after another: the pass's rows stay in L1 across the tile and the
// tile's weights across the passes (row-major over all rows instead ran prompts of more than ~20
// tokens at half speed: their rows no longer fit in L1). buf: 2 G floats of scratch per thread.
template <typename F>
void weight_row_tiles(int64_t N, int64_t M, int64_t R, int64_t G, F&& f) {
  constexpr int64_t NT = 16;
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    std::vector<float> buf(2 * G);
    for (int64_t nt = n0; nt < n1; nt += NT)
      for (int64_t m0 = 0; m0 < M; m0 += R)
        for (int64_t n = nt; n < std::min(n1, nt + NT); ++n) f(n, m0, buf);
  });
}

// x[0] + ... + x[n-1] (8 lanes, then across them)
inline float sum_f32(const float* x, int64_t n) {
  int64_t i = 0;
  float acc = 0.f;
#ifdef LMZOO_AVX2
  __m256 v = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) v = _mm256_add_ps(v, _mm256_loadu_ps(x + i));
  acc = hsum(v);
#endif
  for (; i < n; ++i) acc += x[i];
  return acc;
}

inline float dot_f32(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float acc = 0.f;
#ifdef LMZOO_AVX2
  __m256 v = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) v = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), v);
  acc = hsum(v);
#endif
  for (; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// A weight row's per-group scales (or mins) as float32. float32 tensors are read in place; float16
// ones (GGUF's own d and m kept as stored: Q4_1 streams 20 bytes per 32 weights instead of 24) are
// widened into the caller's buffer first, exactly, so the arithmetic below is the same either way.
struct Scales {
  const float* f = nullptr;
  const c10::Half* h = nullptr;
  int64_t G = 0;
  Scales(const torch::Tensor& t, int64_t N, int64_t G_) : G(G_) {
    TORCH_CHECK(t.is_contiguous() && t.dim() == 2 && t.size(0) == N && t.size(1) == G_ &&
                (t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kHalf),
                "scales / mins must be contiguous float32 or float16 (N, K/g) = (", N, ", ", G_, "), got ", t.sizes());
    if (t.scalar_type() == torch::kFloat) f = t.data_ptr<float>();
    else h = t.data_ptr<c10::Half>();
  }
  // buf: G floats
  const float* row(int64_t n, std::vector<float>& buf) const {
    if (f) return f + n * G;
    const c10::Half* p = h + n * G;
    float* o = buf.data();
    int64_t i = 0;
#ifdef __F16C__
    for (; i + 8 <= G; i += 8) _mm256_storeu_ps(o + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(p + i))));
    for (; i < G; ++i) o[i] = _cvtsh_ss(p[i].x);
#else
    for (; i < G; ++i) o[i] = static_cast<float>(p[i]);
#endif
    return o;
  }
};

// a scale as float: float32 read, float16 widened (exact)
inline float ld(const float* p) { return *p; }
#ifdef LMZOO_AVX2
inline float ld(const c10::Half* p) { return _cvtsh_ss(p->x); }
inline __m256 ld8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 ld8(const c10::Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }

// dot_f32(a, b, n) with a's values read through `ld` (the same operations in the same order)
template <typename S>
inline float dot_sf(const S* a, const float* b, int64_t n) {
  int64_t i = 0;
  __m256 v = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) v = _mm256_fmadd_ps(ld8(a + i), _mm256_loadu_ps(b + i), v);
  float acc = hsum(v);
  for (; i < n; ++i) acc += ld(a + i) * b[i];
  return acc;
}
#else
inline float ld(const c10::Half* p) { return static_cast<float>(*p); }
template <typename S>
inline float dot_sf(const S* a, const float* b, int64_t n) {
  float acc = 0.f;
  for (int64_t i = 0; i < n; ++i) acc += ld(a + i) * b[i];
  return acc;
}
#endif

#ifdef LMZOO_AVX2
// the four horizontal sums of a, b, c, d -> out[0:4]
inline void hsum4(__m256 a, __m256 b, __m256 c, __m256 d, float* out) {
  const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
}

// exp(x), 8 lanes: Cephes' expf (n = round(x / ln 2), x - n ln 2 in two parts, a degree-5
// polynomial; relative error ~1e-7); x is clamped to [-87.3, 88] (exp(-87.3) ~ 1e-38, exp(88) ~ 1.7e38)
inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// 8-lane partial sums of x[0:len] * q[0:len] (int8 q, len % 8 == 0); reduced once per output
inline __m256 dot_i8_vec(const float* x, const int8_t* q, int64_t len) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= len; k += 16) {
    __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(q + k))));
    __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(q + k + 8))));
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), w0, acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), w1, acc1);
  }
  for (; k < len; k += 8) {
    __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(q + k))));
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), w0, acc0);
  }
  return _mm256_add_ps(acc0, acc1);
}

// one 32-element int4 block (16 bytes) -> its 32 codes as four 8-float vectors, in element order
inline void i4_unpack_f(const uint8_t* q, __m256 w[4]) {
  const __m128i b = _mm_loadu_si128((const __m128i*)q), m = _mm_set1_epi8(0x0F);
  const __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
  w[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
  w[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
  w[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
  w[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
}

// 8-lane partial sums of x[0:32] times an unpacked block, as two short chains (the block's four
// products do not wait on each other)
inline __m256 i4_block_prod(const float* x, const __m256 w[4]) {
  const __m256 t0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + 8), w[1], _mm256_mul_ps(_mm256_loadu_ps(x), w[0]));
  const __m256 t1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + 24), w[3], _mm256_mul_ps(_mm256_loadu_ps(x + 16), w[2]));
  return _mm256_add_ps(t0, t1);
}

// MB rows x (MB, K) (row stride K) against one int4 weight row: y[j * N] = sum_b scale[b] * (x_j . q_b)
// (the min term is added by the caller). Blocks alternate between two accumulators per row, so the
// loop runs at the rate instructions issue, not at the latency of one FMA chain; every row gets the
// same operations in the same order for any MB (a row's result never depends on its neighbours).
template <int MB, typename S>
inline void i4_rows(const float* x, int64_t K, const uint8_t* q, const S* scale, const int64_t* gof, float* y,
                    int64_t N) {
  __m256 a0[MB], a1[MB], w[4];
  for (int j = 0; j < MB; ++j) a0[j] = a1[j] = _mm256_setzero_ps();
  const int64_t nb = K / 32;
  int64_t b = 0;
  for (; b + 1 < nb; b += 2) {
    i4_unpack_f(q + b * 16, w);
    __m256 s = _mm256_set1_ps(ld(scale + gof[b]));
    for (int j = 0; j < MB; ++j) a0[j] = _mm256_fmadd_ps(s, i4_block_prod(x + j * K + b * 32, w), a0[j]);
    i4_unpack_f(q + (b + 1) * 16, w);
    s = _mm256_set1_ps(ld(scale + gof[b + 1]));
    for (int j = 0; j < MB; ++j) a1[j] = _mm256_fmadd_ps(s, i4_block_prod(x + j * K + (b + 1) * 32, w), a1[j]);
  }
  if (b < nb) {
    i4_unpack_f(q + b * 16, w);
    const __m256 s = _mm256_set1_ps(ld(scale + gof[b]));
    for (int j = 0; j < MB; ++j) a0[j] = _mm256_fmadd_ps(s, i4_block_prod(x + j * K + b * 32, w), a0[j]);
  }
  for (int j = 0; j < MB; ++j) y[j * N] = hsum(_mm256_add_ps(a0[j], a1[j]));
}

#ifdef LMZOO_AVX512
// 16 bytes of nibbles -> their low nibbles and their high nibbles as 16 floats each (each byte widened
// to 32 bits first: then a mask and a shift split it, with no masking of the shifted-in bits)
inline void nibbles_ps(const uint8_t* q, __m512& lo, __m512& hi) {
  const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)q));
  lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0x0F)));
  hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
}

// i4_rows on 512-bit vectors, two blocks at a time. The pair's 32 bytes of nibbles unpack into four
// 16-float vectors (block b elements 0-15, b+1 0-15, b 16-31, b+1 16-31: low nibbles, then high),
// widened once for all MB rows; per row and pair two products, two FMAs and two scale FMAs, half the
// instructions of the 256-bit loop. Block b feeds accumulator a0, b+1 a1, an odd last block a0.
template <int MB, typename S>
inline void i4_rows512(const float* x, int64_t K, const uint8_t* q, const S* scale, const int64_t* gof, float* y,
                       int64_t N) {
  __m512 a0[MB], a1[MB];
  for (int j = 0; j < MB; ++j) a0[j] = a1[j] = _mm512_setzero_ps();
  const int64_t nb = K / 32;
  int64_t b = 0;
  for (; b + 1 < nb; b += 2) {
    __m512 w0, w1, w2, w3;
    nibbles_ps(q + b * 16, w0, w2);
    nibbles_ps(q + b * 16 + 16, w1, w3);
    const __m512 s0 = _mm512_set1_ps(ld(scale + gof[b])), s1 = _mm512_set1_ps(ld(scale + gof[b + 1]));
    for (int j = 0; j < MB; ++j) {
      const float* xb = x + j * K + b * 32;
      const __m512 t0 = _mm512_fmadd_ps(_mm512_loadu_ps(xb + 16), w2, _mm512_mul_ps(_mm512_loadu_ps(xb), w0));
      const __m512 t1 = _mm512_fmadd_ps(_mm512_loadu_ps(xb + 48), w3, _mm512_mul_ps(_mm512_loadu_ps(xb + 32), w1));
      a0[j] = _mm512_fmadd_ps(s0, t0, a0[j]);
      a1[j] = _mm512_fmadd_ps(s1, t1, a1[j]);
    }
  }
  if (b < nb) {
    __m512 w0, w2;
    nibbles_ps(q + b * 16, w0, w2);
    const __m512 s0 = _mm512_set1_ps(ld(scale + gof[b]));
    for (int j = 0; j < MB; ++j) {
      const float* xb = x + j * K + b * 32;
      a0[j] = _mm512_fmadd_ps(s0, _mm512_fmadd_ps(_mm512_loadu_ps(xb + 16), w2, _mm512_mul_ps(_mm512_loadu_ps(xb), w0)),
                              a0[j]);
    }
  }
  for (int j = 0; j < MB; ++j) y[j * N] = _mm512_reduce_add_ps(_mm512_add_ps(a0[j], a1[j]));
}

// MB rows x against one int8 weight row on 512-bit vectors: per group of g (a multiple of 8) the
// 16-weight chunks alternate between two chains d0 / d1 (a last 8-weight chunk by a masked load), then
// acc += scale * (d0 + d1). y[j * N] = row j's product.
template <int MB, typename S>
inline void i8_rows512(const float* x, int64_t K, const int8_t* q, const S* scale, int64_t g, float* y, int64_t N) {
  __m512 acc[MB];
  for (int j = 0; j < MB; ++j) acc[j] = _mm512_setzero_ps();
  for (int64_t k0 = 0, gi = 0; k0 < K; k0 += g, ++gi) {
    __m512 d0[MB], d1[MB];
    for (int j = 0; j < MB; ++j) d0[j] = d1[j] = _mm512_setzero_ps();
    const int64_t k1 = k0 + g;
    int64_t k = k0;
    for (; k + 32 <= k1; k += 32) {
      const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(q + k))));
      const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(q + k + 16))));
      for (int j = 0; j < MB; ++j) {
        d0[j] = _mm512_fmadd_ps(_mm512_loadu_ps(x + j * K + k), w0, d0[j]);
        d1[j] = _mm512_fmadd_ps(_mm512_loadu_ps(x + j * K + k + 16), w1, d1[j]);
      }
    }
    if (k + 16 <= k1) {
      const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(q + k))));
      for (int j = 0; j < MB; ++j) d0[j] = _mm512_fmadd_ps(_mm512_loadu_ps(x + j * K + k), w0, d0[j]);
      k += 16;
    }
    if (k < k1) {  // 8 weights
      const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(q + k))));
      for (int j = 0; j < MB; ++j) d1[j] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(0xFF, x + j * K + k), w1, d1[j]);
    }
    const __m512 sc = _mm512_set1_ps(ld(scale + gi));
    for (int j = 0; j < MB; ++j) acc[j] = _mm512_fmadd_ps(sc, _mm512_add_ps(d0[j], d1[j]), acc[j]);
  }
  for (int j = 0; j < MB; ++j) y[j * N] = _mm512_reduce_add_ps(acc[j]);
}
#endif

#endif

#ifndef LMZOO_AVX2
// portable fallbacks (the compiler vectorises what it can)
inline float dot_i8(const float* x, const int8_t* q, int64_t len) {
  float s = 0.f;
  for (int64_t k = 0; k < len; ++k) s += x[k] * (float)q[k];
  return s;
}

inline float dot_i4_block(const float* x, const uint8_t* q) {
  float s = 0.f;
  for (int j = 0; j < 16; ++j) s += x[j] * (float)(q[j] & 0x0F) + x[j + 16] * (float)(q[j] >> 4);
  return s;
}
#endif

void check(const torch::Tensor& x, int64_t K) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous(),
              "x must be contiguous float32 (M, K)");
  TORCH_CHECK(x.size(1) == K, "x has K=", x.size(1), ", weight has K=", K);
}

}  // namespace

// Float weights: x (M, K) f32, w (N, K) float32, float16 or bfloat16 -> (M, N) f32: decode rows (and
// on AVX-512 builds prompts too, see lmzoo/quant/layers.py). BLAS GEMV kernels reach about 40% of this machine's read bandwidth on decode-sized
// matrices; streaming each weight row once through FMA lanes, rows split across threads, gets much
// closer to it. Half-precision weights are widened in registers (float16 by F16C, bfloat16 by a
// 16-bit shift; both exact), so a product is the float32 weights' product up to summation order, for
// half the bytes read. Up to RW activation rows share a pass over a weight row (its chunk widened
// once for all of them). Each row sums its lanes in two chains (even and odd chunks), then across
// lanes, then the scalar tail: the same operations whatever the pass width, so a row's result does
// not depend on the rows beside it.
namespace {

inline float wf(float v) { return v; }
inline float wf(c10::Half v) { return static_cast<float>(v); }
inline float wf(c10::BFloat16 v) { return static_cast<float>(v); }

#if defined(LMZOO_AVX512)
constexpr int64_t RW = 8, WL = 16;  // rows per pass (2 x 8 accumulators + 2 weight vectors of 32 zmm)
using WVec = __m512;
inline WVec wzero() { return _mm512_setzero_ps(); }
inline WVec xld(const float* p) { return _mm512_loadu_ps(p); }
inline WVec wld(const float* p) { return _mm512_loadu_ps(p); }
inline WVec wld(const c10::Half* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
inline WVec wld(const c10::BFloat16* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
inline WVec wfma(WVec a, WVec b, WVec c) { return _mm512_fmadd_ps(a, b, c); }
inline WVec wadd(WVec a, WVec b) { return _mm512_add_ps(a, b); }
inline WVec wset1(float v) { return _mm512_set1_ps(v); }
inline void wst(float* p, WVec v) { _mm512_storeu_ps(p, v); }
inline float wsum(WVec a, WVec b) { return _mm512_reduce_add_ps(_mm512_add_ps(a, b)); }
#elif defined(LMZOO_AVX2)
constexpr int64_t RW = 4, WL = 8;  // 2 x 4 accumulators + 2 weight vectors of 16 ymm
using WVec = __m256;
inline WVec wzero() { return _mm256_setzero_ps(); }
inline WVec xld(const float* p) { return _mm256_loadu_ps(p); }
inline WVec wld(const float* p) { return _mm256_loadu_ps(p); }
inline WVec wld(const c10::Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p)); }
inline WVec wld(const c10::BFloat16* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
inline WVec wfma(WVec a, WVec b, WVec c) { return _mm256_fmadd_ps(a, b, c); }
inline WVec wadd(WVec a, WVec b) { return _mm256_add_ps(a, b); }
inline WVec wset1(float v) { return _mm256_set1_ps(v); }
inline void wst(float* p, WVec v) { _mm256_storeu_ps(p, v); }
inline float wsum(WVec a, WVec b) { return hsum(_mm256_add_ps(a, b)); }
#else
constexpr int64_t RW = 4;  // portable: scalar loops
#endif

// rows x[0:R] (stride K) against one weight row w; y[r * N] = row r's product
template <int R, typename W>
inline void float_pass(const float* x, int64_t K, const W* w, float* y, int64_t N) {
  float acc[R];
  int64_t k = 0;
#if defined(LMZOO_AVX2)
  WVec a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = wzero();
  for (; k + 2 * WL <= K; k += 2 * WL) {
    const WVec w0 = wld(w + k), w1 = wld(w + k + WL);
    for (int r = 0; r < R; ++r) {
      a0[r] = wfma(xld(x + r * K + k), w0, a0[r]);
      a1[r] = wfma(xld(x + r * K + k + WL), w1, a1[r]);
    }
  }
  if (k + WL <= K) {
    const WVec w0 = wld(w + k);
    for (int r = 0; r < R; ++r) a0[r] = wfma(xld(x + r * K + k), w0, a0[r]);
    k += WL;
  }
  for (int r = 0; r < R; ++r) acc[r] = wsum(a0[r], a1[r]);
#else
  for (int r = 0; r < R; ++r) acc[r] = 0.f;
#endif
  for (; k < K; ++k) {
    const float wk = wf(w[k]);
    for (int r = 0; r < R; ++r) acc[r] += x[r * K + k] * wk;
  }
  for (int r = 0; r < R; ++r) y[r * N] = acc[r];
}

template <typename W>
void float_rows(const float* xp, int64_t M, int64_t K, const W* wp, int64_t N, float* yp) {
  weight_row_tiles(N, M, RW, 0, [&](int64_t n, int64_t m0, std::vector<float>&) {
    const float* x = xp + m0 * K;
    const W* w = wp + n * K;
    if (m0 == 0) prefetch_rows(reinterpret_cast<const char*>(w) + PF_BYTES, K * sizeof(W));
    float* y = yp + m0 * N + n;
    switch (std::min<int64_t>(RW, M - m0)) {
      case 1: float_pass<1>(x, K, w, y, N); break;
      case 2: float_pass<2>(x, K, w, y, N); break;
      case 3: float_pass<3>(x, K, w, y, N); break;
      case 4: float_pass<4>(x, K, w, y, N); break;
#if defined(LMZOO_AVX512)
      case 5: float_pass<5>(x, K, w, y, N); break;
      case 6: float_pass<6>(x, K, w, y, N); break;
      case 7: float_pass<7>(x, K, w, y, N); break;
      case 8: float_pass<8>(x, K, w, y, N); break;
#endif
    }
  });
}

}  // namespace

torch::Tensor float_linear(torch::Tensor x, torch::Tensor w) {
  const int64_t M = x.size(0), N = w.size(0), K = w.size(1);
  check(x, K);
  const auto st = w.scalar_type();
  TORCH_CHECK((st == torch::kFloat || st == torch::kHalf || st == torch::kBFloat16) && w.is_contiguous() &&
              w.dim() == 2, "w must be contiguous float32, float16 or bfloat16 (N, K)");
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  if (st == torch::kFloat) float_rows(xp, M, K, w.data_ptr<float>(), N, yp);
  else if (st == torch::kHalf) float_rows(xp, M, K, w.data_ptr<c10::Half>(), N, yp);
  else float_rows(xp, M, K, w.data_ptr<c10::BFloat16>(), N, yp);
  return y;
}

// x (M, K) f32, q (N, K) int8, scale (N, K/g) f32 -> (M, N) f32
torch::Tensor int8_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scale, int64_t g) {
  const int64_t M = x.size(0), N = q.size(0), K = q.size(1), G = K / g;
  check(x, K);
  TORCH_CHECK(g % 8 == 0 && K % g == 0, "group size must divide K and be a multiple of 8");
  const Scales ss(scale, N, G);
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const int8_t* qp = q.data_ptr<int8_t>();
  float* yp = y.data_ptr<float>();
#ifdef LMZOO_AVX512
  weight_row_tiles(N, M, RI4, 0, [&](int64_t n, int64_t m0, std::vector<float>&) {
    const int8_t* qr = qp + n * K;
    if (m0 == 0) prefetch_rows(qr + PF_BYTES, K);
    auto pass = [&](const auto* sr) {
      const float* x = xp + m0 * K;
      float* y = yp + m0 * N + n;
      switch (std::min<int64_t>(RI4, M - m0)) {
        case 8: i8_rows512<8>(x, K, qr, sr, g, y, N); break;
        case 7: i8_rows512<7>(x, K, qr, sr, g, y, N); break;
        case 6: i8_rows512<6>(x, K, qr, sr, g, y, N); break;
        case 5: i8_rows512<5>(x, K, qr, sr, g, y, N); break;
        case 4: i8_rows512<4>(x, K, qr, sr, g, y, N); break;
        case 3: i8_rows512<3>(x, K, qr, sr, g, y, N); break;
        case 2: i8_rows512<2>(x, K, qr, sr, g, y, N); break;
        default: i8_rows512<1>(x, K, qr, sr, g, y, N);
      }
    };
    if (ss.f) pass(ss.f + n * G);
    else pass(ss.h + n * G);
  });
#else
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    std::vector<float> sbuf(G);
    for (int64_t n = n0; n < n1; ++n) {
      const int8_t* qr = qp + n * K;
#if defined(LMZOO_AVX2)
      prefetch_rows(qr + PF_BYTES, K);
      const float* sr = M == 1 ? nullptr : ss.row(n, sbuf);  // one row reads the scales as stored
      // rows in passes of RB: each 16-weight chunk is widened to float once and used for RB rows
      for (int64_t m0 = 0; m0 < M; m0 += RB) {
        const int64_t mb = std::min<int64_t>(RB, M - m0);
        if (mb == 1) {  // one row: two independent accumulator chains keep the FMA units busy
          const float* xr = xp + m0 * K;
          __m256 a1 = _mm256_setzero_ps();
          for (int64_t gi = 0; gi < G; ++gi) {
            const float sc = sr ? sr[gi] : ss.f ? ss.f[n * G + gi] : ld(ss.h + n * G + gi);
            a1 = _mm256_fmadd_ps(_mm256_set1_ps(sc), dot_i8_vec(xr + gi * g, qr + gi * g, g), a1);
          }
          yp[m0 * N + n] = hsum(a1);
          continue;
        }
        __m256 acc[RB];
        for (int64_t j = 0; j < RB; ++j) acc[j] = _mm256_setzero_ps();
        for (int64_t gi = 0; gi < G; ++gi) {
          // the same two accumulator chains, in the same order, as dot_i8_vec: a row's result is
          // bit-identical whether it is multiplied alone or with others (the engine relies on it)
          __m256 d0[RB], d1[RB];
          for (int64_t j = 0; j < RB; ++j) d0[j] = d1[j] = _mm256_setzero_ps();
          const int64_t k0 = gi * g, k1 = (gi + 1) * g;
          int64_t k = k0;
          for (; k + 16 <= k1; k += 16) {
            const __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(qr + k))));
            const __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(qr + k + 8))));
            for (int64_t j = 0; j < mb; ++j) {
              const float* xr = xp + (m0 + j) * K + k;
              d0[j] = _mm256_fmadd_ps(_mm256_loadu_ps(xr), w0, d0[j]);
              d1[j] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 8), w1, d1[j]);
            }
          }
          for (; k < k1; k += 8) {
            const __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(qr + k))));
            for (int64_t j = 0; j < mb; ++j) d0[j] = _mm256_fmadd_ps(_mm256_loadu_ps(xp + (m0 + j) * K + k), w0, d0[j]);
          }
          const __m256 sc = _mm256_set1_ps(sr[gi]);
          for (int64_t j = 0; j < mb; ++j) acc[j] = _mm256_fmadd_ps(sc, _mm256_add_ps(d0[j], d1[j]), acc[j]);
        }
        for (int64_t j = 0; j < mb; ++j) yp[(m0 + j) * N + n] = hsum(acc[j]);
      }
#else
      const float* sr = ss.row(n, sbuf);
      for (int64_t m = 0; m < M; ++m) {
        const float* xr = xp + m * K;
        float acc = 0.f;
        for (int64_t gi = 0; gi < G; ++gi) acc += sr[gi] * dot_i8(xr + gi * g, qr + gi * g, g);
        yp[m * N + n] = acc;
      }
#endif
    }
  });
#endif
  return y;
}

// x (M, K) f32, q (N, K/2) uint8, scale/min (N, K/g) f32 -> (M, N) f32
torch::Tensor int4_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scale, torch::Tensor mins,
                          int64_t g) {
  const int64_t M = x.size(0), N = q.size(0), K = q.size(1) * 2, G = K / g;
  check(x, K);
  TORCH_CHECK(g % 32 == 0 && K % g == 0, "int4 group size must divide K and be a multiple of 32");
  // per-row group sums of x feed the `min` term
  // (plain loops, not ATen ops: at decode sizes an op's dispatch costs more than its arithmetic)
  const float* xp = x.data_ptr<float>();
  std::vector<float> xs(M * G);
  for (int64_t i = 0; i < M * G; ++i) xs[i] = sum_f32(xp + i * g, g);
  auto y = torch::empty({M, N}, x.options());
  const float* xsp = xs.data();
  const uint8_t* qp = q.data_ptr<uint8_t>();
  const Scales ss(scale, N, G), ms(mins, N, G);
  float* yp = y.data_ptr<float>();
  const int64_t blocks = g / 32;
  const std::vector<int64_t> gof = group_of(K / 32, blocks);
#ifdef LMZOO_AVX2
  // rows in passes of up to RI4: each block is unpacked to floats once and used for every row of a pass
  weight_row_tiles(N, M, RI4, G, [&](int64_t n, int64_t m0, std::vector<float>& buf) {
    const uint8_t* qr = qp + n * (K / 2);
    auto pass = [&](const auto* sr, const auto* mr) {
      const float* x = xp + m0 * K;
      float* y = yp + m0 * N + n;
      switch (std::min<int64_t>(RI4, M - m0)) {
#ifdef LMZOO_AVX512
        case 8: i4_rows512<8>(x, K, qr, sr, gof.data(), y, N); break;
        case 7: i4_rows512<7>(x, K, qr, sr, gof.data(), y, N); break;
        case 6: i4_rows512<6>(x, K, qr, sr, gof.data(), y, N); break;
        case 5: i4_rows512<5>(x, K, qr, sr, gof.data(), y, N); break;
        case 4: i4_rows512<4>(x, K, qr, sr, gof.data(), y, N); break;
        case 3: i4_rows512<3>(x, K, qr, sr, gof.data(), y, N); break;
        case 2: i4_rows512<2>(x, K, qr, sr, gof.data(), y, N); break;
        default: i4_rows512<1>(x, K, qr, sr, gof.data(), y, N);
#else
        case 4: i4_rows<4>(x, K, qr, sr, gof.data(), y, N); break;
        case 3: i4_rows<3>(x, K, qr, sr, gof.data(), y, N); break;
        case 2: i4_rows<2>(x, K, qr, sr, gof.data(), y, N); break;
        default: i4_rows<1>(x, K, qr, sr, gof.data(), y, N);
#endif
      }
      for (int64_t m = m0; m < std::min(M, m0 + RI4); ++m) yp[m * N + n] += dot_sf(mr, xsp + m * G, G);
    };
    if (ss.f && ms.f) pass(ss.f + n * G, ms.f + n * G);
    else if (ss.h && ms.h) pass(ss.h + n * G, ms.h + n * G);
    else {
      std::vector<float> mbuf(G);
      pass(ss.row(n, buf), ms.row(n, mbuf));
    }
  });
#else
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    std::vector<float> sbuf(G), mbuf(G);
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* qr = qp + n * (K / 2);
      const float* sr = ss.row(n, sbuf);
      const float* mr = ms.row(n, mbuf);
      for (int64_t m = 0; m < M; ++m) {
        const float* xr = xp + m * K;
        float acc = 0.f;  // the `min` term, scalar
        for (int64_t gi = 0; gi < G; ++gi) acc += mr[gi] * xsp[m * G + gi];
        for (int64_t gi = 0; gi < G; ++gi) {
          float d = 0.f;
          for (int64_t b = 0; b < blocks; ++b) {
            const int64_t e = gi * g + b * 32;
            d += dot_i4_block(xr + e, qr + e / 2);
          }
          acc += sr[gi] * d;
        }
        yp[m * N + n] = acc;
      }
    }
  });
#endif
  return y;
}

// ---------------------------------------------------------------------------------------------
// Integer products with 8-bit activations (llama.cpp's scheme for its CPU matmuls: ggml's Q8_1
// activation blocks against Q4_1 / Q8_0 weight blocks). Each row of x is quantised per 32-block:
//
//     d = max|x_b| / 127,  q = round_half_even(x_b * 127 / max|x_b|) in -127..127,  s = d * sum(q)
//     (d and s rounded to float16, as ggml's block_q8_1 / block_q8_0 store them)
//
// and each 32-block product becomes one integer dot product (8-bit x 8-bit -> 16 -> 32-bit lanes,
// exact), scaled once in float:
//
//     int4:  y[m,n] = sum_b  d_x[m,b] * scale[n,g(b)] * dot(q_x, q_w) + sum_g min[n,g] * sum_{b in g} s[m,b]
//     int8:  y[m,n] = sum_b  d_x[m,b] * scale[n,g(b)] * dot(q_x, q_w)         (g = 16: two scales a block)
//
// i.e. dequant(W) @ dequant(quant(x)) up to float summation order (the min term uses the stored s).
// A quarter of the instructions of widening every weight to float. Two layouts: the row-major codes
// (q8_loop: 8 float lanes a block, as ggml sums them; portable builds, and int8 with two scales a
// block) and, on AVX2 and AVX-512 builds, 16-row tiles packed once per layer (q8_tiles: one float sum
// per block and weight row, ~2.5x fewer instructions on AVX-512 VNNI, ~3x on plain AVX2).
namespace {

constexpr int64_t QB = 32;  // activation block

// ggml keeps an activation block's d and s in float16: rounding them the same way gives the q8 products
// llama.cpp's inputs exactly (its ggml_vec_dot_q4_1_q8_1 / _q8_0_q8_0), not just similar ones
inline float f16_round(float v) { return static_cast<float>(c10::Half(v)); }

// x (M, K) -> q (M, K) int8, d (M, K/32), s (M, K/32)
void quantize_rows_q8(const float* x, int64_t M, int64_t K, int8_t* q, float* d, float* s) {
  const int64_t nb = K / QB;
  at::parallel_for(0, M * nb, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* xb = x + i * QB;
      int8_t* qb = q + i * QB;
#ifdef LMZOO_AVX2
      const __m256 sign = _mm256_set1_ps(-0.0f);
      __m256 v[4];
      __m256 mx = _mm256_setzero_ps();
      for (int j = 0; j < 4; ++j) {
        v[j] = _mm256_loadu_ps(xb + 8 * j);
        mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[j]));
      }
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
      const float amax = _mm_cvtss_f32(m4);
      const float db = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
      const __m256 vid = _mm256_set1_ps(id);
      __m256i r[4];
      for (int j = 0; j < 4; ++j)
        r[j] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[j], vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      // sum of the codes: 32-bit lanes, then pack 32 x int32 -> 32 x int8 (packs interleave the
      // 128-bit lanes; the permute puts the elements back in order)
      __m256i sum = _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
      s4 = _mm_hadd_epi32(s4, s4);
      s4 = _mm_hadd_epi32(s4, s4);
      const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
      _mm256_storeu_si256((__m256i*)qb, _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
      d[i] = f16_round(db);
      s[i] = f16_round(db * (float)_mm_cvtsi128_si32(s4));
#else
      float amax = 0.f;
      for (int j = 0; j < QB; ++j) amax = std::max(amax, std::fabs(xb[j]));
      const float db = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
      int sum = 0;
      for (int j = 0; j < QB; ++j) {
        const int v = (int)std::nearbyint(xb[j] * id);
        qb[j] = (int8_t)v;
        sum += v;
      }
      d[i] = f16_round(db);
      s[i] = f16_round(db * (float)sum);
#endif
    }
  });
}

// an activation row set in 8-bit blocks; plain buffers (at decode sizes allocating tensors costs
// more than filling them)
struct Q8 {
  std::vector<int8_t> q;
  std::vector<float> d, s;
};

Q8 quantize_q8(const torch::Tensor& x) {
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(K % QB == 0, "8-bit activations need K a multiple of 32, got K=", K);
  Q8 r{std::vector<int8_t>(M * K), std::vector<float>(M * K / QB), std::vector<float>(M * K / QB)};
  quantize_rows_q8(x.data_ptr<float>(), M, K, r.q.data(), r.d.data(), r.s.data());
  return r;
}


#ifdef LMZOO_AVX2
// 8 float lanes of sum(u[i] * v[i]) over 32 unsigned x signed bytes (pairs of products in 16 bits
// cannot overflow: |u| <= 128, |v| <= 127); with VNNI one instruction does the multiply-and-add
// (the same exact integer sums)
inline __m256 dot_u8i8(__m256i u, __m256i v) {
#if defined(__AVXVNNI__)
  return _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, v));
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), u, v));
#else
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(u, v), _mm256_set1_epi16(1)));
#endif
}

inline __m256i unpack_i4(const uint8_t* q) {  // 16 bytes -> 32 codes 0..15 in element order
  const __m128i raw = _mm_loadu_si128((const __m128i*)q), m = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m), _mm_and_si128(raw, m));
}
#endif

// The shared loop. For every output n and every pass of up to RB activation rows: `weights(n, b)`
// prepares weight block b once, `block(w, row, b)` is its 8-lane product with one row's block b,
// already scaled. Each row's blocks go to two accumulator chains (even / odd blocks), in the same
// order whether the row is alone or in a batch, so a row's result never depends on its neighbours.
#ifdef LMZOO_AVX2
// MB rows (a compile-time count, so the 2 x MB accumulators live in registers) against output n
template <int MB, typename Weights, typename Block, typename Extra>
inline void q8_rows(int64_t m0, int64_t n, int64_t N, int64_t nb, float* y, const float* sr, const float* mr,
                    Weights& weights, Block& block, Extra& extra) {
  __m256 a0[MB], a1[MB];
  for (int j = 0; j < MB; ++j) a0[j] = a1[j] = _mm256_setzero_ps();
  int64_t b = 0;
  for (; b + 1 < nb; b += 2) {
    const auto w0 = weights(n, b), w1 = weights(n, b + 1);
    for (int j = 0; j < MB; ++j) {
      a0[j] = _mm256_add_ps(a0[j], block(w0, m0 + j, sr, b));
      a1[j] = _mm256_add_ps(a1[j], block(w1, m0 + j, sr, b + 1));
    }
  }
  if (b < nb) {
    const auto w0 = weights(n, b);
    for (int j = 0; j < MB; ++j) a0[j] = _mm256_add_ps(a0[j], block(w0, m0 + j, sr, b));
  }
  for (int j = 0; j < MB; ++j) y[(m0 + j) * N + n] = hsum(_mm256_add_ps(a0[j], a1[j])) + extra(m0 + j, mr);
}
#endif

#ifdef LMZOO_AVX2
// Activation rows against weight rows in tiles of 16, 8-bit activations (q8_rows on portable
// builds). The tile's codes are first transposed into a scratch buffer, 4 bytes at a
// time, so that one 64-byte vector holds the same 4 bytes of all 16 rows (lane i = weight row n0 + i):
//
//   as stored (row-major)            tile (dword column c of every row, one after another)
//   row 0:   c0  c1  c2 ...          [c0: row 0 ... row 15] [c1: row 0 ... row 15] [c2: ...] ...
//   row 1:   c0  c1  c2 ...
//   ...      (16 rows)
//
// int4: a 32-block is 4 columns; column 4b+t holds elements 4t..4t+3 in its low nibbles and
//       4t+16..4t+19 in its high ones (the block layout above)
// int8: a block is 8 columns; column 8b+t holds elements 4t..4t+3
//
// One VNNI instruction then multiplies 4 codes of 16 weight rows by the same 4 activation codes
// (broadcast from memory) and adds them into 16 int32 lanes: a block's 8 instructions leave the 16
// rows' exact integer dot products in the 16 lanes, no horizontal sums or per-lane scale shuffles.
// Per block and activation row: 8 dot products, 1 conversion, the block's scale (the weight rows'
// 16 scales times the row's d_x, one multiply) and one FMA into the row's 16 accumulators — 512
// multiply-adds for ~12 instructions, where a row at a time took ~32. The tiles are packed once per
// layer (pack_tiles_q8; lmzoo.quant.layers keeps them beside the codes); a pass of up to RBT
// activation rows reuses a block's unpacked codes from registers.
//
// Every (activation row, weight row) result is one float lane: acc = fma(float(dot_b),
// fl(scale_w[b] * d_x[b]), acc) over the blocks b in order (+ int4's min term, fma(min_w[b], s_x[b],
// macc) in a lane of its own, added last): the same operations for any row count, so a row's result
// never depends on the rows beside it.
//
// int8 x int8: VNNI multiplies unsigned by signed bytes. The activations go in as x + 128 (0..255,
// x ^ 0x80) and the block's 128 * sum(w) is subtracted up front (the int32 lanes start at it): exact.
//
// AVX2 builds take a tile as two halves of 8 rows (bytes 0-31 and 32-63 of every 64-byte column),
// one after the other over all blocks, with the same per-lane arithmetic (the same bits). Without
// VNNI a 4-byte product is maddubs (unsigned x signed bytes -> pairs summed in 16 bits) and madd
// (pairs -> 32 bits); see tile_rows below for why each stays exact.

constexpr int64_t RBT = 8;  // activation rows per pass over a tile (2 x 8 accumulators + 8 codes + scales in 32 zmm)
#ifdef LMZOO_AVX512
constexpr bool X8_OFFSET = true;  // int8 tiles take x + 128 (the VNNI scheme above)
#else
constexpr bool X8_OFFSET = false;  // the 256-bit int8 tiles take x as it is (sign trick, tile_rows)
#endif

#ifdef LMZOO_AVX512
// r[i] = row i (16 x 32-bit) -> r[j] = column j (lane i = row i's element j)
inline void transpose16x16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {  // per 128-bit lane: pairs of rows interleaved
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // r[4g + e], 128-bit lane L: column 4L + e of rows 4g .. 4g+3
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int e = 0; e < 4; ++e) {  // a 4 x 4 transpose of 128-bit lanes across r[e], r[4+e], r[8+e], r[12+e]
    const __m512i x0 = _mm512_shuffle_i32x4(r[e], r[4 + e], 0x44), x1 = _mm512_shuffle_i32x4(r[e], r[4 + e], 0xEE);
    const __m512i y0 = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0x44), y1 = _mm512_shuffle_i32x4(r[8 + e], r[12 + e], 0xEE);
    t[e] = _mm512_shuffle_i32x4(x0, y0, 0x88);
    t[4 + e] = _mm512_shuffle_i32x4(x0, y0, 0xDD);
    t[8 + e] = _mm512_shuffle_i32x4(x1, y1, 0x88);
    t[12 + e] = _mm512_shuffle_i32x4(x1, y1, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

// rows [n0, n0 + rows) (rows <= 16) of a row-major code matrix (rb bytes a row) -> out (rb / 4, 16)
// dwords, column by column; rows past `rows` read as zeros
inline void pack_codes(const uint8_t* q, int64_t rb, int64_t n0, int64_t rows, const uint8_t* zero, int32_t* out) {
  const int64_t C = rb / 4;
  const uint8_t* src[16];
  for (int i = 0; i < 16; ++i) src[i] = i < rows ? q + (n0 + i) * rb : zero;
  for (int64_t c = 0; c < C; c += 16) {
    const int64_t cnt = std::min<int64_t>(16, C - c);
    const __mmask16 k = (__mmask16)((1u << cnt) - 1);
    __m512i r[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_maskz_loadu_epi32(k, src[i] + 4 * c);
    transpose16x16(r);
    for (int64_t j = 0; j < cnt; ++j) _mm512_storeu_si512((void*)(out + (c + j) * 16), r[j]);
  }
}
#else
inline void pack_codes(const uint8_t* q, int64_t rb, int64_t n0, int64_t rows, const uint8_t* zero, int32_t* out) {
  for (int64_t i = 0; i < 16; ++i) {
    const uint8_t* src = i < rows ? q + (n0 + i) * rb : zero;
    for (int64_t c = 0; c < rb / 4; ++c) std::memcpy(out + c * 16 + i, src + 4 * c, 4);
  }
}
#endif

// per-block values of the tile's rows (a row's group values v + n * G, block b -> group gof[b]) -> out
// (nb, 16), as stored (float16 stays float16) or widened to float32 (exact either way)
template <typename S, typename O>
inline void pack_blocks(const S* v, int64_t G, const int64_t* gof, int64_t nb, int64_t n0, int64_t rows, O* out) {
  std::fill_n(out, nb * 16, O(0.f));
  for (int64_t i = 0; i < rows; ++i) {
    const S* r = v + (n0 + i) * G;
    for (int64_t b = 0; b < nb; ++b) out[b * 16 + i] = std::is_same<S, O>::value ? O(r[gof[b]]) : O(ld(r + gof[b]));
  }
}

#ifdef LMZOO_AVX512
inline __m512 ld16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 ld16(const c10::Half* p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p)); }
#endif

// one tile's packed tensors: codes (C, 16) int32; scale (nb, 16), S = float32 or float16 as the
// checkpoint stores them; extra (nb, 16): int4's mins (S) or int8's sums of each block's codes (int16).
// Symmetric int4 (GGUF Q4_0: w = d q - 8 d) stores no mins: extra is then the scales themselves and
// mf = -8, so the min term sum_b mf * scale[b] * s[b] is the stored -8 d's, bit for bit (a product
// by a power of two is exact: fma(-8 d, s, -8 m) = -8 fma(d, s, m)). int8 and stored mins: mf = 1.
template <typename S>
struct TileView {
  const int32_t* codes;
  const S* scale;
  const void* extra;
  const char* next[3];  // the next tile's codes, scale and extra, fetched into L2 block by block (or null)
  float mf;             // the min term's factor
};

// block b's lines of the stream ahead (over_tiles sets t.next), a few at a time amid the arithmetic;
// EX: the kernel reads extra (int8's sums go unread with float activations)
template <bool I4, typename S, bool EX = true>
inline void prefetch_block(const TileView<S>& t, int64_t b) {
  constexpr int COLS = I4 ? 4 : 8;
  for (int l = 0; l < COLS; ++l) _mm_prefetch(t.next[0] + (b * COLS + l) * 64, _MM_HINT_T1);
  _mm_prefetch(t.next[1] + b * 16 * sizeof(S), _MM_HINT_T1);
  if (EX) _mm_prefetch(t.next[2] + b * 16 * (I4 ? sizeof(S) : sizeof(int16_t)), _MM_HINT_T1);
}

// MB activation rows (codes x, row stride K; their blocks' d and s, row stride nb) against a packed
// tile; out (MB, 16)
#ifdef LMZOO_AVX512
template <int MB, bool I4, typename S>
__attribute__((always_inline)) inline void tile_rows(const TileView<S>& t, int64_t nb, const uint8_t* x, int64_t K,
                                                     const float* xd, const float* xs, float* out) {
  constexpr int COLS = I4 ? 4 : 8;    // code columns a block
  constexpr int CH = MB == 1 ? 4 : 2;  // integer chains per row: one row needs more in flight (exact either way)
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  __m512 acc[MB], macc[MB];
  for (int j = 0; j < MB; ++j) acc[j] = macc[j] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const int32_t* cb = t.codes + b * COLS * 16;
    if (t.next[0]) prefetch_block<I4>(t, b);
    __m512i w[8];  // w[u]: the 16 rows' codes of elements 4u .. 4u+3 (int4: u < 4 low nibbles, u >= 4 high)
    if (I4) {
      for (int u = 0; u < 4; ++u) {
        const __m512i v = _mm512_loadu_si512((const void*)(cb + 16 * u));
        w[u] = _mm512_and_si512(v, m4);
        w[4 + u] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
      }
    } else {
      for (int u = 0; u < 8; ++u) w[u] = _mm512_loadu_si512((const void*)(cb + 16 * u));
    }
    const __m512 ws = ld16(t.scale + b * 16);
    const __m512 wm = I4 ? ld16(static_cast<const S*>(t.extra) + b * 16) : _mm512_setzero_ps();
    // int8: the lanes start at -128 * the block's sum of codes (x goes in as x + 128)
    const __m512i wb = I4 ? _mm512_setzero_si512() : _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(
        _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i*)(static_cast<const int16_t*>(t.extra) + b * 16))), 7));
    for (int j = 0; j < MB; ++j) {
      const uint8_t* xb = x + j * K + b * QB;
      __m512i d[CH];
      d[0] = wb;
      for (int c = 1; c < CH; ++c) d[c] = _mm512_setzero_si512();
      for (int u = 0; u < 8; ++u) {  // activation codes at element 4u (int4: 4u, then 16 + 4(u - 4))
        const int off = I4 ? (u < 4 ? 4 * u : 16 + 4 * (u - 4)) : 4 * u;
        int32_t xv;
        std::memcpy(&xv, xb + off, 4);
        const __m512i x4 = _mm512_set1_epi32(xv);
        d[u % CH] = I4 ? _mm512_dpbusd_epi32(d[u % CH], w[u], x4) : _mm512_dpbusd_epi32(d[u % CH], x4, w[u]);
      }
      __m512i dot = d[0];
      for (int c = 1; c < CH; ++c) dot = _mm512_add_epi32(dot, d[c]);
      acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(ws, _mm512_set1_ps(xd[j * nb + b])), acc[j]);
      if (I4) macc[j] = _mm512_fmadd_ps(wm, _mm512_set1_ps(xs[j * nb + b]), macc[j]);
    }
  }
  const __m512 mf = _mm512_set1_ps(t.mf);
  for (int j = 0; j < MB; ++j) _mm512_storeu_ps(out + 16 * j, I4 ? _mm512_fmadd_ps(mf, macc[j], acc[j]) : acc[j]);
}
#else
// 8 lanes of 4-byte products (unsigned u x signed v, one weight row a lane) added to d, exact in 32 bits
inline __m256i dot4_add(__m256i d, __m256i u, __m256i v) {
#ifdef __AVXVNNI__
  return _mm256_dpbusd_avx_epi32(d, u, v);
#else
  return _mm256_add_epi32(d, _mm256_madd_epi16(_mm256_maddubs_epi16(u, v), _mm256_set1_epi16(1)));
#endif
}

// The 256-bit tile_rows: half h of the tile (weight rows n0 + 8h .. n0 + 8h + 7) over every block,
// then the other half. int4 without VNNI: maddubs(codes 0..15, x in -127..127) gives pairs of at
// most 2 * 15 * 127 = 3810 in 16 bits, so a block's eight such vectors add up exactly in 16 bits
// (<= 30480) before one madd widens them. int8: |w| x (x carrying w's sign), as ggml's AVX2
// q8_0 dot product does: a pair is at most 2 * 128 * 127 = 32512, each column widened at once.
template <int MB, bool I4, typename S>
__attribute__((always_inline)) inline void tile_rows(const TileView<S>& t, int64_t nb, const uint8_t* x, int64_t K,
                                                     const float* xd, const float* xs, float* out) {
  constexpr int COLS = I4 ? 4 : 8;
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int h = 0; h < 2; ++h) {
    __m256 acc[MB], macc[MB];
    for (int j = 0; j < MB; ++j) acc[j] = macc[j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const int32_t* cb = t.codes + b * COLS * 16 + 8 * h;
      if (h == 0 && t.next[0]) prefetch_block<I4>(t, b);
      __m256i w[8], wa[8];  // as in the 512-bit kernel; wa: int8's |w|
      if (I4) {
        for (int u = 0; u < 4; ++u) {
          const __m256i v = _mm256_loadu_si256((const __m256i*)(cb + 16 * u));
          w[u] = _mm256_and_si256(v, m4);
          w[4 + u] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        }
      } else {
        for (int u = 0; u < 8; ++u) {
          w[u] = _mm256_loadu_si256((const __m256i*)(cb + 16 * u));
          wa[u] = _mm256_abs_epi8(w[u]);
        }
      }
      const __m256 ws = ld8(t.scale + b * 16 + 8 * h);
      const __m256 wm = I4 ? ld8(static_cast<const S*>(t.extra) + b * 16 + 8 * h) : _mm256_setzero_ps();
      for (int j = 0; j < MB; ++j) {
        const uint8_t* xb = x + j * K + b * QB;
        __m256i x4[8];
        for (int u = 0; u < 8; ++u) {
          int32_t xv;
          std::memcpy(&xv, xb + (I4 ? (u < 4 ? 4 * u : 16 + 4 * (u - 4)) : 4 * u), 4);
          x4[u] = _mm256_set1_epi32(xv);
        }
        __m256i dot = _mm256_setzero_si256();
        if (I4) {
#ifdef __AVXVNNI__
          for (int u = 0; u < 8; ++u) dot = _mm256_dpbusd_avx_epi32(dot, w[u], x4[u]);
#else
          __m256i s16 = _mm256_maddubs_epi16(w[0], x4[0]);
          for (int u = 1; u < 8; ++u) s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[u], x4[u]));
          dot = _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
#endif
        } else {
          for (int u = 0; u < 8; ++u) dot = dot4_add(dot, wa[u], _mm256_sign_epi8(x4[u], w[u]));
        }
        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(ws, _mm256_set1_ps(xd[j * nb + b])), acc[j]);
        if (I4) macc[j] = _mm256_fmadd_ps(wm, _mm256_set1_ps(xs[j * nb + b]), macc[j]);
      }
    }
    const __m256 mf = _mm256_set1_ps(t.mf);
    for (int j = 0; j < MB; ++j) _mm256_storeu_ps(out + 16 * j + 8 * h, I4 ? _mm256_fmadd_ps(mf, macc[j], acc[j]) : acc[j]);
  }
}
#endif

// Float activations against int4 tiles: the exact product of int4_linear (dequant(W) x in float32),
// summed in another order. The tile's lanes are its weight rows, so a column's nibbles become floats
// once for all of them: element 4u + k of the 16 rows (low nibbles; 16 + 4u + k: high) is byte k of
// each dword, moved to the dword's low byte by one byte shuffle, then converted and multiplied by the
// activation broadcast:
//
//   y[m, n] = sum_b ( scale[n, b] * sum_{e in b} x[m, e] * q[n, e]  +  min[n, b] * sum_{e in b} x[m, e] )
//
// A block's 32 products go to four chains per row (low / high nibbles x even / odd k, 8 FMAs each),
// added as (c0 + c1) + (c2 + c3) and scaled into the row's accumulator; the min terms sum in a lane
// of their own, added last. Per 16 weight rows and element: one shuffle, one conversion and an FMA
// per activation row, where the row-major kernel widened every weight for one row at a time (about
// half the instructions at decode). Every (activation row, weight row) is one lane through the same
// operations at any row count: a row's result does not depend on the rows beside it.
//
// int8 tiles (8 columns a block, column 8b + u holding elements 4u .. 4u+3) take the same path without
// the min term: byte k of each dword goes to the dword's top byte (byte 3 is there already) and an
// arithmetic shift by 24 sign-extends it; element 4u + k goes to chain k.
// Against the row-major int8 kernel this drops the per-row horizontal sums and per-group scale
// broadcasts: with the weights in cache it takes 45-60% of its time; a step from DRAM is memory-bound
// either way, and a batch of 8 rows decodes 23% (AVX-512) to 45% (AVX2) faster on a Q8_0 model.
// The code side, WL weight rows a vector (the float side is float_rows' WVec helpers above).
#ifdef LMZOO_AVX512
struct Codes {
  using I = __m512i;
  static I load(const int32_t* p) { return _mm512_loadu_si512((const void*)p); }
  static I nib_lo(I v) { return _mm512_and_si512(v, _mm512_set1_epi8(0x0F)); }
  static I nib_hi(I v) { return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(0x0F)); }
  // vpshufb control: byte k of each dword to its low byte, zeros above (control bytes 0x80 give 0)
  static I byte_sel(int k) { return _mm512_add_epi32(_mm512_set1_epi32(0x80808000 | k), _mm512_set4_epi32(12, 8, 4, 0)); }
  static WVec elem(I v, I sel) { return _mm512_cvtepi32_ps(_mm512_shuffle_epi8(v, sel)); }
  // vpshufb control: byte k of each dword to its top byte, zeros below
  static I top_sel(int k) {
    return _mm512_add_epi32(_mm512_set1_epi32(0x00808080 | (k << 24)), _mm512_set4_epi32(12 << 24, 8 << 24, 4 << 24, 0));
  }
  static WVec elem_i8(I v, I sel, int k) {  // byte k of each dword, sign-extended, as float
    return _mm512_cvtepi32_ps(_mm512_srai_epi32(k == 3 ? v : _mm512_shuffle_epi8(v, sel), 24));
  }
};
#else  // a tile in two halves of 8 rows
struct Codes {
  using I = __m256i;
  static I load(const int32_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
  static I nib_lo(I v) { return _mm256_and_si256(v, _mm256_set1_epi8(0x0F)); }
  static I nib_hi(I v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F)); }
  static I byte_sel(int k) { return _mm256_add_epi32(_mm256_set1_epi32(0x80808000 | k), _mm256_setr_epi32(0, 4, 8, 12, 0, 4, 8, 12)); }
  static WVec elem(I v, I sel) { return _mm256_cvtepi32_ps(_mm256_shuffle_epi8(v, sel)); }
  static I top_sel(int k) {
    return _mm256_add_epi32(_mm256_set1_epi32(0x00808080 | (k << 24)),
                            _mm256_setr_epi32(0, 4 << 24, 8 << 24, 12 << 24, 0, 4 << 24, 8 << 24, 12 << 24));
  }
  static WVec elem_i8(I v, I sel, int k) {
    return _mm256_cvtepi32_ps(_mm256_srai_epi32(k == 3 ? v : _mm256_shuffle_epi8(v, sel), 24));
  }
};
#endif

constexpr int64_t RBF = 4;  // float activation rows per pass over a tile (4 chains + 2 accumulators a row)

// MB float rows x (row stride K; xsum: their blocks' sums, row stride nb, int4 only) against an int4
// (I4) or int8 tile; out (MB, 16)
template <int MB, bool I4, typename S>
__attribute__((always_inline)) inline void tile_rows_f(const TileView<S>& t, int64_t nb, const float* x, int64_t K,
                                                       const float* xsum, float* out) {
  using I = Codes::I;
  constexpr int COLS = I4 ? 4 : 8;
  const I sel[4] = {I4 ? Codes::byte_sel(0) : Codes::top_sel(0), I4 ? Codes::byte_sel(1) : Codes::top_sel(1),
                    I4 ? Codes::byte_sel(2) : Codes::top_sel(2), I4 ? Codes::byte_sel(3) : Codes::top_sel(3)};
  for (int h = 0; h < 16 / WL; ++h) {
    WVec acc[MB], macc[MB];
    for (int j = 0; j < MB; ++j) acc[j] = macc[j] = wzero();
    for (int64_t b = 0; b < nb; ++b) {
      const int32_t* cb = t.codes + b * COLS * 16 + WL * h;
      if (h == 0 && t.next[0]) prefetch_block<I4, S, I4>(t, b);
      WVec c[MB][4];
      for (int j = 0; j < MB; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = wzero();
      const float* xb = x + b * QB;
      if (I4) {
        for (int u = 0; u < 4; ++u) {
          const I v = Codes::load(cb + 16 * u), lo = Codes::nib_lo(v), hi = Codes::nib_hi(v);
          for (int k = 0; k < 4; ++k) {
            const WVec wl = Codes::elem(lo, sel[k]), wh = Codes::elem(hi, sel[k]);
            for (int j = 0; j < MB; ++j) {
              c[j][2 * (k & 1)] = wfma(wset1(xb[j * K + 4 * u + k]), wl, c[j][2 * (k & 1)]);
              c[j][2 * (k & 1) + 1] = wfma(wset1(xb[j * K + 16 + 4 * u + k]), wh, c[j][2 * (k & 1) + 1]);
            }
          }
        }
      } else {
        for (int u = 0; u < 8; ++u) {
          const I v = Codes::load(cb + 16 * u);
          for (int k = 0; k < 4; ++k) {
            const WVec w = Codes::elem_i8(v, sel[k], k);
            for (int j = 0; j < MB; ++j) c[j][k] = wfma(wset1(xb[j * K + 4 * u + k]), w, c[j][k]);
          }
        }
      }
      const WVec ws = wld(t.scale + b * 16 + WL * h);
      const WVec wm = wld(static_cast<const S*>(t.extra) + b * 16 + WL * h);  // int8: the scales again, unused
      for (int j = 0; j < MB; ++j) {
        acc[j] = wfma(ws, wadd(wadd(c[j][0], c[j][1]), wadd(c[j][2], c[j][3])), acc[j]);
        if (I4) macc[j] = wfma(wm, wset1(xsum[j * nb + b]), macc[j]);
      }
    }
    const WVec mf = wset1(t.mf);
    for (int j = 0; j < MB; ++j) wst(out + 16 * j + WL * h, I4 ? wfma(mf, macc[j], acc[j]) : acc[j]);
  }
}

// Every pass of up to R activation rows against every packed tile, the tiles split across threads:
// rows(t, m0, mb, out) multiplies rows [m0, m0 + mb) by tile t into out (mb, 16). csz: a tile's code
// dwords; xsz: the bytes of one extra value; mf: TileView's.
template <typename S, typename Rows>
void over_tiles(const int32_t* codes, const S* scale, const void* extra, int64_t csz, int64_t xsz, int64_t nb,
                int64_t M, int64_t N, int64_t R, float* y, float mf, Rows rows) {
  const int64_t tiles = (N + 15) / 16, ahead = std::max<int64_t>(1, PF_BYTES / (csz * 4 / nb));
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> out(R * 16);
    for (int64_t ti = t0; ti < t1; ++ti) {
      // The first pass over a tile fetches the weights `ahead` blocks on (PF_BYTES of codes, their
      // scales and extras; past the tile's end into the next tile's, which follow it): the out-of-order
      // window reaches only a block or two ahead, and a batch's passes otherwise wait on DRAM at every
      // tile. (A whole tile ahead, 16-64 KB on a 1B model's layers, left its AVX2 decode ~12% slower:
      // benchmarks/RESULTS.md, 2026-12-07 sixth session.)
      TileView<S> t{codes + ti * csz, scale + ti * nb * 16, static_cast<const char*>(extra) + ti * nb * 16 * xsz,
                    {nullptr, nullptr, nullptr}, mf};
      t.next[0] = reinterpret_cast<const char*>(t.codes + ahead * (csz / nb));
      t.next[1] = reinterpret_cast<const char*>(t.scale + ahead * 16);
      t.next[2] = static_cast<const char*>(t.extra) + ahead * 16 * xsz;
      const int64_t n0 = ti * 16, width = std::min<int64_t>(16, N - n0);
      for (int64_t m0 = 0; m0 < M; m0 += R) {
        const int64_t mb = std::min<int64_t>(R, M - m0);
        if (m0 == R) t.next[0] = nullptr;  // fetched during the first pass
        rows(t, m0, mb, out.data());
        for (int64_t j = 0; j < mb; ++j) std::copy_n(out.data() + 16 * j, width, y + (m0 + j) * N + n0);
      }
    }
  });
}

// mb (1 .. MAX) as a compile-time row count: f(std::integral_constant<int, mb>)
template <int MAX, int R = MAX, typename F>
inline void rows_dispatch(int64_t mb, F&& f) {
  if constexpr (R == 1) {
    f(std::integral_constant<int, 1>());
  } else if (mb == R) {
    f(std::integral_constant<int, R>());
  } else {
    rows_dispatch<MAX, R - 1>(mb, f);
  }
}

// Every activation row against every packed tile. x: the rows' codes (int4: as quantised; int8:
// x ^ 0x80 where X8_OFFSET), xd / xs their blocks' d and s; N weight rows.
template <bool I4, typename S>
void q8_tiles(const uint8_t* x, const float* xd, const float* xs, const int32_t* codes, const S* scale,
              const void* extra, int64_t M, int64_t nb, int64_t N, float* y, float mf) {
  const int64_t K = nb * QB;
  over_tiles<S>(codes, scale, extra, nb * (I4 ? 4 : 8) * 16, I4 ? sizeof(S) : sizeof(int16_t), nb, M, N, RBT, y, mf,
                [&](const TileView<S>& t, int64_t m0, int64_t mb, float* out) {
                  rows_dispatch<RBT>(mb, [&](auto R) {
                    tile_rows<decltype(R)::value, I4, S>(t, nb, x + m0 * K, K, xd + m0 * nb, xs + m0 * nb, out);
                  });
                });
}
#endif

// ss: the weights' scales; ms: their mins (int4) or null
template <typename Weights, typename Block, typename Extra>
void q8_loop(int64_t M, int64_t N, int64_t nb, float* y, const Scales& ss, const Scales* ms, Weights weights,
             Block block, Extra extra) {
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    std::vector<float> sbuf(ss.G), mbuf(ss.G);
    for (int64_t n = n0; n < n1; ++n) {
      const float* sr = ss.row(n, sbuf);
      const float* mr = ms ? ms->row(n, mbuf) : nullptr;
      for (int64_t m0 = 0; m0 < M; m0 += RB) {
        const int64_t mb = std::min<int64_t>(RB, M - m0);
#ifdef LMZOO_AVX2
        static_assert(RB == 4, "q8_rows dispatch below");
        switch (mb) {
          case 4: q8_rows<4>(m0, n, N, nb, y, sr, mr, weights, block, extra); break;
          case 3: q8_rows<3>(m0, n, N, nb, y, sr, mr, weights, block, extra); break;
          case 2: q8_rows<2>(m0, n, N, nb, y, sr, mr, weights, block, extra); break;
          default: q8_rows<1>(m0, n, N, nb, y, sr, mr, weights, block, extra);
        }
#else
        for (int64_t j = 0; j < mb; ++j) {
          float acc = 0.f;
          for (int64_t b = 0; b < nb; ++b) acc += block(weights(n, b), m0 + j, sr, b);
          y[(m0 + j) * N + n] = acc + extra(m0 + j, mr);
        }
#endif
      }
    }
  });
}

}  // namespace

std::string isa();

// ---------------------------------------------------------------------------------------------
// The tiled 8-bit-activation kernels' entry points (AVX2 and AVX-512 builds; see q8_tiles).
//   pack_tiles_q8(q, scale, mins, g) -> [codes (T, C, 16) int32, scale (T, nb, 16), extra (T, nb, 16)]:
//       T = ceil(N / 16) tiles; int4 with mins (q (N, K/2) uint8, extra the mins; empty mins: the
//       weights are scale * q - 8 scale and extra is empty, (T, 0, 16), see TileView) or int8 without
//       (q (N, K) int8, extra int16: each block's sum of codes); g a multiple of 32. The scales (and
//       mins) stay float16 where both are stored so (GGUF: the bytes a decode step streams stay
//       what the file holds), float32 otherwise. Done once per layer (lmzoo.quant.layers keeps it).
//   tiles_linear_q8(x, codes, scale, extra, N) -> (M, N): x (M, K) float32, quantised per 32-block,
//       times the packed weights (int8 where extra is int16, int4 otherwise).
std::vector<torch::Tensor> pack_tiles_q8(torch::Tensor q, torch::Tensor scale, c10::optional<torch::Tensor> mins,
                                         int64_t g) {
#ifdef LMZOO_AVX2
  const bool i4 = mins.has_value(), sym = i4 && mins->numel() == 0;
  TORCH_CHECK(q.dim() == 2 && q.is_contiguous() && q.scalar_type() == (i4 ? torch::kByte : torch::kChar),
              "pack_tiles_q8: contiguous codes, (N, K/2) uint8 with mins or (N, K) int8 without");
  const int64_t N = q.size(0), rb = q.size(1), K = i4 ? 2 * rb : rb, nb = K / QB, T = (N + 15) / 16, C = rb / 4;
  TORCH_CHECK(K % QB == 0 && g % QB == 0 && K % g == 0, "pack_tiles_q8: K = ", K, " and the group size ", g,
              " must be multiples of 32, g dividing K");
  const int64_t G = K / g;
  const Scales ss(scale, N, G);
  c10::optional<Scales> ms;
  if (i4 && !sym) ms.emplace(*mins, N, G);
  const bool half = ss.h && (!ms || ms->h);
  const auto sdt = q.options().dtype(half ? torch::kHalf : torch::kFloat);
  auto codes = torch::empty({T, C, 16}, q.options().dtype(torch::kInt)), sc = torch::empty({T, nb, 16}, sdt);
  auto extra = torch::empty({T, sym ? 0 : nb, 16}, i4 ? sdt : q.options().dtype(torch::kShort));
  const std::vector<int64_t> gof = group_of(nb, g / QB);
  const uint8_t* qp = static_cast<const uint8_t*>(q.data_ptr());
  const std::vector<uint8_t> zero(rb, 0);
  at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t ti = t0; ti < t1; ++ti) {
      const int64_t n0 = ti * 16, rows = std::min<int64_t>(16, N - n0), o = ti * nb * 16;
      int32_t* cp = codes.data_ptr<int32_t>() + ti * C * 16;
      pack_codes(qp, rb, n0, rows, zero.data(), cp);
      auto blocks = [&](const Scales& v, torch::Tensor& out) {
        if (half) pack_blocks(v.h, G, gof.data(), nb, n0, rows, out.data_ptr<c10::Half>() + o);
        else if (v.f) pack_blocks(v.f, G, gof.data(), nb, n0, rows, out.data_ptr<float>() + o);
        else pack_blocks(v.h, G, gof.data(), nb, n0, rows, out.data_ptr<float>() + o);
      };
      blocks(ss, sc);
      if (i4) {
        if (ms) blocks(*ms, extra);
        continue;
      }
      int16_t* sums = extra.data_ptr<int16_t>() + o;  // each block's sum of codes (|sum| <= 4096), rows past N 0
      std::fill_n(sums, nb * 16, int16_t(0));
      for (int64_t i = 0; i < rows; ++i) {
        const int8_t* r = reinterpret_cast<const int8_t*>(qp) + (n0 + i) * rb;
        for (int64_t b = 0; b < nb; ++b) {
          int sum = 0;
          for (int64_t e = 0; e < QB; ++e) sum += r[b * QB + e];
          sums[b * 16 + i] = static_cast<int16_t>(sum);
        }
      }
    }
  });
  return {codes, sc, extra};
#else
  TORCH_CHECK(false, "pack_tiles_q8 needs an AVX2 or AVX-512 build (this one: ", isa(), ")");
#endif
}

// pack_tiles_q8's tensors for N weight rows, checked for kernel `fn`: what the kernels read off their
// dtypes and shapes (int8 where extra is int16; int4 without mins where extra is empty)
struct Tiles {
  bool i4, sym, half;
  int64_t nb, cols;  // 32-blocks a row; code dwords a block
};
inline Tiles check_tiles(const char* fn, const torch::Tensor& codes, const torch::Tensor& scale,
                         const torch::Tensor& extra, int64_t N) {
  const bool i4 = extra.scalar_type() != torch::kShort, half = scale.scalar_type() == torch::kHalf;
  const bool sym = i4 && extra.numel() == 0;
  TORCH_CHECK(codes.dim() == 3 && scale.dim() == 3 && codes.is_contiguous() && scale.is_contiguous() &&
              extra.is_contiguous() && codes.scalar_type() == torch::kInt &&
              (half || scale.scalar_type() == torch::kFloat) && (!i4 || extra.scalar_type() == scale.scalar_type()) &&
              (sym || extra.sizes() == scale.sizes()) && codes.size(0) == (N + 15) / 16 && scale.size(0) == codes.size(0),
              fn, ": the tensors pack_tiles_q8 returns for ", N, " weight rows");
  const int64_t nb = scale.size(1), cols = i4 ? 4 : 8;
  TORCH_CHECK(codes.size(1) == nb * cols, fn, ": codes and scales disagree on K");
  return {i4, sym, half, nb, cols};
}

torch::Tensor tiles_linear_q8(torch::Tensor x, torch::Tensor codes, torch::Tensor scale, torch::Tensor extra,
                              int64_t N) {
#ifdef LMZOO_AVX2
  const Tiles tl = check_tiles("tiles_linear_q8", codes, scale, extra, N);
  const bool i4 = tl.i4, sym = tl.sym;  // plain names: the lambdas below capture them
  const int64_t nb = tl.nb;
  const int64_t K = nb * QB, M = x.size(0);
  check(x, K);
  const Q8 a = quantize_q8(x);
  auto y = torch::empty({M, N}, x.options());
  const uint8_t* xq = reinterpret_cast<const uint8_t*>(a.q.data());
  std::vector<uint8_t> xu;
  if (!i4 && X8_OFFSET) {  // x + 128 as unsigned bytes (see q8_tiles)
    xu.resize(M * K);
    for (int64_t i = 0; i < M * K; ++i) xu[i] = xq[i] ^ 0x80;
    xq = xu.data();
  }
  auto go = [&](auto s) {
    using S = decltype(s);
    const S* sp = static_cast<const S*>(scale.data_ptr());
    auto run = i4 ? q8_tiles<true, S> : q8_tiles<false, S>;
    run(xq, a.d.data(), a.s.data(), codes.data_ptr<int32_t>(), sp, sym ? sp : extra.data_ptr(), M, nb, N,
        y.data_ptr<float>(), sym ? -8.f : 1.f);
  };
  if (tl.half) go(c10::Half());
  else go(0.f);
  return y;
#else
  TORCH_CHECK(false, "tiles_linear_q8 needs an AVX2 or AVX-512 build (this one: ", isa(), ")");
#endif
}

// tiles_linear_f(x, codes, scale, extra, N) -> (M, N): x (M, K) float32 times the tiles pack_tiles_q8
// returns (int4, or int8 where extra is int16: its sums of codes go unused), float activations (see
// tile_rows_f).
torch::Tensor tiles_linear_f(torch::Tensor x, torch::Tensor codes, torch::Tensor scale, torch::Tensor extra, int64_t N) {
#ifdef LMZOO_AVX2
  const Tiles tl = check_tiles("tiles_linear_f", codes, scale, extra, N);
  const bool i4 = tl.i4, sym = tl.sym;  // plain names: the lambdas below capture them
  const int64_t nb = tl.nb, cols = tl.cols;
  const int64_t K = nb * QB, M = x.size(0);
  check(x, K);
  const float* xp = x.data_ptr<float>();
  std::vector<float> xsum(i4 ? M * nb : 0);  // each block's sum of x (int4's min term)
  for (int64_t i = 0; i < (int64_t)xsum.size(); ++i) xsum[i] = sum_f32(xp + i * QB, QB);
  auto y = torch::empty({M, N}, x.options());
  auto go = [&](auto s, auto bits) {
    using S = decltype(s);
    constexpr bool I4 = decltype(bits)::value;
    // extra read (and fetched ahead) only where it holds mins: otherwise the scales stand in for it
    const void* ex = I4 && !sym ? extra.data_ptr() : scale.data_ptr();
    over_tiles<S>(codes.data_ptr<int32_t>(), static_cast<const S*>(scale.data_ptr()), ex, nb * cols * 16, sizeof(S), nb,
                  M, N, RBF, y.data_ptr<float>(), sym ? -8.f : 1.f,
                  [&](const TileView<S>& t, int64_t m0, int64_t mb, float* out) {
                    rows_dispatch<RBF>(mb, [&](auto R) {
                      tile_rows_f<decltype(R)::value, I4, S>(t, nb, xp + m0 * K, K, xsum.data() + m0 * nb, out);
                    });
                  });
  };
  if (tl.half) i4 ? go(c10::Half(), std::true_type()) : go(c10::Half(), std::false_type());
  else i4 ? go(0.f, std::true_type()) : go(0.f, std::false_type());
  return y;
#else
  TORCH_CHECK(false, "tiles_linear_f needs an AVX2 or AVX-512 build (this one: ", isa(), ")");
#endif
}

// x (M, K) f32, q (N, K/2) uint8 (the int4 block layout above), scale/min (N, K/g) -> (M, N) f32
torch::Tensor int4_linear_q8(torch::Tensor x, torch::Tensor q, torch::Tensor scale, torch::Tensor mins, int64_t g) {
  const int64_t M = x.size(0), N = q.size(0), K = q.size(1) * 2, G = K / g, nb = K / QB, bpg = g / QB;
  check(x, K);
  TORCH_CHECK(g % 32 == 0 && K % g == 0, "int4 group size must divide K and be a multiple of 32");
#ifdef LMZOO_AVX2  // packed on the fly: the layers pack once and call tiles_linear_q8
  const auto p = pack_tiles_q8(q, scale, mins, g);
  return tiles_linear_q8(x, p[0], p[1], p[2], N);
#endif
  const Q8 a = quantize_q8(x);
  const std::vector<int64_t> gof = group_of(nb, bpg);
  auto y = torch::empty({M, N}, x.options());
  const uint8_t* qp = q.data_ptr<uint8_t>();
  const Scales ss(scale, N, G), ms(mins, N, G);
  std::vector<float> sg(M * G);  // (M, G): sum of d*sum(q) per weight group
  for (int64_t i = 0; i < M * G; ++i) sg[i] = sum_f32(a.s.data() + i * bpg, bpg);
  const int8_t* xq = a.q.data();
  const float *xd = a.d.data(), *xsg = sg.data();
  auto extra = [&](int64_t m, const float* mr) { return dot_f32(mr, xsg + m * G, G); };
#ifdef LMZOO_AVX2
  auto weights = [&](int64_t n, int64_t b) { return unpack_i4(qp + n * (K / 2) + b * 16); };
  auto block = [&](__m256i w, int64_t m, const float* sr, int64_t b) {
    const __m256i xv = _mm256_loadu_si256((const __m256i*)(xq + m * K + b * QB));
    return _mm256_mul_ps(dot_u8i8(w, xv), _mm256_set1_ps(xd[m * nb + b] * sr[gof[b]]));
  };
#else
  auto weights = [&](int64_t n, int64_t b) { return qp + n * (K / 2) + b * 16; };
  auto block = [&](const uint8_t* w, int64_t m, const float* sr, int64_t b) {
    const int8_t* xb = xq + m * K + b * QB;
    int acc = 0;
    for (int j = 0; j < 16; ++j) acc += (w[j] & 0x0F) * xb[j] + (w[j] >> 4) * xb[j + 16];
    return (float)acc * xd[m * nb + b] * sr[gof[b]];
  };
#endif
  q8_loop(M, N, nb, y.data_ptr<float>(), ss, &ms, weights, block, extra);
  return y;
}

// x (M, K) f32, q (N, K) int8, scale (N, K/g) f32, g = 16 or a multiple of 32 -> (M, N) f32
torch::Tensor int8_linear_q8(torch::Tensor x, torch::Tensor q, torch::Tensor scale, int64_t g) {
  const int64_t M = x.size(0), N = q.size(0), K = q.size(1), G = K / g, nb = K / QB, bpg = std::max<int64_t>(g / QB, 1);
  check(x, K);
  TORCH_CHECK((g == 16 || g % 32 == 0) && K % g == 0, "8-bit activations need int8 groups of 16 or a multiple of 32");
#ifdef LMZOO_AVX2
  if (g != 16) {  // packed on the fly: the layers pack once and call tiles_linear_q8
    const auto p = pack_tiles_q8(q, scale, c10::nullopt, g);
    return tiles_linear_q8(x, p[0], p[1], p[2], N);
  }
#endif
  const Q8 a = quantize_q8(x);
  const std::vector<int64_t> gof = group_of(nb, bpg);
  auto y = torch::empty({M, N}, x.options());
  const int8_t* xq = a.q.data();
  const float* xd = a.d.data();
  const int8_t* qp = q.data_ptr<int8_t>();
  const Scales ss(scale, N, G);
  auto extra = [](int64_t, const float*) { return 0.f; };
#ifdef LMZOO_AVX2
  auto weights = [&](int64_t n, int64_t b) { return _mm256_loadu_si256((const __m256i*)(qp + n * K + b * QB)); };
  auto block = [&](__m256i w, int64_t m, const float* sr, int64_t b) {
    const __m256i xv = _mm256_loadu_si256((const __m256i*)(xq + m * K + b * QB));
    // signed x signed through maddubs: |w| times x carrying w's sign
    const __m256 p = dot_u8i8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xv, w));
    const float dx = xd[m * nb + b];
    if (g == 16) {  // lanes 0-3 hold elements 0-15, lanes 4-7 elements 16-31
      const float* s = sr + 2 * b;
      return _mm256_mul_ps(p, _mm256_set_m128(_mm_set1_ps(dx * s[1]), _mm_set1_ps(dx * s[0])));
    }
    return _mm256_mul_ps(p, _mm256_set1_ps(dx * sr[gof[b]]));
  };
#else
  auto weights = [&](int64_t n, int64_t b) { return qp + n * K + b * QB; };
  auto block = [&](const int8_t* w, int64_t m, const float* sr, int64_t b) {
    const int8_t* xb = xq + m * K + b * QB;
    const float dx = xd[m * nb + b];
    if (g == 16) {
      int lo = 0, hi = 0;
      for (int j = 0; j < 16; ++j) lo += w[j] * xb[j], hi += w[j + 16] * xb[j + 16];
      return dx * (sr[2 * b] * (float)lo + sr[2 * b + 1] * (float)hi);
    }
    int acc = 0;
    for (int j = 0; j < QB; ++j) acc += w[j] * xb[j];
    return (float)acc * dx * sr[gof[b]];
  };
#endif
  q8_loop(M, N, nb, y.data_ptr<float>(), ss, nullptr, weights, block, extra);
  return y;
}

// ---------------------------------------------------------------------------------------------
// Small fused pieces of a decode step (float32, CPU, inference). On a 135M model a decode step is
// ~40 tiny ATen ops per layer, each a few microseconds of dispatch for a few hundred floats of work;
// these do the same arithmetic in one call.

// x (R, D), w (D,) -> x * rsqrt(mean(x^2) + eps) * w  (lmzoo.nn.norm.RMSNorm, float32)
// ---------------------------------------------------------------------------------------------
// Weight rows [n0, n0 + out.size(0)) as float32 into out (R, K), the values the layers' `dequantize`
// computes (code * scale, then + min for int4: two roundings, as the PyTorch expression rounds):
// a prefill multiplies tiles of these with BLAS while they are still in cache, instead of a float
// copy of the whole matrix (135 ms a forward for the default model through PyTorch ops).
//   kind 1 / 2: int8 q (N, K), scale (N, K/g)     kind 3 / 4: int4 q (N, K/2), scale, min (N, K/g)
void dequant_rows(int64_t kind, std::vector<torch::Tensor> t, int64_t g, int64_t n0, torch::Tensor out) {
  TORCH_CHECK(kind >= 1 && kind <= 4 && t.size() == (kind <= 2 ? 2u : 3u), "dequant_rows: kind 1-4 with its tensors");
  const bool i4 = kind >= 3;
  const int64_t N = t[0].size(0), K = t[0].size(1) * (i4 ? 2 : 1), R = out.size(0), G = K / g;
  TORCH_CHECK(out.scalar_type() == torch::kFloat && out.is_contiguous() && out.dim() == 2 && out.size(1) == K &&
              n0 >= 0 && n0 + R <= N && g > 0 && K % g == 0 && (!i4 || g % 32 == 0) && t[0].is_contiguous(),
              "dequant_rows: out (R, K) float32 contiguous, rows [n0, n0 + R) of the N = ", N, " weight rows");
  const Scales ss(t[1], N, G), ms(t[i4 ? 2 : 1], N, G);  // int8: no mins (ms unused)
  const uint8_t* qp = static_cast<const uint8_t*>(t[0].data_ptr());
  float* op = out.data_ptr<float>();
  at::parallel_for(0, R, 16, [&](int64_t r0, int64_t r1) {
    std::vector<float> sbuf(G), mbuf(G);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = n0 + r;
      const float* sr = ss.row(n, sbuf);
      float* o = op + r * K;
      if (!i4) {
        const int8_t* q = reinterpret_cast<const int8_t*>(qp) + n * K;
        for (int64_t gi = 0; gi < G; ++gi) {
          const float sc = sr[gi];
          for (int64_t k = gi * g; k < (gi + 1) * g; ++k) o[k] = static_cast<float>(q[k]) * sc;
        }
        continue;
      }
      const float* mr = ms.row(n, mbuf);
      const uint8_t* q = qp + n * (K / 2);
      for (int64_t b = 0; b < K / 32; ++b) {  // block b: byte j holds element j (low) and j + 16 (high)
        const float sc = sr[b * 32 / g], mn = mr[b * 32 / g];
        const uint8_t* qb = q + b * 16;
        float* ob = o + b * 32;
        for (int j = 0; j < 16; ++j) {
          ob[j] = static_cast<float>(qb[j] & 0x0F) * sc + mn;
          ob[j + 16] = static_cast<float>(qb[j] >> 4) * sc + mn;
        }
      }
    }
  });
}

// Weight rows `rows` (R,) of pack_tiles_q8's tiles of N rows as float32 into out (R, K): dequant_rows' values
// (code * scale [+ min]: the same roundings; symmetric int4 tiles' min is -8 * scale, exact), read
// from the tiles where the layers keep their only copy (prompt tiles, embedding lookups).
void dequant_tiles(torch::Tensor codes, torch::Tensor scale, torch::Tensor extra, int64_t N, torch::Tensor rows,
                   torch::Tensor out) {
  const Tiles tl = check_tiles("dequant_tiles", codes, scale, extra, N);
  const bool i4 = tl.i4, sym = tl.sym;  // plain names: the lambdas below capture them
  const int64_t nb = tl.nb, cols = tl.cols;
  const int64_t C = codes.size(1), K = nb * QB, R = rows.numel();
  TORCH_CHECK(rows.scalar_type() == torch::kLong && rows.is_contiguous() && out.scalar_type() == torch::kFloat &&
              out.is_contiguous() && out.dim() == 2 && out.size(0) == R && out.size(1) == K,
              "dequant_tiles: rows (R,) long, out (R, K) float32 contiguous");
  const int64_t* rp = rows.data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r)
    TORCH_CHECK(rp[r] >= 0 && rp[r] < N, "dequant_tiles: row ", rp[r], " outside the ", N, " weight rows");
  const int32_t* cp = codes.data_ptr<int32_t>();
  float* op = out.data_ptr<float>();
  auto go = [&](const auto* sp) {
    using S = std::remove_cv_t<std::remove_pointer_t<decltype(sp)>>;
    const S* mp = static_cast<const S*>(i4 && !sym ? extra.data_ptr() : nullptr);
    at::parallel_for(0, R, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t t = rp[r] / 16, lane = rp[r] % 16;
        const int32_t* c = cp + t * C * 16 + lane;  // the row's dword j: c[16 j]
        const S* sc = sp + t * nb * 16 + lane;      // block b's scale: sc[16 b]
        float* o = op + r * K;
        for (int64_t b = 0; b < nb; ++b) {
          const float s = static_cast<float>(sc[16 * b]);
          uint8_t q[32];  // the block's code bytes as in the row-major form
          for (int64_t j = 0; j < cols; ++j) std::memcpy(q + 4 * j, c + 16 * (cols * b + j), 4);
          float* ob = o + b * QB;
          const float mn = !i4 ? 0.f : mp ? static_cast<float>(mp[t * nb * 16 + lane + 16 * b]) : -8.f * s;
#ifdef LMZOO_AVX2
          const __m256 vs = _mm256_set1_ps(s), vm = _mm256_set1_ps(mn);
          for (int e = 0; e < 32; e += 8) {  // the codes of elements e .. e + 7, then the same operations
            __m256i c8;
            if (i4) {  // element j < 16: low nibble of byte j; j >= 16: high nibble of byte j - 16
              const __m128i by = _mm_loadl_epi64((const __m128i*)(q + e % 16));
              c8 = _mm256_cvtepu8_epi32(e < 16 ? _mm_and_si128(by, _mm_set1_epi8(0x0F))
                                               : _mm_and_si128(_mm_srli_epi16(by, 4), _mm_set1_epi8(0x0F)));
            } else {
              c8 = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(q + e)));
            }
            const __m256 w = _mm256_mul_ps(_mm256_cvtepi32_ps(c8), vs);
            _mm256_storeu_ps(ob + e, i4 ? _mm256_add_ps(w, vm) : w);
          }
#else
          for (int j = 0; j < 16 && i4; ++j) {  // byte j: element j (low nibble) and j + 16 (high)
            ob[j] = static_cast<float>(q[j] & 0x0F) * s + mn;
            ob[j + 16] = static_cast<float>(q[j] >> 4) * s + mn;
          }
          for (int e = 0; e < 32 && !i4; ++e) ob[e] = static_cast<float>(static_cast<int8_t>(q[e])) * s;
#endif
        }
      }
    });
  };
  if (tl.half) go(static_cast<const c10::Half*>(scale.data_ptr()));
  else go(scale.data_ptr<float>());
}

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat && x.is_contiguous() && w.scalar_type() == torch::kFloat &&
              w.is_contiguous() && x.size(-1) == w.numel(), "rms_norm: contiguous float32 x (..., D), w (D,)");
  const int64_t D = w.numel(), R = x.numel() / std::max<int64_t>(D, 1);
  auto y = torch::empty_like(x);
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, R, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * D;
      float* yr = yp + r * D;
      const float inv = 1.0f / std::sqrt(dot_f32(xr, xr, D) / (float)D + (float)eps);
      for (int64_t i = 0; i < D; ++i) yr[i] = wp[i] * (xr[i] * inv);
    }
  });
  return y;
}

// RoPE (rotate-half layout, lmzoo.nn.rope.apply_rope with one segment) applied in place to the
// first `heads` heads of a fused projection output:
//   y (B, T, W) contiguous, head h = y[b, t, h*hd : (h+1)*hd], its first `rot` dims rotated:
//   out[i] = x[i] c[i] - x[i + rot/2] s[i],  out[i + rot/2] = x[i + rot/2] c[i + rot/2] + x[i] s[i + rot/2]
//   cos, sin (B or 1, T, rot)
void rope_heads_(torch::Tensor y, torch::Tensor cos, torch::Tensor sin, int64_t heads, int64_t hd) {
  TORCH_CHECK(y.dim() == 3 && y.is_contiguous() && y.scalar_type() == torch::kFloat, "rope: contiguous float32 (B, T, W)");
  TORCH_CHECK(cos.dim() == 3 && cos.is_contiguous() && sin.is_contiguous() && cos.sizes() == sin.sizes() &&
              cos.scalar_type() == torch::kFloat && sin.scalar_type() == torch::kFloat, "rope: float32 cos/sin (B, T, rot)");
  const int64_t B = y.size(0), T = y.size(1), W = y.size(2), rot = cos.size(2), half = rot / 2;
  TORCH_CHECK(heads * hd <= W && rot <= hd && rot % 2 == 0 && cos.size(1) == T && (cos.size(0) == B || cos.size(0) == 1),
              "rope: shapes do not fit");
  const bool bcast = cos.size(0) == 1;
  float* yp = y.data_ptr<float>();
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  at::parallel_for(0, B * T, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = i % T, cb = bcast ? t : i;
      const float *c = cp + cb * rot, *s = sp + cb * rot;
      for (int64_t h = 0; h < heads; ++h) {
        float* x = yp + i * W + h * hd;
        for (int64_t j = 0; j < half; ++j) {
          const float a = x[j], b = x[j + half];
          x[j] = a * c[j] - b * s[j];
          x[j + half] = b * c[j + half] + a * s[j + half];
        }
      }
    }
  });
}

// Attention of one new token per row against the KV cache (a decode step), GQA, float32:
//   qkv (B, 1, W)    the fused projection output after RoPE: q heads at [0, H*hd), then the Hkv key
//                    heads, then the Hkv value heads
//   kc, vc (Bc, Hkv, cap, hd)   the layer's cache buffers (lmzoo.runtime.cache.KVCache)
//   rows, slots (B,) long       each row's cache row and the slot its new key/value is written to
//   mask (Bm, end) bool, Bm 1 or B, or None    visible slots (None: all of [0, end))
// -> (B, 1, H*hd): softmax(scale * q.k_j) . v_j over the visible j < end, head h reading kv head
// h / (H / Hkv) (Ainslie et al. 2023). SDPA's result in float32 (up to summation order), in one
// call instead of the ~20 views, copies and SDPA's own setup that cost more than the product here.
namespace {
// a cached key / value element as float (float16 caches widened, exactly), and back (rounded to nearest)
inline float cf(float v) { return v; }
inline float cf(c10::Half v) { return static_cast<float>(v); }
template <typename C>
inline C to_cache(float v) { return static_cast<C>(v); }

#ifdef LMZOO_AVX2
// The attention loops at two vector widths: V16 (512-bit, AVX-512 builds) and V8 (256-bit). W floats
// a vector; `fold` brings a vector to 8 lanes for hsum4.
struct V8 {
  using T = __m256;
  static constexpr int64_t W = 8;
  static T zero() { return _mm256_setzero_ps(); }
  static T set1(float v) { return _mm256_set1_ps(v); }
  static T xld(const float* p) { return _mm256_loadu_ps(p); }
  template <typename C>
  static T ld(const C* p) { return ld8(p); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static void st(float* p, T v) { _mm256_storeu_ps(p, v); }
  static __m256 fold(T a) { return a; }
};
#ifdef LMZOO_AVX512
struct V16 {
  using T = __m512;
  static constexpr int64_t W = 16;
  static T zero() { return _mm512_setzero_ps(); }
  static T set1(float v) { return _mm512_set1_ps(v); }
  static T xld(const float* p) { return _mm512_loadu_ps(p); }
  template <typename C>
  static T ld(const C* p) { return ld16(p); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static void st(float* p, T v) { _mm512_storeu_ps(p, v); }
  static __m256 fold(T a) { return _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1)); }
};
#endif

// p[j] = q . k_j for the chunk's n keys (hd % V::W == 0), four keys at a time with four independent FMA
// chains; a last partial group repeats its last key, so every key gets the same operations wherever
// it sits (p has room for the group: CH is a multiple of 8). vr (or null): the chunk's values, each
// key's value row fetched into L1 as its key is scored, so that the values pass finds them there: a
// core streaming keys and values one after the other reads ~11 GB/s from DRAM on the host of
// benchmarks/RESULTS.md; with both streams in flight a decode step at 1,500-2,300 tokens of context
// ran 8% faster (4% at 300-1,100) while the cache came from DRAM (no change once its L3 held it).
template <typename V, typename C>
inline void attn_scores(const float* q, const C* kr, int64_t n, int64_t hd, float* p, const C* vr) {
  for (int64_t j = 0; j < n; j += 4) {
    if (vr)
      for (const char *l = reinterpret_cast<const char*>(vr + j * hd), *e = reinterpret_cast<const char*>(vr + std::min(j + 4, n) * hd);
           l < e; l += 64)
        _mm_prefetch(l, _MM_HINT_T0);
    const C* k4[4];
    for (int t = 0; t < 4; ++t) k4[t] = kr + std::min<int64_t>(j + t, n - 1) * hd;
    typename V::T a0 = V::zero(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t d = 0; d < hd; d += V::W) {
      const typename V::T qv = V::xld(q + d);
      a0 = V::fma(qv, V::ld(k4[0] + d), a0);
      a1 = V::fma(qv, V::ld(k4[1] + d), a1);
      a2 = V::fma(qv, V::ld(k4[2] + d), a2);
      a3 = V::fma(qv, V::ld(k4[3] + d), a3);
    }
    hsum4(V::fold(a0), V::fold(a1), V::fold(a2), V::fold(a3), p + j);
  }
}

// o[d0 ...] = sum_j p_j v_j, V::W dims at a time from d0 while they fit; key j into chain j % 4 (keys
// past n add nothing); returns the first dim left
template <typename V, typename C>
inline int64_t attn_values(const float* p, const C* vr, int64_t n, int64_t hd, int64_t d0, float* o) {
  for (; d0 + V::W <= hd; d0 += V::W) {
    typename V::T c0 = V::zero(), c1 = c0, c2 = c0, c3 = c0;
    const C* v = vr + d0;
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      c0 = V::fma(V::set1(p[j]), V::ld(v + j * hd), c0);
      c1 = V::fma(V::set1(p[j + 1]), V::ld(v + (j + 1) * hd), c1);
      c2 = V::fma(V::set1(p[j + 2]), V::ld(v + (j + 2) * hd), c2);
      c3 = V::fma(V::set1(p[j + 3]), V::ld(v + (j + 3) * hd), c3);
    }
    // the last n % 4 keys: j is a multiple of 4 here, so key j + t goes to chain t (named chains: an
    // indexed array of vectors spilled to memory, 10-15% slower)
    if (j < n) c0 = V::fma(V::set1(p[j]), V::ld(v + j * hd), c0);
    if (j + 1 < n) c1 = V::fma(V::set1(p[j + 1]), V::ld(v + (j + 1) * hd), c1);
    if (j + 2 < n) c2 = V::fma(V::set1(p[j + 2]), V::ld(v + (j + 2) * hd), c2);
    V::st(o + d0, V::add(V::add(c0, c1), V::add(c2, c3)));
  }
  return d0;
}
#endif

template <typename C>
torch::Tensor decode_attention_impl(torch::Tensor qkv, torch::Tensor kc, torch::Tensor vc, torch::Tensor rows,
                                    torch::Tensor slots, int64_t end, c10::optional<torch::Tensor> mask, int64_t H,
                                    int64_t Hkv, double scale) {
  TORCH_CHECK(qkv.dim() == 3 && qkv.size(1) == 1 && qkv.is_contiguous() && qkv.scalar_type() == torch::kFloat,
              "decode_attention: contiguous float32 qkv (B, 1, W)");
  TORCH_CHECK(kc.dim() == 4 && kc.sizes() == vc.sizes() && kc.is_contiguous() && vc.is_contiguous() &&
              kc.scalar_type() == vc.scalar_type(), "decode_attention: contiguous caches (Bc, Hkv, cap, hd) of one dtype");
  const int64_t B = qkv.size(0), W = qkv.size(2), Bc = kc.size(0), cap = kc.size(2), hd = kc.size(3);
  TORCH_CHECK(kc.size(1) == Hkv && H % Hkv == 0 && (H + 2 * Hkv) * hd <= W && end >= 1 && end <= cap,
              "decode_attention: head counts / cache length do not fit");
  TORCH_CHECK(rows.scalar_type() == torch::kLong && slots.scalar_type() == torch::kLong && rows.numel() == B &&
              slots.numel() == B && rows.is_contiguous() && slots.is_contiguous(), "decode_attention: rows, slots (B,) long");
  const bool* mp = nullptr;
  int64_t mrows = 0;
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == torch::kBool && mask->dim() == 2 && mask->size(1) == end &&
                (mask->size(0) == 1 || mask->size(0) == B) && mask->is_contiguous(), "decode_attention: mask (1 or B, end) bool");
    mp = mask->data_ptr<bool>();
    mrows = mask->size(0);
  }
  const int64_t* rp = rows.data_ptr<int64_t>();
  const int64_t* sp = slots.data_ptr<int64_t>();
  const float* qp = qkv.data_ptr<float>();
  C* kp = static_cast<C*>(kc.data_ptr());
  C* vp = static_cast<C*>(vc.data_ptr());
  for (int64_t b = 0; b < B; ++b) {  // write this step's keys and values
    TORCH_CHECK(rp[b] >= 0 && rp[b] < Bc && sp[b] >= 0 && sp[b] < end, "decode_attention: row ", rp[b], " slot ",
                sp[b], " outside the cache (", Bc, " rows, ", end, " visible slots)");
    for (int64_t g = 0; g < Hkv; ++g) {
      const int64_t off = ((rp[b] * Hkv + g) * cap + sp[b]) * hd;
      const float *kn = qp + b * W + (H + g) * hd, *vn = qp + b * W + (H + Hkv + g) * hd;
      for (int64_t i = 0; i < hd; ++i) {
        kp[off + i] = to_cache<C>(kn[i]);
        vp[off + i] = to_cache<C>(vn[i]);
      }
    }
  }
  auto y = torch::empty({B, 1, H * hd}, qkv.options());
  float* yp = y.data_ptr<float>();
  const int64_t group = H / Hkv;
  // Split the keys into chunks of CH (flash-decoding): a task is (row, kv head, chunk) and computes,
  // for each query head of the group, the chunk's max score, sum of exp and unnormalised output; the
  // chunks are merged below. Every thread has work even for one row, and each kv head's keys stay in
  // L1 while its group's query heads read them.
  constexpr int64_t CH = 64;
  const float sc = (float)scale;
  const int64_t nch = (end + CH - 1) / CH;
  std::vector<float> pm(B * H * nch), pl(B * H * nch), po(B * H * nch * hd);
  at::parallel_for(0, B * Hkv * nch, 1, [&](int64_t i0, int64_t i1) {
    float p[CH];
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / (Hkv * nch), g = (i / nch) % Hkv, c = i % nch;
      const int64_t j0 = c * CH, n = std::min(end, j0 + CH) - j0;
      const C* kr = kp + ((rp[b] * Hkv + g) * cap + j0) * hd;  // (n, hd) keys of this chunk
      const C* vr = vp + ((rp[b] * Hkv + g) * cap + j0) * hd;
      const bool* m = mp ? mp + (mrows == 1 ? 0 : b) * end + j0 : nullptr;
      if (m && std::find(m, m + n, true) == m + n) {  // every key masked (a shorter row, a window): not read
        for (int64_t h = g * group; h < (g + 1) * group; ++h) {
          const int64_t slot = (b * H + h) * nch + c;
          pm[slot] = -INFINITY;
          pl[slot] = 0.f;
          std::fill_n(po.data() + slot * hd, hd, 0.f);
        }
        continue;
      }
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        const float* q = qp + b * W + h * hd;
        const C* fetch = h == g * group ? vr : nullptr;  // the first head reads the chunk from DRAM
        // Every key gets the same operations wherever it sits in the chunk and however many keys the
        // chunk holds (a row alone and in a batch see different `end`s; a prompt's query in a whole
        // prompt or in a chunk of it): scores in groups of four (a last partial group repeats its
        // last key), exp on whole 8-lane vectors (the chunk's tail padded with masked lanes), and
        // key j's value always into chain j % 4 (keys past n add nothing).
        int64_t j = 0;
        bool scored = false;  // scores q.k_j
#ifdef LMZOO_AVX512
        if (hd % 16 == 0) {
          attn_scores<V16>(q, kr, n, hd, p, fetch);
          scored = true;
        }
#endif
#ifdef LMZOO_AVX2
        if (!scored && hd % 8 == 0) {
          attn_scores<V8>(q, kr, n, hd, p, fetch);
          scored = true;
        }
#endif
        if (!scored)
          for (j = 0; j < n; ++j) p[j] = dot_sf(kr + j * hd, q, hd);
        float mx = -INFINITY;
        for (j = 0; j < n; ++j) {
          p[j] = (m && !m[j]) ? -INFINITY : p[j] * sc;
          mx = std::max(mx, p[j]);
        }
        const int64_t slot = (b * H + h) * nch + c;
        float* o = po.data() + slot * hd;
        pm[slot] = mx;
        if (mx == -INFINITY) {  // every key of the chunk masked
          pl[slot] = 0.f;
          std::fill_n(o, hd, 0.f);
          continue;
        }
        // p_j = exp(s_j - max), masked keys 0
        float sum = 0.f;
#ifdef LMZOO_AVX2
        const int64_t n8 = (n + 7) / 8 * 8;  // <= CH
        std::fill(p + n, p + n8, -INFINITY);
        const __m256 vmx = _mm256_set1_ps(mx), ninf = _mm256_set1_ps(-INFINITY);
        __m256 vs = _mm256_setzero_ps();
        for (j = 0; j < n8; j += 8) {
          const __m256 x = _mm256_loadu_ps(p + j);
          const __m256 e = _mm256_and_ps(exp256(_mm256_sub_ps(x, vmx)), _mm256_cmp_ps(x, ninf, _CMP_NEQ_OQ));
          _mm256_storeu_ps(p + j, e);
          vs = _mm256_add_ps(vs, e);
        }
        sum = hsum(vs);
#else
        for (j = 0; j < n; ++j) {
          p[j] = p[j] == -INFINITY ? 0.f : std::exp(p[j] - mx);
          sum += p[j];
        }
#endif
        pl[slot] = sum;
        int64_t d0 = 0;  // o = sum_j p_j v_j
#ifdef LMZOO_AVX512
        d0 = attn_values<V16>(p, vr, n, hd, d0, o);
#endif
#ifdef LMZOO_AVX2
        d0 = attn_values<V8>(p, vr, n, hd, d0, o);
#endif
        for (int64_t d = d0; d < hd; ++d) {
          float acc = 0.f;
          for (j = 0; j < n; ++j) acc += p[j] * cf(vr[j * hd + d]);
          o[d] = acc;
        }
      }
    }
  });
  // merge the chunks: out = sum_c e^(m_c - M) o_c / sum_c e^(m_c - M) l_c,  M = max_c m_c
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const float* m = pm.data() + bh * nch;
    const float M = *std::max_element(m, m + nch);
    float* out = yp + bh * hd;
    std::fill_n(out, hd, 0.f);
    float l = 0.f;
    for (int64_t c = 0; c < nch; ++c) {
      if (m[c] == -INFINITY) continue;
      const float w = nch == 1 ? 1.f : std::exp(m[c] - M);
      l += w * pl[bh * nch + c];
      const float* o = po.data() + (bh * nch + c) * hd;
      for (int64_t d = 0; d < hd; ++d) out[d] += w * o[d];
    }
    const float inv = 1.f / l;
    for (int64_t d = 0; d < hd; ++d) out[d] *= inv;
  }
  return y;
}
}  // namespace

// kc, vc float32, or float16 (a half-precision cache: half the bytes a step streams; keys and values
// rounded once, as they are written, and widened exactly when read)
torch::Tensor decode_attention(torch::Tensor qkv, torch::Tensor kc, torch::Tensor vc, torch::Tensor rows,
                               torch::Tensor slots, int64_t end, c10::optional<torch::Tensor> mask, int64_t H,
                               int64_t Hkv, double scale) {
  if (kc.scalar_type() == torch::kHalf)
    return decode_attention_impl<c10::Half>(qkv, kc, vc, rows, slots, end, mask, H, Hkv, scale);
  TORCH_CHECK(kc.scalar_type() == torch::kFloat, "decode_attention: float32 or float16 caches, got ", kc.scalar_type());
  return decode_attention_impl<float>(qkv, kc, vc, rows, slots, end, mask, H, Hkv, scale);
}

// Memory read bandwidth probe (lmzoo.tools.bench.read_bandwidth_gbs): one 8-byte load from every
// 64-byte line of buf, each thread's share read as `streams` interleaved sequential streams fetched
// 4 KB ahead. On the 2-vCPU Xeon of benchmarks/RESULTS.md one plain stream a core (what a sum over a
// tensor does) reads ~11 GB/s a core, 23 GB/s on two; four streams a core with prefetching reach
// 29-31 GB/s, the bound a decode step is measured against. Returns the sum of the words read.
int64_t stream_read(torch::Tensor buf, int64_t streams) {
  TORCH_CHECK(buf.is_contiguous() && buf.scalar_type() == torch::kByte && streams >= 1,
              "stream_read: a contiguous uint8 tensor and streams >= 1");
  const char* p = static_cast<const char*>(buf.data_ptr());
  const int64_t lines = buf.numel() / 64, nt = at::get_num_threads();
  std::vector<int64_t> part(nt * 8, 0);  // a cache line per thread
  at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t a = lines * t / nt, b = lines * (t + 1) / nt, per = (b - a) / streams;
      int64_t sum = 0;
      auto word = [&](int64_t line) {
        int64_t w;
        std::memcpy(&w, p + line * 64, 8);
        return w;
      };
      for (int64_t i = 0; i < per; ++i)
        for (int64_t j = 0; j < streams; ++j) {
          __builtin_prefetch(p + (a + j * per + i) * 64 + 4096, 0, 1);
          sum += word(a + j * per + i);
        }
      for (int64_t l = a + streams * per; l < b; ++l) sum += word(l);  // the share's last lines
      part[t * 8] = sum;
    }
  });
  int64_t total = 0;
  for (int64_t t = 0; t < nt; ++t) total += part[t * 8];
  return total;
}

std::tuple<torch::Tensor, bool> greedy_ids(torch::Tensor logits) {
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous() && logits.scalar_type() == torch::kFloat &&
              logits.size(1) > 0, "greedy_ids: contiguous float32 logits (B, V)");
  const int64_t B = logits.size(0), V = logits.size(1);
  auto ids = torch::empty({B}, logits.options().dtype(torch::kLong));
  const float* lp = logits.data_ptr<float>();
  int64_t* ip = ids.data_ptr<int64_t>();
  bool nan = false;
  for (int64_t b = 0; b < B; ++b) {
    const float* r = lp + b * V;
    float best = r[0];
    int64_t i = 0;
#ifdef LMZOO_AVX2
    if (V >= 8) {  // lane maxima and a NaN flag, then the first position holding the maximum
      __m256 mx = _mm256_loadu_ps(r), bad = _mm256_cmp_ps(mx, mx, _CMP_UNORD_Q);
      for (i = 8; i + 8 <= V; i += 8) {
        const __m256 v = _mm256_loadu_ps(r + i);
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        mx = _mm256_max_ps(mx, v);
      }
      nan |= _mm256_movemask_ps(bad) != 0;
      float lanes[8];
      _mm256_storeu_ps(lanes, mx);
      best = *std::max_element(lanes, lanes + 8);
    }
#endif
    for (; i < V; ++i) {
      nan |= std::isnan(r[i]);
      best = std::max(best, r[i]);
    }
    nan |= std::isnan(best);
    int64_t at = 0;
#ifdef LMZOO_AVX2
    const __m256 bv = _mm256_set1_ps(best);
    for (; at + 8 <= V; at += 8) {
      const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(r + at), bv, _CMP_EQ_OQ));
      if (hit) {
        at += __builtin_ctz(hit);
        break;
      }
    }
#endif
    while (at < V && r[at] != best) ++at;
    ip[b] = at < V ? at : 0;
  }
  return {ids, nan};
}

// ---------------------------------------------------------------------------------------------
// A whole pre-norm block's decode step in one call (lmzoo.nn.block.PreNormBlock with RMSNorms, plain
// RoPE attention and a SwiGLU MLP; installed by lmzoo.quant.gemv.use_cpu_kernels):
//
//   h = rms_norm(x) -> qkv = h W_qkv -> RoPE on q, k -> cache write + attention -> x += att W_o
//   h = rms_norm(x) -> x += (silu(h W_gate) * h W_up) W_down
//
// The pieces are the kernels above, called in the order the modules call them, so the result is the
// module path's bits; what goes away is ~12 Python module calls and their tensor bookkeeping per
// block (about as long as the block's arithmetic on a 135M model).
//
// A linear layer is (kind, its tensors, group, bias):
//   0 float w (N, K)             float_linear (float32, float16 or bfloat16 weights)
//   1 int8 q, scale               int8_linear        2  the same, 8-bit activations  int8_linear_q8
//   3 int4 q, scale, min          int4_linear        4  the same, 8-bit activations  int4_linear_q8
//   5 int8 tiles codes, scale, extra   tiles_linear_q8    6  int4 tiles (pack_tiles_q8's tensors); the
//                                      linear's "group" is then its number of outputs N
//   7 int4 or int8 tiles, float activations    tiles_linear_f        (the same tensors and N)
namespace {

int64_t linear_tensors(int64_t kind) { return kind == 0 ? 1 : kind <= 2 ? 2 : 3; }

torch::Tensor any_linear(const torch::Tensor& x2, int64_t kind, const torch::Tensor* t, int64_t g,
                         const c10::optional<torch::Tensor>& bias) {
  torch::Tensor y;
  switch (kind) {
    case 0: y = float_linear(x2, t[0]); break;
    case 1: y = int8_linear(x2, t[0], t[1], g); break;
    case 2: y = int8_linear_q8(x2, t[0], t[1], g); break;
    case 3: y = int4_linear(x2, t[0], t[1], t[2], g); break;
    case 4: y = int4_linear_q8(x2, t[0], t[1], t[2], g); break;
    case 5:
    case 6: y = tiles_linear_q8(x2, t[0], t[1], t[2], g); break;
    case 7: y = tiles_linear_f(x2, t[0], t[1], t[2], g); break;
    default: TORCH_CHECK(false, "decode block: unknown linear kind ", kind);
  }
  if (bias.has_value()) {
    const torch::Tensor& b = *bias;
    TORCH_CHECK(b.scalar_type() == torch::kFloat && b.is_contiguous() && b.numel() == y.size(1),
                "decode block: bias must be float32 (N,)");
    float* yp = y.data_ptr<float>();
    const float* bp = b.data_ptr<float>();
    for (int64_t m = 0, N = y.size(1); m < y.size(0); ++m)
      for (int64_t n = 0; n < N; ++n) yp[m * N + n] += bp[n];
  }
  return y;
}

void add_(torch::Tensor& x, const torch::Tensor& y) {  // x += y, same shapes, contiguous float32
  float* xp = x.data_ptr<float>();
  const float* yp = y.data_ptr<float>();
  for (int64_t i = 0, n = x.numel(); i < n; ++i) xp[i] += yp[i];
}

}  // namespace

// One pre-norm block's tensors and sizes for its one-token step. kinds, groups, biases: the four
// linears qkv, o, gate_up, down in that order; weights: their tensors one after another
// (linear_tensors each).
struct DecodeBlock {
  torch::Tensor attn_norm, mlp_norm;
  double attn_eps, mlp_eps, scale;
  int64_t kinds[4], groups[4], H, Hkv;
  std::vector<torch::Tensor> weights;
  c10::optional<torch::Tensor> biases[4];
  size_t first[4];  // each linear's first tensor in weights

  DecodeBlock(torch::Tensor attn_norm_, double attn_eps_, torch::Tensor mlp_norm_, double mlp_eps_,
              const std::vector<int64_t>& kinds_, const std::vector<int64_t>& groups_, std::vector<torch::Tensor> weights_,
              const std::vector<c10::optional<torch::Tensor>>& biases_, int64_t H_, int64_t Hkv_, double scale_)
      : attn_norm(attn_norm_), mlp_norm(mlp_norm_), attn_eps(attn_eps_), mlp_eps(mlp_eps_), scale(scale_), H(H_),
        Hkv(Hkv_), weights(std::move(weights_)) {
    TORCH_CHECK(kinds_.size() == 4 && groups_.size() == 4 && biases_.size() == 4, "decode block: four linears");
    size_t used = 0;
    for (int i = 0; i < 4; ++i) {
      kinds[i] = kinds_[i];
      groups[i] = groups_[i];
      biases[i] = biases_[i];
      first[i] = used;
      used += linear_tensors(kinds[i]);
    }
    TORCH_CHECK(used == weights.size(), "decode block: ", weights.size(), " weight tensors for kinds needing ", used);
  }

  torch::Tensor linear(int i, const torch::Tensor& x2) const {
    return any_linear(x2, kinds[i], weights.data() + first[i], groups[i], biases[i]);
  }

  // x (B, 1, d) -> the block's output (B, 1, d), a new tensor
  torch::Tensor step(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin, const torch::Tensor& kc,
                     const torch::Tensor& vc, const torch::Tensor& rows, const torch::Tensor& slots, int64_t end,
                     const c10::optional<torch::Tensor>& mask) const {
    TORCH_CHECK(x.dim() == 3 && x.size(1) == 1 && x.is_contiguous() && x.scalar_type() == torch::kFloat,
                "decode block: contiguous float32 x (B, 1, d)");
    const int64_t B = x.size(0), d = x.size(2), hd = kc.size(3);
    auto qkv = linear(0, rms_norm(x, attn_norm, attn_eps).view({B, d}));
    qkv = qkv.view({B, 1, qkv.size(1)});
    rope_heads_(qkv, cos, sin, H + Hkv, hd);
    auto att = decode_attention(qkv, kc, vc, rows, slots, end, mask, H, Hkv, scale);
    auto o = linear(1, att.view({B, H * hd}));
    TORCH_CHECK(o.size(1) == d, "decode block: o projection gives ", o.size(1), " features, x has ", d);
    auto out = x.clone();
    add_(out, o);
    auto h = linear(2, rms_norm(out, mlp_norm, mlp_eps).view({B, d}));
    // silu(gate) * up through ATen, as the MLP module computes it: the same bits (an own exp differs in
    // the last place for ~7% of values, and with 8-bit activations those flip codes downstream)
    const int64_t I = h.size(1) / 2;
    add_(out, linear(3, at::silu(h.narrow(1, 0, I)).mul_(h.narrow(1, I, I))));
    return out;
  }
};

// A decoder's pre-norm blocks, prepared once (lmzoo.quant.gemv keeps one per model while the model is
// unchanged): a decode step then passes only what changes per step — x, RoPE's cos / sin for the
// step, each layer's KV cache and the slots — instead of every layer's weights and sizes, and runs
// the layers back to back in C++ (Python's per-layer work was ~20 us a layer, ~0.6 ms a step).
struct DecodeStack {
  std::vector<DecodeBlock> blocks;

  void add(torch::Tensor attn_norm, double attn_eps, torch::Tensor mlp_norm, double mlp_eps, std::vector<int64_t> kinds,
           std::vector<int64_t> groups, std::vector<torch::Tensor> weights,
           std::vector<c10::optional<torch::Tensor>> biases, int64_t H, int64_t Hkv, double scale) {
    blocks.emplace_back(attn_norm, attn_eps, mlp_norm, mlp_eps, kinds, groups, std::move(weights), biases, H, Hkv, scale);
  }

  // x (B, 1, d) through every block; k[i], v[i]: block i's cache
  torch::Tensor run(torch::Tensor x, torch::Tensor cos, torch::Tensor sin, std::vector<torch::Tensor> k,
                    std::vector<torch::Tensor> v, torch::Tensor rows, torch::Tensor slots, int64_t end,
                    c10::optional<torch::Tensor> mask) const {
    TORCH_CHECK(k.size() == blocks.size() && v.size() == blocks.size(), "decode stack: ", blocks.size(),
                " blocks, caches for ", k.size(), " / ", v.size());
    for (size_t i = 0; i < blocks.size(); ++i) x = blocks[i].step(x, cos, sin, k[i], v[i], rows, slots, end, mask);
    return x;
  }
};

// x (B, 1, d) -> the block's output (B, 1, d), a new tensor (DecodeBlock's arguments, and the step's)
torch::Tensor prenorm_decode_block(torch::Tensor x, torch::Tensor attn_norm, double attn_eps, torch::Tensor mlp_norm,
                                   double mlp_eps, std::vector<int64_t> kinds, std::vector<int64_t> groups,
                                   std::vector<torch::Tensor> weights, std::vector<c10::optional<torch::Tensor>> biases,
                                   torch::Tensor cos, torch::Tensor sin, torch::Tensor kc, torch::Tensor vc,
                                   torch::Tensor rows, torch::Tensor slots, int64_t end,
                                   c10::optional<torch::Tensor> mask, int64_t H, int64_t Hkv, double scale) {
  const DecodeBlock block(attn_norm, attn_eps, mlp_norm, mlp_eps, kinds, groups, std::move(weights), biases, H, Hkv, scale);
  return block.step(x, cos, sin, kc, vc, rows, slots, end, mask);
}

// ---------------------------------------------------------------------------------------------
// Loading: GGUF's 32-element blocks into the layers' layout in one pass (lmzoo.checkpoints.gguf_quant).
// A block of bs bytes holds a float16 scale d at byte 0, for Q4_1 a float16 min at byte 2, and its
// codes at [qo, bs): 32 int8 (Q8_0) or 16 bytes of nibbles (Q4_0 / Q4_1, already in Int4Linear's
// order). raw (R, nb * bs) uint8; q (N, nb * (bs - qo)), d and m (N, nb) float16 bits, contiguous;
// output row i is raw row rows[i] (rows (N,) long; empty: row i). Strided numpy copies of 16-byte
// pieces ran at ~0.4 GB/s here; this is memcpy speed.
void split_blocks(torch::Tensor raw, int64_t bs, int64_t qo, torch::Tensor rows, torch::Tensor q, torch::Tensor d,
                  c10::optional<torch::Tensor> m) {
  const int64_t N = q.size(0), ql = bs - qo, nb = raw.dim() == 2 ? raw.size(1) / bs : 0;
  TORCH_CHECK(raw.dim() == 2 && raw.scalar_type() == torch::kByte && raw.stride(1) == 1 && raw.size(1) == nb * bs &&
              (ql == 16 || ql == 32) && qo >= 2 && q.is_contiguous() && q.size(1) == nb * ql && q.element_size() == 1 &&
              d.is_contiguous() && d.size(0) == N && d.size(1) == nb && d.element_size() == 2,
              "split_blocks: raw (R, nb * bs) uint8 rows, q (N, nb * (bs - qo)), d (N, nb) 16-bit");
  TORCH_CHECK(!m.has_value() || (qo >= 4 && m->is_contiguous() && m->sizes() == d.sizes() && m->element_size() == 2),
              "split_blocks: m like d, with codes from byte 4");
  TORCH_CHECK(rows.numel() == 0 ? raw.size(0) == N : rows.numel() == N && rows.scalar_type() == torch::kLong &&
              rows.is_contiguous(), "split_blocks: rows (N,) long, or empty with R == N");
  const int64_t* rp = rows.numel() ? rows.data_ptr<int64_t>() : nullptr;
  for (int64_t i = 0; rp && i < N; ++i)
    TORCH_CHECK(rp[i] >= 0 && rp[i] < raw.size(0), "split_blocks: row ", rp[i], " outside the ", raw.size(0), " rows");
  const uint8_t* src = raw.data_ptr<uint8_t>();
  const int64_t rstride = raw.stride(0);
  uint8_t* qp = static_cast<uint8_t*>(q.data_ptr());
  uint16_t* dp = static_cast<uint16_t*>(d.data_ptr());
  uint16_t* mp = m.has_value() ? static_cast<uint16_t*>(m->data_ptr()) : nullptr;
  at::parallel_for(0, N, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const uint8_t* r = src + (rp ? rp[i] : i) * rstride;
      uint8_t* qo_ = qp + i * nb * ql;
      for (int64_t b = 0; b < nb; ++b, r += bs, qo_ += ql) {
        std::memcpy(dp + i * nb + b, r, 2);
        if (mp) std::memcpy(mp + i * nb + b, r + 2, 2);
        if (ql == 16) std::memcpy(qo_, r + qo, 16);
        else std::memcpy(qo_, r + qo, 32);
      }
    }
  });
}

// the widest code path this build compiled (the Python side picks row limits by it)
std::string isa() {
#if defined(LMZOO_AVX512)
  return "avx512";
#elif defined(LMZOO_AVX2)
  return "avx2";
#else
  return "portable";
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("isa", &isa, "the widest instruction set this build uses: avx512, avx2 or portable");
  m.def("split_blocks", &split_blocks, "GGUF Q8_0 / Q4_0 / Q4_1 blocks -> codes, scales, mins in one pass (CPU)");
  m.def("float_linear", &float_linear, "float32 / float16 / bfloat16 weights x float32 rows, few rows (CPU)");
  m.def("int8_linear", &int8_linear, "int8 weight-only linear (CPU)");
  m.def("int4_linear", &int4_linear, "int4 weight-only linear (CPU)");
  m.def("int4_linear_q8", &int4_linear_q8, "int4 weights x 8-bit activations (CPU)");
  m.def("int8_linear_q8", &int8_linear_q8, "int8 weights x 8-bit activations (CPU)");
  m.def("tiles_linear_f", &tiles_linear_f, "int4 weights packed in 16-row tiles x float activations (CPU)");
  m.def("dequant_tiles", &dequant_tiles, "weight rows of 16-row tiles as float32 (dequant_rows' values)");
  m.def("pack_tiles_q8", &pack_tiles_q8, "int4 / int8 weights in 16-row tiles for tiles_linear_q8 (AVX-512 VNNI)");
  m.def("tiles_linear_q8", &tiles_linear_q8, "8-bit activations x tiled int4 / int8 weights (AVX-512 VNNI)");
  m.def("dequant_rows", &dequant_rows, "int8 / int4 weight rows as float32 into a given tensor (CPU)");
  m.def("rms_norm", &rms_norm, "RMSNorm, float32 (CPU)");
  m.def("decode_attention", &decode_attention, "one query per row against the KV cache, GQA, float32 (CPU)");
  m.def("prenorm_decode_block", &prenorm_decode_block, "one pre-norm block's decode step (RMSNorm, RoPE attention, SwiGLU; CPU)");
  // module_local: two builds (two checkouts) can be imported into one process (benchmarks/ab_kernels.py)
  py::class_<DecodeStack>(m, "DecodeStack", py::module_local(), "pre-norm blocks prepared for one-token steps, run back to back (CPU)")
      .def(py::init<>())
      .def("add", &DecodeStack::add, "append a block (prenorm_decode_block's weight arguments)")
      .def("run", &DecodeStack::run, "x through every block: (x, cos, sin, k caches, v caches, rows, slots, end, mask)");
  m.def("stream_read", &stream_read, "read every cache line of a uint8 buffer, `streams` streams a thread (bandwidth probe)");
  m.def("greedy_ids", &greedy_ids, "argmax of each logits row and whether any is NaN (CPU)");
  m.def("rope_heads_", &rope_heads_, "rotate-half RoPE in place on the first heads of a fused projection (CPU)");
}
