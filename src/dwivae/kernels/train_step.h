/* The gradient of the VAE/DAE on one tile of samples (train_step.c), for the training loop of
 * train_loop.c. */
#ifndef DWIVAE_TRAIN_STEP_H
#define DWIVAE_TRAIN_STEP_H
#include "simd.h"

#define TT 128                    /* samples per training tile */
#define LD (TT / VW)              /* vectors per feature row of a training tile */
#define MAX_LAYERS 64

enum { LOSS_HUBER = 0, LOSS_MSE = 1, LOSS_L1 = 2 };

/* The network: layers encoder (activation act), head (mu, and logvar below it for a VAE;
 * linear), decoder (activation act, the last one a sigmoid); layer l's [W | b] block, n_out[l] x
 * (n_in[l] + 1) row-major, starts at offset[l] of the parameters (offset[n_layers]: their count). */
typedef struct {
    int n_layers, head, latent, n_volumes, vae, act, loss, widest;
    float slope, kscale;          /* LeakyReLU's slope; the KL gradient's scale */
    const int *n_in, *n_out;
    int64_t offset[MAX_LAYERS + 1];
    int64_t hidden_rows;          /* every layer's outputs, in feature rows */
} Net;

/* One thread's tile: its samples feature-major (rows of LD vectors), every layer's output, and
 * the weight gradient summed over its tiles in VW lanes per weight. */
typedef struct {
    v8 *x, *y, *eps, *z, *std, *g0, *g1, *out[MAX_LAYERS];
    v8 *gacc, *mask;
} Tile;

/* What dwivae_train_steps (train_loop.c) is given; dwivae.kernels.bindings mirrors these three
 * structs field by field. */
typedef struct {                  /* the samples and the order they are read in */
    const float *x, *y, *eps;     /* x_rows x N, y_rows x N, (n_steps * batch) x latent or NULL */
    int64_t x_rows, y_rows, first_sample, first_step, n_steps, batch;
    uint64_t shuffle_key, seed;
    int shuffled, eps_mode;
} TrainData;

typedef struct {                  /* the network and its loss */
    const int *n_in, *n_out;      /* n_layers widths each */
    int n_layers, n_enc, vae, act, loss;
    float slope, kscale;          /* LeakyReLU's slope; the KL gradient's scale */
    double divisor;               /* the reconstruction gradient is divided by this */
} TrainNet;

typedef struct {                  /* Adam's state, updated in place */
    float *params, *m, *v;        /* [W | b] blocks of every layer */
    int64_t step;
    double lr, beta1, beta2, eps;
} TrainAdam;

int net_init(Net *net, int n_layers, int n_enc, const int *n_in, const int *n_out, int vae, int act,
             float slope, int loss, float kscale);
int tile_alloc(Tile *t, const Net *net);
void tile_free(Tile *t);
void load_rows(v8 *dst, const float *src, const uint32_t *rows, int64_t first, int m, int width);
void tile_gradient(const Net *net, Tile *t, int m, int with_eps, const float *params, double *rec, double *kl);
#endif
