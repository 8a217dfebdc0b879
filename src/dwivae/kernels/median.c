/* A 3D median filter over a cube of (2r + 1)^3 voxels, for the brain mask (dwivae.apply.mask).
 *
 * Built by dwivae.kernels.bindings with forward.c and train_step.c. The caller pads the volume by r on
 * every side (as scipy.ndimage's "reflect" mode does), so every window is inside the array; the
 * median is an element of the window, found by a radix selection on the values' bits, so the
 * result equals scipy.ndimage.median_filter's exactly.
 */
#include <stdint.h>
#include <string.h>

#define MAX_RADIUS 4             /* windows of up to 9^3 = 729 values */

/* Floats as unsigned integers of the same order (negative values flipped). */
static inline uint32_t order_key(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static inline float key_value(uint32_t k) {
    const uint32_t u = (k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The k-th smallest (0-based) of keys[0..n), n a multiple of 8: the largest v with fewer than
 * k + 1 keys below it, built bit by bit from the top; branch-free counting that vectorises
 * (a quickselect spends most of its time in mispredicted branches). */
static uint32_t select_key(const uint32_t *keys, int n, int k) {
    uint32_t answer = 0;
    for (int bit = 31; bit >= 0; bit--) {
        const uint32_t candidate = answer | (1u << bit);
        int below = 0;
        for (int i = 0; i < n; i++) below += keys[i] < candidate;
        if (below <= k) answer = candidate;
    }
    return answer;
}

/* out[x, y, z] = median of padded[x .. x + 2r, y .. y + 2r, z .. z + 2r] for x0 <= x < x1.
 *
 * padded is (X + 2r, Y + 2r, Z + 2r) and out (X, Y, Z), both C order. Returns 0, or -1 for a
 * radius outside 0..MAX_RADIUS.
 */
int dwivae_median3d(const float *padded, float *out, int X, int Y, int Z, int r, int x0, int x1) {
    if (r < 0 || r > MAX_RADIUS) return -1;
    const int w = 2 * r + 1, n = w * w * w;
    const int64_t PY = Y + 2 * r, PZ = Z + 2 * r;
    const int padded_n = (n + 7) / 8 * 8;
    uint32_t window[(2 * MAX_RADIUS + 1) * (2 * MAX_RADIUS + 1) * (2 * MAX_RADIUS + 1) + 7];
    for (int m = n; m < padded_n; m++) window[m] = UINT32_MAX;  /* never below a candidate */
    (void)X;
    for (int x = x0; x < x1; x++)
        for (int y = 0; y < Y; y++)
            for (int z = 0; z < Z; z++) {
                int m = 0;
                for (int i = 0; i < w; i++)
                    for (int j = 0; j < w; j++) {
                        const float *row = padded + ((int64_t)(x + i) * PY + (y + j)) * PZ + z;
                        for (int k = 0; k < w; k++) window[m++] = order_key(row[k]);
                    }
                out[((int64_t)x * Y + y) * Z + z] = key_value(select_key(window, padded_n, n / 2));
            }
    return 0;
}
