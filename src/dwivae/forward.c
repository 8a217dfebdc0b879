/* The forward pass of a stack of small fully connected layers, a tile of samples at a time.
 *
 * Built by dwivae.kernel with the system C compiler (-O3 -march=native -ffast-math) and called
 * through ctypes. Samples are taken TILE at a time and transposed to feature-major order, so that
 * every layer is, for each output feature j, acc[0..TILE) = b[j] + sum_i W[j, i] * a[i][0..TILE):
 * broadcast-FMA over whole vector registers, with the tile's activations staying in L1 from the
 * first layer to the last. Activations use a polynomial exp (relative error ~2e-7).
 */
#include "simd.h"

/* y[s, :] = network(x[s, :] / scale[s]) * scale[s] for s < n (scale may be NULL: 1).
 *
 * widths has n_layers + 1 entries; params holds, layer after layer, W (n_out x n_in, row-major)
 * then b (n_out); acts has one code per layer. Returns 0, or -1 if a layer is wider than MAXW.
 */
int dwivae_forward(const float *x, const float *scale, float *y, int64_t n, int n_layers,
                   const int *widths, const float *params, const int *acts) {
    for (int l = 0; l <= n_layers; l++)
        if (widths[l] > MAXW || widths[l] < 1) return -1;
    static _Thread_local v8 buf0[MAXW * NV], buf1[MAXW * NV];
    const int n_in = widths[0], n_out = widths[n_layers];
    for (int64_t s0 = 0; s0 < n; s0 += TILE) {
        const int m = (n - s0 < TILE) ? (int)(n - s0) : TILE;
        float *t = (float *)buf0;
        for (int s = 0; s < TILE; s++) {           /* transpose in; pad a short tile with zeros */
            const float k = (s < m && scale) ? scale[s0 + s] : 1.0f;
            for (int i = 0; i < n_in; i++) t[i * TILE + s] = s < m ? x[(s0 + s) * n_in + i] / k : 0.0f;
        }
        v8 *in = buf0, *out = buf1;
        const float *p = params;
        for (int l = 0; l < n_layers; l++) {
            const int a = widths[l], b = widths[l + 1];
            dense_layer(in, out, NV, p, a, p + (int64_t)a * b, 1, a, b, acts[l], 0.01f);
            p += (int64_t)a * b + b;
            v8 *swap = in; in = out; out = swap;
        }
        const float *r = (const float *)in;
        for (int s = 0; s < m; s++) {               /* transpose out */
            const float k = scale ? scale[s0 + s] : 1.0f;
            for (int i = 0; i < n_out; i++) y[(s0 + s) * n_out + i] = r[i * TILE + s] * k;
        }
    }
    return 0;
}
