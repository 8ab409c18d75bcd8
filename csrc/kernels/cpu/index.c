/* index.c — CPU index_select / index_add along dim 0 (contiguous tensors).
 *
 * A tensor is seen as rows along dim 0, each of `row` = numel / shape[0] elements.
 * index_select0 copies whole rows (any dtype, memcpy); index_add0 adds rows in place
 * (float types computed in their own precision, half through float32; int64 wraps).
 * Every index is checked against [0, rows) before anything is written (PC_ERR_INDEX); a
 * repeated index in index_add0 accumulates every contribution.
 *
 * Exports: pc_cpu_index_select0, pc_cpu_index_add0.
 */
#include <string.h>

#include "kernels_cpu.h"

/* ---- shared checks ---- */

/* idx is an int64 vector of n entries, all in [0, limit). */
static PcStatus pc_index_check(const char *op, const PcTensor *idx, int64_t limit, int64_t *n) {
    if (idx->dtype != PC_INT64)
        return pc_set_error(PC_ERR_TYPE, "%s: index must be int64, got %s", op,
                            pc_dtype_name(idx->dtype));
    if (idx->ndim > 1)
        return pc_set_error(PC_ERR_INVALID, "%s: index must be 1-d, got %d-d", op, idx->ndim);
    PC_TRY(pc_cpu_check_contiguous(op, "index", idx));
    *n = pc_tensor_numel(idx);
    const int64_t *ip = pc_tensor_data(idx);
    for (int64_t i = 0; i < *n; i++)
        if (ip[i] < 0 || ip[i] >= limit)
            return pc_set_error(PC_ERR_INDEX, "%s: index %lld is out of bounds for dim 0 with "
                                              "size %lld",
                                op, (long long)ip[i], (long long)limit);
    return PC_OK;
}

/* dst (n, rest...) and src (m, rest...) agree beyond dim 0; both contiguous, same dtype. */
static PcStatus pc_rows_check(const char *op, const PcTensor *dst, const PcTensor *src,
                              int64_t n_idx, bool dst_indexed) {
    PC_TRY(pc_cpu_check_dtype(op, "src", src, dst->dtype));
    PC_TRY(pc_cpu_check_contiguous(op, "dst", dst));
    PC_TRY(pc_cpu_check_contiguous(op, "src", src));
    bool ok = dst->ndim == src->ndim && dst->ndim >= 1;
    for (int i = 1; ok && i < dst->ndim; i++) ok = dst->shape[i] == src->shape[i];
    /* The non-indexed side has one row per index. */
    if (ok) ok = (dst_indexed ? src->shape[0] : dst->shape[0]) == n_idx;
    if (ok) return PC_OK;
    char a[128], b[128];
    return pc_set_error(PC_ERR_INVALID, "%s: dst shape %s and src shape %s do not match for "
                                        "%lld indices",
                        op, pc_shape_str(dst->ndim, dst->shape, a, sizeof a),
                        pc_shape_str(src->ndim, src->shape, b, sizeof b), (long long)n_idx);
}

/* ---- kernels ---- */

PcStatus pc_cpu_index_select0(PcTensor *dst, const PcTensor *src, const PcTensor *idx) {
    const char *op = "index_select0";
    if (src->ndim < 1) return pc_set_error(PC_ERR_INVALID, "%s: src must be at least 1-d", op);
    int64_t n;
    PC_TRY(pc_index_check(op, idx, src->shape[0], &n));
    PC_TRY(pc_rows_check(op, dst, src, n, false));
    const int64_t rows = src->shape[0];
    const size_t row_bytes =
        rows > 0 ? (size_t)(pc_tensor_numel(src) / rows) * pc_dtype_size(src->dtype) : 0;
    const int64_t *ip = pc_tensor_data(idx);
    const char *sp = pc_tensor_data(src);
    char *dp = pc_tensor_data(dst);
    if (row_bytes == 0) return PC_OK;
    for (int64_t i = 0; i < n; i++)
        memcpy(dp + (size_t)i * row_bytes, sp + (size_t)ip[i] * row_bytes, row_bytes);
    return PC_OK;
}

PcStatus pc_cpu_index_add0(PcTensor *dst, const PcTensor *idx, const PcTensor *src) {
    const char *op = "index_add0";
    if (dst->ndim < 1) return pc_set_error(PC_ERR_INVALID, "%s: dst must be at least 1-d", op);
    if (!pc_dtype_is_float(dst->dtype) && dst->dtype != PC_INT64)
        return pc_cpu_dtype_error(op, dst->dtype);
    int64_t n;
    PC_TRY(pc_index_check(op, idx, dst->shape[0], &n));
    PC_TRY(pc_rows_check(op, dst, src, n, true));
    const int64_t rows = dst->shape[0];
    const int64_t row = rows > 0 ? pc_tensor_numel(dst) / rows : 0;
    const int64_t *ip = pc_tensor_data(idx);
    const char *sp = pc_tensor_data(src);
    char *dp = pc_tensor_data(dst);
    for (int64_t i = 0; i < n; i++) {
        const int64_t r = ip[i];
        switch (dst->dtype) {
        case PC_FLOAT32: {
            float *d = (float *)dp + r * row;
            const float *s = (const float *)sp + i * row;
            for (int64_t j = 0; j < row; j++) d[j] += s[j];
            break;
        }
        case PC_FLOAT64: {
            double *d = (double *)dp + r * row;
            const double *s = (const double *)sp + i * row;
            for (int64_t j = 0; j < row; j++) d[j] += s[j];
            break;
        }
        case PC_INT64: {
            int64_t *d = (int64_t *)dp + r * row;
            const int64_t *s = (const int64_t *)sp + i * row;
            for (int64_t j = 0; j < row; j++) d[j] = (int64_t)((uint64_t)d[j] + (uint64_t)s[j]);
            break;
        }
        case PC_FLOAT16: {
            uint16_t *d = (uint16_t *)dp + r * row;
            const uint16_t *s = (const uint16_t *)sp + i * row;
            for (int64_t j = 0; j < row; j++)
                d[j] = pc_f32_to_f16(pc_f16_to_f32(d[j]) + pc_f16_to_f32(s[j]));
            break;
        }
        default: {
            uint16_t *d = (uint16_t *)dp + r * row;
            const uint16_t *s = (const uint16_t *)sp + i * row;
            for (int64_t j = 0; j < row; j++)
                d[j] = pc_f32_to_bf16(pc_bf16_to_f32(d[j]) + pc_bf16_to_f32(s[j]));
            break;
        }
        }
    }
    return PC_OK;
}
