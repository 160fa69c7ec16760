/* Fused CPU passes of the depthwise FFT paths (largekernel/functional/_native.py compiles and loads this).
 *
 * Torch spends one kernel launch and one pass over a cache-sized block per elementwise step; these steps of
 * the depthwise paths read the same data several times or make temporaries:
 *   pack_pairs      two real channels -> one complex signal on a zero-filled grid (one write of the grid);
 *   unpack_pairs    a complex signal -> its two real channels, cropped, plus a per-channel bias;
 *   mirror_product  y = a z + d conj(z[-k]): the product of a channel pair's spectrum with two different real
 *                   kernels (a, d: half their sum and difference), z[-k] the mirrored bin;
 *   mirror_grad     its adjoint: gx = sum_o conj(a) g + conj(d) conj(g[-k]), and the kernel-gradient sums
 *                   u = sum_b z conj(g), v = sum_b z g[-k], in one pass over the gradient;
 *   spectral_grad   (real-FFT paths) the kernel-gradient sum sum_b S[b] * Q[b] and the input-gradient product
 *                   Q *= W in one pass (conjugations as flags).
 * Complex values are interleaved (re, im), as torch stores them; grids are (g0, g1, g2), lower dims padded
 * with 1. Compiled per machine (-march=native), with OpenMP: the caller passes torch's intra-op thread count.
 * Every loop's output location is owned by one iteration of its parallel loop: results do not depend on the
 * thread count.
 */
#include <stdint.h>
#include <string.h>

typedef int64_t i64;

#define CHUNK 256 /* points per accumulator (two CHUNK-long rows of T stay in L1) */

#define MIRROR(k, g) ((k) ? (g) - (k) : 0)

#define DEFINE_KERNELS(T, S)                                                                                     \
  /* x1 + b * s1b + c * s1c: a contiguous (n0, n1, n2) plane for c < n; x2 likewise for c < n2 (the imaginary   \
     parts; zero beyond). z: (batch, n, g0, g1, g2) complex, x at start, zero elsewhere. */                     \
  void lk_pack_pairs_##S(const T *x1, const T *x2, T *z, i64 batch, i64 n, i64 n2, const i64 *grid,             \
                         const i64 *start, const i64 *size, i64 s1b, i64 s1c, i64 s2b, i64 s2c, int threads) {  \
    const i64 g0 = grid[0], g1 = grid[1], g2 = grid[2], n0 = size[0], n1 = size[1], w = size[2];               \
    const i64 a0 = start[0], a1 = start[1], a2 = start[2];                                                      \
    _Pragma("omp parallel for collapse(2) num_threads(threads) schedule(static)")                               \
    for (i64 b = 0; b < batch; b++) {                                                                           \
      for (i64 c = 0; c < n; c++) {                                                                             \
        T *plane = z + 2 * (b * n + c) * g0 * g1 * g2;                                                          \
        const T *a = x1 + b * s1b + c * s1c;                                                                    \
        const T *i = c < n2 ? x2 + b * s2b + c * s2c : 0;                                                       \
        for (i64 k0 = 0; k0 < g0; k0++) {                                                                       \
          for (i64 k1 = 0; k1 < g1; k1++) {                                                                     \
            T *row = plane + 2 * (k0 * g1 + k1) * g2;                                                           \
            const i64 i0 = k0 - a0, i1 = k1 - a1;                                                               \
            if (i0 < 0 || i0 >= n0 || i1 < 0 || i1 >= n1) {                                                     \
              memset(row, 0, 2 * g2 * sizeof(T));                                                              \
              continue;                                                                                         \
            }                                                                                                   \
            const T *ra = a + (i0 * n1 + i1) * w;                                                               \
            T *out = row + 2 * a2;                                                                              \
            memset(row, 0, 2 * a2 * sizeof(T));                                                                 \
            if (i) {                                                                                            \
              const T *ri = i + (i0 * n1 + i1) * w;                                                             \
              for (i64 j = 0; j < w; j++) {                                                                     \
                out[2 * j] = ra[j];                                                                             \
                out[2 * j + 1] = ri[j];                                                                         \
              }                                                                                                 \
            } else {                                                                                            \
              for (i64 j = 0; j < w; j++) {                                                                     \
                out[2 * j] = ra[j];                                                                             \
                out[2 * j + 1] = (T)0;                                                                          \
              }                                                                                                 \
            }                                                                                                   \
            memset(out + 2 * w, 0, 2 * (g2 - a2 - w) * sizeof(T));                                              \
          }                                                                                                     \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
  }                                                                                                             \
                                                                                                                \
  /* z: (batch, n, g0, g1, g2) complex. The region start..start + size of signal (b, c): its real part to       \
     out1 + b * s1b + c * s1c (a contiguous plane) plus bias1[c], its imaginary part (c < n2) likewise to out2. */ \
  void lk_unpack_pairs_##S(const T *z, T *out1, T *out2, i64 batch, i64 n, i64 n2, const i64 *grid,             \
                           const i64 *start, const i64 *size, i64 s1b, i64 s1c, i64 s2b, i64 s2c,               \
                           const T *bias1, const T *bias2, int threads) {                                       \
    const i64 g0 = grid[0], g1 = grid[1], g2 = grid[2], n0 = size[0], n1 = size[1], w = size[2];               \
    _Pragma("omp parallel for collapse(2) num_threads(threads) schedule(static)")                               \
    for (i64 b = 0; b < batch; b++) {                                                                           \
      for (i64 c = 0; c < n; c++) {                                                                             \
        const T *plane = z + 2 * (b * n + c) * g0 * g1 * g2;                                                    \
        const T c1 = bias1 ? bias1[c] : (T)0;                                                                   \
        const int both = c < n2;                                                                                \
        const T c2 = both && bias2 ? bias2[c] : (T)0;                                                           \
        T *d1 = out1 + b * s1b + c * s1c;                                                                       \
        T *d2 = both ? out2 + b * s2b + c * s2c : 0;                                                            \
        for (i64 i0 = 0; i0 < n0; i0++) {                                                                       \
          for (i64 i1 = 0; i1 < n1; i1++) {                                                                     \
            const T *s = plane + 2 * (((start[0] + i0) * g1 + start[1] + i1) * g2 + start[2]);                  \
            T *r1 = d1 + (i0 * n1 + i1) * w;                                                                    \
            if (both) {                                                                                         \
              T *r2 = d2 + (i0 * n1 + i1) * w;                                                                  \
              for (i64 j = 0; j < w; j++) {                                                                     \
                r1[j] = s[2 * j] + c1;                                                                          \
                r2[j] = s[2 * j + 1] + c2;                                                                      \
              }                                                                                                 \
            } else {                                                                                            \
              for (i64 j = 0; j < w; j++) r1[j] = s[2 * j] + c1;                                                \
            }                                                                                                   \
          }                                                                                                     \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
  }                                                                                                             \
                                                                                                                \
  /* One row of y = a z + d conj(zm), zm the mirrored row (element j of the row pairs with mirror element       \
     (g2 - j) mod g2): element 0 alone, then 1 .. g2 - 1 against the mirror row read backwards. */              \
  static inline void lk_mirror_row_##S(const T *restrict z, const T *restrict zm, const T *restrict a,          \
                                      const T *restrict d, T *restrict y, i64 g2) {                             \
    {                                                                                                           \
      const T zr = z[0], zi = z[1], mr = zm[0], mi = -zm[1];                                                    \
      y[0] = a[0] * zr - a[1] * zi + d[0] * mr - d[1] * mi;                                                     \
      y[1] = a[0] * zi + a[1] * zr + d[0] * mi + d[1] * mr;                                                     \
    }                                                                                                           \
    for (i64 j = 1; j < g2; j++) {                                                                              \
      const T zr = z[2 * j], zi = z[2 * j + 1], mr = zm[2 * (g2 - j)], mi = zm[2 * (g2 - j) + 1];               \
      const T ar = a[2 * j], ai = a[2 * j + 1], dr = d[2 * j], di = d[2 * j + 1];                               \
      y[2 * j] = ar * zr - ai * zi + dr * mr + di * mi; /* mi unnegated: gcc 12 vectorizes only so */               \
      y[2 * j + 1] = ar * zi + ai * zr - dr * mi + di * mr;                                                     \
    }                                                                                                           \
  }                                                                                                             \
                                                                                                                \
  /* z: (batch, n, G) complex; a, d: (n, per, G); y: (batch, n, per, G). y = a z + d conj(z[-k]). */           \
  void lk_mirror_product_##S(const T *z, const T *a, const T *d, T *y, i64 batch, i64 n, i64 per,              \
                             const i64 *grid, int threads) {                                                    \
    const i64 g0 = grid[0], g1 = grid[1], g2 = grid[2], G = g0 * g1 * g2;                                       \
    _Pragma("omp parallel for collapse(2) num_threads(threads) schedule(static)")                               \
    for (i64 b = 0; b < batch; b++) {                                                                           \
      for (i64 p = 0; p < n; p++) {                                                                             \
        const T *zp = z + 2 * (b * n + p) * G;                                                                  \
        for (i64 o = 0; o < per; o++) {                                                                         \
          const T *ap = a + 2 * (p * per + o) * G, *dp = d + 2 * (p * per + o) * G;                             \
          T *yp = y + 2 * ((b * n + p) * per + o) * G;                                                          \
          for (i64 r = 0; r < g0 * g1; r++) {                                                                   \
            const i64 row = r * g2, mrow = (MIRROR(r / g1, g0) * g1 + MIRROR(r % g1, g1)) * g2;                 \
            lk_mirror_row_##S(zp + 2 * row, zp + 2 * mrow, ap + 2 * row, dp + 2 * row, yp + 2 * row, g2);       \
          }                                                                                                     \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
  }                                                                                                             \
                                                                                                                \
  /* One row of the adjoint: gx += conj(a) g + conj(d) conj(gm) (if gx); u += z conj(g), v += z gm (if u). */  \
  static inline void lk_mirror_grad_row_##S(const T *restrict z, const T *restrict g, const T *restrict gm,      \
                                           const T *restrict a, const T *restrict d, T *restrict gx,            \
                                           T *restrict u, T *restrict v, i64 g2) {                              \
    for (i64 j = 0; j < g2; j++) {                                                                              \
      const i64 m = j ? g2 - j : 0;                                                                             \
      const T gr = g[2 * j], gi = g[2 * j + 1], mr = gm[2 * m], mi = gm[2 * m + 1];                             \
      if (gx) {                                                                                                 \
        const T ar = a[2 * j], ai = a[2 * j + 1], dr = d[2 * j], di = d[2 * j + 1];                             \
        gx[2 * j] += ar * gr + ai * gi + dr * mr - di * mi;                                                     \
        gx[2 * j + 1] += ar * gi - ai * gr - dr * mi - di * mr;                                                 \
      }                                                                                                         \
      if (u) {                                                                                                  \
        const T zr = z[2 * j], zi = z[2 * j + 1];                                                               \
        u[2 * j] += zr * gr + zi * gi;                                                                          \
        u[2 * j + 1] += zi * gr - zr * gi;                                                                      \
        v[2 * j] += zr * mr - zi * mi;                                                                          \
        v[2 * j + 1] += zr * mi + zi * mr;                                                                      \
      }                                                                                                         \
    }                                                                                                           \
  }                                                                                                             \
                                                                                                                \
  /* z: (batch, n, G) complex or null; g: (batch, n, per, G); a, d: (n, per, G); gx: (batch, n, G) or null;     \
     u, v: (n, per, G) or null. gx = sum_o conj(a) g + conj(d) conj(g[-k]); u = sum_b z conj(g);               \
     v = sum_b z g[-k]. Parallel over (pair, grid row): every output row belongs to one iteration. */           \
  void lk_mirror_grad_##S(const T *z, const T *g, const T *a, const T *d, T *gx, T *u, T *v, i64 batch, i64 n,  \
                          i64 per, const i64 *grid, int threads) {                                              \
    const i64 g0 = grid[0], g1 = grid[1], g2 = grid[2], G = g0 * g1 * g2;                                       \
    _Pragma("omp parallel for collapse(2) num_threads(threads) schedule(static)")                               \
    for (i64 p = 0; p < n; p++) {                                                                               \
      for (i64 r = 0; r < g0 * g1; r++) {                                                                       \
        const i64 row = r * g2, mrow = (MIRROR(r / g1, g0) * g1 + MIRROR(r % g1, g1)) * g2;                     \
        if (u) {                                                                                                \
          for (i64 o = 0; o < per; o++) {                                                                       \
            memset(u + 2 * ((p * per + o) * G + row), 0, 2 * g2 * sizeof(T));                                   \
            memset(v + 2 * ((p * per + o) * G + row), 0, 2 * g2 * sizeof(T));                                   \
          }                                                                                                     \
        }                                                                                                       \
        for (i64 b = 0; b < batch; b++) {                                                                       \
          T *gxp = gx ? gx + 2 * ((b * n + p) * G + row) : 0;                                                   \
          if (gxp) memset(gxp, 0, 2 * g2 * sizeof(T));                                                          \
          for (i64 o = 0; o < per; o++) {                                                                       \
            const T *gp = g + 2 * ((b * n + p) * per + o) * G;                                                  \
            const i64 k = 2 * ((p * per + o) * G + row);                                                        \
            lk_mirror_grad_row_##S(z ? z + 2 * ((b * n + p) * G + row) : 0, gp + 2 * row, gp + 2 * mrow,        \
                                   a + k, d + k, gxp, u ? u + k : 0, u ? v + k : 0, g2);                        \
          }                                                                                                     \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
  }                                                                                                             \
                                                                                                                \
  /* spec, q: (batch, C, n) complex, contiguous; w: (C, n) complex or null; acc: (C, n) complex or null.        \
     acc = sum_b spec[b] * q[b] (conj(q[b]) with conj_q), then q[b] *= w (conj(w) with conj_w). */               \
  void lk_spectral_grad_##S(const T *spec, T *q, const T *w, T *acc, i64 batch, i64 channels, i64 n,           \
                            int conj_q, int conj_w, int threads) {                                              \
    const i64 chunks = (n + CHUNK - 1) / CHUNK;                                                                 \
    const T sq = conj_q ? (T)-1 : (T)1, sw = conj_w ? (T)-1 : (T)1;                                             \
    _Pragma("omp parallel for collapse(2) num_threads(threads) schedule(static)")                               \
    for (i64 c = 0; c < channels; c++) {                                                                        \
      for (i64 k = 0; k < chunks; k++) {                                                                        \
        T re[CHUNK], im[CHUNK];                                                                                 \
        const i64 j0 = k * CHUNK, m = n - j0 < CHUNK ? n - j0 : CHUNK;                                          \
        for (i64 j = 0; j < m; j++) re[j] = im[j] = (T)0;                                                       \
        const T *wc = w ? w + 2 * (c * n + j0) : 0;                                                             \
        for (i64 b = 0; b < batch; b++) {                                                                       \
          const T *sp = acc ? spec + 2 * ((b * channels + c) * n + j0) : 0;                                     \
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
            a[2 * j] = re[j];                                                                                   \
            a[2 * j + 1] = im[j];                                                                               \
          }                                                                                                     \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
  }

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
