/* One pass of the grouped low-rank estimate (dwivae.apply.grouping), block by block.
 *
 * Built by dwivae.kernels.bindings with the other kernels. Each block of voxels is cut into groups
 * by k-means on the voxels' latent codes (k-means++ seeding from counter-based uniforms, then
 * Lloyd's iterations, as scipy.cluster.vq.kmeans2(minit="++") does); each group's series is
 * projected on the eigenvectors of its covariance that stand above the Marchenko-Pastur edge.
 * The eigenvectors come from Householder tridiagonalisation and the implicit QL algorithm
 * (EISPACK's tred2 and tql2, as JAMA writes them, in the public domain): for a 32 x 32 matrix
 * ~2.5x faster than LAPACK's dsyevr through OpenBLAS, whose small BLAS calls cost more than their
 * arithmetic. Threads take blocks from a shared counter; a block's voxels are its own, so their
 * estimates are added into the output without locks.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LLOYD_ITERATIONS 10      /* kmeans2's default; stopped early once the labels repeat (a fixed point) */

/* splitmix64's finaliser. */
static inline uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Draw j of the key's uniforms in [0, 1): 53 bits of mix64(key + j). */
static inline double uniform(uint64_t key, uint64_t j) { return (double)(mix64(key + j) >> 11) * 0x1.0p-53; }

static inline double distance2(const double *a, const double *b, int L) {
    double d = 0.0;
    for (int l = 0; l < L; l++) d += (a[l] - b[l]) * (a[l] - b[l]);
    return d;
}

/* k-means of the n codes x (n, L) into k clusters: labels (n,). d2 (n,), centres (k, L), sums
 * (k, L), columns (L, kp) with kp = k rounded up to 8, and dist (kp,) are scratch. Seeding: the
 * first centre is point floor(u0 n), each next one the first point whose cumulative squared
 * distance to its nearest centre exceeds u_i times their sum. */
static void kmeans(const double *x, int64_t n, int L, int k, uint64_t key, int *labels, double *d2, double *centres,
                   double *sums, double *columns, double *dist, int64_t *counts) {
    int64_t first = (int64_t)(uniform(key, 0) * (double)n);
    if (first > n - 1) first = n - 1;
    memcpy(centres, x + first * L, L * sizeof(double));
    for (int64_t i = 0; i < n; i++) d2[i] = distance2(x + i * L, centres, L);
    for (int c = 1; c < k; c++) {
        double total = 0.0;
        for (int64_t i = 0; i < n; i++) total += d2[i];
        const double target = uniform(key, (uint64_t)c) * total;
        int64_t pick = n - 1;
        double cumulative = 0.0;
        for (int64_t i = 0; i < n; i++) {
            cumulative += d2[i];
            if (cumulative > target) { pick = i; break; }
        }
        double *centre = centres + (int64_t)c * L;
        memcpy(centre, x + pick * L, L * sizeof(double));
        for (int64_t i = 0; i < n; i++) {
            const double d = distance2(x + i * L, centre, L);
            if (d < d2[i]) d2[i] = d;
        }
    }
    const int kp = (k + 7) / 8 * 8;
    memset(columns, 0, (size_t)L * kp * sizeof(double));
    for (int64_t i = 0; i < n; i++) labels[i] = -1;
    for (int it = 0; it < LLOYD_ITERATIONS; it++) {
        for (int c = 0; c < k; c++)   /* the centres as columns: all k distances of a point in one sweep */
            for (int l = 0; l < L; l++) columns[l * kp + c] = centres[c * L + l];
        int changed = 0;
        for (int64_t i = 0; i < n; i++) {
            for (int c0 = 0; c0 < kp; c0 += 8) {   /* 8 centres at a time, in one vector register */
                double acc[8] = {0.0};
                for (int l = 0; l < L; l++) {
                    const double xl = x[i * L + l], *column = columns + l * kp + c0;
                    for (int c = 0; c < 8; c++) acc[c] += (xl - column[c]) * (xl - column[c]);
                }
                memcpy(dist + c0, acc, sizeof acc);
            }
            int best = 0;
            for (int c = 1; c < k; c++)
                if (dist[c] < dist[best]) best = c;
            changed |= labels[i] != best;
            labels[i] = best;
        }
        if (!changed) break;
        memset(sums, 0, (size_t)k * L * sizeof(double));
        memset(counts, 0, (size_t)k * sizeof(int64_t));
        for (int64_t i = 0; i < n; i++) {
            counts[labels[i]]++;
            for (int l = 0; l < L; l++) sums[labels[i] * L + l] += x[i * L + l];
        }
        for (int c = 0; c < k; c++)   /* an empty cluster keeps its centre */
            if (counts[c] > 0)
                for (int l = 0; l < L; l++) centres[c * L + l] = sums[c * L + l] / (double)counts[c];
    }
}

/* Eigenvalues d (n,) and eigenvectors of the symmetric matrix v (n, n, overwritten): on return
 * row j of v is the unit eigenvector of d[j]. e (n,) is scratch. Returns 0, or -3 where the QL
 * iteration did not converge. The algorithm is written for the eigenvectors in the columns of V;
 * V(i, j) is v's element (j, i), so that its inner loops run along memory. */
static int symmetric_eigen(int n, double *v, double *d, double *e) {
#define V(i, j) v[(int64_t)(j) * n + (i)]
    for (int j = 0; j < n; j++) d[j] = V(n - 1, j);
    for (int i = n - 1; i > 0; i--) {   /* tred2: Householder reduction to tridiagonal form */
        double scale = 0.0, h = 0.0;
        for (int k = 0; k < i; k++) scale += fabs(d[k]);
        if (scale == 0.0) {
            e[i] = d[i - 1];
            for (int j = 0; j < i; j++) {
                d[j] = V(i - 1, j);
                V(i, j) = 0.0;
                V(j, i) = 0.0;
            }
        } else {
            for (int k = 0; k < i; k++) {
                d[k] /= scale;
                h += d[k] * d[k];
            }
            double f = d[i - 1], g = sqrt(h);
            if (f > 0) g = -g;
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            for (int j = 0; j < i; j++) e[j] = 0.0;
            for (int j = 0; j < i; j++) {
                f = d[j];
                V(j, i) = f;
                g = e[j] + V(j, j) * f;
                for (int k = j + 1; k <= i - 1; k++) {
                    g += V(k, j) * d[k];
                    e[k] += V(k, j) * f;
                }
                e[j] = g;
            }
            f = 0.0;
            for (int j = 0; j < i; j++) {
                e[j] /= h;
                f += e[j] * d[j];
            }
            const double hh = f / (h + h);
            for (int j = 0; j < i; j++) e[j] -= hh * d[j];
            for (int j = 0; j < i; j++) {
                f = d[j];
                g = e[j];
                for (int k = j; k <= i - 1; k++) V(k, j) -= f * e[k] + g * d[k];
                d[j] = V(i - 1, j);
                V(i, j) = 0.0;
            }
        }
        d[i] = h;
    }
    for (int i = 0; i < n - 1; i++) {   /* accumulate the transformations */
        V(n - 1, i) = V(i, i);
        V(i, i) = 1.0;
        const double h = d[i + 1];
        if (h != 0.0) {
            for (int k = 0; k <= i; k++) d[k] = V(k, i + 1) / h;
            for (int j = 0; j <= i; j++) {
                double g = 0.0;
                for (int k = 0; k <= i; k++) g += V(k, i + 1) * V(k, j);
                for (int k = 0; k <= i; k++) V(k, j) -= g * d[k];
            }
        }
        for (int k = 0; k <= i; k++) V(k, i + 1) = 0.0;
    }
    for (int j = 0; j < n; j++) {
        d[j] = V(n - 1, j);
        V(n - 1, j) = 0.0;
    }
    V(n - 1, n - 1) = 1.0;
    e[0] = 0.0;
#undef V
    for (int i = 1; i < n; i++) e[i - 1] = e[i];   /* tql2: implicit QL on the tridiagonal form */
    e[n - 1] = 0.0;
    double f = 0.0, largest = 0.0;
    const double eps = 0x1.0p-52;
    for (int l = 0; l < n; l++) {
        largest = fmax(largest, fabs(d[l]) + fabs(e[l]));
        int m = l;
        while (m < n - 1 && fabs(e[m]) > eps * largest) m++;
        for (int iter = 0; m > l && fabs(e[l]) > eps * largest; iter++) {
            if (iter == 64) return -3;
            double g = d[l], p = (d[l + 1] - g) / (2.0 * e[l]);
            double r = sqrt(p * p + 1.0);
            if (p < 0) r = -r;
            d[l] = e[l] / (p + r);
            d[l + 1] = e[l] * (p + r);
            const double dl1 = d[l + 1];
            double h = g - d[l];
            for (int i = l + 2; i < n; i++) d[i] -= h;
            f += h;
            p = d[m];
            double c = 1.0, c2 = 1.0, c3 = 1.0, s = 0.0, s2 = 0.0;
            const double el1 = e[l + 1];
            for (int i = m - 1; i >= l; i--) {
                c3 = c2;
                c2 = c;
                s2 = s;
                g = c * e[i];
                h = c * p;
                r = sqrt(p * p + e[i] * e[i]);
                e[i + 1] = s * r;
                s = e[i] / r;
                c = p / r;
                p = c * d[i] - s * g;
                d[i + 1] = h + s * (c * g + s * d[i]);
                double *a = v + (int64_t)i * n, *b = a + n;
                for (int k = 0; k < n; k++) {
                    const double t = b[k];
                    b[k] = s * a[k] + c * t;
                    a[k] = c * a[k] - s * t;
                }
            }
            p = -s * s2 * c3 * el1 * e[l] / dl1;
            e[l] = s * p;
            d[l] = c * p;
        }
        d[l] += f;
        e[l] = 0.0;
    }
    return 0;
}

typedef struct {
    double *centred, *cov, *values, *offdiagonal, *proj, *mean, *codes, *d2, *centres, *sums, *columns,
        *dist;
    int *labels;
    int64_t *counts, *members;
} Scratch;

/* Add the estimate of the group rows[0..m) to total: the series projected on the components of
 * their covariance above sigma2 (1 + sqrt(N / m))^2; fewer than min_group rows keep their series.
 * Returns 0, or -3 where the eigenvalues did not converge. */
static int project(const float *signals, int N, const int64_t *rows, int64_t m, double sigma2, int min_group,
                   Scratch *s, double *total) {
    if (m < min_group) {
        for (int64_t r = 0; r < m; r++)
            for (int v = 0; v < N; v++) total[rows[r] * N + v] += (double)signals[rows[r] * N + v];
        return 0;
    }
    memset(s->mean, 0, N * sizeof(double));
    for (int64_t r = 0; r < m; r++)
        for (int v = 0; v < N; v++) s->mean[v] += (double)signals[rows[r] * N + v];
    for (int v = 0; v < N; v++) s->mean[v] /= (double)m;
    const int P = (N + 7) / 8 * 8;   /* the centred rows padded with zeros to whole vectors of 8 */
    for (int64_t r = 0; r < m; r++) {
        double *x = s->centred + r * P;
        for (int v = 0; v < N; v++) x[v] = (double)signals[rows[r] * N + v] - s->mean[v];
        for (int v = N; v < P; v++) x[v] = 0.0;
    }
    for (int i = 0; i < N; i++)   /* the upper triangle, 8 columns at a time in one register */
        for (int j0 = i / 8 * 8; j0 < N; j0 += 8) {
            double acc[8] = {0.0};
            for (int64_t r = 0; r < m; r++) {
                const double *x = s->centred + r * P;
                for (int j = 0; j < 8; j++) acc[j] += x[i] * x[j0 + j];
            }
            for (int j = j0 < i ? i - j0 : 0; j < 8 && j0 + j < N; j++) s->cov[(int64_t)i * N + j0 + j] = acc[j];
        }
    for (int i = 0; i < N; i++)
        for (int j = i; j < N; j++) s->cov[(int64_t)j * N + i] = s->cov[(int64_t)i * N + j] /= (double)m;
    if (symmetric_eigen(N, s->cov, s->values, s->offdiagonal)) return -3;
    double *vectors = s->cov;
    const double edge = 1.0 + sqrt((double)N / (double)m);
    int found = 0;
    for (int c = 0; c < N; c++)   /* the kept vectors first */
        if (s->values[c] >= sigma2 * edge * edge) {
            if (found != c) memcpy(vectors + (int64_t)found * N, vectors + (int64_t)c * N, N * sizeof(double));
            found++;
        }
    for (int64_t r = 0; r < m; r++) {
        const double *x = s->centred + r * P;
        double *out = total + rows[r] * N;
        for (int c = 0; c < found; c++) {
            const double *vec = vectors + (int64_t)c * N;
            double p = 0.0;
            for (int v = 0; v < N; v++) p += x[v] * vec[v];
            s->proj[c] = p;
        }
        for (int v = 0; v < N; v++) out[v] += s->mean[v];
        for (int c = 0; c < found; c++) {   /* along each vector: contiguous, vectorised */
            const double weight = s->proj[c], *vec = vectors + (int64_t)c * N;
            for (int v = 0; v < N; v++) out[v] += weight * vec[v];
        }
    }
    return 0;
}

/* One pass over the blocks taken from *next_block until none is left (one thread's share).
 *
 * signals (M, N, float32) and codes (M, L) are C order; block b holds the voxels order[starts[b] ..
 * starts[b + 1]) and is cut into clusters[b] groups with k-means keyed by keys[b]. Each voxel's
 * estimate is added to total (M, N). max_block is the largest block. Returns 0, -2 where memory
 * ran out, or -3 where an eigendecomposition did not converge.
 */
int dwivae_group_pass(const float *signals, int N, const double *codes, int L, const int64_t *order,
                      const int64_t *starts, const int64_t *clusters, const uint64_t *keys, int64_t n_blocks,
                      int64_t max_block, int64_t *next_block, double sigma, int min_group, double *total) {
    int64_t most_clusters = 1;
    for (int64_t b = 0; b < n_blocks; b++)
        if (clusters[b] > most_clusters) most_clusters = clusters[b];
    const int64_t padded = (most_clusters + 7) / 8 * 8;
    Scratch s;
    s.centred = malloc((size_t)max_block * ((N + 7) / 8 * 8) * sizeof(double));
    s.cov = malloc((size_t)N * N * sizeof(double));
    s.values = malloc((size_t)N * sizeof(double));
    s.offdiagonal = malloc((size_t)N * sizeof(double));
    s.proj = malloc((size_t)N * sizeof(double));
    s.mean = malloc((size_t)N * sizeof(double));
    s.codes = malloc((size_t)max_block * L * sizeof(double));
    s.d2 = malloc((size_t)max_block * sizeof(double));
    s.centres = malloc((size_t)most_clusters * L * sizeof(double));
    s.sums = malloc((size_t)most_clusters * L * sizeof(double));
    s.columns = malloc((size_t)padded * L * sizeof(double));
    s.dist = malloc((size_t)padded * sizeof(double));
    s.labels = malloc((size_t)max_block * sizeof(int));
    s.counts = malloc((size_t)most_clusters * sizeof(int64_t));
    s.members = malloc((size_t)max_block * sizeof(int64_t));
    int status = 0;
    if (!s.centred || !s.cov || !s.values || !s.offdiagonal || !s.proj || !s.mean || !s.codes ||
        !s.d2 || !s.centres || !s.sums || !s.columns || !s.dist || !s.labels || !s.counts || !s.members)
        status = -2;
    const double sigma2 = sigma * sigma;
    for (int64_t b; status == 0 && (b = __atomic_fetch_add(next_block, 1, __ATOMIC_RELAXED)) < n_blocks;) {
        const int64_t *block = order + starts[b];
        const int64_t n = starts[b + 1] - starts[b];
        const int k = (int)clusters[b];
        if (k <= 1) {
            status = project(signals, N, block, n, sigma2, min_group, &s, total);
            continue;
        }
        for (int64_t i = 0; i < n; i++) memcpy(s.codes + i * L, codes + block[i] * L, L * sizeof(double));
        kmeans(s.codes, n, L, k, keys[b], s.labels, s.d2, s.centres, s.sums, s.columns, s.dist, s.counts);
        for (int c = 0; c < k && status == 0; c++) {
            int64_t m = 0;
            for (int64_t i = 0; i < n; i++)
                if (s.labels[i] == c) s.members[m++] = block[i];
            if (m > 0) status = project(signals, N, s.members, m, sigma2, min_group, &s, total);
        }
    }
    free(s.centred); free(s.cov); free(s.values); free(s.offdiagonal); free(s.proj); free(s.mean);
    free(s.codes); free(s.d2); free(s.centres); free(s.sums); free(s.columns); free(s.dist); free(s.labels);
    free(s.counts); free(s.members);
    return status;
}
