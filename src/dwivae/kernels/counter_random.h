/* Random numbers from counters, for training: the VAE's eps, the epochs' orders and the noise of
 * the study preset's pairs.
 *
 * Counter-based, so that any sample's draw can be made by whichever thread takes it.
 *
 * Normals: the pair for counter c under key (k1, k2) is Box-Muller, sqrt(-2 ln u1) (cos, sin)(2 pi u2),
 * on two 24-bit uniforms u1 in (0, 1] and u2 in [0, 1) hashed from 2c and 2c + 1 (two rounds of
 * the murmur3 finaliser, the key mixed in between). log, sin and cos are polynomial (Cephes' logf
 * and sinf/cosf coefficients, relative error ~1e-7).
 *
 * Permutations: row i of a shuffled epoch of n rows is a 4-round Feistel network with hash32
 * rounds on the 2h bits of i (4^h >= n), applied again until the result is below n (cycle
 * walking): a keyed pseudo-random permutation, computed for any i without a table.
 */
#ifndef DWIVAE_COUNTER_RANDOM_H
#define DWIVAE_COUNTER_RANDOM_H
#include "simd.h"

typedef uint32_t v8u __attribute__((vector_size(VW * sizeof(uint32_t)), aligned(VW * sizeof(uint32_t))));

/* The 8 counters first, first + stride, ... */
static inline v8u counters(uint32_t first, uint32_t stride) {
    const v8u lane = {0, 1, 2, 3, 4, 5, 6, 7};
    return (v8u){first, first, first, first, first, first, first, first} + lane * stride;
}

/* A 64-bit mix (splitmix64's finaliser): the key of a seed and a step. */
static inline uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline v8u vmin_u32(v8u a, v8u b) {
    const v8u below = (v8u)(a < b);
    return (below & a) | (~below & b);
}

static inline v8u fmix32(v8u h) {
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    return h ^ (h >> 16);
}

static inline v8u hash32(v8u c, uint32_t k1, uint32_t k2) { return fmix32(fmix32(c * 0x9E3779B9u + k1) ^ k2); }

/* ln x for x in (0, 1]. */
static inline v8 vlog_unit(v8 x) {
    const v8i bits = (v8i)x;
    v8 e = __builtin_convertvector((bits >> 23) - 126, v8);
    v8 m = (v8)((bits & 0x007FFFFF) | 0x3F000000);          /* x = m 2^e, m in [0.5, 1) */
    const v8i small = m < splat(0.70710678f);
    e = vselect(small, e - splat(1.0f), e);
    m = vselect(small, m + m, m) - splat(1.0f);              /* m - 1 in [-0.29, 0.41] */
    const v8 z = m * m;
    v8 y = splat(7.0376836292e-2f);
    y = y * m - splat(1.1514610310e-1f);
    y = y * m + splat(1.1676998740e-1f);
    y = y * m - splat(1.2420140846e-1f);
    y = y * m + splat(1.4249322787e-1f);
    y = y * m - splat(1.6668057665e-1f);
    y = y * m + splat(2.0000714765e-1f);
    y = y * m - splat(2.4999993993e-1f);
    y = y * m + splat(3.3333331174e-1f);
    y = y * m * z - splat(2.12194440e-4f) * e - splat(0.5f) * z;
    return m + y + splat(0.693359375f) * e;
}

/* sin and cos of 2 pi u for u in [0, 1): u = k/4 + f with k the nearest quarter and |f| <= 1/8,
 * the polynomials on 2 pi f, then a quarter turn k. */
static inline void vsincos_turn(v8 u, v8 *sin_out, v8 *cos_out) {
    const v8i k = __builtin_convertvector(u * splat(4.0f) + splat(0.5f), v8i);
    const v8 t = (u - __builtin_convertvector(k, v8) * splat(0.25f)) * splat(6.28318530717958648f);
    const v8 z = t * t;
    const v8 s = ((splat(-1.9515295891e-4f) * z + splat(8.3321608736e-3f)) * z - splat(1.6666654611e-1f)) * z * t + t;
    const v8 c = ((splat(2.443315711809948e-5f) * z - splat(1.388731625493765e-3f)) * z + splat(4.166664568298827e-2f)) * z * z
                 - splat(0.5f) * z + splat(1.0f);
    const v8i swap = -(k & 1);                             /* odd quarters swap sin and cos */
    const v8i sin_sign = (v8i)(((v8u)k & 2u) << 30), cos_sign = (v8i)((((v8u)k + 1u) & 2u) << 30);
    *sin_out = (v8)((v8i)vselect(swap, c, s) ^ sin_sign);
    *cos_out = (v8)((v8i)vselect(swap, s, c) ^ cos_sign);
}

/* A keyed permutation of 0..n - 1 (n <= 2^31). */
typedef struct {
    uint32_t n, half_bits, half_mask;
    uint32_t keys[4];
} Shuffle;

static inline Shuffle shuffle_init(uint64_t key, uint32_t n) {
    Shuffle p = {.n = n, .half_bits = 1};
    while (((uint64_t)1 << (2 * p.half_bits)) < n) p.half_bits++;
    p.half_mask = (1u << p.half_bits) - 1u;
    for (int k = 0; k < 4; k++) {
        key = mix64(key);
        p.keys[k] = (uint32_t)key;
    }
    return p;
}

static inline v8u feistel(const Shuffle *p, v8u x) {
    v8u left = x >> p->half_bits, right = x & p->half_mask;
    for (int k = 0; k < 4; k++) {
        const v8u mixed = left ^ (fmix32(right * 0x9E3779B9u + p->keys[k]) & p->half_mask);
        left = right;
        right = mixed;
    }
    return (left << p->half_bits) | right;
}

/* The permutation of i (every lane below n). */
static inline v8u shuffle_apply(const Shuffle *p, v8u i) {
    const v8u n = {p->n, p->n, p->n, p->n, p->n, p->n, p->n, p->n};
    v8u x = feistel(p, i);
    for (;;) {
        const v8u outside = (v8u)(x >= n);
        uint32_t any = 0;
        for (int k = 0; k < VW; k++) any |= outside[k];
        if (!any) return x;
        x = (outside & feistel(p, x)) | (~outside & x);
    }
}

/* Two independent standard normal numbers for each counter c under key k (Box-Muller's pair). */
static inline void normal_pair(v8u c, uint64_t k, v8 *first, v8 *second) {
    const uint32_t k1 = (uint32_t)k, k2 = (uint32_t)(k >> 32);
    const v8u h1 = hash32(c + c, k1, k2), h2 = hash32(c + c + 1u, k1, k2);
    const v8 u1 = __builtin_convertvector((v8i)(h1 >> 8) + 1, v8) * splat(0x1p-24f);
    const v8 u2 = __builtin_convertvector((v8i)(h2 >> 8), v8) * splat(0x1p-24f);
    const v8 r = vsqrt(splat(-2.0f) * vlog_unit(u1));
    v8 s, co;
    vsincos_turn(u2, &s, &co);
    *first = r * co;
    *second = r * s;
}
#endif
