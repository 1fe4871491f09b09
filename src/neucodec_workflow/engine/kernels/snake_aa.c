/* CodecEnc's anti-aliased SnakeBeta (neucodec.alias_free_torch.Activation1d) in one pass, for the CPU.

   Stock, per channel of length T:
     u = 2 * conv_transpose1d(replicate_pad(x, 5, 5), f_up, stride 2)[15 : -15]   (length 2T)
     z = u + inv_beta * sin(u * alpha)^2                                          (SnakeBeta)
     y = conv1d(replicate_pad(z, 5, 6), f_down, stride 2)                          (length T)
   Each step reads and writes the whole signal (8 passes over memory in eager torch). Here the even and odd
   phases of u are 6-tap filters of x (polyphase), and y mixes the two phases back, so one tile of x goes
   in and one tile of y comes out while everything in between stays in cache:
     u[2m]   = sum_{k odd}  f_up[k] * x[clamp(m + (5 - k) / 2)]
     u[2m+1] = sum_{k even} f_up[k] * x[clamp(m + (6 - k) / 2)]
     y[n]    = sum_k f_down[k] * z[clamp(2n + k - 5)]
   Same products as the stock convolutions, summed in tap order; sin is computed in double precision and
   rounded, so results differ from torch by a few float ulps (the tokens are checked by the tests and audit).

   Signals are channels-last, x[B][T][C] (the layout oneDNN's convolutions are fastest in on CPUs): the
   loops run across channels (vectorized), a tile of time steps at a time.

   Built at first use by neucodec_workflow.kernels (cc -O3 -march=native); called through ctypes, which
   releases the GIL, one call per thread on a range of output steps. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* sin(v)^2 in double: Cody-Waite reduction by pi/2 (exact for |v| < 1.6e6, about 2^20 * pi/2), fdlibm's sin
   polynomial; branch-free, vectorizable. */
static inline double sin2(double v) {
    const double shift = 6755399441055744.0; /* 1.5 * 2^52: rounds to nearest integer */
    double k = (v * 0.63661977236758134308 + shift) - shift;
    double r = (v - k * 1.57079632673412561417e+00) - k * 6.07710050650619224932e-11;
    double z = r * r;
    double s = r + r * z * (-1.66666666666666324348e-01 + z * (8.33333333332248946124e-03 + z * (-1.98412698298579493134e-04
               + z * (2.75573137070700676789e-06 + z * (-2.50507602534068634195e-08 + z * 1.58969099521155010221e-10)))));
    double s2 = s * s;
    return (((int64_t)k) & 1) ? 1.0 - s2 : s2; /* cos^2 = 1 - sin^2, exact enough in double */
}

static inline float snake(float u, float alpha, float inv_beta) {
    float s2 = (float)sin2((double)(float)(u * alpha));
    return u + inv_beta * s2;
}

static inline int64_t clampi(int64_t i, int64_t n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

/* z at even (phase 0) or odd (phase 1) position 2m + phase, every channel, from x with replicate borders. */
static void z_at(const float *x, int64_t T, int64_t C, int64_t m, int phase, const float *up, const float *alpha,
                 const float *inv_beta, float *out) {
    for (int64_t c = 0; c < C; c++) {
        float acc = 0.0f;
        for (int k = phase ? 0 : 1; k < 12; k += 2) acc += up[k] * x[clampi(m + ((phase ? 6 : 5) - k) / 2, T) * C + c];
        out[c] = snake(acc, alpha[c], inv_beta[c]);
    }
}

/* Rows r0..r1 index the B*T output steps. up: 2 * f_up (12 taps), down: f_down (12 taps). */
int snake_aa(const float *restrict x_all, float *restrict y_all, int64_t r0, int64_t r1, int64_t C, int64_t T,
             const float *restrict up, const float *restrict down, const float *restrict alpha,
             const float *restrict inv_beta) {
    int64_t tile = 16384 / C;
    if (tile < 8) tile = 8;
    float *buf = malloc(sizeof(float) * (size_t)C * (size_t)(2 * (tile + 6) + 2));
    if (!buf) return -1;
    float *ze = buf, *zo = buf + (tile + 6) * C, *z_first = zo + (tile + 6) * C, *z_last = z_first + C;
    int64_t b_done = -1;
    for (int64_t r = r0; r < r1;) {
        const int64_t b = r / T, n0 = r % T;
        int64_t nt = T - n0;
        if (nt > tile) nt = tile;
        if (nt > r1 - r) nt = r1 - r;
        const float *x = x_all + b * T * C;
        float *y = y_all + b * T * C;
        if (b != b_done) {
            z_at(x, T, C, 0, 0, up, alpha, inv_beta, z_first);
            z_at(x, T, C, T - 1, 1, up, alpha, inv_beta, z_last);
            b_done = b;
        }
        for (int64_t i = 0; i < nt + 6; i++) {
            const float *p[7];
            for (int j = 1; j <= 6; j++) p[j] = x + clampi(n0 - 6 + i + j, T) * C;
            float *zei = ze + i * C, *zoi = zo + i * C;
            for (int64_t c = 0; c < C; c++) {
                float e = 0.0f, o = 0.0f;
                e += up[1] * p[6][c]; e += up[3] * p[5][c]; e += up[5] * p[4][c];
                e += up[7] * p[3][c]; e += up[9] * p[2][c]; e += up[11] * p[1][c];
                o += up[0] * p[6][c]; o += up[2] * p[5][c]; o += up[4] * p[4][c];
                o += up[6] * p[3][c]; o += up[8] * p[2][c]; o += up[10] * p[1][c];
                zei[c] = snake(e, alpha[c], inv_beta[c]);
                zoi[c] = snake(o, alpha[c], inv_beta[c]);
            }
            const int64_t me = n0 - 2 + i, mo = n0 - 3 + i;
            if (me < 0 || me >= T) for (int64_t c = 0; c < C; c++) zei[c] = me < 0 ? z_first[c] : z_last[c];
            if (mo < 0 || mo >= T) for (int64_t c = 0; c < C; c++) zoi[c] = mo < 0 ? z_first[c] : z_last[c];
        }
        for (int64_t j = 0; j < nt; j++) {
            const float *o0 = zo + j * C, *e0 = ze + j * C;
            float *yj = y + (n0 + j) * C;
            for (int64_t c = 0; c < C; c++) {
                float acc = 0.0f;
                acc += down[0] * o0[c];          acc += down[1] * e0[c];
                acc += down[2] * o0[C + c];      acc += down[3] * e0[C + c];
                acc += down[4] * o0[2 * C + c];  acc += down[5] * e0[2 * C + c];
                acc += down[6] * o0[3 * C + c];  acc += down[7] * e0[3 * C + c];
                acc += down[8] * o0[4 * C + c];  acc += down[9] * e0[4 * C + c];
                acc += down[10] * o0[5 * C + c]; acc += down[11] * e0[5 * C + c];
                yj[c] = acc;
            }
        }
        r += nt;
    }
    free(buf);
    return 0;
}
