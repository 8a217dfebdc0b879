/* Shared by forward.c and train_step.c: float vectors, a vectorised exp, the activations.
 *
 * GCC/Clang vector extensions only, no intrinsics, so the same source builds for any target;
 * built with -O3 -march=native -ffast-math by dwivae.kernel.
 */
#ifndef DWIVAE_SIMD_H
#define DWIVAE_SIMD_H
#include <stdint.h>
#include <string.h>

#define VW 8                      /* floats per vector (AVX2); fewer lanes just mean more ops */
#define TILE 32                   /* samples per tile: 4 vectors per feature row */
#define NV (TILE / VW)
#define MAXW 1024                 /* widest layer the kernels take; wider networks use torch */

typedef float v8 __attribute__((vector_size(VW * sizeof(float)), aligned(VW * sizeof(float))));
typedef int32_t v8i __attribute__((vector_size(VW * sizeof(int32_t)), aligned(VW * sizeof(int32_t))));

enum { ACT_NONE = 0, ACT_ELU = 1, ACT_SIGMOID = 2, ACT_RELU = 3, ACT_LEAKY_RELU = 4 };

static inline v8 splat(float x) { return (v8){x, x, x, x, x, x, x, x}; }

static inline v8 vselect(v8i mask, v8 a, v8 b) {
    return (v8)((mask & (v8i)a) | (~mask & (v8i)b));
}

/* exp(x) for x in float range: 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], degree-6 polynomial
 * (Cephes expf; relative error ~2e-7). n is rounded through integer conversions, which
 * -ffast-math cannot reassociate away. */
static inline v8 vexp(v8 x) {
    x = vselect(x < splat(-87.0f), splat(-87.0f), x);
    x = vselect(x > splat(88.0f), splat(88.0f), x);
    const v8 t = x * splat(1.44269504088896341f) + splat(0.5f);
    v8i ni = __builtin_convertvector(t, v8i);        /* truncates: floor(t) for t >= 0 */
    ni += (v8i)(__builtin_convertvector(ni, v8) > t); /* floor(t) for t < 0 too (mask is -1) */
    const v8 n = __builtin_convertvector(ni, v8);
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

/* The activation of h; slope is LeakyReLU's negative slope. */
static inline v8 activate(v8 h, int act, float slope) {
    switch (act) {
    case ACT_ELU: return vselect(h > splat(0.0f), h, vexp(h) - splat(1.0f));
    case ACT_SIGMOID: return splat(1.0f) / (splat(1.0f) + vexp(-h));
    case ACT_RELU: return vselect(h > splat(0.0f), h, splat(0.0f));
    case ACT_LEAKY_RELU: return vselect(h > splat(0.0f), h, h * splat(slope));
    default: return h;
    }
}

/* The activation's derivative, from its output a (ELU with alpha 1: e^h = a + 1 for h <= 0). */
static inline v8 activation_grad(v8 a, int act, float slope) {
    switch (act) {
    case ACT_ELU: return vselect(a > splat(0.0f), splat(1.0f), a + splat(1.0f));
    case ACT_SIGMOID: return a * (splat(1.0f) - a);
    case ACT_RELU: return vselect(a > splat(0.0f), splat(1.0f), splat(0.0f));
    case ACT_LEAKY_RELU: return vselect(a > splat(0.0f), splat(1.0f), splat(slope));
    default: return splat(1.0f);
    }
}

#define BLOCK 2                   /* output rows computed together: they share each input load */

/* Rows [j, j + R) of a dense layer on NV vectors (TILE samples) of a tile:
 * out[j] = act(b[j] + W[j, :] . in). in and out hold one row of ld vectors per feature (the
 * tile's samples; this call reads and writes the first NV of each row), W[j, i] is
 * W[j * ldw + i] and b[j] is b[j * ldb]. */
#define DENSE_ROWS(R, NAME)                                                                     \
    static inline void NAME(const v8 *in, v8 *out, int ld, const float *W, int ldw,             \
                            const float *b, int ldb, int j, int n_in, int act, float slope) {   \
        v8 acc[R][NV];                                                                          \
        for (int r = 0; r < R; r++)                                                             \
            for (int v = 0; v < NV; v++) acc[r][v] = splat(b[(int64_t)(j + r) * ldb]);          \
        for (int i = 0; i < n_in; i++) {                                                        \
            const v8 *x = in + (int64_t)i * ld;                                                 \
            for (int r = 0; r < R; r++) {                                                       \
                const v8 c = splat(W[(int64_t)(j + r) * ldw + i]);                              \
                for (int v = 0; v < NV; v++) acc[r][v] += c * x[v];                             \
            }                                                                                   \
        }                                                                                       \
        for (int r = 0; r < R; r++)                                                             \
            for (int v = 0; v < NV; v++)                                                        \
                out[(int64_t)(j + r) * ld + v] = activate(acc[r][v], act, slope);               \
    }
DENSE_ROWS(1, dense_row)
DENSE_ROWS(BLOCK, dense_row_block)

/* A dense layer with its activation on a tile of ld vectors per feature row (ld a multiple of
 * NV), NV vectors at a time (see DENSE_ROWS for the layouts). */
static inline void dense_layer(const v8 *in, v8 *out, int ld, const float *W, int ldw, const float *b,
                               int ldb, int n_in, int n_out, int act, float slope) {
    for (int v0 = 0; v0 < ld; v0 += NV) {
        int j = 0;
        for (; j + BLOCK <= n_out; j += BLOCK)
            dense_row_block(in + v0, out + v0, ld, W, ldw, b, ldb, j, n_in, act, slope);
        for (; j < n_out; j++) dense_row(in + v0, out + v0, ld, W, ldw, b, ldb, j, n_in, act, slope);
    }
}
#endif
