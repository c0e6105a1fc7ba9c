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
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define LMZOO_AVX2 1
#endif

namespace {

// activation rows handled per pass over a weight row: the unpacked weights are reused RB times while
// the RB accumulators (and the 4 unpacked vectors) stay in the 16 AVX2 registers
constexpr int64_t RB = 4;

#ifdef LMZOO_AVX2
inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}
#endif

#ifdef LMZOO_AVX2
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

// acc + 8-lane partial sums of one 32-element int4 block (16 bytes) times x[0:32]
inline __m256 dot_i4_block_vec(const float* x, const uint8_t* q, __m256 acc) {
  __m128i b = _mm_loadu_si128((const __m128i*)q);
  __m128i m = _mm_set1_epi8(0x0F);
  __m128i lo = _mm_and_si128(b, m);
  __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
  acc = _mm256_fmadd_ps(_mm256_loadu_ps(x), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), acc);
  acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + 8),
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), acc);
  acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + 16), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), acc);
  acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + 24),
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), acc);
  return acc;
}
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

// x (M, K) f32, w (N, K) f32 -> (M, N) f32, for few rows M (decode). BLAS GEMV kernels reach about
// 40% of this machine's read bandwidth on decode-sized matrices; streaming each weight row once
// through FMA lanes, rows split across threads, gets much closer to it.
torch::Tensor f32_linear(torch::Tensor x, torch::Tensor w) {
  const int64_t M = x.size(0), N = w.size(0), K = w.size(1);
  check(x, K);
  TORCH_CHECK(w.scalar_type() == torch::kFloat && w.is_contiguous(), "w must be contiguous float32 (N, K)");
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* wr = wp + n * K;
      for (int64_t m = 0; m < M; ++m) {
        const float* xr = xp + m * K;
        int64_t k = 0;
#ifdef LMZOO_AVX2
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
               a3 = _mm256_setzero_ps();
        for (; k + 32 <= K; k += 32) {
          a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + k), _mm256_loadu_ps(wr + k), a0);
          a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + k + 8), _mm256_loadu_ps(wr + k + 8), a1);
          a2 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + k + 16), _mm256_loadu_ps(wr + k + 16), a2);
          a3 = _mm256_fmadd_ps(_mm256_loadu_ps(xr + k + 24), _mm256_loadu_ps(wr + k + 24), a3);
        }
        float acc = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#else
        float acc = 0.f;
#endif
        for (; k < K; ++k) acc += xr[k] * wr[k];
        yp[m * N + n] = acc;
      }
    }
  });
  return y;
}

// x (M, K) f32, q (N, K) int8, scale (N, K/g) f32 -> (M, N) f32
torch::Tensor int8_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scale, int64_t g) {
  const int64_t M = x.size(0), N = q.size(0), K = q.size(1), G = K / g;
  check(x, K);
  TORCH_CHECK(g % 8 == 0 && K % g == 0, "group size must divide K and be a multiple of 8");
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const int8_t* qr = qp + n * K;
      const float* sr = sp + n * G;
#ifdef LMZOO_AVX2
      // rows in passes of RB: each 16-weight chunk is widened to float once and used for RB rows
      for (int64_t m0 = 0; m0 < M; m0 += RB) {
        const int64_t mb = std::min<int64_t>(RB, M - m0);
        if (mb == 1) {  // one row: two independent accumulator chains keep the FMA units busy
          const float* xr = xp + m0 * K;
          __m256 a1 = _mm256_setzero_ps();
          for (int64_t gi = 0; gi < G; ++gi)
            a1 = _mm256_fmadd_ps(_mm256_set1_ps(sr[gi]), dot_i8_vec(xr + gi * g, qr + gi * g, g), a1);
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
      for (int64_t m = 0; m < M; ++m) {
        const float* xr = xp + m * K;
        float acc = 0.f;
        for (int64_t gi = 0; gi < G; ++gi) acc += sr[gi] * dot_i8(xr + gi * g, qr + gi * g, g);
        yp[m * N + n] = acc;
      }
#endif
    }
  });
  return y;
}

// x (M, K) f32, q (N, K/2) uint8, scale/min (N, K/g) f32 -> (M, N) f32
torch::Tensor int4_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scale, torch::Tensor mins,
                          int64_t g) {
  const int64_t M = x.size(0), N = q.size(0), K = q.size(1) * 2, G = K / g;
  check(x, K);
  TORCH_CHECK(g % 32 == 0 && K % g == 0, "int4 group size must divide K and be a multiple of 32");
  // per-row group sums of x feed the `min` term
  auto xs = x.view({M, G, g}).sum(-1).contiguous();
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* xsp = xs.data_ptr<float>();
  const uint8_t* qp = q.data_ptr<uint8_t>();
  const float* sp = scale.data_ptr<float>();
  const float* mp = mins.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t blocks = g / 32;
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* qr = qp + n * (K / 2);
      const float* sr = sp + n * G;
      const float* mr = mp + n * G;
#ifdef LMZOO_AVX2
      // rows in passes of RB: each 32-weight block is unpacked to floats once and used for RB rows
      for (int64_t m0 = 0; m0 < M; m0 += RB) {
        const int64_t mb = std::min<int64_t>(RB, M - m0);
        if (mb == 1) {  // one row: the block-at-a-time dot product
          const int64_t m = m0;
          const float* xr = xp + m * K;
          float mn = 0.f;
          for (int64_t gi = 0; gi < G; ++gi) mn += mr[gi] * xsp[m * G + gi];
          __m256 a1 = _mm256_setzero_ps();
          for (int64_t gi = 0; gi < G; ++gi) {
            __m256 d1 = _mm256_setzero_ps();
            for (int64_t bi = 0; bi < blocks; ++bi) {
              const int64_t e = gi * g + bi * 32;
              d1 = dot_i4_block_vec(xr + e, qr + e / 2, d1);
            }
            a1 = _mm256_fmadd_ps(_mm256_set1_ps(sr[gi]), d1, a1);
          }
          yp[m * N + n] = mn + hsum(a1);
          continue;
        }
        __m256 acc[RB];
        for (int64_t j = 0; j < RB; ++j) acc[j] = _mm256_setzero_ps();
        for (int64_t gi = 0; gi < G; ++gi) {
          __m256 d[RB];
          for (int64_t j = 0; j < RB; ++j) d[j] = _mm256_setzero_ps();
          for (int64_t bi = 0; bi < blocks; ++bi) {
            const int64_t e = gi * g + bi * 32;
            __m128i raw = _mm_loadu_si128((const __m128i*)(qr + e / 2));
            __m128i lo = _mm_and_si128(raw, _mm_set1_epi8(0x0F));
            __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0F));
            const __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
            const __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
            const __m256 w2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
            const __m256 w3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
            for (int64_t j = 0; j < mb; ++j) {
              const float* xr = xp + (m0 + j) * K + e;
              __m256 t = _mm256_fmadd_ps(_mm256_loadu_ps(xr), w0, d[j]);
              t = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 8), w1, t);
              t = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 16), w2, t);
              d[j] = _mm256_fmadd_ps(_mm256_loadu_ps(xr + 24), w3, t);
            }
          }
          const __m256 sc = _mm256_set1_ps(sr[gi]);
          for (int64_t j = 0; j < mb; ++j) acc[j] = _mm256_fmadd_ps(sc, d[j], acc[j]);
        }
        for (int64_t j = 0; j < mb; ++j) {
          const int64_t m = m0 + j;
          float mn = 0.f;  // the `min` term, scalar
          for (int64_t gi = 0; gi < G; ++gi) mn += mr[gi] * xsp[m * G + gi];
          yp[m * N + n] = mn + hsum(acc[j]);
        }
      }
#else
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
#endif
    }
  });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("f32_linear", &f32_linear, "float32 linear for few rows (CPU)");
  m.def("int8_linear", &int8_linear, "int8 weight-only linear (CPU)");
  m.def("int4_linear", &int4_linear, "int4 weight-only linear (CPU)");
}
