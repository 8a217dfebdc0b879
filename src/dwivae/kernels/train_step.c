/* Forward and backward of the VAE/DAE on a tile of samples: the gradient of a training step,
 * summed tile by tile (train_loop.c runs the steps).
 *
 * Per tile (TT = 128 samples, feature-major, rows of LD vectors; the dense layers go through it
 * TILE samples at a time as in forward.c): the forward pass keeps every layer's output; the
 * backward pass accumulates each weight gradient in a vector of VW partial sums per weight,
 * 2 x 4 weights at a time over the tile's 128 samples, so the accumulators are read and written
 * once per tile. Samples past the end of the batch in a last tile are masked out of the loss,
 * the KL and the gradient.
 *
 * Loss: reconstruction summed over samples and volumes (huber with delta 1, mse, l1), its
 * gradient unscaled (the caller divides by the element count); KL summed as
 * sum(mu^2 + exp(lv) - 1 - lv) (the caller halves it); the KL gradient is kscale * (mu, (exp(lv) - 1) / 2).
 */
#include <stdlib.h>

#include "train_step.h"

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
 * through the activation that produced it (a is that activation's output; ACT_NONE: none). Two
 * inputs at a time, their eight accumulators named so that GCC keeps them in registers. */
static void backprop(v8 *ga, const v8 *g, const float *W, const v8 *a, int n_in, int n_out, int act,
                     float slope) {
    const int ldw = n_in + 1;
    for (int v0 = 0; v0 < LD; v0 += NV) {
        int i = 0;
        for (; i + 2 <= n_in; i += 2) {
            v8 a0 = splat(0.0f), a1 = a0, a2 = a0, a3 = a0, c0 = a0, c1 = a0, c2 = a0, c3 = a0;
            for (int j = 0; j < n_out; j++) {
                const v8 *gj = g + (int64_t)j * LD + v0;
                const v8 g0 = gj[0], g1 = gj[1], g2 = gj[2], g3 = gj[3];
                const v8 u = splat(W[(int64_t)j * ldw + i]), w = splat(W[(int64_t)j * ldw + i + 1]);
                a0 += u * g0; a1 += u * g1; a2 += u * g2; a3 += u * g3;
                c0 += w * g0; c1 += w * g1; c2 += w * g2; c3 += w * g3;
            }
            const v8 acc[2][NV] = {{a0, a1, a2, a3}, {c0, c1, c2, c3}};
            for (int r = 0; r < 2; r++)
                for (int v = 0; v < NV; v++) {
                    const int64_t k = (int64_t)(i + r) * LD + v0 + v;
                    ga[k] = acc[r][v] * activation_grad(a[k], act, slope);
                }
        }
        for (; i < n_in; i++) {
            v8 acc[NV];
            for (int v = 0; v < NV; v++) acc[v] = splat(0.0f);
            for (int j = 0; j < n_out; j++) {
                const v8 c = splat(W[(int64_t)j * ldw + i]);
                for (int v = 0; v < NV; v++) acc[v] += c * g[(int64_t)j * LD + v0 + v];
            }
            for (int v = 0; v < NV; v++) {
                const int64_t k = (int64_t)i * LD + v0 + v;
                ga[k] = acc[v] * activation_grad(a[k], act, slope);
            }
        }
    }
}

int net_init(Net *net, int n_layers, int n_enc, const int *n_in, const int *n_out, int vae, int act,
             float slope, int loss, float kscale) {
    if (n_layers < 2 || n_layers > MAX_LAYERS || n_enc < 0 || n_enc >= n_layers - 1) return -1;
    *net = (Net){.n_layers = n_layers, .head = n_enc, .vae = vae, .act = act, .loss = loss, .slope = slope,
                 .kscale = kscale, .n_in = n_in, .n_out = n_out, .n_volumes = n_in[0]};
    net->latent = vae ? n_out[n_enc] / 2 : n_out[n_enc];
    if (n_out[n_layers - 1] != n_in[0]) return -1;
    int64_t n_params = 0;
    for (int l = 0; l < n_layers; l++) {
        if (n_in[l] < 1 || n_in[l] > MAXW || n_out[l] < 1 || n_out[l] > MAXW) return -1;
        net->offset[l] = n_params;
        n_params += (int64_t)n_out[l] * (n_in[l] + 1);
        net->hidden_rows += n_out[l];
        const int wider = n_in[l] > n_out[l] ? n_in[l] : n_out[l];
        net->widest = wider > net->widest ? wider : net->widest;
    }
    net->offset[n_layers] = n_params;
    return 0;
}

int tile_alloc(Tile *t, const Net *net) {
    const int N = net->n_volumes, latent = net->latent;
    const int64_t n_params = net->offset[net->n_layers];
    /* rows: x, every layer's output, y, eps, z, std, two gradient rows, the mask */
    const int64_t rows = N + net->hidden_rows + N + 3 * latent + 2 * net->widest + 1;
    v8 *p = aligned_alloc(sizeof(v8), (size_t)(rows * LD + n_params) * sizeof(v8));
    if (!p) return -1;
    t->gacc = p; p += n_params;
    t->x = p; p += (int64_t)N * LD;
    for (int l = 0; l < net->n_layers; l++) { t->out[l] = p; p += (int64_t)net->n_out[l] * LD; }
    t->y = p; p += (int64_t)N * LD;
    t->eps = p; p += (int64_t)latent * LD;
    t->z = p; p += (int64_t)latent * LD;
    t->std = p; p += (int64_t)latent * LD;
    t->g0 = p; p += (int64_t)net->widest * LD;
    t->g1 = p; p += (int64_t)net->widest * LD;
    t->mask = p;
    return 0;
}

void tile_free(Tile *t) { free(t->gacc); }

/* Where sample s of a tile is in src: row rows[s], or row first + s without rows. */
static inline const float *row_of(const float *src, const uint32_t *rows, int64_t first, int s, int width) {
    return src + (rows ? (int64_t)rows[s] : first + s) * (int64_t)width;
}

/* m samples into a feature-major tile (row i: TT samples), samples past m zero; sample s is
 * src's row rows[s] (rows NULL: row first + s). */
void load_rows(v8 *dst, const float *src, const uint32_t *rows, int64_t first, int m, int width) {
    float *t = (float *)dst;
    int i0 = 0;
#if defined(__AVX__)
    if (m == TT) {
        for (; i0 + 8 <= width; i0 += 8)
            for (int sb = 0; sb < TT; sb += 8) {
                __m256 r[8];
                for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps(row_of(src, rows, first, sb + k, width) + i0);
                transpose8(r);
                for (int q = 0; q < 8; q++) _mm256_store_ps(t + (i0 + q) * TT + sb, r[q]);
            }
    }
#endif
    for (int s = 0; s < TT; s++) {
        const float *row = s < m ? row_of(src, rows, first, s, width) : NULL;
        for (int i = i0; i < width; i++) t[i * TT + s] = row ? row[i] : 0.0f;
    }
}

/* The gradient of the loss over the tile's first m samples (t->x, t->y, and t->eps with_eps for
 * a VAE; without, z = mu), added to t->gacc; the loss and KL sums are added to *rec and *kl. */
void tile_gradient(const Net *net, Tile *t, int m, int with_eps, const float *params, double *rec, double *kl) {
    const int head = net->head, latent = net->latent, N = net->n_volumes, n_layers = net->n_layers;
    const int *n_in = net->n_in, *n_out = net->n_out;
    const float slope = net->slope, kscale = net->kscale;
    const int vae = net->vae;
    v8 *mask = t->mask;
    for (int v = 0; v < LD; v++)
        for (int k = 0; k < VW; k++) mask[v][k] = (v * VW + k < m) ? 1.0f : 0.0f;
    /* forward */
    const v8 *in = t->x;
    for (int l = 0; l < n_layers; l++) {
        const float *W = params + net->offset[l];
        const int a = n_in[l], b = n_out[l];
        const int layer_act = l == head ? ACT_NONE : (l == n_layers - 1 ? ACT_SIGMOID : net->act);
        dense_layer(in, t->out[l], LD, W, a + 1, W + a, a + 1, a, b, layer_act, slope);
        in = t->out[l];
        if (l == head && vae) {
            const v8 *H = t->out[l];
            v8 k_acc = splat(0.0f);
            for (int r = 0; r < latent * LD; r++) {
                const v8 mu = H[r], lv = H[latent * LD + r];
                const v8 sd = vexp(splat(0.5f) * lv);
                t->std[r] = sd;
                t->z[r] = with_eps ? mu + sd * t->eps[r] : mu;
                k_acc += mask[r % LD] * (mu * mu + sd * sd - splat(1.0f) - lv);
            }
            *kl += hsum(k_acc);
            in = t->z;
        }
    }
    /* loss and its gradient at the sigmoid's input */
    v8 *O = t->out[n_layers - 1], *g = t->g0;
    const v8 *Y = t->y;
    v8 r_acc = splat(0.0f);
    for (int r = 0; r < N * LD; r++) {
        const v8 o = O[r], d = o - Y[r];
        v8 gr;
        if (net->loss == LOSS_HUBER) {
            const v8 ad = vselect(d < splat(0.0f), -d, d);
            r_acc += mask[r % LD] * vselect(ad < splat(1.0f), splat(0.5f) * d * d, ad - splat(0.5f));
            gr = vselect(d > splat(1.0f), splat(1.0f), vselect(d < splat(-1.0f), splat(-1.0f), d));
        } else if (net->loss == LOSS_MSE) {
            r_acc += mask[r % LD] * d * d;
            gr = d;
        } else {
            r_acc += mask[r % LD] * vselect(d < splat(0.0f), -d, d);
            gr = vselect(d > splat(0.0f), splat(1.0f), vselect(d < splat(0.0f), splat(-1.0f), splat(0.0f)));
        }
        g[r] = gr * o * (splat(1.0f) - o) * mask[r % LD];
    }
    *rec += hsum(r_acc);
    /* backward: decoder, head, encoder */
    for (int l = n_layers - 1; l >= 0; l--) {
        const v8 *a = l == 0 ? t->x : (l == head + 1 && vae ? t->z : t->out[l - 1]);
        const int a_act = l == head + 1 || l == 0 ? ACT_NONE : net->act;
        accumulate_weight_grad(t->gacc + net->offset[l], g, a, n_in[l], n_out[l]);
        if (l == 0) break;
        v8 *ga = g == t->g0 ? t->g1 : t->g0;
        backprop(ga, g, params + net->offset[l], a, n_in[l], n_out[l], a_act, slope);
        g = ga;
        if (l == head + 1 && vae) {  /* through z = mu + std * eps, plus the KL term */
            v8 *dh = g == t->g0 ? t->g1 : t->g0;
            for (int r = 0; r < latent * LD; r++) {
                const v8 mu = t->out[head][r], sd = t->std[r], km = splat(kscale) * mask[r % LD];
                dh[r] = g[r] + km * mu;
                dh[latent * LD + r] = splat(0.5f) * ((with_eps ? g[r] * t->eps[r] * sd : splat(0.0f))
                                                     + km * (sd * sd - splat(1.0f)));
            }
            g = dh;
        }
    }
}
