/* strided.h — an N-d strided iterator over up to PC_ITER_MAX_OPS operands (CPU kernels).
 *
 * All operands share one shape; each has its own element strides (0 = broadcast) and item
 * size. pc_iter_init drops size-1 dims and merges adjacent dims that are contiguous with each
 * other in every operand, so a set of contiguous tensors becomes a single 1-d run and a
 * transposed or broadcast one keeps only the dims it needs. pc_iter_run then calls an inner
 * loop on each innermost run with byte strides; inner loops test `strides[k] == itemsize`
 * for their contiguous fast path.
 *
 * Invariants: after init, numel == 0 means "nothing to do"; otherwise 1 <= ndim <= PC_MAX_DIMS
 * and shape[ndim - 1] is the innermost (fastest in dst) run. Header-only, internal to
 * csrc/kernels/cpu/.
 */
#ifndef PC_KERNELS_CPU_STRIDED_H
#define PC_KERNELS_CPU_STRIDED_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "../../core/tensor.h"

#define PC_ITER_MAX_OPS 4

typedef struct PcIter {
    int ndim;
    int nops;
    int64_t numel;
    int64_t shape[PC_MAX_DIMS];
    int64_t strides[PC_ITER_MAX_OPS][PC_MAX_DIMS]; /* bytes */
    char *data[PC_ITER_MAX_OPS];                   /* borrowed: element 0 of each operand */
} PcIter;

/* Inner loop over one run of n elements: ptrs[k] is operand k's first element there and
 * strides[k] its byte stride along the run. */
typedef void (*PcInnerLoop)(int64_t n, char *const *ptrs, const int64_t *strides, void *ctx);

/* Generic init: `ndim, shape` shared; for each operand its data pointer, element strides and
 * item size. */
static inline void pc_iter_init(PcIter *it, int ndim, const int64_t *shape, int nops,
                                char *const *data, const int64_t *const *strides,
                                const size_t *itemsize) {
    it->nops = nops;
    it->numel = 1;
    for (int k = 0; k < nops; k++) it->data[k] = data[k];
    for (int d = 0; d < ndim; d++) it->numel *= shape[d];
    it->ndim = 0;
    if (it->numel == 0) return;
    /* Walk from outer to inner, merging each dim into the previous kept one when possible. */
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 1) continue;
        int nd = it->ndim;
        if (nd > 0) {
            bool merge = true;
            for (int k = 0; k < nops && merge; k++) {
                int64_t inner = strides[k][d] * (int64_t)itemsize[k];
                merge = it->strides[k][nd - 1] == inner * shape[d];
            }
            if (merge) {
                it->shape[nd - 1] *= shape[d];
                for (int k = 0; k < nops; k++)
                    it->strides[k][nd - 1] = strides[k][d] * (int64_t)itemsize[k];
                continue;
            }
        }
        it->shape[nd] = shape[d];
        for (int k = 0; k < nops; k++)
            it->strides[k][nd] = strides[k][d] * (int64_t)itemsize[k];
        it->ndim = nd + 1;
    }
    if (it->ndim == 0) { /* every dim was 1: a single element */
        it->ndim = 1;
        it->shape[0] = 1;
        for (int k = 0; k < nops; k++) it->strides[k][0] = (int64_t)itemsize[k];
    }
}

/* Init from tensors sharing ts[0]'s shape (the caller has checked the shapes). */
static inline void pc_iter_init_tensors(PcIter *it, int nops, const PcTensor *const *ts) {
    char *data[PC_ITER_MAX_OPS];
    const int64_t *strides[PC_ITER_MAX_OPS];
    size_t item[PC_ITER_MAX_OPS];
    for (int k = 0; k < nops; k++) {
        data[k] = (char *)pc_tensor_data(ts[k]);
        strides[k] = ts[k]->strides;
        item[k] = pc_dtype_size(ts[k]->dtype);
    }
    pc_iter_init(it, ts[0]->ndim, ts[0]->shape, nops, data, strides, item);
}

/* Call fn on every innermost run, outer dims in row-major order. */
static inline void pc_iter_run(const PcIter *it, PcInnerLoop fn, void *ctx) {
    if (it->numel == 0) return;
    const int nd = it->ndim, nops = it->nops;
    const int64_t n = it->shape[nd - 1];
    int64_t inner[PC_ITER_MAX_OPS];
    char *ptr[PC_ITER_MAX_OPS];
    for (int k = 0; k < nops; k++) {
        inner[k] = it->strides[k][nd - 1];
        ptr[k] = it->data[k];
    }
    if (nd == 1) {
        fn(n, ptr, inner, ctx);
        return;
    }
    int64_t idx[PC_MAX_DIMS] = {0};
    for (;;) {
        fn(n, ptr, inner, ctx);
        int d = nd - 2;
        for (; d >= 0; d--) {
            for (int k = 0; k < nops; k++) ptr[k] += it->strides[k][d];
            if (++idx[d] < it->shape[d]) break;
            for (int k = 0; k < nops; k++) ptr[k] -= it->strides[k][d] * it->shape[d];
            idx[d] = 0;
        }
        if (d < 0) return;
    }
}

/* True when every operand's run is contiguous (its stride equals its item size). */
static inline bool pc_iter_run_contiguous(const int64_t *strides, const size_t *itemsize,
                                          int nops) {
    for (int k = 0; k < nops; k++)
        if (strides[k] != (int64_t)itemsize[k]) return false;
    return true;
}

#endif /* PC_KERNELS_CPU_STRIDED_H */
