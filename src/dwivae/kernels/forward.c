/* The forward pass of a stack of small fully connected layers, a tile of samples at a time.
 *
 * Built by dwivae.kernels.bindings with the system C compiler (-O3 -march=native -ffast-math) and called
 * through ctypes. Samples are taken TILE at a time and transposed to feature-major order (8 x 8
 * blocks in AVX registers), so that every layer is, for each output feature j,
 * acc[0..TILE) = b[j] + sum_i W[j, i] * a[i][0..TILE): broadcast-FMA over whole vector registers,
 * with the tile's activations staying in L1 from the first layer to the last. Activations use a
 * polynomial exp (relative error ~1e-7, simd.h). The next tile's rows are prefetched.
 */
#include <stdlib.h>

#include "simd.h"

#define STREAM_BYTES (8 << 20)     /* outputs from this size on bypass the cache */

/* Samples s0.. (m of them, rows of width n_in) into the feature-major tile t (row i: TILE samples). */
static inline void tile_in(float *t, const float *x, int64_t s0, int m, int n_in) {
    int i0 = 0;
#if defined(__AVX__)
    if (m == TILE)
        for (; i0 + 8 <= n_in; i0 += 8)
            for (int sb = 0; sb < TILE; sb += 8) {
                __m256 r[8];
                for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps(x + (s0 + sb + k) * n_in + i0);
                transpose8(r);
                for (int q = 0; q < 8; q++) _mm256_store_ps(t + (i0 + q) * TILE + sb, r[q]);
            }
#endif
    for (int s = 0; s < TILE; s++)
        for (int i = i0; i < n_in; i++) t[i * TILE + s] = s < m ? x[(s0 + s) * n_in + i] : 0.0f;
}

/* The tile's first m samples back into rows of width n_out. With stream set (whole tiles, y on a
 * 32-byte boundary, n_out a multiple of 8), the rows are put together in L1 and written with
 * non-temporal stores, whole cache lines that skip the read for ownership. */
static inline void tile_out(float *y, const float *t, int64_t s0, int m, int n_out, int stream, v8 *rows) {
    int i0 = 0;
#if defined(__AVX__)
    if (m == TILE) {
        const int row_vectors = n_out / 8;
        for (; i0 + 8 <= n_out; i0 += 8)
            for (int sb = 0; sb < TILE; sb += 8) {
                __m256 r[8];
                for (int q = 0; q < 8; q++) r[q] = _mm256_load_ps(t + (i0 + q) * TILE + sb);
                transpose8(r);
                if (stream)
                    for (int k = 0; k < 8; k++) rows[(sb + k) * row_vectors + i0 / 8] = (v8)r[k];
                else
                    for (int k = 0; k < 8; k++) _mm256_storeu_ps(y + (s0 + sb + k) * n_out + i0, r[k]);
            }
        if (stream) {
            for (int k = 0; k < TILE * row_vectors; k++) _mm256_stream_ps(y + s0 * n_out + 8 * k, (__m256)rows[k]);
            return;
        }
    }
#else
    (void)stream, (void)rows;
#endif
    for (int s = 0; s < m; s++)
        for (int i = i0; i < n_out; i++) y[(s0 + s) * n_out + i] = t[i * TILE + s];
}

/* y[s, :] = network(x[s, :] / scale[s]) * scale[s] for s < n (scale may be NULL: 1).
 *
 * Rows are taken chunk at a time (rounded up to whole tiles) from the counter *next, atomically,
 * until it passes n: threads that call this with the same counter share the rows out as they go,
 * so that one held up by another job on its core leaves the rest to the others (measurements in
 * docs/performance.md). widths has n_layers + 1 entries; params
 * holds, layer after layer, W (n_out x n_in, row-major) then b (n_out); acts has one code per
 * layer. Returns 0, -1 if a layer is wider than MAXW, or -2 if its buffers could not be allocated.
 */
int dwivae_forward(const float *x, const float *scale, float *y, int64_t n, int64_t *next, int64_t chunk,
                   int n_layers, const int *widths, const float *params, const int *acts) {
    int widest = 1;
    for (int l = 0; l <= n_layers; l++) {
        if (widths[l] > MAXW || widths[l] < 1) return -1;
        widest = widths[l] > widest ? widths[l] : widest;
    }
    /* one block per call for the two tiles and the staged rows (thread-local arrays cost a TLS
     * lookup per use in a shared library: ~4 % slower) */
    v8 *const buf0 = aligned_alloc(sizeof(v8), 3 * (size_t)widest * NV * sizeof(v8));
    if (!buf0) return -2;
    v8 *const buf1 = buf0 + widest * NV, *const rows = buf1 + widest * NV;
    const int n_in = widths[0], n_out = widths[n_layers];
    const int stream = n_out % 8 == 0 && ((uintptr_t)y & 31) == 0
                       && n * n_out * (int64_t)sizeof(float) >= STREAM_BYTES;
    chunk = chunk < TILE ? TILE : (chunk + TILE - 1) / TILE * TILE;
    for (int64_t s0 = 0, end = 0;; s0 += TILE) {
        if (s0 >= end) {                 /* the next chunk of rows */
            s0 = __atomic_fetch_add(next, chunk, __ATOMIC_RELAXED);
            if (s0 >= n) break;
            end = n - s0 < chunk ? n : s0 + chunk;
        }
        const int m = (end - s0 < TILE) ? (int)(end - s0) : TILE;
        tile_in((float *)buf0, x, s0, m, n_in);
        if (s0 + 2 * TILE <= end)        /* the next tile's rows, on their way while this one is computed */
            for (int64_t b = 0; b < (int64_t)TILE * n_in * (int64_t)sizeof(float); b += 64)
                __builtin_prefetch((const char *)(x + (s0 + TILE) * n_in) + b, 0, 3);
        v8 k[NV];
        if (scale) {
            for (int s = 0; s < TILE; s++) k[s / VW][s % VW] = s < m ? scale[s0 + s] : 1.0f;
            v8 inv[NV];
            for (int v = 0; v < NV; v++) inv[v] = splat(1.0f) / k[v];
            for (int i = 0; i < n_in; i++)
                for (int v = 0; v < NV; v++) buf0[i * NV + v] *= inv[v];
        }
        v8 *in = buf0, *out = buf1;
        const float *p = params;
        for (int l = 0; l < n_layers; l++) {
            const int a = widths[l], b = widths[l + 1];
            const float *bias = p + (int64_t)a * b;
            switch (acts[l]) {      /* a copy of the layer for each of the study's activations */
            case ACT_ELU_EIGHTHS: dense_layer(in, out, NV, p, a, bias, 1, a, b, ACT_ELU_EIGHTHS, 0.01f); break;
            case ACT_SIGMOID_EIGHTHS: dense_layer(in, out, NV, p, a, bias, 1, a, b, ACT_SIGMOID_EIGHTHS, 0.01f); break;
            default: dense_layer(in, out, NV, p, a, bias, 1, a, b, acts[l], 0.01f);
            }
            p += (int64_t)a * b + b;
            v8 *swap = in; in = out; out = swap;
        }
        if (scale)
            for (int i = 0; i < n_out; i++)
                for (int v = 0; v < NV; v++) in[i * NV + v] *= k[v];
        tile_out(y, (const float *)in, s0, m, n_out, stream, rows);
    }
#if defined(__AVX__)
    if (stream) _mm_sfence();            /* the streamed rows, visible before this call returns */
#endif
    free(buf0);
    return 0;
}
