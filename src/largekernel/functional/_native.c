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
 *   transpose       a (rows, cols) complex matrix into (cols, rows), in square tiles that stay in L1 (the
 *                   contracting products' frequency-major operands; a strided copy is not cache-blocked).
 * And NIFF's two frequency networks (largekernel/nn/_frequency_op.py), small enough on a stage's grid that torch's
 * cost is its number of operations:
 *   niff_nets_forward   both nets' 1x1 layers with SiLU on the grid's coordinates, the last hidden features
 *                       symmetrised (k and -k), and both output layers: the filter, real/imaginary interleaved;
 *   niff_nets_backward  every parameter's gradient from the filter's, the chain rule layer by layer.
 * Complex values are interleaved (re, im), as torch stores them; grids are (g0, g1, g2), lower dims padded
 * with 1. Compiled per machine (-march=native), with OpenMP: the caller passes torch's intra-op thread count.
 * Every loop's output location is owned by one iteration of its parallel loop: results do not depend on the
 * thread count.
 */
#include <math.h>
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

#define TILE 32 /* complex values per side of a transpose tile */

#define DEFINE_TRANSPOSE(T, S)                                                                                   \
  void lk_transpose_##S(const T *src, T *dst, i64 rows, i64 cols, int threads) {                                \
    const i64 tiles_r = (rows + TILE - 1) / TILE, tiles_c = (cols + TILE - 1) / TILE;                           \
    _Pragma("omp parallel for collapse(2) num_threads(threads) schedule(static)")                               \
    for (i64 tr = 0; tr < tiles_r; tr++) {                                                                      \
      for (i64 tc = 0; tc < tiles_c; tc++) {                                                                    \
        const i64 r0 = tr * TILE, c0 = tc * TILE;                                                               \
        const i64 r1 = r0 + TILE < rows ? r0 + TILE : rows, c1 = c0 + TILE < cols ? c0 + TILE : cols;           \
        for (i64 c = c0; c < c1; c++) {                                                                         \
          T *out = dst + 2 * c * rows;                                                                          \
          for (i64 r = r0; r < r1; r++) {                                                                       \
            out[2 * r] = src[2 * (r * cols + c)];                                                               \
            out[2 * r + 1] = src[2 * (r * cols + c) + 1];                                                       \
          }                                                                                                     \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
  }

DEFINE_TRANSPOSE(float, f32)
DEFINE_TRANSPOSE(double, f64)

/* NIFF's nets. w: L + 2 widths (ndim, hidden_1 .. hidden_L, filters); P points. params: per linear layer (L + 1),
   W_re (out, in), b_re (out), W_im (out, in), b_im (out), row-major, one after another. coords: (ndim, P).
   kept: per hidden layer z_re, z_im (its pre-activations), h_re, h_im (its outputs), (out, P) each; then the
   symmetrised last features even, odd (w[L], P). out: (filters, 2 P), real/imaginary interleaved. The backward
   writes dparams in params' layout; work: 6 max(w[0..L]) P values. */
#define DEFINE_NET_KERNELS(T, S, EXP)                                                                            \
  void lk_niff_nets_forward_##S(i64 L, const i64 *w, i64 P, const T *params, const T *coords,                   \
                                const i64 *mirror, T *kept, T *out, int threads) {                              \
    const T *par = params, *hr = coords, *hi = coords;                                                          \
    T *k = kept;                                                                                                \
    for (i64 l = 0; l < L; l++) {                                                                               \
      const i64 in = w[l], o = w[l + 1];                                                                        \
      const T *Wr = par, *br = Wr + o * in, *Wi = br + o, *bi = Wi + o * in;                                    \
      const T *h0 = hr, *h1 = hi;                                                                               \
      T *z0 = k, *z1 = k + o * P, *y0 = k + 2 * o * P, *y1 = k + 3 * o * P;                                     \
      _Pragma("omp parallel for collapse(2) num_threads(threads) schedule(static)")                             \
      for (int net = 0; net < 2; net++) {                                                                       \
        for (i64 r = 0; r < o; r++) {                                                                           \
          const T *W = (net ? Wi : Wr) + r * in, *h = net ? h1 : h0;                                            \
          const T b = (net ? bi : br)[r];                                                                       \
          T *z = (net ? z1 : z0) + r * P, *y = (net ? y1 : y0) + r * P;                                         \
          for (i64 p = 0; p < P; p++) z[p] = b;                                                                 \
          for (i64 c = 0; c < in; c++) {                                                                        \
            const T a = W[c], *hc = h + c * P;                                                                  \
            for (i64 p = 0; p < P; p++) z[p] += a * hc[p];                                                      \
          }                                                                                                     \
          for (i64 p = 0; p < P; p++) y[p] = z[p] / ((T)1 + EXP(-z[p]));                                        \
        }                                                                                                       \
      }                                                                                                         \
      par = bi + o;                                                                                             \
      hr = y0;                                                                                                  \
      hi = y1;                                                                                                  \
      k += 4 * o * P;                                                                                           \
    }                                                                                                           \
    const i64 H = w[L], F = w[L + 1];                                                                           \
    T *even = k, *odd = k + H * P;                                                                              \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                           \
    for (i64 j = 0; j < H; j++) {                                                                               \
      const T *a = hr + j * P, *b = hi + j * P;                                                                 \
      for (i64 p = 0; p < P; p++) {                                                                             \
        even[j * P + p] = (T)0.5 * (a[p] + a[mirror[p]]);                                                       \
        odd[j * P + p] = (T)0.5 * (b[p] - b[mirror[p]]);                                                        \
      }                                                                                                         \
    }                                                                                                           \
    const T *Wr = par, *br = Wr + F * H, *Wi = br + F, *bi = Wi + F * H;                                        \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                           \
    for (i64 f = 0; f < F; f++) {                                                                               \
      T *row = out + 2 * f * P;                                                                                 \
      const T zero = (T)0.5 * (bi[f] - bi[f]); /* the imaginary bias cancels (NaN stays NaN) */                 \
      for (i64 p = 0; p < P; p++) {                                                                             \
        row[2 * p] = br[f];                                                                                     \
        row[2 * p + 1] = zero;                                                                                  \
      }                                                                                                         \
      for (i64 j = 0; j < H; j++) {                                                                             \
        const T a = Wr[f * H + j], c = Wi[f * H + j], *e = even + j * P, *d = odd + j * P;                      \
        for (i64 p = 0; p < P; p++) {                                                                           \
          row[2 * p] += a * e[p];                                                                               \
          row[2 * p + 1] += c * d[p];                                                                           \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
  }                                                                                                             \
                                                                                                                \
  void lk_niff_nets_backward_##S(i64 L, const i64 *w, i64 P, const T *params, const T *coords,                  \
                                 const i64 *mirror, const T *kept, const T *grad, T *dparams, T *work,          \
                                 int threads) {                                                                 \
    i64 widest = 0, at_out = 0, at_even = 0;                                                                    \
    for (i64 l = 0; l <= L; l++) {                                                                              \
      widest = w[l] > widest ? w[l] : widest;                                                                   \
      if (l < L) {                                                                                              \
        at_out += 2 * (w[l + 1] * w[l] + w[l + 1]);                                                             \
        at_even += 4 * w[l + 1] * P;                                                                            \
      }                                                                                                         \
    }                                                                                                           \
    const i64 H = w[L], F = w[L + 1];                                                                           \
    const T *even = kept + at_even, *odd = even + H * P;                                                        \
    const T *Wr = params + at_out, *Wi = Wr + F * H + F;                                                        \
    T *dWr = dparams + at_out, *dbr = dWr + F * H, *dWi = dbr + F, *dbi = dWi + F * H;                          \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                           \
    for (i64 f = 0; f < F; f++) {                                                                               \
      const T *g = grad + 2 * f * P;                                                                            \
      T sr = 0, si = 0;                                                                                         \
      for (i64 p = 0; p < P; p++) {                                                                             \
        sr += g[2 * p];                                                                                         \
        si += g[2 * p + 1];                                                                                     \
      }                                                                                                         \
      dbr[f] = sr;                                                                                              \
      dbi[f] = (T)0.5 * si - (T)0.5 * si;                                                                       \
      for (i64 j = 0; j < H; j++) {                                                                             \
        const T *e = even + j * P, *d = odd + j * P;                                                            \
        T a = 0, c = 0;                                                                                         \
        for (i64 p = 0; p < P; p++) {                                                                           \
          a += g[2 * p] * e[p];                                                                                 \
          c += g[2 * p + 1] * d[p];                                                                             \
        }                                                                                                       \
        dWr[f * H + j] = a;                                                                                     \
        dWi[f * H + j] = c;                                                                                     \
      }                                                                                                         \
    }                                                                                                           \
    /* the symmetrised features' gradients (work), then the last hidden outputs' (dh: mirror is an involution) */ \
    T *de = work, *dd = work + widest * P, *dh = work + 2 * widest * P, *dz = work + 4 * widest * P;            \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                           \
    for (i64 j = 0; j < H; j++) {                                                                               \
      T *a = de + j * P, *b = dd + j * P;                                                                       \
      for (i64 p = 0; p < P; p++) a[p] = b[p] = 0;                                                              \
      for (i64 f = 0; f < F; f++) {                                                                             \
        const T x = Wr[f * H + j], y = Wi[f * H + j], *g = grad + 2 * f * P;                                    \
        for (i64 p = 0; p < P; p++) {                                                                           \
          a[p] += x * g[2 * p];                                                                                 \
          b[p] += y * g[2 * p + 1];                                                                             \
        }                                                                                                       \
      }                                                                                                         \
    }                                                                                                           \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                                           \
    for (i64 j = 0; j < H; j++) {                                                                               \
      const T *a = de + j * P, *b = dd + j * P;                                                                 \
      T *x = dh + j * P, *y = dh + (widest + j) * P;                                                            \
      for (i64 p = 0; p < P; p++) {                                                                             \
        x[p] = (T)0.5 * (a[p] + a[mirror[p]]);                                                                  \
        y[p] = (T)0.5 * (b[p] - b[mirror[p]]);                                                                  \
      }                                                                                                         \
    }                                                                                                           \
    /* dh: (2, widest, P), the real net's rows first; dz and the next dh alternate between two such blocks */     \
    T *next = de;                                                                                               \
    i64 at_layer = at_out, at_kept = at_even;                                                                   \
    for (i64 l = L - 1; l >= 0; l--) {                                                                          \
      const i64 in = w[l], o = w[l + 1];                                                                        \
      at_layer -= 2 * (o * in + o);                                                                             \
      at_kept -= 4 * o * P;                                                                                     \
      const T *z0 = kept + at_kept, *z1 = z0 + o * P;                                                           \
      const T *h0 = l ? kept + at_kept - 4 * in * P + 2 * in * P : coords;                                      \
      const T *h1 = l ? h0 + in * P : coords;                                                                   \
      const T *Wl = params + at_layer;                                                                          \
      T *dW = dparams + at_layer;                                                                               \
      _Pragma("omp parallel for collapse(2) num_threads(threads) schedule(static)")                             \
      for (int net = 0; net < 2; net++) {                                                                       \
        for (i64 r = 0; r < o; r++) {                                                                           \
          const T *z = (net ? z1 : z0) + r * P, *d = dh + (net * widest + r) * P, *h = net ? h1 : h0;           \
          T *e = dz + (net * widest + r) * P, s = 0;                                                            \
          for (i64 p = 0; p < P; p++) {                                                                         \
            const T sg = (T)1 / ((T)1 + EXP(-z[p]));                                                            \
            e[p] = d[p] * sg * ((T)1 + z[p] * ((T)1 - sg));                                                     \
            s += e[p];                                                                                          \
          }                                                                                                     \
          T *dWn = dW + net * (o * in + o), *dbn = dWn + o * in;                                                \
          dbn[r] = s;                                                                                           \
          for (i64 c = 0; c < in; c++) {                                                                        \
            const T *hc = h + c * P;                                                                            \
            T a = 0;                                                                                            \
            for (i64 p = 0; p < P; p++) a += e[p] * hc[p];                                                      \
            dWn[r * in + c] = a;                                                                                \
          }                                                                                                     \
        }                                                                                                       \
      }                                                                                                         \
      if (l == 0) break;                                                                                        \
      _Pragma("omp parallel for collapse(2) num_threads(threads) schedule(static)")                             \
      for (int net = 0; net < 2; net++) {                                                                       \
        for (i64 c = 0; c < in; c++) {                                                                          \
          const T *W = Wl + net * (o * in + o);                                                                 \
          T *x = next + (net * widest + c) * P;                                                                 \
          for (i64 p = 0; p < P; p++) x[p] = 0;                                                                 \
          for (i64 r = 0; r < o; r++) {                                                                         \
            const T a = W[r * in + c], *e = dz + (net * widest + r) * P;                                        \
            for (i64 p = 0; p < P; p++) x[p] += a * e[p];                                                       \
          }                                                                                                     \
        }                                                                                                       \
      }                                                                                                         \
      T *swap = dh;                                                                                             \
      dh = next;                                                                                                \
      next = swap;                                                                                              \
    }                                                                                                           \
  }

DEFINE_NET_KERNELS(float, f32, expf)
DEFINE_NET_KERNELS(double, f64, exp)
