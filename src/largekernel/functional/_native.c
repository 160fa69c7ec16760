/* Fused CPU passes of the depthwise FFT paths (largekernel/functional/_native.py compiles and loads this).
 *
 * Torch spends one kernel launch and one pass over a cache-sized block per elementwise step; these steps of
 * the depthwise paths read the same data several times or make temporaries:
 *   pack_pairs      two real channels -> one complex signal on a zero-filled grid (one write of the grid);
 *   unpack_pairs    a complex signal -> its two real channels, cropped, plus a per-channel bias;
 *   mirror_product  y = w1 X1 + w2 (i X2): the product of a channel pair's spectrum z with two different real
 *                   kernels' spectra, X1 = (z + conj(z[-k])) / 2, i X2 = (z - conj(z[-k])) / 2, z[-k] the mirrored bin;
 *   mirror_grad     its adjoint gx, and the two members' kernel-gradient
 *                   sums (u + v) / 2, (u - v) / 2 of u = sum_b z conj(g), v = sum_b z g[-k], in one pass;
 *   hermitian       in place, the (scaled, optionally conjugated) Hermitian part (s[k] + conj(s[-k])) / 2;
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
#define BAND 16   /* grid rows per mirror_grad work item */

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
  /* Element j of one row of y = (w1' (z + c) + w2' (z - c)) / 2 (added to y with acc), c = conj(zm[q]),       \
     w' = w (sign 1) or conj(w) (sign -1); w2 null: no partner (w2 = 0). */                                     \
  static inline void lk_pair_point_##S(const T *restrict z, const T *restrict zm, const T *restrict w1,         \
                                       const T *restrict w2, T *restrict y, i64 j, i64 q, const T sign,         \
                                       const int acc) {                                                         \
    const T pr = z[2 * j] + zm[2 * q], pi = z[2 * j + 1] - zm[2 * q + 1];                                       \
    const T qr = z[2 * j] - zm[2 * q], qi = z[2 * j + 1] + zm[2 * q + 1];                                       \
    const T ar = w1[2 * j], ai = sign * w1[2 * j + 1];                                                          \
    T re = ar * pr - ai * pi, im = ar * pi + ai * pr;                                                           \
    if (w2) {                                                                                                   \
      const T br = w2[2 * j], bi = sign * w2[2 * j + 1];                                                        \
      re += br * qr - bi * qi;                                                                                  \
      im += br * qi + bi * qr;                                                                                  \
    }                                                                                                           \
    y[2 * j] = (acc ? y[2 * j] : (T)0) + (T)0.5 * re;                                                           \
    y[2 * j + 1] = (acc ? y[2 * j + 1] : (T)0) + (T)0.5 * im;                                                   \
  }                                                                                                             \
                                                                                                                \
  /* One row of that product, zm the mirrored row: element j pairs with mirror element (g2 - j) mod g2, so       \
     element 0 is done alone and 1 .. g2 - 1 read the mirror row backwards, in a loop per partner case that     \
     vectorizes. The product (sign 1, y =) and its adjoint (sign -1, y +=, z the output gradient) are this row. */ \
  static inline void lk_pair_row_##S(const T *restrict z, const T *restrict zm, const T *restrict w1,           \
                                     const T *restrict w2, T *restrict y, i64 g2, const T sign, const int acc) { \
    lk_pair_point_##S(z, zm, w1, w2, y, 0, 0, sign, acc);                                                       \
    if (w2) {                                                                                                   \
      for (i64 j = 1; j < g2; j++) lk_pair_point_##S(z, zm, w1, w2, y, j, g2 - j, sign, acc);                   \
    } else {                                                                                                    \
      for (i64 j = 1; j < g2; j++) lk_pair_point_##S(z, zm, w1, 0, y, j, g2 - j, sign, acc);                    \
    }                                                                                                           \
  }                                                                                                             \
                                                                                                                \
  /* z: (batch, n, G) complex; w1: (n, per, G); w2: (n2, per, G), n2 <= n; y: (batch, n, per, G).               \
     y = w1 X1 + w2 (i X2), X1 = (z + conj(z[-k])) / 2 and i X2 = (z - conj(z[-k])) / 2 the pair's spectra. */   \
  void lk_mirror_product_##S(const T *z, const T *w1, const T *w2, T *y, i64 batch, i64 n, i64 n2, i64 per,     \
                             const i64 *grid, int threads) {                                                    \
    const i64 g0 = grid[0], g1 = grid[1], g2 = grid[2], G = g0 * g1 * g2;                                       \
    _Pragma("omp parallel for collapse(2) num_threads(threads) schedule(static)")                               \
    for (i64 b = 0; b < batch; b++) {                                                                           \
      for (i64 p = 0; p < n; p++) {                                                                             \
        const T *zp = z + 2 * (b * n + p) * G;                                                                  \
        for (i64 o = 0; o < per; o++) {                                                                         \
          const T *ap = w1 + 2 * (p * per + o) * G, *bp = p < n2 ? w2 + 2 * (p * per + o) * G : 0;              \
          T *yp = y + 2 * ((b * n + p) * per + o) * G;                                                          \
          for (i64 r = 0; r < g0 * g1; r++) {                                                                   \
            const i64 row = r * g2, mrow = (MIRROR(r / g1, g0) * g1 + MIRROR(r % g1, g1)) * g2;                 \
            lk_pair_row_##S(zp + 2 * row, zp + 2 * mrow, ap + 2 * row, bp ? bp + 2 * row : 0, yp + 2 * row, g2, \
                            (T)1, 0);                                                                           \
          }                                                                                                     \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
  }                                                                                                             \
                                                                                                                \
  /* One row of the adjoint: gx += (conj(w1) (g + c) + conj(w2) (g - c)) / 2, c = conj(gm) (if gx; w2 null: no  \
     partner); u += z conj(g), v += z gm (if u). Mirror elements as in lk_pair_row, one loop per output so that  \
     each vectorizes. */                                                                                        \
  static inline void lk_mirror_grad_row_##S(const T *restrict z, const T *restrict g, const T *restrict gm,      \
                                           const T *restrict w1, const T *restrict w2, T *restrict gx,          \
                                           T *restrict u, T *restrict v, i64 g2) {                              \
    if (gx) lk_pair_row_##S(g, gm, w1, w2, gx, g2, (T)-1, 1);                                                   \
    if (u) {                                                                                                    \
      u[0] += z[0] * g[0] + z[1] * g[1];                                                                        \
      u[1] += z[1] * g[0] - z[0] * g[1];                                                                        \
      v[0] += z[0] * gm[0] - z[1] * gm[1];                                                                      \
      v[1] += z[0] * gm[1] + z[1] * gm[0];                                                                      \
      for (i64 j = 1; j < g2; j++) {                                                                            \
        const T zr = z[2 * j], zi = z[2 * j + 1], gr = g[2 * j], gi = g[2 * j + 1];                             \
        const T mr = gm[2 * (g2 - j)], mi = gm[2 * (g2 - j) + 1];                                               \
        u[2 * j] += zr * gr + zi * gi;                                                                          \
        u[2 * j + 1] += zi * gr - zr * gi;                                                                      \
        v[2 * j] += zr * mr - zi * mi;                                                                          \
        v[2 * j + 1] += zr * mi + zi * mr;                                                                      \
      }                                                                                                         \
    }                                                                                                           \
  }                                                                                                             \
                                                                                                                \
  /* z: (batch, n, G) complex or null; g: (batch, n, per, G); w1: (n, per, G), w2: (n2, per, G); gx: (batch, n, \
     G) or null; s1, s2: (n, per, G) or null. gx = sum_o the adjoint of lk_mirror_product; with U = sum_b z       \
     conj(g) and V = sum_b z g[-k]: s1 = (U + V) / 2, s2 = (U - V) / 2 (the two members' kernel-gradient sums).   \
     Parallel over (pair, band of BAND grid rows): each iteration owns its output rows, and walks the batch over  \
     its band (long sequential reads; the band's sums stay in cache). */                                        \
  void lk_mirror_grad_##S(const T *z, const T *g, const T *w1, const T *w2, T *gx, T *s1, T *s2, i64 batch,      \
                          i64 n, i64 n2, i64 per, const i64 *grid, int threads) {                               \
    const i64 g0 = grid[0], g1 = grid[1], g2 = grid[2], G = g0 * g1 * g2, rows = g0 * g1;                       \
    const i64 bands = (rows + BAND - 1) / BAND;                                                                 \
    _Pragma("omp parallel for collapse(2) num_threads(threads) schedule(static)")                               \
    for (i64 p = 0; p < n; p++) {                                                                               \
      for (i64 band = 0; band < bands; band++) {                                                                \
        const i64 r0 = band * BAND, r1 = r0 + BAND < rows ? r0 + BAND : rows;                                   \
        if (s1) {                                                                                               \
          for (i64 o = 0; o < per; o++) {                                                                       \
            memset(s1 + 2 * ((p * per + o) * G + r0 * g2), 0, 2 * (r1 - r0) * g2 * sizeof(T));                  \
            memset(s2 + 2 * ((p * per + o) * G + r0 * g2), 0, 2 * (r1 - r0) * g2 * sizeof(T));                  \
          }                                                                                                     \
        }                                                                                                       \
        for (i64 b = 0; b < batch; b++) {                                                                       \
          if (gx) memset(gx + 2 * ((b * n + p) * G + r0 * g2), 0, 2 * (r1 - r0) * g2 * sizeof(T));              \
          for (i64 o = 0; o < per; o++) {                                                                       \
            const T *gp = g + 2 * ((b * n + p) * per + o) * G;                                                  \
            for (i64 r = r0; r < r1; r++) {                                                                     \
              const i64 row = r * g2, mrow = (MIRROR(r / g1, g0) * g1 + MIRROR(r % g1, g1)) * g2;               \
              const i64 k = 2 * ((p * per + o) * G + row);                                                      \
              lk_mirror_grad_row_##S(z ? z + 2 * ((b * n + p) * G + row) : 0, gp + 2 * row, gp + 2 * mrow,      \
                                     w1 + k, p < n2 ? w2 + k : 0, gx ? gx + 2 * ((b * n + p) * G + row) : 0,    \
                                     s1 ? s1 + k : 0, s1 ? s2 + k : 0, g2);                                     \
            }                                                                                                   \
          }                                                                                                     \
        }                                                                                                       \
        if (s1) {                                                                                               \
          for (i64 o = 0; o < per; o++) {                                                                       \
            T *u = s1 + 2 * ((p * per + o) * G + r0 * g2), *v = s2 + 2 * ((p * per + o) * G + r0 * g2);        \
            for (i64 j = 0; j < 2 * (r1 - r0) * g2; j++) {                                                      \
              const T uj = u[j], vj = v[j];                                                                     \
              u[j] = (T)0.5 * (uj + vj);                                                                        \
              v[j] = (T)0.5 * (uj - vj);                                                                        \
            }                                                                                                   \
          }                                                                                                     \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
  }                                                                                                             \
                                                                                                                \
  /* s: (count, g0, g1, g2) complex, in place: s[k] = scale * h[k] (conj(h[k]) with conj_out), h[k] = (s[k] +      \
     conj(s[-k])) / 2 the Hermitian part. Each work item owns a row and its mirror row (the lower-numbered of the  \
     two runs it), so every pair (k, -k) is read before either is written. */                                   \
  void lk_hermitian_##S(T *s, i64 count, const i64 *grid, T scale, int conj_out, int threads) {                 \
    const i64 g0 = grid[0], g1 = grid[1], g2 = grid[2], rows = g0 * g1;                                         \
    const T half = (T)0.5 * scale, sign = conj_out ? (T)-1 : (T)1;                                              \
    _Pragma("omp parallel for collapse(2) num_threads(threads) schedule(static)")                               \
    for (i64 c = 0; c < count; c++) {                                                                           \
      for (i64 r = 0; r < rows; r++) {                                                                          \
        const i64 m = MIRROR(r / g1, g0) * g1 + MIRROR(r % g1, g1);                                             \
        if (m < r) continue;                                                                                    \
        T *x = s + 2 * (c * rows + r) * g2, *y = s + 2 * (c * rows + m) * g2;                                   \
        /* element j pairs with mirror element (g2 - j) mod g2 of the mirror row; within a self-mirrored row   \
           only the first half of the pairs is visited */                                                       \
        const i64 stop = m == r ? g2 / 2 + 1 : g2;                                                              \
        for (i64 j = 0; j < stop; j++) {                                                                        \
          const i64 q = j ? g2 - j : 0;                                                                         \
          const T re = half * (x[2 * j] + y[2 * q]), im = sign * half * (x[2 * j + 1] - y[2 * q + 1]);          \
          x[2 * j] = re;                                                                                        \
          x[2 * j + 1] = im;                                                                                    \
          y[2 * q] = re;                                                                                        \
          y[2 * q + 1] = -im;                                                                                   \
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
