/* Forward and backward of the VAE/DAE on a batch, a tile of samples at a time: the gradient of
 * one training step, for dwivae.kernel.CompiledStep (which applies Adam with torch).
 *
 * Layers are encoder (n_enc, activation act), head (mu, and logvar below it for a VAE; linear),
 * decoder (n_dec, activation act, the last one a sigmoid). Each layer's weights are one [W | b]
 * block, n_out x (n_in + 1), row-major: the layout of dwivae.fused.FusedStep's flat_aug. The
 * gradient is written in the same layout.
 *
 * Per tile (TT = 128 samples, feature-major, rows of LD vectors; the dense layers go through it
 * TILE samples at a time as in forward.c): the forward pass keeps every layer's output; the
 * backward pass accumulates each weight gradient in a vector of VW partial sums per weight
 * (summed across lanes once per call), 2 x 4 weights at a time over the tile's 128 samples, so
 * the accumulators are read and written once per tile. Samples past the end of the batch in the
 * last tile are masked out of the loss, the KL and the gradient.
 *
 * Loss: reconstruction summed over samples and volumes (huber with delta 1, mse, l1), its
 * gradient unscaled (the caller divides by the element count); KL summed as
 * sum(mu^2 + exp(lv) - 1 - lv) (the caller halves it); the KL gradient is kscale * (mu, (exp(lv) - 1) / 2).
 */
#include <stdlib.h>

#include "simd.h"

#define TT 128                    /* samples per training tile */
#define LD (TT / VW)              /* vectors per feature row of a training tile */

enum { LOSS_HUBER = 0, LOSS_MSE = 1, LOSS_L1 = 2 };

static inline float hsum(v8 a) {
    float s = 0.0f;
    for (int k = 0; k < VW; k++) s += a[k];
    return s;
}

/* Load rows first.. of a (rows x width) matrix into a feature-major tile; rows past m are zero. */
static void load_tile(v8 *dst, const float *src, int64_t first, int m, int width) {
    float *t = (float *)dst;
    for (int s = 0; s < TT; s++) {
        if (s < m) {
            const float *row = src + (first + s) * (int64_t)width;
            for (int i = 0; i < width; i++) t[i * TT + s] = row[i];
        } else {
            for (int i = 0; i < width; i++) t[i * TT + s] = 0.0f;
        }
    }
}

/* gacc[j, i] += sum over the tile of g[j] * a[i] for JB x IB weights from (j, i), in registers. */
#define WEIGHT_GRAD_BLOCK(JB, IB, NAME)                                                         \
    static inline void NAME(v8 *gacc, int ldg, const v8 *g, const v8 *a, int j, int i) {       \
        v8 acc[JB][IB];                                                                         \
        for (int p = 0; p < JB; p++)                                                            \
            for (int q = 0; q < IB; q++) acc[p][q] = splat(0.0f);                               \
        for (int v = 0; v < LD; v++)                                                            \
            for (int p = 0; p < JB; p++) {                                                      \
                const v8 gv = g[(int64_t)(j + p) * LD + v];                                     \
                for (int q = 0; q < IB; q++) acc[p][q] += gv * a[(int64_t)(i + q) * LD + v];    \
            }                                                                                   \
        for (int p = 0; p < JB; p++)                                                            \
            for (int q = 0; q < IB; q++) gacc[(int64_t)(j + p) * ldg + i + q] += acc[p][q];     \
    }
WEIGHT_GRAD_BLOCK(2, 4, weight_grad_2x4)
WEIGHT_GRAD_BLOCK(2, 1, weight_grad_2x1)
WEIGHT_GRAD_BLOCK(1, 4, weight_grad_1x4)
WEIGHT_GRAD_BLOCK(1, 1, weight_grad_1x1)

/* gacc[j, i] += sum over the tile of g[j] * a[i], and the bias column gacc[j, n_in] += sum of
 * g[j]: each accumulator keeps VW lanes apart. */
static void accumulate_weight_grad(v8 *gacc, const v8 *g, const v8 *a, int n_in, int n_out) {
    const int ldg = n_in + 1;
    int j = 0;
    for (; j + 2 <= n_out; j += 2) {
        int i = 0;
        for (; i + 4 <= n_in; i += 4) weight_grad_2x4(gacc, ldg, g, a, j, i);
        for (; i < n_in; i++) weight_grad_2x1(gacc, ldg, g, a, j, i);
    }
    for (; j < n_out; j++) {
        int i = 0;
        for (; i + 4 <= n_in; i += 4) weight_grad_1x4(gacc, ldg, g, a, j, i);
        for (; i < n_in; i++) weight_grad_1x1(gacc, ldg, g, a, j, i);
    }
    for (j = 0; j < n_out; j++) {
        v8 acc = splat(0.0f);
        for (int v = 0; v < LD; v++) acc += g[(int64_t)j * LD + v];
        gacc[(int64_t)j * ldg + n_in] += acc;
    }
}

/* ga[i] = (sum_j W[j, i] g[j]) * act'(a[i]) for i < n_in: the gradient at the layer's input,
 * through the activation that produced it (a is that activation's output; ACT_NONE: none). */
static void backprop(v8 *ga, const v8 *g, const float *W, const v8 *a, int n_in, int n_out, int act,
                     float slope) {
    const int ldw = n_in + 1;
    for (int v0 = 0; v0 < LD; v0 += NV)
        for (int i = 0; i < n_in; i++) {
            v8 acc[NV];
            for (int v = 0; v < NV; v++) acc[v] = splat(0.0f);
            for (int j = 0; j < n_out; j++) {
                const v8 c = splat(W[(int64_t)j * ldw + i]);
                for (int v = 0; v < NV; v++) acc[v] += c * g[(int64_t)j * LD + v0 + v];
            }
            for (int v = 0; v < NV; v++) {
                const int64_t r = (int64_t)i * LD + v0 + v;
                ga[r] = act == ACT_NONE ? acc[v] : acc[v] * activation_grad(a[r], act, slope);
            }
        }
}

/* The gradient of the loss over n samples.
 *
 * x and y (n x N), eps (n x latent; NULL: z = mu) for a VAE. n_in/n_out: each of the n_layers layers' sizes
 * (encoder, head, decoder in that order; the head has n_out = 2 * latent for a VAE). params and
 * grad: the [W | b] blocks. sums[0] += reconstruction loss, sums[1] += KL sum.
 * Returns 0, or -1 for sizes the kernel does not take.
 */
int dwivae_train_step(const float *x, const float *y, const float *eps, int64_t n, int n_layers, int n_enc, const int *n_in,
                      const int *n_out, int vae, int act, float slope, int loss, float kscale,
                      const float *params, float *grad, double *sums) {
    const int head = n_enc, latent = vae ? n_out[head] / 2 : n_out[head];
    const int N = n_in[0];
    if (n_layers > 64 || n_out[n_layers - 1] != N) return -1;
    int64_t offset[65], n_params = 0, act_size = N;
    for (int l = 0; l < n_layers; l++) {
        if (n_in[l] < 1 || n_in[l] > MAXW || n_out[l] < 1 || n_out[l] > MAXW) return -1;
        offset[l] = n_params;
        n_params += (int64_t)n_out[l] * (n_in[l] + 1);
        act_size += n_out[l];
    }
    offset[n_layers] = n_params;
    /* tile buffers: every layer's output after x, then y, eps, z/std, two gradient rows */
    const int64_t rows = act_size + N + 3 * latent + 2 * MAXW;
    v8 *arena = aligned_alloc(sizeof(v8), (size_t)(rows * LD + n_params) * sizeof(v8));
    if (!arena) return -2;
    v8 *gacc = arena;
    memset(gacc, 0, (size_t)n_params * sizeof(v8));
    v8 *out[65];
    v8 *p = gacc + n_params;
    v8 *X = p; p += (int64_t)N * LD;
    for (int l = 0; l < n_layers; l++) { out[l] = p; p += (int64_t)n_out[l] * LD; }
    v8 *Y = p; p += (int64_t)N * LD;
    v8 *E = p; p += (int64_t)latent * LD;
    v8 *Z = p; p += (int64_t)latent * LD;
    v8 *STD = p; p += (int64_t)latent * LD;
    v8 *G0 = p; p += (int64_t)MAXW * LD;
    v8 *G1 = p;
    double rec = 0.0, kl = 0.0;

    for (int64_t s0 = 0; s0 < n; s0 += TT) {
        const int m = (n - s0 < TT) ? (int)(n - s0) : TT;
        v8 mask[LD];
        for (int v = 0; v < LD; v++)
            for (int k = 0; k < VW; k++) mask[v][k] = (v * VW + k < m) ? 1.0f : 0.0f;
        load_tile(X, x, s0, m, N);
        load_tile(Y, y, s0, m, N);
        /* forward */
        const v8 *in = X;
        for (int l = 0; l < n_layers; l++) {
            const float *W = params + offset[l];
            const int a = n_in[l], b = n_out[l];
            const int layer_act = l == head ? ACT_NONE : (l == n_layers - 1 ? ACT_SIGMOID : act);
            dense_layer(in, out[l], LD, W, a + 1, W + a, a + 1, a, b, layer_act, slope);
            in = out[l];
            if (l == head) {
                const v8 *H = out[l];
                if (vae) {
                    if (eps) load_tile(E, eps, s0, m, latent);
                    v8 k_acc = splat(0.0f);
                    for (int r = 0; r < latent * LD; r++) {
                        const v8 mu = H[r], lv = H[latent * LD + r];
                        const v8 sd = vexp(splat(0.5f) * lv);
                        STD[r] = sd;
                        Z[r] = eps ? mu + sd * E[r] : mu;
                        k_acc += mask[r % LD] * (mu * mu + sd * sd - splat(1.0f) - lv);
                    }
                    kl += hsum(k_acc);
                    in = Z;
                }
            }
        }
        /* loss and its gradient at the sigmoid's input */
        v8 *O = out[n_layers - 1], *g = G0;
        v8 r_acc = splat(0.0f);
        for (int r = 0; r < N * LD; r++) {
            const v8 o = O[r], d = o - Y[r];
            v8 gr;
            if (loss == LOSS_HUBER) {
                const v8 ad = vselect(d < splat(0.0f), -d, d);
                r_acc += mask[r % LD] * vselect(ad < splat(1.0f), splat(0.5f) * d * d, ad - splat(0.5f));
                gr = vselect(d > splat(1.0f), splat(1.0f), vselect(d < splat(-1.0f), splat(-1.0f), d));
            } else if (loss == LOSS_MSE) {
                r_acc += mask[r % LD] * d * d;
                gr = d;
            } else {
                r_acc += mask[r % LD] * vselect(d < splat(0.0f), -d, d);
                gr = vselect(d > splat(0.0f), splat(1.0f), vselect(d < splat(0.0f), splat(-1.0f), splat(0.0f)));
            }
            g[r] = gr * o * (splat(1.0f) - o) * mask[r % LD];
        }
        rec += hsum(r_acc);
        /* backward: decoder, head, encoder */
        for (int l = n_layers - 1; l >= 0; l--) {
            const v8 *a = l == 0 ? X : (l == head + 1 && vae ? Z : out[l - 1]);
            const int a_act = l == head + 1 || l == 0 ? ACT_NONE : act;
            accumulate_weight_grad(gacc + offset[l], g, a, n_in[l], n_out[l]);
            if (l == 0) break;
            v8 *ga = g == G0 ? G1 : G0;
            backprop(ga, g, params + offset[l], a, n_in[l], n_out[l], a_act, slope);
            g = ga;
            if (l == head + 1 && vae) {  /* through z = mu + std * eps, plus the KL term */
                v8 *dh = g == G0 ? G1 : G0;
                for (int r = 0; r < latent * LD; r++) {
                    const v8 mu = out[head][r], sd = STD[r], km = splat(kscale) * mask[r % LD];
                    dh[r] = g[r] + km * mu;
                    dh[latent * LD + r] = splat(0.5f) * ((eps ? g[r] * E[r] * sd : splat(0.0f)) + km * (sd * sd - splat(1.0f)));
                }
                g = dh;
            }
        }
    }
    for (int64_t k = 0; k < n_params; k++) grad[k] = hsum(gacc[k]);
    sums[0] += rec;
    sums[1] += kl;
    free(arena);
    return 0;
}
