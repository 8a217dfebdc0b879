/* The forward pass of a stack of small fully connected layers, a tile of samples at a time.
 *
 * Built by dwivae.kernel with the system C compiler (-O3 -march=native -ffast-math) and called
 * through ctypes. Samples are taken TILE at a time and transposed to feature-major order, so that
 * every layer is, for each output feature j, acc[0..TILE) = b[j] + sum_i W[j, i] * a[i][0..TILE):
 * broadcast-FMA over whole vector registers, with the tile's activations staying in L1 from the
 * first layer to the last. Activations use a polynomial exp (relative error ~2e-7).
 *
 * GCC/Clang vector extensions only: no intrinsics, so the same source builds for any target.
 */
#include <stdint.h>
#include <string.h>

#define VW 8                      /* floats per vector (AVX2); fewer lanes just mean more ops */
#define TILE 32                   /* samples per tile: 4 vectors per feature row */
#define NV (TILE / VW)
#define BLOCK 2                   /* output rows computed together */
#define MAXW 1024                 /* widest layer the kernel takes; wider networks use torch */

typedef float v8 __attribute__((vector_size(VW * sizeof(float)), aligned(VW * sizeof(float))));
typedef int32_t v8i __attribute__((vector_size(VW * sizeof(int32_t)), aligned(VW * sizeof(int32_t))));

enum { ACT_NONE = 0, ACT_ELU = 1, ACT_SIGMOID = 2, ACT_RELU = 3, ACT_LEAKY_RELU = 4 };

static inline v8 splat(float x) { return (v8){x, x, x, x, x, x, x, x}; }

static inline v8 select(v8i mask, v8 a, v8 b) {
    return (v8)((mask & (v8i)a) | (~mask & (v8i)b));
}

/* exp(x) for x in float range: 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], degree-6 polynomial. */
static inline v8 vexp(v8 x) {
    x = select(x < splat(-87.0f), splat(-87.0f), x);
    x = select(x > splat(88.0f), splat(88.0f), x);
    const v8 t = x * splat(1.44269504088896341f) + splat(0.5f);
    v8i ni = __builtin_convertvector(t, v8i);        /* truncates: floor(t) for t >= 0 */
    ni += (v8i)(__builtin_convertvector(ni, v8) > t); /* floor(t) for t < 0 too (mask is -1) */
    const v8 n = __builtin_convertvector(ni, v8);    /* round(x log2 e), exact with -ffast-math */
    v8 r = x - n * splat(0.693359375f);
    r = r - n * splat(-2.12194440e-4f);
    v8 p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * r * r + r + splat(1.0f);
    v8i e = (ni + 127) << 23;
    return p * (v8)e;
}

static inline v8 activate(v8 h, int act) {
    switch (act) {
    case ACT_ELU: return select(h > splat(0.0f), h, vexp(h) - splat(1.0f));
    case ACT_SIGMOID: return splat(1.0f) / (splat(1.0f) + vexp(-h));
    case ACT_RELU: return select(h > splat(0.0f), h, splat(0.0f));
    case ACT_LEAKY_RELU: return select(h > splat(0.0f), h, h * splat(0.01f));
    default: return h;
    }
}

/* Rows [j, j + R) of one layer on one tile: out[j] = act(b[j] + W[j, :] . in). */
#define LAYER_ROWS(R, NAME)                                                                           \
    static inline void NAME(const v8 *in, v8 *out, const float *W, const float *b, int j,         \
                               int n_in, int act) {                                              \
        v8 acc[R][NV];                                                                            \
        for (int r = 0; r < R; r++)                                                               \
            for (int v = 0; v < NV; v++) acc[r][v] = splat(b[j + r]);                             \
        for (int i = 0; i < n_in; i++) {                                                          \
            const v8 *x = in + (int64_t)i * NV;                                                   \
            for (int r = 0; r < R; r++) {                                                         \
                const v8 c = splat(W[(int64_t)(j + r) * n_in + i]);                              \
                for (int v = 0; v < NV; v++) acc[r][v] += c * x[v];                               \
            }                                                                                     \
        }                                                                                         \
        for (int r = 0; r < R; r++)                                                               \
            for (int v = 0; v < NV; v++) out[(int64_t)(j + r) * NV + v] = activate(acc[r][v], act); \
    }
LAYER_ROWS(1, one_row)
LAYER_ROWS(BLOCK, row_block)

/* One layer on one tile, BLOCK output rows at a time (they share each load of the input). */
static void layer(const v8 *in, v8 *out, const float *W, const float *b, int n_in, int n_out, int act) {
    int j = 0;
    for (; j + BLOCK <= n_out; j += BLOCK) row_block(in, out, W, b, j, n_in, act);
    for (; j < n_out; j++) one_row(in, out, W, b, j, n_in, act);
}

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
            layer(in, out, p, p + (int64_t)a * b, a, b, acts[l]);
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
