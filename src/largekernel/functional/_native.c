/* Fused CPU passes of the depthwise FFT paths (largekernel/functional/_native.py compiles and loads this).
 *
 * Torch spends one kernel launch and one pass over a cache-sized block per elementwise step; two steps of the
 * depthwise paths read the same data twice or make temporaries:
 *   unpack         a packed complex block -> its two real samples (plus a per-channel bias), reading each
 *                  complex value once where two strided copies read the block twice;
 *   spectral_grad  the filter gradient sum_b S[b] * Q[b] and the input-gradient product Q *= W in one pass,
 *                  where torch makes a (batch, C, N) temporary, reduces it, then multiplies (packed and
 *                  real-FFT paths; conjugations as flags).
 * Complex values are interleaved (re, im), as torch stores them. Compiled per machine (-march=native), with
 * OpenMP: the caller passes torch's intra-op thread count.
 */
#include <stdint.h>

typedef int64_t i64;

#define CHUNK 256 /* points per accumulator (two CHUNK-long rows of T stay in L1) */

#define DEFINE_KERNELS(T, S)                                                                                     \
  /* z: (half, C, G0, G1, G2) complex, contiguous. Pair p holds sample p in its real part (imaginary with swap) \
     and sample half + p in the other, for p < second. The region start..start + size of every grid goes to    \
     out + b * sb + c * sc, a contiguous (n0, n1, n2) plane, plus bias[c] (if bias). */                         \
  void lk_unpack_##S(const T *z, T *out, i64 half, i64 second, i64 channels, const i64 *grid,                   \
                     const i64 *start, const i64 *size, i64 sb, i64 sc, const T *bias, int swap, int threads) {  \
    const i64 g0 = grid[0], g1 = grid[1], g2 = grid[2];                                                         \
    const i64 n0 = size[0], n1 = size[1], n2 = size[2];                                                         \
    _Pragma("omp parallel for collapse(2) num_threads(threads) schedule(static)")                               \
    for (i64 p = 0; p < half; p++) {                                                                            \
      for (i64 c = 0; c < channels; c++) {                                                                      \
        const T *plane = z + 2 * (p * channels + c) * g0 * g1 * g2;                                             \
        const T b = bias ? bias[c] : (T)0;                                                                      \
        T *d0 = out + p * sb + c * sc;                                                                          \
        T *d1 = out + (half + p) * sb + c * sc;                                                                 \
        const int both = p < second;                                                                            \
        for (i64 i0 = 0; i0 < n0; i0++) {                                                                       \
          for (i64 i1 = 0; i1 < n1; i1++) {                                                                     \
            const T *s = plane + 2 * (((start[0] + i0) * g1 + start[1] + i1) * g2 + start[2]);                  \
            const T *s0 = s + (swap ? 1 : 0), *s1 = s + (swap ? 0 : 1);                                         \
            T *r0 = d0 + (i0 * n1 + i1) * n2, *r1 = d1 + (i0 * n1 + i1) * n2;                                   \
            if (both) {                                                                                         \
              for (i64 j = 0; j < n2; j++) {                                                                    \
                r0[j] = s0[2 * j] + b;                                                                          \
                r1[j] = s1[2 * j] + b;                                                                          \
              }                                                                                                 \
            } else {                                                                                            \
              for (i64 j = 0; j < n2; j++) r0[j] = s0[2 * j] + b;                                               \
            }                                                                                                   \
          }                                                                                                     \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
  }                                                                                                             \
                                                                                                                \
  /* spec, q: (half, C, n) complex, contiguous; w: (C, n) complex or null; acc: (C, n) complex or null.         \
     acc = scale * sum_b spec[b] * q[b] (conj(q[b]) with conj_q; the sum times i and conjugated with rotate),    \
     then q[b] *= w (conj(w) with conj_w). */                                                                   \
  void lk_spectral_grad_##S(const T *spec, T *q, const T *w, T *acc, i64 half, i64 channels, i64 n, T scale,   \
                            int rotate, int conj_q, int conj_w, int threads) {                                  \
    const i64 chunks = (n + CHUNK - 1) / CHUNK;                                                                 \
    const T sq = conj_q ? (T)-1 : (T)1, sw = conj_w ? (T)-1 : (T)1;                                             \
    _Pragma("omp parallel for collapse(2) num_threads(threads) schedule(static)")                               \
    for (i64 c = 0; c < channels; c++) {                                                                        \
      for (i64 k = 0; k < chunks; k++) {                                                                        \
        T re[CHUNK], im[CHUNK];                                                                                 \
        const i64 j0 = k * CHUNK, m = n - j0 < CHUNK ? n - j0 : CHUNK;                                          \
        for (i64 j = 0; j < m; j++) re[j] = im[j] = (T)0;                                                       \
        const T *wc = w ? w + 2 * (c * n + j0) : 0;                                                             \
        for (i64 b = 0; b < half; b++) {                                                                        \
          const T *sp = spec + 2 * ((b * channels + c) * n + j0);                                               \
          T *qp = q + 2 * ((b * channels + c) * n + j0);                                                        \
          if (acc) {                                                                                            \
            for (i64 j = 0; j < m; j++) {                                                                       \
              const T sr = sp[2 * j], si = sp[2 * j + 1], qr = qp[2 * j], qi = sq * qp[2 * j + 1];              \
              re[j] += sr * qr - si * qi;                                                                       \
              im[j] += sr * qi + si * qr;                                                                       \
            }                                                                                                   \
          }                                                                                                     \
          if (wc) {                                                                                             \
            for (i64 j = 0; j < m; j++) {                                                                       \
              const T qr = qp[2 * j], qi = qp[2 * j + 1], wr = wc[2 * j], wi = sw * wc[2 * j + 1];              \
              qp[2 * j] = qr * wr - qi * wi;                                                                    \
              qp[2 * j + 1] = qr * wi + qi * wr;                                                                \
            }                                                                                                   \
          }                                                                                                     \
        }                                                                                                       \
        if (acc) {                                                                                              \
          T *a = acc + 2 * (c * n + j0);                                                                        \
          for (i64 j = 0; j < m; j++) {                                                                         \
            /* i conj(re + i im) = im + i re */                                                                 \
            a[2 * j] = scale * (rotate ? im[j] : re[j]);                                                        \
            a[2 * j + 1] = scale * (rotate ? re[j] : im[j]);                                                    \
          }                                                                                                     \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
  }

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
