/* The noise floor removed from expected magnitudes by a table lookup (dwivae.physics.noise).
 *
 * Built by dwivae.kernels.bindings with the other kernels. The same arithmetic as the numpy path
 * of remove_noise_floor, without its temporary arrays: (nu / sigma)² is interpolated linearly on
 * the table squares[0 .. count) of expected magnitudes floor + k step (in sigma); beyond it
 * nu² = E[M]² - (2N - 1) sigma². Non-finite values are tested on their bits, as -ffast-math lets
 * the compiler assume that none occur.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline int finite_bits(double x) {
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    return (u & 0x7FF0000000000000ull) != 0x7FF0000000000000ull;
}

/* out[i] = nu for in[i], i in [0, n). */
void dwivae_remove_floor(const double *in, float *out, int64_t n, double sigma, double floor, double step,
                         const double *squares, int64_t count, int coils) {
    const double top = (double)(count - 2), upper = floor + top * step, excess = 2.0 * coils - 1.0;
    for (int64_t i = 0; i < n; i++) {
        const double x = in[i];
        if (!finite_bits(x)) {
            out[i] = (float)x;
            continue;
        }
        const double ratio = x / sigma;
        double theta;
        if (fabs(ratio) >= upper) {
            theta = ratio > 0 ? sqrt(fmax(ratio * ratio - excess, 0.0)) : 0.0;
        } else {
            double position = (ratio - floor) / step;
            position = position < 0.0 ? 0.0 : position > top ? top : position;
            const int64_t k = (int64_t)position;
            const double frac = position - (double)k;
            theta = sqrt(squares[k] + (squares[k + 1] - squares[k]) * frac);
        }
        out[i] = (float)(theta * sigma);
    }
}
