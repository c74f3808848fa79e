/*
 * Compiled NNLS inner loops of scalenmf.kernels.nnls: HALS sweeps and, per column, exact
 * block principal pivoting. Both are optional: without this build the numpy code runs.
 *
 * 1. HALS sweeps.
 * In numpy a sweep costs three array calls per coordinate (a few microseconds each), which
 * dominates small fits (a 96 x 560 catalogue at k = 5 spends most of an iteration there).
 * Here one call runs every sweep of every fit of a batch, with the GIL released.
 *
 * Shapes (C order, float64 or float32, all three of one dtype):
 *   G (R, k, k)  one Gram per fit, shared by the columns (penalties already folded in)
 *   B (R, k, n)  right-hand sides
 *   X (R, k, n)  the iterate, updated in place
 * A sweep updates, for i = 0..k-1 and every column j,
 *   x_ij <- max(0, (b_ij - sum_{l != i} G_il x_lj) / G_ii),
 * and a coordinate with G_ii <= 0 (padding) is set to 0, as the numpy sweep does.
 * With `moved` (R, n) float64, one sweep runs and moved_rj = max_i G_ii |x_ij new - old|
 * (the step size the KKT stop of the numpy driver screens with).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Bumped whenever a signature changes: the loader refuses a stale build. */
#define NNLS_ABI 2
#define KL_NEWTON_STEPS 1 /* per coordinate and sweep: more cost more than the sweeps they save */



#define DEFINE_SWEEPS(NAME, T)                                                               \
    static void NAME(const T *G, const T *B, T *X, double *moved, Py_ssize_t R,            \
                     Py_ssize_t k, Py_ssize_t n, Py_ssize_t sweeps, T *acc)                 \
    {                                                                                        \
        for (Py_ssize_t r = 0; r < R; r++) {                                                \
            const T *g = G + r * k * k;                                                      \
            const T *b = B + r * k * n;                                                      \
            T *x = X + r * k * n;                                                            \
            double *mv = moved ? moved + r * n : NULL;                                       \
            if (mv) memset(mv, 0, (size_t)n * sizeof(double));                               \
            for (Py_ssize_t s = 0; s < sweeps; s++) {                                       \
                for (Py_ssize_t i = 0; i < k; i++) {                                        \
                    T *xi = x + i * n;                                                       \
                    const T d = g[i * k + i];                                                \
                    if (!(d > 0)) {                                                          \
                        memset(xi, 0, (size_t)n * sizeof(T));                                \
                        continue;                                                            \
                    }                                                                        \
                    memcpy(acc, b + i * n, (size_t)n * sizeof(T));                           \
                    for (Py_ssize_t l = 0; l < k; l++) {                                    \
                        const T gil = g[i * k + l];                                          \
                        if (l == i || gil == 0) continue;                                    \
                        const T *xl = x + l * n;                                             \
                        for (Py_ssize_t j = 0; j < n; j++) acc[j] -= gil * xl[j];            \
                    }                                                                        \
                    const T inv = (T)1 / d;                                                  \
                    if (mv) {                                                                \
                        for (Py_ssize_t j = 0; j < n; j++) {                                \
                            T v = acc[j] * inv;                                              \
                            v = v > 0 ? v : 0;                                               \
                            double change = (double)d * (double)(v > xi[j] ? v - xi[j]      \
                                                                            : xi[j] - v);   \
                            if (change > mv[j]) mv[j] = change;                              \
                            xi[j] = v;                                                       \
                        }                                                                    \
                    } else {                                                                 \
                        for (Py_ssize_t j = 0; j < n; j++) {                                \
                            T v = acc[j] * inv;                                              \
                            xi[j] = v > 0 ? v : 0;                                           \
                        }                                                                    \
                    }                                                                        \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }

DEFINE_SWEEPS(sweeps_f64, double)
DEFINE_SWEEPS(sweeps_f32, float)

/* A buffer's struct format without a byte-order prefix that means "native" (numpy
 * exports "<d" for arrays whose dtype spells out little-endian, e.g. read from Zarr). */
static const char *native_format(const char *f)
{
    if (!f) return "B";
    if (*f == '@' || *f == '=') return f + 1;
#if PY_LITTLE_ENDIAN
    if (*f == '<') return f + 1;
#else
    if (*f == '>' || *f == '!') return f + 1;
#endif
    return f;
}

static int same_shape3(const Py_buffer *a, Py_ssize_t d0, Py_ssize_t d1, Py_ssize_t d2)
{
    return a->ndim == 3 && a->shape[0] == d0 && a->shape[1] == d1 && a->shape[2] == d2;
}

static PyObject *hals_sweeps(PyObject *self, PyObject *args)
{
    PyObject *oG, *oB, *oX, *oM = Py_None;
    Py_ssize_t sweeps;
    if (!PyArg_ParseTuple(args, "OOOn|O", &oG, &oB, &oX, &sweeps, &oM)) return NULL;
    Py_buffer G = {0}, B = {0}, X = {0}, M = {0};
    PyObject *result = NULL;
    void *acc = NULL;
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT;
    if (PyObject_GetBuffer(oG, &G, flags) < 0) goto done;
    if (PyObject_GetBuffer(oB, &B, flags) < 0) goto done;
    if (PyObject_GetBuffer(oX, &X, flags | PyBUF_WRITABLE) < 0) goto done;
    if (oM != Py_None && PyObject_GetBuffer(oM, &M, flags | PyBUF_WRITABLE) < 0) goto done;
    if (G.ndim != 3 || G.shape[1] != G.shape[2] || B.ndim != 3) {
        PyErr_SetString(PyExc_ValueError, "hals sweeps: G must be (R, k, k) and B (R, k, n)");
        goto done;
    }
    Py_ssize_t R = G.shape[0], k = G.shape[1], n = B.shape[2];
    if (!same_shape3(&B, R, k, n) || !same_shape3(&X, R, k, n)) {
        PyErr_SetString(PyExc_ValueError, "hals sweeps: B and X must both be (R, k, n)");
        goto done;
    }
    const char *fG = native_format(G.format), *fB = native_format(B.format),
               *fX = native_format(X.format);
    if (strcmp(fG, fB) != 0 || strcmp(fG, fX) != 0 || (strcmp(fG, "d") != 0 && strcmp(fG, "f") != 0)) {
        PyErr_SetString(PyExc_TypeError, "hals sweeps: G, B, X must all be float64 or float32");
        goto done;
    }
    if (M.buf && (M.ndim != 2 || M.shape[0] != R || M.shape[1] != n ||
                  strcmp(native_format(M.format), "d") != 0)) {
        PyErr_SetString(PyExc_ValueError, "hals sweeps: moved must be float64 (R, n)");
        goto done;
    }
    if (sweeps < 0 || (M.buf && sweeps != 1)) {
        PyErr_SetString(PyExc_ValueError, "hals sweeps: sweeps >= 0, and 1 with moved");
        goto done;
    }
    int single = strcmp(fG, "f") == 0;
    acc = malloc((size_t)(n > 0 ? n : 1) * (single ? sizeof(float) : sizeof(double)));
    if (!acc) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    if (single)
        sweeps_f32((const float *)G.buf, (const float *)B.buf, (float *)X.buf,
                   (double *)M.buf, R, k, n, sweeps, (float *)acc);
    else
        sweeps_f64((const double *)G.buf, (const double *)B.buf, (double *)X.buf,
                   (double *)M.buf, R, k, n, sweeps, (double *)acc);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    free(acc);
    if (G.obj) PyBuffer_Release(&G);
    if (B.obj) PyBuffer_Release(&B);
    if (X.obj) PyBuffer_Release(&X);
    if (M.obj) PyBuffer_Release(&M);
    return result;
}


/*
 * 2. Exact NNLS by block principal pivoting (Kim & Park 2011), one column at a time, for
 * Grams shared by the columns of a fit (G (R, k, k), B and X (R, k, n), float64):
 *   min_{x >= 0} 1/2 x'Gx - b'x.
 * The same rules as the numpy pivoting: the start is the passive set of the warm start
 * (every live coordinate without one); a variable is infeasible when x_i < 0 on the
 * passive set or y_i = (Gx - b)_i < -tol off it, tol = BPP_TOL max|b|; all infeasible
 * variables are exchanged while their count falls or 3 tries are left, else only the
 * last one. A coordinate with G_ii <= 0 is dead: never passive, x_i = 0. A column whose
 * passive system is not positive definite, or that still cycles after `rounds`, is
 * flagged (ok = 0) and left for the numpy code, which has the least-squares fallbacks.
 * Returns the most rounds any column took.
 */

/* In-place Cholesky of the p x p row-major A (lower triangle); 0 on success. */
static int cholesky(double *A, Py_ssize_t p)
{
    for (Py_ssize_t j = 0; j < p; j++) {
        double s = A[j * p + j];
        for (Py_ssize_t l = 0; l < j; l++) s -= A[j * p + l] * A[j * p + l];
        if (!(s > 0)) return -1;
        const double d = sqrt(s);
        A[j * p + j] = d;
        for (Py_ssize_t i = j + 1; i < p; i++) {
            double t = A[i * p + j];
            for (Py_ssize_t l = 0; l < j; l++) t -= A[i * p + l] * A[j * p + l];
            A[i * p + j] = t / d;
        }
    }
    return 0;
}

/* Solve (L L') z = r in place for the factor from cholesky(). */
static void cholesky_solve(const double *L, double *r, Py_ssize_t p)
{
    for (Py_ssize_t i = 0; i < p; i++) {
        double t = r[i];
        for (Py_ssize_t l = 0; l < i; l++) t -= L[i * p + l] * r[l];
        r[i] = t / L[i * p + i];
    }
    for (Py_ssize_t i = p - 1; i >= 0; i--) {
        double t = r[i];
        for (Py_ssize_t l = i + 1; l < p; l++) t -= L[l * p + i] * r[l];
        r[i] = t / L[i * p + i];
    }
}

typedef struct {
    unsigned char *F, *bad;
    double *x, *b, *L, *r;
    Py_ssize_t *idx;
} bpp_work;

/* One column: b (k), warm (k or NULL) -> x (k). Returns rounds used, or -1 (flagged). */
static Py_ssize_t bpp_column(const double *g, Py_ssize_t k, const unsigned char *alive,
                             const double *b, const double *warm, double tol_rel,
                             Py_ssize_t rounds, bpp_work *w)
{
    double bmax = 0;
    for (Py_ssize_t i = 0; i < k; i++) {
        const double bi = alive[i] ? b[i] : (b[i] < 0 ? b[i] : 0);
        const double a = fabs(bi);
        if (a > bmax) bmax = a;
        w->F[i] = alive[i] && (warm ? warm[i] > 0 : 1);
    }
    const double tol = tol_rel * bmax;
    Py_ssize_t best = k + 1, alpha = 3;
    for (Py_ssize_t round = 0;; round++) {
        Py_ssize_t p = 0;
        for (Py_ssize_t i = 0; i < k; i++) {
            w->x[i] = 0;
            if (w->F[i]) w->idx[p++] = i;
        }
        if (p) {
            for (Py_ssize_t a = 0; a < p; a++) {
                for (Py_ssize_t c = 0; c <= a; c++) w->L[a * p + c] = g[w->idx[a] * k + w->idx[c]];
                w->r[a] = b[w->idx[a]];
            }
            if (cholesky(w->L, p) != 0) return -1;
            cholesky_solve(w->L, w->r, p);
            for (Py_ssize_t a = 0; a < p; a++) {
                if (!isfinite(w->r[a])) return -1;
                w->x[w->idx[a]] = w->r[a];
            }
        }
        Py_ssize_t count = 0, last = -1;
        for (Py_ssize_t i = 0; i < k; i++) {
            int bad = 0;
            if (!alive[i]) {
                bad = 0;
            } else if (w->F[i]) {
                bad = w->x[i] < 0;
            } else {
                double y = -b[i];
                for (Py_ssize_t a = 0; a < p; a++) y += g[i * k + w->idx[a]] * w->x[w->idx[a]];
                bad = y < -tol;
            }
            w->bad[i] = (unsigned char)bad;
            if (bad) {
                count++;
                last = i;
            }
        }
        if (count == 0) return round;
        if (round == rounds) return -1;
        if (count < best) {
            best = count;
            alpha = 3;
        } else if (alpha > 0) {
            alpha--;
        } else {
            w->F[last] ^= 1;
            continue;
        }
        for (Py_ssize_t i = 0; i < k; i++)
            if (w->bad[i]) w->F[i] ^= 1;
    }
}

static PyObject *nnls_bpp_columns(PyObject *self, PyObject *args)
{
    PyObject *oG, *oB, *oW, *oX, *oOK;
    Py_ssize_t rounds;
    double tol_rel;
    if (!PyArg_ParseTuple(args, "OOOOOnd", &oG, &oB, &oW, &oX, &oOK, &rounds, &tol_rel))
        return NULL;
    Py_buffer G = {0}, B = {0}, W = {0}, X = {0}, OK = {0};
    PyObject *result = NULL;
    void *mem = NULL;
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT;
    if (PyObject_GetBuffer(oG, &G, flags) < 0) goto done;
    if (PyObject_GetBuffer(oB, &B, flags) < 0) goto done;
    if (oW != Py_None && PyObject_GetBuffer(oW, &W, flags) < 0) goto done;
    if (PyObject_GetBuffer(oX, &X, flags | PyBUF_WRITABLE) < 0) goto done;
    if (PyObject_GetBuffer(oOK, &OK, flags | PyBUF_WRITABLE) < 0) goto done;
    if (G.ndim != 3 || G.shape[1] != G.shape[2] || B.ndim != 3) {
        PyErr_SetString(PyExc_ValueError, "bpp: G must be (R, k, k) and B (R, k, n)");
        goto done;
    }
    Py_ssize_t R = G.shape[0], k = G.shape[1], n = B.shape[2];
    if (!same_shape3(&B, R, k, n) || !same_shape3(&X, R, k, n) ||
        (W.buf && !same_shape3(&W, R, k, n)) || OK.ndim != 2 || OK.shape[0] != R ||
        OK.shape[1] != n) {
        PyErr_SetString(PyExc_ValueError, "bpp: B, X0, X must be (R, k, n) and ok (R, n)");
        goto done;
    }
    if (strcmp(native_format(G.format), "d") || strcmp(native_format(B.format), "d") ||
        strcmp(native_format(X.format), "d") || (W.buf && strcmp(native_format(W.format), "d")) ||
        strcmp(native_format(OK.format), "?")) {
        PyErr_SetString(PyExc_TypeError, "bpp: G, B, X0, X must be float64 and ok bool");
        goto done;
    }
    if (rounds < 0) {
        PyErr_SetString(PyExc_ValueError, "bpp: rounds >= 0");
        goto done;
    }
    /* one allocation: L (k x k), r, x, b, warm (k doubles each), idx, F, bad, alive */
    size_t kk = (size_t)(k > 0 ? k : 1);
    mem = malloc((kk * kk + 4 * kk) * sizeof(double) + kk * sizeof(Py_ssize_t) + 3 * kk);
    if (!mem) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t most = 0;
    Py_BEGIN_ALLOW_THREADS
    bpp_work w;
    w.L = (double *)mem;
    w.r = w.L + kk * kk;
    w.x = w.r + kk;
    w.b = w.x + kk;
    double *bc = w.b, *wc = w.b + kk;
    w.idx = (Py_ssize_t *)(wc + kk);
    w.F = (unsigned char *)(w.idx + kk);
    w.bad = w.F + kk;
    unsigned char *alive = w.bad + kk;
    for (Py_ssize_t r = 0; r < R; r++) {
        const double *g = (const double *)G.buf + r * k * k;
        const double *Bb = (const double *)B.buf + r * k * n;
        const double *Wb = W.buf ? (const double *)W.buf + r * k * n : NULL;
        double *Xb = (double *)X.buf + r * k * n;
        unsigned char *ok = (unsigned char *)OK.buf + r * n;
        for (Py_ssize_t i = 0; i < k; i++) alive[i] = g[i * k + i] > 0;
        for (Py_ssize_t j = 0; j < n; j++) {
            for (Py_ssize_t i = 0; i < k; i++) {
                bc[i] = Bb[i * n + j];
                if (Wb) wc[i] = Wb[i * n + j];
            }
            Py_ssize_t used = bpp_column(g, k, alive, bc, Wb ? wc : NULL, tol_rel, rounds, &w);
            ok[j] = used >= 0;
            if (used > most) most = used;
            for (Py_ssize_t i = 0; i < k; i++)
                Xb[i * n + j] = used >= 0 && w.x[i] > 0 ? w.x[i] : 0;
        }
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(most);
done:
    free(mem);
    if (G.obj) PyBuffer_Release(&G);
    if (B.obj) PyBuffer_Release(&B);
    if (W.obj) PyBuffer_Release(&W);
    if (X.obj) PyBuffer_Release(&X);
    if (OK.obj) PyBuffer_Release(&OK);
    return result;
}

/*
 * 3. The KL fixed-basis solve by coordinate descent with Newton steps (the scheme of
 * Hsieh & Dhillon 2011), one column at a time: for W (m, k) fixed,
 *   min_{h >= 0}  sum_i [(Wh)_i - x_i log (Wh)_i] + l1 sum h + l2/2 |h|^2.
 * Only the column's non-zeros enter the log term (sum_i (Wh)_i = wsum . h), so a sweep
 * costs nnz_j * k. Coordinate t: g = wsum_t + l1 + l2 h_t - sum_i W_it x_i / (Wh)_i,
 * g' = l2 + sum_i W_it^2 x_i / (Wh)_i^2, one projected Newton step per coordinate and
 * sweep; a step that would empty a row holding data (its (Wh)_i only from t) goes
 * halfway instead.
 * A column is done when every coordinate's projected gradient, relative to
 * wsum_t + l1 + l2 h_t, is at most tol; done[j] says whether it got there in `sweeps`.
 * X in CSC: data (float64), indices and indptr (int64). H (k, n) float64 >= 0, in place
 * (a column whose start leaves a data row at (Wh)_i = 0 has its zero coefficients
 * started at sum x / sum W instead). Returns the most sweeps a column ran.
 */
static Py_ssize_t kl_column(const double *W, const double *wsum, Py_ssize_t k,
                            const double *x, const long long *rows, Py_ssize_t nz,
                            double *h, Py_ssize_t hstride, double l1, double l2,
                            Py_ssize_t max_sweeps, double tol, double *wh, int *done)
{
    int empty_row = 0; /* a row with data that the start gives (Wh)_i = 0: log 0 */
    double mass = 0, wtotal = 0;
    for (Py_ssize_t a = 0; a < nz; a++) {
        const double *w = W + rows[a] * k;
        double v = 0;
        for (Py_ssize_t t = 0; t < k; t++) v += w[t] * h[t * hstride];
        wh[a] = v;
        mass += x[a];
        if (x[a] > 0 && !(v > 0)) empty_row = 1;
    }
    if (empty_row) {
        /* start the zero coefficients at the level that matches the column's mass */
        for (Py_ssize_t t = 0; t < k; t++) wtotal += wsum[t] > 0 ? wsum[t] : 0;
        const double fill = wtotal > 0 && mass > 0 ? mass / wtotal : 1;
        for (Py_ssize_t t = 0; t < k; t++)
            if (wsum[t] > 0 && !(h[t * hstride] > 0)) h[t * hstride] = fill;
        for (Py_ssize_t a = 0; a < nz; a++) {
            const double *w = W + rows[a] * k;
            double v = 0;
            for (Py_ssize_t t = 0; t < k; t++) v += w[t] * h[t * hstride];
            wh[a] = v;
        }
    }
    *done = 0;
    Py_ssize_t sweep = 0;
    while (sweep < max_sweeps) {
        sweep++;
        double worst = 0;
        for (Py_ssize_t t = 0; t < k; t++) {
            if (!(wsum[t] > 0)) { /* a basis vector with no observed mass: h_t = 0 */
                h[t * hstride] = 0;
                continue;
            }
            double ht = h[t * hstride];
            for (int inner = 0; inner < KL_NEWTON_STEPS; inner++) {
                double g = wsum[t] + l1 + l2 * ht, gg = l2, rest = 1;
                for (Py_ssize_t a = 0; a < nz; a++) {
                    const double wit = W[rows[a] * k + t];
                    if (wit == 0) continue;
                    const double r = x[a] / wh[a];
                    g -= wit * r;
                    gg += wit * wit * r / wh[a];
                    const double other = (wh[a] - wit * ht) / wh[a]; /* share not from t */
                    if (other < rest) rest = other;
                }
                const double scale = wsum[t] + l1 + l2 * ht;
                const double pg = ht > 0 ? fabs(g) : (g < 0 ? -g : 0);
                if (inner == 0 && pg / scale > worst) worst = pg / scale;
                if (pg <= tol * scale) break;
                /* no curvature: no data row uses t, the objective is linear in h_t */
                double hn = gg > 0 ? ht - g / gg : (g > 0 ? 0 : ht);
                if (hn < 0) hn = 0;
                /* a row whose (Wh)_i comes from t alone must keep h_t > 0 */
                if (hn == 0 && !(rest > 1e-12)) hn = 0.5 * ht;
                const double d = hn - ht;
                if (d == 0) break;
                for (Py_ssize_t a = 0; a < nz; a++) wh[a] += W[rows[a] * k + t] * d;
                ht = hn;
                if (fabs(d) <= 1e-15 * (ht > 0 ? ht : 1)) break;
            }
            h[t * hstride] = ht;
        }
        if (worst <= tol) {
            *done = 1;
            break;
        }
        /* refresh (Wh) against drift from the incremental updates */
        for (Py_ssize_t a = 0; a < nz; a++) {
            const double *w = W + rows[a] * k;
            double v = 0;
            for (Py_ssize_t t = 0; t < k; t++) v += w[t] * h[t * hstride];
            wh[a] = v;
        }
    }
    return sweep;
}

static PyObject *kl_cd(PyObject *self, PyObject *args)
{
    PyObject *oW, *oS, *oD, *oI, *oP, *oH, *oOK;
    double l1, l2, tol;
    Py_ssize_t max_sweeps;
    if (!PyArg_ParseTuple(args, "OOOOOOOddnd", &oW, &oS, &oD, &oI, &oP, &oH, &oOK, &l1, &l2,
                          &max_sweeps, &tol))
        return NULL;
    Py_buffer W = {0}, S = {0}, D = {0}, I = {0}, P = {0}, H = {0}, OK = {0};
    PyObject *result = NULL;
    double *wh = NULL;
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT;
    if (PyObject_GetBuffer(oW, &W, flags) < 0 || PyObject_GetBuffer(oS, &S, flags) < 0 ||
        PyObject_GetBuffer(oD, &D, flags) < 0 || PyObject_GetBuffer(oI, &I, flags) < 0 ||
        PyObject_GetBuffer(oP, &P, flags) < 0 ||
        PyObject_GetBuffer(oH, &H, flags | PyBUF_WRITABLE) < 0 ||
        PyObject_GetBuffer(oOK, &OK, flags | PyBUF_WRITABLE) < 0)
        goto done;
    if (W.ndim != 2 || H.ndim != 2 || S.ndim != 1 || D.ndim != 1 || I.ndim != 1 ||
        P.ndim != 1 || OK.ndim != 1) {
        PyErr_SetString(PyExc_ValueError, "kl_cd: W (m, k), wsum (k,), CSC vectors, H (k, n)");
        goto done;
    }
    Py_ssize_t m = W.shape[0], k = W.shape[1], n = H.shape[1];
    if (H.shape[0] != k || S.shape[0] != k || P.shape[0] != n + 1 || OK.shape[0] != n ||
        I.shape[0] != D.shape[0]) {
        PyErr_SetString(PyExc_ValueError, "kl_cd: the shapes of W, wsum, X and H disagree");
        goto done;
    }
    const char *fI = native_format(I.format), *fP = native_format(P.format);
    if (strcmp(native_format(W.format), "d") || strcmp(native_format(S.format), "d") ||
        strcmp(native_format(D.format), "d") || strcmp(native_format(H.format), "d") ||
        (strcmp(fI, "q") && strcmp(fI, "l")) || (strcmp(fP, "q") && strcmp(fP, "l")) ||
        I.itemsize != 8 || P.itemsize != 8 || strcmp(native_format(OK.format), "?")) {
        PyErr_SetString(PyExc_TypeError,
                        "kl_cd: float64 W, wsum, data, H; int64 indices, indptr; bool done");
        goto done;
    }
    const long long *ip = (const long long *)P.buf, *ix = (const long long *)I.buf;
    Py_ssize_t nnz = D.shape[0], widest = 1;
    for (Py_ssize_t j = 0; j < n; j++) {
        if (ip[j] < 0 || ip[j + 1] < ip[j] || ip[j + 1] > nnz) {
            PyErr_SetString(PyExc_ValueError, "kl_cd: indptr is not a valid CSC pointer");
            goto done;
        }
        if (ip[j + 1] - ip[j] > widest) widest = (Py_ssize_t)(ip[j + 1] - ip[j]);
    }
    for (Py_ssize_t a = 0; a < nnz; a++)
        if (ix[a] < 0 || ix[a] >= m) {
            PyErr_SetString(PyExc_ValueError, "kl_cd: a row index is out of range");
            goto done;
        }
    wh = (double *)malloc((size_t)widest * sizeof(double));
    if (!wh) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t most = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < n; j++) {
        int ok = 0;
        Py_ssize_t used = kl_column((const double *)W.buf, (const double *)S.buf, k,
                                    (const double *)D.buf + ip[j], ix + ip[j],
                                    (Py_ssize_t)(ip[j + 1] - ip[j]), (double *)H.buf + j, n,
                                    l1, l2, max_sweeps, tol, wh, &ok);
        ((unsigned char *)OK.buf)[j] = (unsigned char)ok;
        if (used > most) most = used;
    }
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(most);
done:
    free(wh);
    Py_buffer *all[] = {&W, &S, &D, &I, &P, &H, &OK};
    for (size_t a = 0; a < sizeof(all) / sizeof(all[0]); a++)
        if (all[a]->obj) PyBuffer_Release(all[a]);
    return result;
}

static PyMethodDef methods[] = {
    {"sweeps", hals_sweeps, METH_VARARGS,
     "sweeps(G, B, X, count, moved=None): HALS sweeps in place (see the file's header)."},
    {"bpp", nnls_bpp_columns, METH_VARARGS,
     "bpp(G, B, X0 or None, X, ok, rounds, tol) -> most rounds: exact NNLS per column."},
    {"kl_cd", kl_cd, METH_VARARGS,
     "kl_cd(W, wsum, data, indices, indptr, H, done, l1, l2, sweeps, tol) -> sweeps: the KL "
     "fixed-basis solve per column."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_nnls",
                                    "Compiled NNLS loops of scalenmf.kernels.nnls.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__nnls(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "ABI", NNLS_ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
