/* reduce.c — CPU reductions (sum / mean / max with keepdim-shaped dst), max along a dim,
 * gather along a dim and its transpose scatter_add.
 *
 * reduce: src is walked once in memory order (PcIter) while a float64 accumulator laid out
 * like dst receives each element (its strides are 0 along reduced dims), so sums over
 * leading, trailing or all dims all stream src. float32/half sums accumulate in float64;
 * int64 sums in wrapping int64. The accumulator is rounded into dst at the end.
 *
 * max_dim / gather_dim / scatter_add_dim iterate the output (or index) shape with PcIter and
 * walk `dim` by hand. Indices are validated before anything is written (PC_ERR_INDEX).
 * A 0-d tensor is treated as shape (1,).
 *
 * Exports: pc_cpu_reduce, pc_cpu_max_dim, pc_cpu_gather_dim, pc_cpu_scatter_add_dim.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_cpu.h"
#include "strided.h"

/* ---- reduce: accumulate ---- */

#define PC_RED_ID(v) (v)

/* acc (double, operand 0) += src (operand 1). A stride-0 accumulator run (a reduced inner
 * dim) sums into 8 partial sums so the loop vectorises, then adds once. */
#define PC_SUM_FN(NAME, T, LD)                                                        \
    static void NAME(int64_t n, char *const *p, const int64_t *st, void *ctx) {       \
        (void)ctx;                                                                    \
        char *pacc = p[0];                                                            \
        const char *ps = p[1];                                                        \
        const int64_t sacc = st[0], ss = st[1];                                       \
        if (sacc == 0) {                                                              \
            double part[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                \
            int64_t i = 0;                                                            \
            if (ss == (int64_t)sizeof(T)) {                                           \
                const T *sp = (const T *)ps;                                          \
                for (; i + 8 <= n; i += 8)                                            \
                    for (int j = 0; j < 8; j++) part[j] += (double)LD(sp[i + j]);     \
                for (; i < n; i++) part[0] += (double)LD(sp[i]);                      \
            } else {                                                                  \
                for (; i < n; i++) part[0] += (double)LD(*(const T *)(ps + i * ss));  \
            }                                                                         \
            *(double *)pacc += ((part[0] + part[1]) + (part[2] + part[3])) +          \
                               ((part[4] + part[5]) + (part[6] + part[7]));           \
        } else {                                                                      \
            for (int64_t i = 0; i < n; i++)                                           \
                *(double *)(pacc + i * sacc) += (double)LD(*(const T *)(ps + i * ss)); \
        }                                                                             \
    }

/* acc = max(acc, src); NaN sticks. */
#define PC_MAX_FN(NAME, T, LD)                                                        \
    static void NAME(int64_t n, char *const *p, const int64_t *st, void *ctx) {       \
        (void)ctx;                                                                    \
        for (int64_t i = 0; i < n; i++) {                                             \
            double *m = (double *)(p[0] + i * st[0]);                                 \
            const double x = (double)LD(*(const T *)(p[1] + i * st[1]));              \
            if (x > *m || x != x) *m = x;                                             \
        }                                                                             \
    }

PC_SUM_FN(pc_sum_f32, float, PC_RED_ID)
PC_SUM_FN(pc_sum_f64, double, PC_RED_ID)
PC_SUM_FN(pc_sum_f16, uint16_t, pc_f16_to_f32)
PC_SUM_FN(pc_sum_bf16, uint16_t, pc_bf16_to_f32)
PC_MAX_FN(pc_max_f32, float, PC_RED_ID)
PC_MAX_FN(pc_max_f64, double, PC_RED_ID)
PC_MAX_FN(pc_max_f16, uint16_t, pc_f16_to_f32)
PC_MAX_FN(pc_max_bf16, uint16_t, pc_bf16_to_f32)

static void pc_sum_i64(int64_t n, char *const *p, const int64_t *st, void *ctx) {
    (void)ctx;
    for (int64_t i = 0; i < n; i++) {
        uint64_t *acc = (uint64_t *)(p[0] + i * st[0]);
        *acc += (uint64_t) * (const int64_t *)(p[1] + i * st[1]);
    }
}

/* ---- reduce: finalise ---- */

typedef struct PcRedFinal {
    PcDType dtype;
    double scale; /* 1 / count for MEAN, else 1 */
    bool is_int;
} PcRedFinal;

/* dst (operand 0) = acc (operand 1) * scale, rounded to dst's dtype. */
static void pc_red_finalise(int64_t n, char *const *p, const int64_t *st, void *vctx) {
    const PcRedFinal *f = (const PcRedFinal *)vctx;
    for (int64_t i = 0; i < n; i++) {
        char *d = p[0] + i * st[0];
        const char *a = p[1] + i * st[1];
        if (f->is_int)
            memcpy(d, a, 8);
        else
            pc_cpu_store_f(d, f->dtype, *(const double *)a * f->scale);
    }
}

static const char *const pc_reduce_names[PC_NUM_REDUCE] = {"reduce sum", "reduce mean",
                                                           "reduce max"};

PcStatus pc_cpu_reduce(PcReduceOp op, PcTensor *dst, const PcTensor *src) {
    if ((int)op < 0 || op >= PC_NUM_REDUCE)
        return pc_set_error(PC_ERR_INVALID, "reduce: unknown op %d", (int)op);
    const char *name = pc_reduce_names[op];
    PC_TRY(pc_cpu_check_dtype(name, "dst", dst, src->dtype));
    char sd[128], ss[128];
    bool shape_ok = dst->ndim == src->ndim;
    for (int i = 0; shape_ok && i < src->ndim; i++)
        shape_ok = dst->shape[i] == src->shape[i] || dst->shape[i] == 1;
    if (!shape_ok)
        return pc_set_error(PC_ERR_INVALID,
                            "%s: dst shape %s is not a keepdim reduction of src shape %s", name,
                            pc_shape_str(dst->ndim, dst->shape, sd, sizeof sd),
                            pc_shape_str(src->ndim, src->shape, ss, sizeof ss));

    PcInnerLoop fn;
    bool is_int = false;
    switch (src->dtype) {
    case PC_FLOAT32: fn = op == PC_R_MAX ? pc_max_f32 : pc_sum_f32; break;
    case PC_FLOAT64: fn = op == PC_R_MAX ? pc_max_f64 : pc_sum_f64; break;
    case PC_FLOAT16: fn = op == PC_R_MAX ? pc_max_f16 : pc_sum_f16; break;
    case PC_BFLOAT16: fn = op == PC_R_MAX ? pc_max_bf16 : pc_sum_bf16; break;
    case PC_INT64:
        if (op != PC_R_SUM) return pc_cpu_dtype_error(name, src->dtype);
        fn = pc_sum_i64;
        is_int = true;
        break;
    default: return pc_cpu_dtype_error(name, src->dtype);
    }

    const int64_t n_out = pc_tensor_numel(dst);
    const int64_t n_in = pc_tensor_numel(src);
    if (n_out == 0) return PC_OK;
    const int64_t count = n_in / n_out; /* elements folded into each output */
    if (op == PC_R_MAX && count == 0)
        return pc_set_error(PC_ERR_INVALID, "%s: cannot take the max of an empty reduction "
                                            "(src shape %s)",
                            name, pc_shape_str(src->ndim, src->shape, ss, sizeof ss));

    double *acc = malloc((size_t)n_out * sizeof(double));
    if (!acc)
        return pc_set_error(PC_ERR_OOM, "%s: out of memory for a %lld-element accumulator",
                            name, (long long)n_out);
    if (op == PC_R_MAX) {
        for (int64_t i = 0; i < n_out; i++) acc[i] = -INFINITY;
    } else {
        memset(acc, 0, (size_t)n_out * sizeof(double)); /* 0.0 and int64 0 alike */
    }

    /* Accumulator strides: dst's contiguous layout, 0 along reduced dims. */
    int64_t acc_strides[PC_MAX_DIMS];
    pc_contiguous_strides(dst->ndim, dst->shape, acc_strides);
    for (int i = 0; i < src->ndim; i++)
        if (dst->shape[i] != src->shape[i]) acc_strides[i] = 0;

    if (n_in > 0) {
        char *data[2] = {(char *)acc, (char *)pc_tensor_data(src)};
        const int64_t *strides[2] = {acc_strides, src->strides};
        size_t item[2] = {sizeof(double), pc_dtype_size(src->dtype)};
        PcIter it;
        pc_iter_init(&it, src->ndim, src->shape, 2, data, strides, item);
        pc_iter_run(&it, fn, NULL);
    }

    PcRedFinal fin = {dst->dtype, 1.0, is_int};
    if (op == PC_R_MEAN) fin.scale = count > 0 ? 1.0 / (double)count : NAN;
    int64_t acc_dense[PC_MAX_DIMS];
    pc_contiguous_strides(dst->ndim, dst->shape, acc_dense);
    {
        char *data[2] = {(char *)pc_tensor_data(dst), (char *)acc};
        const int64_t *strides[2] = {dst->strides, acc_dense};
        size_t item[2] = {pc_dtype_size(dst->dtype), sizeof(double)};
        PcIter it;
        pc_iter_init(&it, dst->ndim, dst->shape, 2, data, strides, item);
        pc_iter_run(&it, pc_red_finalise, &fin);
    }
    free(acc);
    return PC_OK;
}

/* ---- helpers for the dim kernels ---- */

/* A tensor's layout with 0-d promoted to (1,). */
typedef struct PcDesc {
    int ndim;
    int64_t shape[PC_MAX_DIMS];
    int64_t strides[PC_MAX_DIMS];
} PcDesc;

static void pc_desc_of(const PcTensor *t, PcDesc *d) {
    d->ndim = t->ndim > 0 ? t->ndim : 1;
    d->shape[0] = 1;
    d->strides[0] = 1;
    for (int i = 0; i < t->ndim; i++) {
        d->shape[i] = t->shape[i];
        d->strides[i] = t->strides[i];
    }
}

static PcStatus pc_check_dim(const char *op, int dim, int ndim) {
    int nd = ndim > 0 ? ndim : 1;
    if (dim < 0 || dim >= nd)
        return pc_set_error(PC_ERR_INDEX, "%s: dim %d out of range for a %d-d tensor", op, dim,
                            ndim);
    return PC_OK;
}

static PcStatus pc_check_int64_index(const char *op, const PcTensor *idx) {
    if (idx->dtype != PC_INT64)
        return pc_set_error(PC_ERR_TYPE, "%s: index must be int64, got %s", op,
                            pc_dtype_name(idx->dtype));
    return PC_OK;
}

/* Copy one element of `item` bytes. */
static inline void pc_move_elem(char *d, const char *s, size_t item) {
    switch (item) {
    case 1: *(uint8_t *)d = *(const uint8_t *)s; break;
    case 2: *(uint16_t *)d = *(const uint16_t *)s; break;
    case 4: *(uint32_t *)d = *(const uint32_t *)s; break;
    default: *(uint64_t *)d = *(const uint64_t *)s; break;
    }
}

/* Index validation: every idx value in [0, limit). Records the first bad value. */
typedef struct PcIdxCheck {
    int64_t limit;
    bool bad;
    int64_t bad_value;
} PcIdxCheck;

static void pc_idx_check_loop(int64_t n, char *const *p, const int64_t *st, void *vctx) {
    PcIdxCheck *c = (PcIdxCheck *)vctx;
    if (c->bad) return;
    for (int64_t i = 0; i < n; i++) {
        int64_t k = *(const int64_t *)(p[0] + i * st[0]);
        if (k < 0 || k >= c->limit) {
            c->bad = true;
            c->bad_value = k;
            return;
        }
    }
}

static PcStatus pc_validate_index(const char *op, const PcDesc *idx, const char *idx_data,
                                  int64_t limit, int dim) {
    char *data[1] = {(char *)idx_data};
    const int64_t *strides[1] = {idx->strides};
    size_t item[1] = {sizeof(int64_t)};
    PcIter it;
    pc_iter_init(&it, idx->ndim, idx->shape, 1, data, strides, item);
    PcIdxCheck c = {limit, false, 0};
    pc_iter_run(&it, pc_idx_check_loop, &c);
    if (c.bad)
        return pc_set_error(PC_ERR_INDEX, "%s: index %lld is out of bounds for dim %d with "
                                          "size %lld",
                            op, (long long)c.bad_value, dim, (long long)limit);
    return PC_OK;
}

/* ---- max_dim ---- */

typedef struct PcMaxDimCtx {
    int64_t len;     /* src->shape[dim] */
    int64_t sstride; /* bytes between consecutive elements along dim */
    PcDType dtype;
    size_t item;
} PcMaxDimCtx;

/* operands: vals, idx, src (src at position 0 along dim). */
static void pc_max_dim_loop(int64_t n, char *const *p, const int64_t *st, void *vctx) {
    const PcMaxDimCtx *c = (const PcMaxDimCtx *)vctx;
    for (int64_t i = 0; i < n; i++) {
        const char *s = p[2] + i * st[2];
        double best = pc_cpu_load_f(s, c->dtype);
        int64_t arg = 0;
        if (best == best) {
            for (int64_t k = 1; k < c->len; k++) {
                double x = pc_cpu_load_f(s + k * c->sstride, c->dtype);
                if (x > best || x != x) {
                    best = x;
                    arg = k;
                    if (x != x) break;
                }
            }
        }
        pc_move_elem(p[0] + i * st[0], s + arg * c->sstride, c->item);
        *(int64_t *)(p[1] + i * st[1]) = arg;
    }
}

PcStatus pc_cpu_max_dim(PcTensor *vals, PcTensor *idx, const PcTensor *src, int dim) {
    const char *op = "max_dim";
    PC_TRY(pc_check_dim(op, dim, src->ndim));
    if (!pc_dtype_is_float(src->dtype)) return pc_cpu_dtype_error(op, src->dtype);
    PC_TRY(pc_cpu_check_dtype(op, "vals", vals, src->dtype));
    PC_TRY(pc_cpu_check_dtype(op, "idx", idx, PC_INT64));
    PC_TRY(pc_cpu_check_same_shape(op, "vals", vals, "idx", idx));
    PcDesc s, v, x;
    pc_desc_of(src, &s);
    pc_desc_of(vals, &v);
    pc_desc_of(idx, &x);
    bool ok = v.ndim == s.ndim;
    for (int i = 0; ok && i < s.ndim; i++) ok = v.shape[i] == (i == dim ? 1 : s.shape[i]);
    if (!ok) {
        char a[128], b[128];
        return pc_set_error(PC_ERR_INVALID, "%s: vals shape %s does not match src shape %s "
                                            "with dim %d reduced",
                            op, pc_shape_str(vals->ndim, vals->shape, a, sizeof a),
                            pc_shape_str(src->ndim, src->shape, b, sizeof b), dim);
    }
    if (pc_tensor_numel(vals) == 0) return PC_OK;
    if (s.shape[dim] == 0)
        return pc_set_error(PC_ERR_INVALID, "%s: cannot take the max over dim %d of size 0",
                            op, dim);
    PcMaxDimCtx c = {s.shape[dim], s.strides[dim] * (int64_t)pc_dtype_size(src->dtype),
                     src->dtype, pc_dtype_size(src->dtype)};
    char *data[3] = {(char *)pc_tensor_data(vals), (char *)pc_tensor_data(idx),
                     (char *)pc_tensor_data(src)};
    const int64_t *strides[3] = {v.strides, x.strides, s.strides};
    size_t item[3] = {c.item, sizeof(int64_t), c.item};
    PcIter it;
    pc_iter_init(&it, v.ndim, v.shape, 3, data, strides, item);
    pc_iter_run(&it, pc_max_dim_loop, &c);
    return PC_OK;
}

/* ---- gather / scatter_add ---- */

typedef struct PcDimIdxCtx {
    int64_t dstride; /* bytes along dim in the indexed tensor */
    size_t item;
    PcDType dtype;
} PcDimIdxCtx;

/* operands: dst, idx, src (src stride 0 along dim). */
static void pc_gather_loop(int64_t n, char *const *p, const int64_t *st, void *vctx) {
    const PcDimIdxCtx *c = (const PcDimIdxCtx *)vctx;
    for (int64_t i = 0; i < n; i++) {
        int64_t k = *(const int64_t *)(p[1] + i * st[1]);
        pc_move_elem(p[0] + i * st[0], p[2] + i * st[2] + k * c->dstride, c->item);
    }
}

/* operands: idx, src, dst (dst stride 0 along dim). */
static void pc_scatter_add_loop(int64_t n, char *const *p, const int64_t *st, void *vctx) {
    const PcDimIdxCtx *c = (const PcDimIdxCtx *)vctx;
    for (int64_t i = 0; i < n; i++) {
        int64_t k = *(const int64_t *)(p[0] + i * st[0]);
        const char *s = p[1] + i * st[1];
        char *d = p[2] + i * st[2] + k * c->dstride;
        switch (c->dtype) {
        case PC_FLOAT32: *(float *)d += *(const float *)s; break;
        case PC_FLOAT64: *(double *)d += *(const double *)s; break;
        case PC_INT64:
            *(int64_t *)d = (int64_t)((uint64_t) * (int64_t *)d + (uint64_t) * (const int64_t *)s);
            break;
        default: /* half types: add in float32, round once */
            pc_cpu_store_f(d, c->dtype,
                           (float)pc_cpu_load_f(d, c->dtype) + (float)pc_cpu_load_f(s, c->dtype));
            break;
        }
    }
}

/* For every d != dim: small.shape[d] <= big.shape[d] (and equal ndim). */
static PcStatus pc_check_fits(const char *op, const char *small_name, const PcDesc *small,
                              const char *big_name, const PcDesc *big, int dim, bool incl_dim) {
    bool ok = small->ndim == big->ndim;
    for (int i = 0; ok && i < big->ndim; i++)
        if (i != dim || incl_dim) ok = small->shape[i] <= big->shape[i];
    if (ok) return PC_OK;
    char a[128], b[128];
    return pc_set_error(PC_ERR_INVALID, "%s: %s shape %s does not fit %s shape %s (dim %d)", op,
                        small_name, pc_shape_str(small->ndim, small->shape, a, sizeof a),
                        big_name, pc_shape_str(big->ndim, big->shape, b, sizeof b), dim);
}

PcStatus pc_cpu_gather_dim(PcTensor *dst, const PcTensor *src, const PcTensor *idx, int dim) {
    const char *op = "gather_dim";
    PC_TRY(pc_check_dim(op, dim, src->ndim));
    PC_TRY(pc_check_int64_index(op, idx));
    PC_TRY(pc_cpu_check_dtype(op, "dst", dst, src->dtype));
    PC_TRY(pc_cpu_check_same_shape(op, "dst", dst, "idx", idx));
    if (!((int)src->dtype >= 0 && src->dtype < PC_NUM_DTYPES))
        return pc_cpu_dtype_error(op, src->dtype);
    PcDesc d, s, x;
    pc_desc_of(dst, &d);
    pc_desc_of(src, &s);
    pc_desc_of(idx, &x);
    PC_TRY(pc_check_fits(op, "idx", &x, "src", &s, dim, false));
    if (pc_tensor_numel(dst) == 0) return PC_OK;
    PC_TRY(pc_validate_index(op, &x, pc_tensor_data(idx), s.shape[dim], dim));
    size_t item = pc_dtype_size(src->dtype);
    PcDimIdxCtx c = {s.strides[dim] * (int64_t)item, item, src->dtype};
    s.strides[dim] = 0;
    char *data[3] = {(char *)pc_tensor_data(dst), (char *)pc_tensor_data(idx),
                     (char *)pc_tensor_data(src)};
    const int64_t *strides[3] = {d.strides, x.strides, s.strides};
    size_t items[3] = {item, sizeof(int64_t), item};
    PcIter it;
    pc_iter_init(&it, d.ndim, d.shape, 3, data, strides, items);
    pc_iter_run(&it, pc_gather_loop, &c);
    return PC_OK;
}

PcStatus pc_cpu_scatter_add_dim(PcTensor *dst, const PcTensor *idx, const PcTensor *src,
                                int dim) {
    const char *op = "scatter_add_dim";
    PC_TRY(pc_check_dim(op, dim, dst->ndim));
    PC_TRY(pc_check_int64_index(op, idx));
    PC_TRY(pc_cpu_check_dtype(op, "src", src, dst->dtype));
    if (!pc_dtype_is_float(dst->dtype) && dst->dtype != PC_INT64)
        return pc_cpu_dtype_error(op, dst->dtype);
    PcDesc d, s, x;
    pc_desc_of(dst, &d);
    pc_desc_of(src, &s);
    pc_desc_of(idx, &x);
    PC_TRY(pc_check_fits(op, "idx", &x, "src", &s, dim, true));
    PC_TRY(pc_check_fits(op, "idx", &x, "dst", &d, dim, false));
    if (pc_tensor_numel(idx) == 0) return PC_OK;
    PC_TRY(pc_validate_index(op, &x, pc_tensor_data(idx), d.shape[dim], dim));
    size_t item = pc_dtype_size(dst->dtype);
    PcDimIdxCtx c = {d.strides[dim] * (int64_t)item, item, dst->dtype};
    d.strides[dim] = 0;
    char *data[3] = {(char *)pc_tensor_data(idx), (char *)pc_tensor_data(src),
                     (char *)pc_tensor_data(dst)};
    const int64_t *strides[3] = {x.strides, s.strides, d.strides};
    size_t items[3] = {sizeof(int64_t), item, item};
    PcIter it;
    pc_iter_init(&it, x.ndim, x.shape, 3, data, strides, items);
    pc_iter_run(&it, pc_scatter_add_loop, &c);
    return PC_OK;
}
