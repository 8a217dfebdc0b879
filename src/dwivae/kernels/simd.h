/* Shared by forward.c and train_step.c: float vectors, a vectorised exp, the activations.
 *
 * GCC/Clang vector extensions, and AVX intrinsics where the target has them (min, max, blend,
 * the 8 x 8 transpose of forward.c) with a portable fallback; built with -O3 -march=native
 * -ffast-math by dwivae.kernels.bindings.
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

enum { ACT_NONE = 0, ACT_ELU = 1, ACT_SIGMOID = 2, ACT_RELU = 3, ACT_LEAKY_RELU = 4,
       ACT_ELU_EIGHTHS = 5, ACT_SIGMOID_EIGHTHS = 6 };  /* the last two: forward.c only, see activate */

static inline v8 splat(float x) { return (v8){x, x, x, x, x, x, x, x}; }

/* The sum of a vector's lanes. */
static inline float hsum(v8 a) {
    float s = 0.0f;
    for (int k = 0; k < VW; k++) s += a[k];
    return s;
}

static inline v8 vselect(v8i mask, v8 a, v8 b) {
    return (v8)((mask & (v8i)a) | (~mask & (v8i)b));
}

/* min, max, a select on the sign of m and sqrt, with AVX intrinsics where the target has them. */
#if defined(__AVX__)
#include <immintrin.h>
static inline v8 vmin(v8 a, v8 b) { return (v8)_mm256_min_ps((__m256)a, (__m256)b); }
static inline v8 vmax(v8 a, v8 b) { return (v8)_mm256_max_ps((__m256)a, (__m256)b); }
/* m < 0 ? a : b, on the sign bit of m (-0.0 counts as negative). */
static inline v8 select_negative(v8 m, v8 a, v8 b) { return (v8)_mm256_blendv_ps((__m256)b, (__m256)a, (__m256)m); }
static inline v8 vsqrt(v8 a) { return (v8)_mm256_sqrt_ps((__m256)a); }

/* Rows 0..8 of r transposed in place: r[q][k] <- r[k][q]. */
static inline void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int k = 0; k < 8; k += 2) {
        t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
        t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
    }
    for (int k = 0; k < 8; k += 4) {
        u[k] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int k = 0; k < 4; k++) {
        r[k] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x20);
        r[k + 4] = _mm256_permute2f128_ps(u[k], u[k + 4], 0x31);
    }
}
#else
static inline v8 vmin(v8 a, v8 b) { return vselect(a < b, a, b); }
static inline v8 vmax(v8 a, v8 b) { return vselect(a > b, a, b); }
static inline v8 select_negative(v8 m, v8 a, v8 b) { return vselect((v8i)m < 0, a, b); }
static inline v8 vsqrt(v8 a) {
    for (int k = 0; k < VW; k++) a[k] = __builtin_sqrtf(a[k]);
    return a;
}
#endif

/* a, which the compiler may no longer rewrite: -ffast-math would otherwise fold (y + c) - c to y. */
static inline v8 opaque(v8 a) {
#if defined(__AVX__)
    __asm__("" : "+x"(a));
#else
    __asm__("" : "+m"(a));
#endif
    return a;
}

/* exp(x) for |x| <= 80: 2^n * p(r), n = round(x / ln2) by adding and subtracting 1.5 * 2^23
 * (whose float spacing is 1, so the sum rounds to nearest and holds n in its low mantissa bits),
 * r = x - n ln2 in one FMA (ln2 as a float is off by 2e-9, times |n| <= 116), p a degree-5 fit of
 * exp on [-ln2/2, ln2/2] (relative error 1.1e-7), and 2^n added to p's exponent bits. The add
 * and subtract run beside the FMAs, where a float-int-float round trip held up the chain. */
static inline v8 vexp_within80(v8 x) {
    const v8 shifter = splat(12582912.0f);
    const v8 t = opaque(x * splat(1.44269504088896341f) + shifter);
    const v8 r = x - opaque(t - shifter) * splat(0.693147180559945f);
    v8 p = splat(8.312857709825039e-3f);
    p = p * r + splat(4.188901185989380e-2f);
    p = p * r + splat(1.666711121797562e-1f);
    p = p * r + splat(4.999924302101135e-1f);
    p = p * r + splat(1.0f);
    p = p * r + splat(1.0f);
    return (v8)((v8i)p + ((v8i)t << 23));
}

/* exp(x) for x <= 0 (clamped at -80). */
static inline v8 vexp_nonpositive(v8 x) { return vexp_within80(vmax(x, splat(-80.0f))); }

/* 1 / d for d >= 1: AVX's approximate reciprocal and one Newton step, else a division (forward.c
 * only: rcp's table is the CPU maker's, so results differ by an ulp or so between them). */
static inline v8 vreciprocal(v8 d) {
#if defined(__AVX__) && defined(__FMA__)
    const __m256 y = _mm256_rcp_ps((__m256)d);
    return (v8)_mm256_fmadd_ps(y, _mm256_fnmadd_ps((__m256)d, y, _mm256_set1_ps(1.0f)), y);
#else
    return splat(1.0f) / d;
#endif
}

/* exp(x) for x in float range: vexp_nonpositive, and 1 / exp(-x) for x > 0. */
static inline v8 vexp(v8 x) {
    const v8 e = vexp_nonpositive(vmin(x, -x));
    return select_negative(x, e, splat(1.0f) / e);
}

/* 2^(j/8) for j = 0..7 */
static const double EXP2_EIGHTHS[8] = {1.0, 1.0905077326652577, 1.189207115002721, 1.2968395546510096,
                                       1.4142135623730951, 1.5422108254079407, 1.681792830507429, 1.8340080864093424};

/* k 2^(x/8) = q * S for |x| <= 920 (S returned through scale, q by value: the caller's FMA
 * finishes it). x = n8 + r with n8 = round(x) (|r| <= 1/2), S = k 2^(n8/8) = k 2^(j/8) 2^n for
 * j = n8 mod 8, taken from an 8-entry table, and n = floor(n8 / 8) added to its exponent bits;
 * q = 2^(r/8) by a cubic (relative error 2.5e-8; 8.6e-8 with float rounding): two FMAs fewer on
 * the dependency chain than vexp_within80's degree-5 polynomial on whole powers of 2. */
static inline v8 exp2_eighths(v8 x, double k, v8 *scale) {
#if defined(__AVX2__)
    const __m256 kj = _mm256_setr_ps((float)(k * EXP2_EIGHTHS[0]), (float)(k * EXP2_EIGHTHS[1]),
                                     (float)(k * EXP2_EIGHTHS[2]), (float)(k * EXP2_EIGHTHS[3]),
                                     (float)(k * EXP2_EIGHTHS[4]), (float)(k * EXP2_EIGHTHS[5]),
                                     (float)(k * EXP2_EIGHTHS[6]), (float)(k * EXP2_EIGHTHS[7]));
    /* entry j less j << 20, so that adding n8 << 20 = (n << 23) + (j << 20) adds just n to the exponent */
    const __m256i table = _mm256_sub_epi32(_mm256_castps_si256(kj), _mm256_setr_epi32(0, 1 << 20, 2 << 20, 3 << 20,
                                                                                      4 << 20, 5 << 20, 6 << 20, 7 << 20));
    const __m256 whole = _mm256_round_ps((__m256)x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i n8 = _mm256_cvtps_epi32(whole);
    const v8 r = x - (v8)whole;
    *scale = (v8)((v8i)_mm256_permutevar8x32_epi32(table, n8) + ((v8i)n8 << 20));
#else
    const v8 shifter = splat(12582912.0f);   /* 1.5 * 2^23: x + shifter rounds x and holds it in its low bits */
    const v8 t = opaque(x + shifter);
    const v8 r = x - opaque(t - shifter);
    const v8i n8 = (v8i)t - (v8i)shifter;
    v8 entry;
    for (int m = 0; m < VW; m++) entry[m] = (float)(k * EXP2_EIGHTHS[n8[m] & 7]);
    *scale = (v8)((v8i)entry + ((n8 >> 3) << 23));
#endif
    return ((splat(1.0839104652404785e-4f) * r + splat(3.7540253251791e-3f)) * r + splat(8.664340525865555e-2f)) * r
           + splat(1.0f);
}

/* The activation of h; slope is LeakyReLU's negative slope. */
static inline v8 activate(v8 h, int act, float slope) {
    switch (act) {
    case ACT_ELU: return select_negative(h, vexp_nonpositive(vmin(h, splat(0.0f))) - splat(1.0f), h);
    case ACT_SIGMOID:   /* 1 / (1 + e^-h), 0 and 1 beyond |h| = 80; divided, not vreciprocal: training */
        return splat(1.0f) / (splat(1.0f) + vexp_within80(vmin(vmax(-h, splat(-80.0f)), splat(80.0f))));
    case ACT_RELU: return vmax(h, splat(0.0f));
    case ACT_LEAKY_RELU: return select_negative(h, h * splat(slope), h);
    /* With h in units of ln2 / 8 (the layer's W and b times 8 log2 e, so that e^h = 2^(h/8)): ELU of
     * h ln2 / 8, times 8 / ln2, which the next layer's W times ln2 / 8 takes back, and the sigmoid of
     * -h ln2 / 8 (W and b times -8 log2 e). A rounding and a table lookup in place of ACT_ELU's and
     * ACT_SIGMOID's range reduction, fewer operations on a shorter chain; ELU's select is a max. */
    case ACT_ELU_EIGHTHS: {               /* max(h, (2^(h/8) - 1) 8 / ln2), as e^x - 1 >= x */
        v8 scale;                         /* below h = -240, 2^(h/8) is under the float spacing of 8 / ln2 */
        const v8 q = exp2_eighths(vmax(vmin(h, splat(0.0f)), splat(-240.0f)), 11.541560327111707, &scale);
        return vmax(h, q * scale - splat(11.541560327111707f));
    }
    case ACT_SIGMOID_EIGHTHS: {           /* 1 / (1 + 2^(h/8)), h clamped to +-920 (2^+-115) */
        v8 scale;
        const v8 q = exp2_eighths(vmin(vmax(h, splat(-920.0f)), splat(920.0f)), 1.0, &scale);
        return vreciprocal(q * scale + splat(1.0f));
    }
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

/* Row j of a dense layer on NV vectors (TILE samples) of a tile: out[j] = act(b[j] + W[j, :] . in).
 * in and out hold one row of ld vectors per feature (the tile's samples; this call reads and
 * writes the first NV of each row), W[j, i] is W[j * ldw + i] and b[j] is b[j * ldb]. */
static inline void dense_row(const v8 *in, v8 *out, int ld, const float *W, int ldw, const float *b, int ldb,
                             int j, int n_in, int act, float slope) {
    v8 acc[NV];
    for (int v = 0; v < NV; v++) acc[v] = splat(b[(int64_t)j * ldb]);
    for (int i = 0; i < n_in; i++) {
        const v8 c = splat(W[(int64_t)j * ldw + i]);
        for (int v = 0; v < NV; v++) acc[v] += c * in[(int64_t)i * ld + v];
    }
    for (int v = 0; v < NV; v++) out[(int64_t)j * ld + v] = activate(acc[v], act, slope);
}

/* Rows j and j + 1 as dense_row, sharing each input load, with the eight accumulators as named
 * variables, which GCC keeps in registers (arrays of them ran ~8 % slower). */
_Static_assert(NV == 4, "dense_row_pair names four vectors per row");

static inline void dense_row_pair(const v8 *in, v8 *out, int ld, const float *W, int ldw, const float *b, int ldb,
                                  int j, int n_in, int act, float slope) {
    const float *w0 = W + (int64_t)j * ldw, *w1 = w0 + ldw;
    v8 a0 = splat(b[(int64_t)j * ldb]), a1 = a0, a2 = a0, a3 = a0;
    v8 c0 = splat(b[(int64_t)(j + 1) * ldb]), c1 = c0, c2 = c0, c3 = c0;
    for (int i = 0; i < n_in; i++) {
        const v8 *x = in + (int64_t)i * ld;
        const v8 x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3];
        const v8 u = splat(w0[i]), w = splat(w1[i]);
        a0 += u * x0; a1 += u * x1; a2 += u * x2; a3 += u * x3;
        c0 += w * x0; c1 += w * x1; c2 += w * x2; c3 += w * x3;
    }
    v8 *o = out + (int64_t)j * ld, *p = o + ld;
    o[0] = activate(a0, act, slope); o[1] = activate(a1, act, slope);
    o[2] = activate(a2, act, slope); o[3] = activate(a3, act, slope);
    p[0] = activate(c0, act, slope); p[1] = activate(c1, act, slope);
    p[2] = activate(c2, act, slope); p[3] = activate(c3, act, slope);
}

/* A dense layer with its activation on a tile of ld vectors per feature row (ld a multiple of
 * NV), NV vectors at a time (see dense_row for the layouts). */
static inline void dense_layer(const v8 *in, v8 *out, int ld, const float *W, int ldw, const float *b,
                               int ldb, int n_in, int n_out, int act, float slope) {
    for (int v0 = 0; v0 < ld; v0 += NV) {
        int j = 0;
        for (; j + 2 <= n_out; j += 2) dense_row_pair(in + v0, out + v0, ld, W, ldw, b, ldb, j, n_in, act, slope);
        for (; j < n_out; j++) dense_row(in + v0, out + v0, ld, W, ldw, b, ldb, j, n_in, act, slope);
    }
}
#endif
