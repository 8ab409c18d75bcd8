/* rowwise.c — CPU softmax / log_softmax and layer_norm, forward and backward, over the last
 * dimension of contiguous tensors (rows = numel / D; a 0-d tensor is one row of 1).
 *
 * softmax subtracts the row max before exp (NaN anywhere in a row gives a NaN row; an all
 * -inf row gives NaN, as torch does). float32 rows compute in float with a float64 sum,
 * float64 in double, float16/bfloat16 through a float32 row buffer.
 * layer_norm computes every row in float64 (two-pass mean and biased variance, then
 * rstd = 1 / sqrt(var + eps)); mean/rstd are stored in x's dtype, float32 for half inputs.
 * layer_norm_backward uses, with xhat = (x - mean) * rstd and g = dy * w:
 *   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  dw = sum_rows dy * xhat,
 *   db = sum_rows dy   (dw/db accumulated in float64 and written, not accumulated).
 * Outputs may be the very same tensor as an input (in-place); rows are read before written.
 *
 * Exports: pc_cpu_softmax, pc_cpu_softmax_backward, pc_cpu_layer_norm,
 * pc_cpu_layer_norm_backward.
 */
#include <math.h>
#include <stdlib.h>
#include <tgmath.h>

#include "kernels_cpu.h"

/* ---- shared ---- */

static int64_t pc_row_len(const PcTensor *t) { return t->ndim > 0 ? t->shape[t->ndim - 1] : 1; }

/* n elements of dtype dt at src into double dst. */
static void pc_row_to_f64(double *dst, const void *src, int64_t n, PcDType dt) {
    switch (dt) {
    case PC_FLOAT32:
        for (int64_t i = 0; i < n; i++) dst[i] = ((const float *)src)[i];
        break;
    case PC_FLOAT64:
        for (int64_t i = 0; i < n; i++) dst[i] = ((const double *)src)[i];
        break;
    case PC_FLOAT16:
        for (int64_t i = 0; i < n; i++) dst[i] = pc_f16_to_f32(((const uint16_t *)src)[i]);
        break;
    case PC_BFLOAT16:
        for (int64_t i = 0; i < n; i++) dst[i] = pc_bf16_to_f32(((const uint16_t *)src)[i]);
        break;
    default: break;
    }
}

static void pc_row_from_f64(void *dst, const double *src, int64_t n, PcDType dt) {
    switch (dt) {
    case PC_FLOAT32:
        for (int64_t i = 0; i < n; i++) ((float *)dst)[i] = (float)src[i];
        break;
    case PC_FLOAT64:
        for (int64_t i = 0; i < n; i++) ((double *)dst)[i] = src[i];
        break;
    case PC_FLOAT16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = pc_f32_to_f16((float)src[i]);
        break;
    case PC_BFLOAT16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = pc_f32_to_bf16((float)src[i]);
        break;
    default: break;
    }
}

static void pc_half_row_to_f32(float *dst, const uint16_t *src, int64_t n, PcDType dt) {
    if (dt == PC_FLOAT16)
        for (int64_t i = 0; i < n; i++) dst[i] = pc_f16_to_f32(src[i]);
    else
        for (int64_t i = 0; i < n; i++) dst[i] = pc_bf16_to_f32(src[i]);
}

static void pc_half_row_from_f32(uint16_t *dst, const float *src, int64_t n, PcDType dt) {
    if (dt == PC_FLOAT16)
        for (int64_t i = 0; i < n; i++) dst[i] = pc_f32_to_f16(src[i]);
    else
        for (int64_t i = 0; i < n; i++) dst[i] = pc_f32_to_bf16(src[i]);
}

/* Checks shared by the row kernels: float dtype, contiguous, same shape and dtype as ref. */
static PcStatus pc_row_check(const char *op, const char *arg, const PcTensor *t,
                             const PcTensor *ref, const char *ref_name) {
    if (!pc_dtype_is_float(t->dtype)) return pc_cpu_dtype_error(op, t->dtype);
    PC_TRY(pc_cpu_check_contiguous(op, arg, t));
    if (t != ref) {
        PC_TRY(pc_cpu_check_same_shape(op, arg, t, ref_name, ref));
        PC_TRY(pc_cpu_check_dtype(op, arg, t, ref->dtype));
    }
    return PC_OK;
}

/* A 1-d-like parameter of D elements, contiguous, of dtype dt. */
static PcStatus pc_vec_check(const char *op, const char *arg, const PcTensor *t, int64_t d,
                             PcDType dt) {
    if (pc_tensor_numel(t) != d)
        return pc_set_error(PC_ERR_INVALID, "%s: %s must have %lld elements, got %lld", op, arg,
                            (long long)d, (long long)pc_tensor_numel(t));
    PC_TRY(pc_cpu_check_dtype(op, arg, t, dt));
    return pc_cpu_check_contiguous(op, arg, t);
}

/* ---- softmax rows (float and double) ---- */

#define PC_SOFTMAX_ROW(NAME, C)                                                       \
    static void NAME(const C *x, C *y, int64_t d, bool log_) {                        \
        C m = x[0];                                                                   \
        for (int64_t i = 1; i < d; i++)                                               \
            if (x[i] > m || x[i] != x[i]) m = x[i];                                   \
        double sum = 0;                                                               \
        if (log_) {                                                                   \
            for (int64_t i = 0; i < d; i++) sum += (double)exp(x[i] - m);             \
            const C lse = (C)log(sum);                                                \
            for (int64_t i = 0; i < d; i++) y[i] = x[i] - m - lse;                    \
        } else {                                                                      \
            for (int64_t i = 0; i < d; i++) {                                         \
                const C e = exp(x[i] - m);                                            \
                y[i] = e;                                                             \
                sum += (double)e;                                                     \
            }                                                                         \
            const C inv = (C)(1.0 / sum);                                             \
            for (int64_t i = 0; i < d; i++) y[i] *= inv;                              \
        }                                                                             \
    }

#define PC_SOFTMAX_BWD_ROW(NAME, C)                                                   \
    static void NAME(C *dx, const C *dy, const C *y, int64_t d, bool log_) {          \
        double s = 0;                                                                 \
        if (log_) {                                                                   \
            for (int64_t i = 0; i < d; i++) s += (double)dy[i];                       \
            const C sc = (C)s;                                                        \
            for (int64_t i = 0; i < d; i++) dx[i] = dy[i] - exp(y[i]) * sc;           \
        } else {                                                                      \
            for (int64_t i = 0; i < d; i++) s += (double)dy[i] * (double)y[i];        \
            const C sc = (C)s;                                                        \
            for (int64_t i = 0; i < d; i++) dx[i] = y[i] * (dy[i] - sc);              \
        }                                                                             \
    }

PC_SOFTMAX_ROW(pc_softmax_row_f32, float)
PC_SOFTMAX_ROW(pc_softmax_row_f64, double)
PC_SOFTMAX_BWD_ROW(pc_softmax_bwd_row_f32, float)
PC_SOFTMAX_BWD_ROW(pc_softmax_bwd_row_f64, double)

PcStatus pc_cpu_softmax(PcTensor *y, const PcTensor *x, bool log) {
    const char *op = log ? "log_softmax" : "softmax";
    PC_TRY(pc_row_check(op, "x", x, x, "x"));
    PC_TRY(pc_row_check(op, "y", y, x, "x"));
    const int64_t d = pc_row_len(x), numel = pc_tensor_numel(x);
    if (numel == 0) return PC_OK;
    const int64_t rows = numel / d;
    const char *xp = pc_tensor_data(x);
    char *yp = pc_tensor_data(y);
    switch (x->dtype) {
    case PC_FLOAT32:
        for (int64_t r = 0; r < rows; r++)
            pc_softmax_row_f32((const float *)xp + r * d, (float *)yp + r * d, d, log);
        return PC_OK;
    case PC_FLOAT64:
        for (int64_t r = 0; r < rows; r++)
            pc_softmax_row_f64((const double *)xp + r * d, (double *)yp + r * d, d, log);
        return PC_OK;
    default: {
        float *buf = malloc((size_t)d * sizeof(float));
        if (!buf) return pc_set_error(PC_ERR_OOM, "%s: out of memory for a row buffer", op);
        for (int64_t r = 0; r < rows; r++) {
            pc_half_row_to_f32(buf, (const uint16_t *)xp + r * d, d, x->dtype);
            pc_softmax_row_f32(buf, buf, d, log);
            pc_half_row_from_f32((uint16_t *)yp + r * d, buf, d, x->dtype);
        }
        free(buf);
        return PC_OK;
    }
    }
}

PcStatus pc_cpu_softmax_backward(PcTensor *dx, const PcTensor *dy, const PcTensor *y,
                                 bool log) {
    const char *op = log ? "log_softmax_backward" : "softmax_backward";
    PC_TRY(pc_row_check(op, "y", y, y, "y"));
    PC_TRY(pc_row_check(op, "dy", dy, y, "y"));
    PC_TRY(pc_row_check(op, "dx", dx, y, "y"));
    const int64_t d = pc_row_len(y), numel = pc_tensor_numel(y);
    if (numel == 0) return PC_OK;
    const int64_t rows = numel / d;
    const char *yp = pc_tensor_data(y), *dyp = pc_tensor_data(dy);
    char *dxp = pc_tensor_data(dx);
    switch (y->dtype) {
    case PC_FLOAT32:
        for (int64_t r = 0; r < rows; r++)
            pc_softmax_bwd_row_f32((float *)dxp + r * d, (const float *)dyp + r * d,
                                   (const float *)yp + r * d, d, log);
        return PC_OK;
    case PC_FLOAT64:
        for (int64_t r = 0; r < rows; r++)
            pc_softmax_bwd_row_f64((double *)dxp + r * d, (const double *)dyp + r * d,
                                   (const double *)yp + r * d, d, log);
        return PC_OK;
    default: {
        float *buf = malloc(2 * (size_t)d * sizeof(float));
        if (!buf) return pc_set_error(PC_ERR_OOM, "%s: out of memory for a row buffer", op);
        float *fy = buf, *fdy = buf + d;
        for (int64_t r = 0; r < rows; r++) {
            pc_half_row_to_f32(fy, (const uint16_t *)yp + r * d, d, y->dtype);
            pc_half_row_to_f32(fdy, (const uint16_t *)dyp + r * d, d, y->dtype);
            pc_softmax_bwd_row_f32(fdy, fdy, fy, d, log);
            pc_half_row_from_f32((uint16_t *)dxp + r * d, fdy, d, y->dtype);
        }
        free(buf);
        return PC_OK;
    }
    }
}

/* ---- layer_norm ---- */

static PcDType pc_stat_dtype(PcDType x) {
    return x == PC_FLOAT16 || x == PC_BFLOAT16 ? PC_FLOAT32 : x;
}

PcStatus pc_cpu_layer_norm(PcTensor *y, PcTensor *mean, PcTensor *rstd, const PcTensor *x,
                           const PcTensor *w, const PcTensor *b, double eps) {
    const char *op = "layer_norm";
    PC_TRY(pc_row_check(op, "x", x, x, "x"));
    PC_TRY(pc_row_check(op, "y", y, x, "x"));
    const int64_t d = pc_row_len(x), numel = pc_tensor_numel(x);
    const int64_t rows = d > 0 ? numel / d : 0;
    const PcDType sdt = pc_stat_dtype(x->dtype);
    if (w) PC_TRY(pc_vec_check(op, "weight", w, d, x->dtype));
    if (b) PC_TRY(pc_vec_check(op, "bias", b, d, x->dtype));
    if (mean) PC_TRY(pc_vec_check(op, "mean", mean, rows, sdt));
    if (rstd) PC_TRY(pc_vec_check(op, "rstd", rstd, rows, sdt));
    if (numel == 0) return PC_OK;

    double *buf = malloc(3 * (size_t)d * sizeof(double));
    if (!buf) return pc_set_error(PC_ERR_OOM, "%s: out of memory for a row buffer", op);
    double *row = buf, *fw = buf + d, *fb = buf + 2 * d;
    for (int64_t j = 0; j < d; j++) {
        fw[j] = 1.0;
        fb[j] = 0.0;
    }
    if (w) pc_row_to_f64(fw, pc_tensor_data(w), d, x->dtype);
    if (b) pc_row_to_f64(fb, pc_tensor_data(b), d, x->dtype);
    const size_t item = pc_dtype_size(x->dtype), sitem = pc_dtype_size(sdt);
    const char *xp = pc_tensor_data(x);
    char *yp = pc_tensor_data(y);
    char *mp = mean ? pc_tensor_data(mean) : NULL;
    char *rp = rstd ? pc_tensor_data(rstd) : NULL;
    for (int64_t r = 0; r < rows; r++) {
        pc_row_to_f64(row, xp + (size_t)(r * d) * item, d, x->dtype);
        double s = 0;
        for (int64_t j = 0; j < d; j++) s += row[j];
        const double mu = s / (double)d;
        double v = 0;
        for (int64_t j = 0; j < d; j++) v += (row[j] - mu) * (row[j] - mu);
        const double rs = 1.0 / sqrt(v / (double)d + eps);
        for (int64_t j = 0; j < d; j++) row[j] = (row[j] - mu) * rs * fw[j] + fb[j];
        pc_row_from_f64(yp + (size_t)(r * d) * item, row, d, x->dtype);
        if (mp) pc_cpu_store_f(mp + (size_t)r * sitem, sdt, mu);
        if (rp) pc_cpu_store_f(rp + (size_t)r * sitem, sdt, rs);
    }
    free(buf);
    return PC_OK;
}

PcStatus pc_cpu_layer_norm_backward(PcTensor *dx, PcTensor *dw, PcTensor *db,
                                    const PcTensor *dy, const PcTensor *x,
                                    const PcTensor *mean, const PcTensor *rstd,
                                    const PcTensor *w) {
    const char *op = "layer_norm_backward";
    PC_TRY(pc_row_check(op, "x", x, x, "x"));
    PC_TRY(pc_row_check(op, "dy", dy, x, "x"));
    if (dx) PC_TRY(pc_row_check(op, "dx", dx, x, "x"));
    const int64_t d = pc_row_len(x), numel = pc_tensor_numel(x);
    const int64_t rows = d > 0 ? numel / d : 0;
    const PcDType sdt = pc_stat_dtype(x->dtype);
    PC_TRY(pc_vec_check(op, "mean", mean, rows, sdt));
    PC_TRY(pc_vec_check(op, "rstd", rstd, rows, sdt));
    if (w) PC_TRY(pc_vec_check(op, "weight", w, d, x->dtype));
    if (dw) PC_TRY(pc_vec_check(op, "dw", dw, d, x->dtype));
    if (db) PC_TRY(pc_vec_check(op, "db", db, d, x->dtype));
    if (d == 0) return PC_OK;

    double *buf = calloc(6 * (size_t)d, sizeof(double));
    if (!buf) return pc_set_error(PC_ERR_OOM, "%s: out of memory for row buffers", op);
    double *rx = buf, *rdy = buf + d, *fw = buf + 2 * d, *acc_w = buf + 3 * d,
           *acc_b = buf + 4 * d, *rdx = buf + 5 * d;
    for (int64_t j = 0; j < d; j++) fw[j] = 1.0;
    if (w) pc_row_to_f64(fw, pc_tensor_data(w), d, x->dtype);
    const size_t item = pc_dtype_size(x->dtype), sitem = pc_dtype_size(sdt);
    const char *xp = pc_tensor_data(x), *dyp = pc_tensor_data(dy);
    const char *mp = pc_tensor_data(mean), *rp = pc_tensor_data(rstd);
    char *dxp = dx ? pc_tensor_data(dx) : NULL;
    for (int64_t r = 0; r < rows; r++) {
        const size_t off = (size_t)(r * d) * item;
        pc_row_to_f64(rx, xp + off, d, x->dtype);
        pc_row_to_f64(rdy, dyp + off, d, x->dtype);
        const double mu = pc_cpu_load_f(mp + (size_t)r * sitem, sdt);
        const double rs = pc_cpu_load_f(rp + (size_t)r * sitem, sdt);
        double sg = 0, sgx = 0;
        for (int64_t j = 0; j < d; j++) {
            const double xhat = (rx[j] - mu) * rs;
            const double g = rdy[j] * fw[j];
            acc_w[j] += rdy[j] * xhat;
            acc_b[j] += rdy[j];
            sg += g;
            sgx += g * xhat;
            rx[j] = xhat;
        }
        if (dxp) {
            const double mg = sg / (double)d, mgx = sgx / (double)d;
            for (int64_t j = 0; j < d; j++) rdx[j] = rs * (rdy[j] * fw[j] - mg - rx[j] * mgx);
            pc_row_from_f64(dxp + off, rdx, d, x->dtype);
        }
    }
    if (dw) pc_row_from_f64(pc_tensor_data(dw), acc_w, d, x->dtype);
    if (db) pc_row_from_f64(pc_tensor_data(db), acc_b, d, x->dtype);
    free(buf);
    return PC_OK;
}
