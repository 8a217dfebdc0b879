/* Training steps in C: Adam on batches of rows, the gradient of each from train_step.c, on
 * threads that share each batch. For dwivae.learn.compiled_step.CompiledStep.
 *
 * A batch is cut into chunks of whole tiles, how many decided by the batch size alone (at least
 * CHUNK_TILES tiles each, at most MAX_CHUNKS chunks), and the threads take chunks as they come
 * free, so that a thread slowed by another job takes fewer. Each chunk's gradient is summed on
 * its own and the chunks are added in their order: the result does not depend on the number of
 * threads or on who took what, and the same inputs give bit-identical weights. Whoever finishes
 * the last chunk of a step applies Adam (torch's update) and opens the next step.
 *
 * Rows: sample s of step k of the call is sample i = first_sample + k * batch + s of an epoch:
 * x's row r = i, or with `shuffled`, r = the permutation of i under shuffle_key (counter_random.h),
 * a new order of x's rows for each key, made on the fly. Its target is y's row r mod y_rows: x's
 * rows are noisy copies of y's, level after level (dwivae.learn.dataset.noisy_copies). The VAE's eps
 * is given (row k * batch + s of eps), drawn (counter_random.h: units j and j + 1 of sample s are
 * the pair of counter s * latent + j, j even, under the key mix64(seed ^ mix64(first_step + k)))
 * or none (z = mu).
 */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "counter_random.h"
#include "train_step.h"

#define CHUNK_TILES 4
#define MAX_CHUNKS 8
#define MAX_THREADS 64

enum { EPS_NONE = 0, EPS_GIVEN = 1, EPS_DRAWN = 2 };

typedef struct {
    Net net;
    const float *x, *y, *eps;
    int64_t n_steps, batch, first_step, first_sample;
    int shuffled;
    Shuffle shuffle;
    uint32_t y_rows;
    uint64_t y_mod;               /* y_rows's multiplier for fastmod */
    int eps_mode;
    uint64_t seed;
    float *params, *adam_m, *adam_v;
    int64_t adam_step;
    double lr, beta1, beta2, adam_eps, divisor;
    int chunk_tiles, n_chunks;
    float *chunk_grad;            /* n_chunks x n_params */
    double *chunk_sums;           /* n_chunks x (reconstruction, KL) */
    double sums[2];
    _Atomic int64_t ticket;       /* chunks handed out: step ticket / n_chunks, chunk ticket % n_chunks */
    _Atomic int64_t completed;    /* chunks done */
    _Atomic int64_t ready;        /* steps that may start (their weights are final) */
} Loop;

typedef struct {
    Loop *loop;
    Tile tile;
    uint32_t rows_x[TT], rows_y[TT];  /* the tile's rows of x and y */
    pthread_t thread;
    int started;
} Worker;

static uint64_t step_key(uint64_t seed, int64_t step) { return mix64(seed ^ mix64((uint64_t)step)); }

/* eps of samples first.. (a tile) of the step with this key: latent units j and j + 1 are the
 * pair of counter s * latent + j for even j. */
static void draw_eps(v8 *eps, uint64_t key, int64_t first, int latent) {
    for (int j = 0; j < latent; j += 2)
        for (int v = 0; v < LD; v++) {
            v8 second;
            normal_pair(counters((uint32_t)((first + v * VW) * latent + j), latent), key, &eps[j * LD + v], &second);
            if (j + 1 < latent) eps[(j + 1) * LD + v] = second;
        }
}

/* The normals that the VAE's eps of samples 0..n of a step gets from draw_eps: out (n x latent). */
void dwivae_normals(uint64_t seed, int64_t step, int64_t n, int latent, float *out) {
    const uint64_t key = step_key(seed, step);
    for (int64_t s = 0; s < n; s += VW)
        for (int j = 0; j < latent; j += 2) {
            v8 first, second;
            normal_pair(counters((uint32_t)(s * latent + j), latent), key, &first, &second);
            for (int k = 0; k < VW && s + k < n; k++) {
                out[(s + k) * latent + j] = first[k];
                if (j + 1 < latent) out[(s + k) * latent + j + 1] = second[k];
            }
        }
}

/* Rows first..first + count of the permutation of n rows under key: out (count,). */
void dwivae_shuffled_rows(uint64_t key, uint32_t n, int64_t first, int64_t count, uint32_t *out) {
    const Shuffle p = shuffle_init(key, n);
    for (int64_t c = 0; c < count; c += VW) {
        const v8u last = counters((uint32_t)(first + count - 1), 0), i = counters((uint32_t)(first + c), 1);
        const v8u r = shuffle_apply(&p, vmin_u32(i, last));
        for (int k = 0; k < VW && c + k < count; k++) out[c + k] = r[k];
    }
}

/* a mod d through a multiplication (Lemire's fastmod; m = 2^64 / d rounded up, 0 for d = 1). */
static inline uint32_t fastmod(uint32_t a, uint64_t m, uint32_t d) {
    return (uint32_t)(((__uint128_t)(m * a) * d) >> 64);
}

/* The x and y rows of samples s0..s0 + m of a step. */
static void tile_rows(const Loop *L, int64_t step, int64_t s0, int m, uint32_t *rows_x, uint32_t *rows_y) {
    const int64_t first = L->first_sample + step * L->batch + s0;
    const v8u last = counters((uint32_t)(first + m - 1), 0);
    for (int s = 0; s < m; s += VW) {
        const v8u i = vmin_u32(counters((uint32_t)(first + s), 1), last);
        const v8u r = L->shuffled ? shuffle_apply(&L->shuffle, i) : i;
        for (int k = 0; k < VW && s + k < m; k++) {
            rows_x[s + k] = r[k];
            rows_y[s + k] = fastmod(r[k], L->y_mod, L->y_rows);
        }
    }
}

static inline int64_t take_ticket(Loop *L) { return atomic_fetch_add_explicit(&L->ticket, 1, memory_order_relaxed); }

/* Samples s0..s0 + m of a step into the worker's tile: rows, inputs, targets and eps, none of
 * which depends on the weights. */
static void prepare_tile(const Loop *L, Worker *w, int64_t step, int64_t s0, int m) {
    const int N = L->net.n_volumes, latent = L->net.latent;
    Tile *t = &w->tile;
    tile_rows(L, step, s0, m, w->rows_x, w->rows_y);
    load_rows(t->x, L->x, w->rows_x, 0, m, N);
    load_rows(t->y, L->y, w->rows_y, 0, m, N);
    if (L->eps_mode == EPS_GIVEN) load_rows(t->eps, L->eps, NULL, step * L->batch + s0, m, latent);
    else if (L->eps_mode == EPS_DRAWN) draw_eps(t->eps, step_key(L->seed, L->first_step + step), s0, latent);
}

static inline int tile_size(int64_t s0, int64_t hi) { return hi - s0 < TT ? (int)(hi - s0) : TT; }

/* The gradient, loss and KL of samples lo..hi (a chunk) of a step, into the chunk's buffers; its
 * first tile is prepared already. */
static void run_chunk(Loop *L, Worker *w, int64_t step, int chunk, int64_t lo, int64_t hi) {
    const Net *net = &L->net;
    Tile *t = &w->tile;
    const int64_t n_params = net->offset[net->n_layers];
    double rec = 0.0, kl = 0.0;
    memset(t->gacc, 0, (size_t)n_params * sizeof(v8));
    for (int64_t s0 = lo; s0 < hi; s0 += TT) {
        if (s0 > lo) prepare_tile(L, w, step, s0, tile_size(s0, hi));
        tile_gradient(net, t, tile_size(s0, hi), L->eps_mode != EPS_NONE, L->params, &rec, &kl);
    }
    float *grad = L->chunk_grad + (int64_t)chunk * n_params;
    for (int64_t k = 0; k < n_params; k++) grad[k] = hsum(t->gacc[k]);
    L->chunk_sums[2 * chunk] = rec;
    L->chunk_sums[2 * chunk + 1] = kl;
}

/* The chunks' gradients added in order, then one step of Adam as torch takes it (the gradient
 * divided by `divisor` first). */
static void update(Loop *L) {
    const int64_t n_params = L->net.offset[L->net.n_layers];
    L->adam_step++;
    const double bc1 = 1.0 - pow(L->beta1, (double)L->adam_step), bc2 = 1.0 - pow(L->beta2, (double)L->adam_step);
    const float step_size = (float)(L->lr / bc1), bc2_sqrt = (float)sqrt(bc2), eps = (float)L->adam_eps;
    const float b1 = (float)L->beta1, b2 = (float)L->beta2, divisor = (float)L->divisor;
    for (int64_t k = 0; k < n_params; k++) {
        float g = L->chunk_grad[k];
        for (int c = 1; c < L->n_chunks; c++) g += L->chunk_grad[(int64_t)c * n_params + k];
        g /= divisor;
        const float m = L->adam_m[k] + (1.0f - b1) * (g - L->adam_m[k]);
        const float v = b2 * L->adam_v[k] + (1.0f - b2) * g * g;
        L->adam_m[k] = m;
        L->adam_v[k] = v;
        L->params[k] -= step_size * m / (sqrtf(v) / bc2_sqrt + eps);
    }
    for (int c = 0; c < L->n_chunks; c++) {
        L->sums[0] += L->chunk_sums[2 * c];
        L->sums[1] += L->chunk_sums[2 * c + 1];
    }
}

static inline void pause_briefly(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Takes chunks until every step is done; the thread that completes a step updates the weights. */
static void work(Loop *L, Worker *w) {
    const int64_t last = L->n_steps * L->n_chunks;
    for (int64_t ticket = take_ticket(L); ticket < last; ticket = take_ticket(L)) {
        const int64_t step = ticket / L->n_chunks;
        const int chunk = (int)(ticket % L->n_chunks);
        const int64_t lo = (int64_t)chunk * L->chunk_tiles * TT;
        const int64_t hi = lo + (int64_t)L->chunk_tiles * TT < L->batch ? lo + (int64_t)L->chunk_tiles * TT : L->batch;
        prepare_tile(L, w, step, lo, tile_size(lo, hi));  /* while the step before may still be updated */
        for (int spins = 0; atomic_load_explicit(&L->ready, memory_order_acquire) <= step; spins++) {
            if (spins < 4096) pause_briefly();
            else sched_yield();
        }
        run_chunk(L, w, step, chunk, lo, hi);
        if (atomic_fetch_add_explicit(&L->completed, 1, memory_order_acq_rel) + 1 == (step + 1) * L->n_chunks) {
            update(L);
            atomic_store_explicit(&L->ready, step + 2, memory_order_release);
        }
    }
}

static void *worker_main(void *arg) {
    Worker *w = arg;
    work(w->loop, w);
    return NULL;
}

/* data->n_steps steps of Adam on batches of data->batch samples: x (x_rows x N) and y (y_rows x
 * N), rows in the order the top of this file says. adam's params, m and v: the [W | b] blocks of
 * every layer (train_step.h), updated in place; adam->step counts Adam's steps. The
 * reconstruction gradient is divided by spec->divisor, the KL gradient scaled by spec->kscale.
 * sums[0] and sums[1] get the reconstruction and KL sums added. Returns 0, -1 for sizes the kernel
 * does not take, -2 when out of memory.
 */
int dwivae_train_steps(const TrainData *data, const TrainNet *spec, TrainAdam *adam, int threads, double *sums) {
    const int64_t x_rows = data->x_rows, y_rows = data->y_rows, batch = data->batch, n_steps = data->n_steps;
    const int n_layers = spec->n_layers;
    Loop L = {.x = data->x, .y = data->y, .eps = data->eps, .n_steps = n_steps, .batch = batch,
              .first_step = data->first_step, .first_sample = data->first_sample, .shuffled = data->shuffled,
              .eps_mode = spec->vae ? data->eps_mode : EPS_NONE, .seed = data->seed, .params = adam->params,
              .adam_m = adam->m, .adam_v = adam->v, .adam_step = adam->step, .lr = adam->lr, .beta1 = adam->beta1,
              .beta2 = adam->beta2, .adam_eps = adam->eps, .divisor = spec->divisor};
    if (x_rows < 1 || x_rows >= ((int64_t)1 << 31) || y_rows < 1 || y_rows > x_rows || batch < 1 || n_steps < 0
        || data->first_sample < 0 || data->first_sample + n_steps * batch > x_rows) return -1;
    L.shuffle = shuffle_init(data->shuffle_key, (uint32_t)x_rows);
    L.y_rows = (uint32_t)y_rows;
    L.y_mod = UINT64_MAX / L.y_rows + 1;
    if (net_init(&L.net, n_layers, spec->n_enc, spec->n_in, spec->n_out, spec->vae, spec->act, spec->slope, spec->loss,
                 spec->kscale) != 0) return -1;
    if (batch * L.net.latent >= ((int64_t)1 << 31)) return -1;
    if (L.eps_mode == EPS_GIVEN && !data->eps) return -1;
    const int64_t tiles = (batch + TT - 1) / TT;
    L.chunk_tiles = (int)((tiles + MAX_CHUNKS - 1) / MAX_CHUNKS);
    if (L.chunk_tiles < CHUNK_TILES) L.chunk_tiles = CHUNK_TILES;
    L.n_chunks = (int)((tiles + L.chunk_tiles - 1) / L.chunk_tiles);
    if (threads > L.n_chunks) threads = L.n_chunks;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
    const int64_t n_params = L.net.offset[n_layers];
    L.chunk_grad = malloc((size_t)(L.n_chunks * n_params) * sizeof(float));
    L.chunk_sums = malloc((size_t)L.n_chunks * 2 * sizeof(double));
    Worker *workers = calloc((size_t)threads, sizeof(Worker));
    int status = L.chunk_grad && L.chunk_sums && workers ? 0 : -2;
    int allocated = 0;
    for (; status == 0 && allocated < threads; allocated++)
        if (tile_alloc(&workers[allocated].tile, &L.net) != 0) status = -2;
    if (status == 0) {
        atomic_init(&L.ticket, 0);
        atomic_init(&L.completed, 0);
        atomic_init(&L.ready, 1);
        for (int k = 0; k < threads; k++) workers[k].loop = &L;
        /* a thread that cannot start leaves its chunks to the others */
        for (int k = 1; k < threads; k++)
            workers[k].started = pthread_create(&workers[k].thread, NULL, worker_main, &workers[k]) == 0;
        work(&L, &workers[0]);
        for (int k = 1; k < threads; k++)
            if (workers[k].started) pthread_join(workers[k].thread, NULL);
        adam->step = L.adam_step;
        sums[0] += L.sums[0];
        sums[1] += L.sums[1];
    }
    for (int k = 0; k < allocated; k++) tile_free(&workers[k].tile);
    free(workers);
    free(L.chunk_sums);
    free(L.chunk_grad);
    return status;
}
