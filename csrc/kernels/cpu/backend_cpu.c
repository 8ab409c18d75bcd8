/* backend_cpu.c — the CPU kernel table (pc_cpu_backend) and host memory.
 *
 * Memory is 64-byte aligned (cache line / AVX-512 width) host memory; sizes are rounded up
 * to a multiple of 64 for aligned_alloc. Copies are memmove; synchronize is a no-op because
 * every CPU kernel finishes before returning. The compute kernels live in the sibling files
 * (see kernels_cpu.h); this file also holds the argument checks they share.
 *
 * Exports: pc_cpu_backend, pc_cpu_check_*, pc_cpu_dtype_error.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels_cpu.h"

#define PC_CPU_ALIGN 64

/* ---- memory ---- */

static PcStatus cpu_alloc(PcDevice dev, size_t nbytes, void **out) {
    (void)dev;
    *out = NULL;
    size_t rounded = (nbytes + (PC_CPU_ALIGN - 1)) & ~(size_t)(PC_CPU_ALIGN - 1);
    if (rounded < nbytes) /* wrapped */
        return pc_set_error(PC_ERR_OOM, "cpu alloc: cannot allocate %zu bytes", nbytes);
    if (rounded == 0) rounded = PC_CPU_ALIGN;
    void *p = aligned_alloc(PC_CPU_ALIGN, rounded);
    if (!p)
        return pc_set_error(PC_ERR_OOM, "cpu alloc: out of host memory allocating %zu bytes",
                            nbytes);
    *out = p;
    return PC_OK;
}

static void cpu_free(PcDevice dev, void *ptr, size_t nbytes) {
    (void)dev;
    (void)nbytes;
    free(ptr);
}

static PcStatus cpu_copy_h2d(PcDevice dev, void *dst, const void *src, size_t nbytes) {
    (void)dev;
    if (nbytes) memmove(dst, src, nbytes);
    return PC_OK;
}

static PcStatus cpu_copy_d2h(PcDevice dev, void *dst, const void *src, size_t nbytes) {
    (void)dev;
    if (nbytes) memmove(dst, src, nbytes);
    return PC_OK;
}

static PcStatus cpu_copy_d2d(PcDevice dst_dev, void *dst, PcDevice src_dev, const void *src,
                             size_t nbytes) {
    (void)dst_dev;
    (void)src_dev;
    if (nbytes) memmove(dst, src, nbytes);
    return PC_OK;
}

static PcStatus cpu_synchronize(PcDevice dev) {
    (void)dev;
    return PC_OK;
}

/* ---- shared checks ---- */

PcStatus pc_cpu_check_same_shape(const char *op, const char *arg_a, const PcTensor *a,
                                 const char *arg_b, const PcTensor *b) {
    bool same = a->ndim == b->ndim;
    for (int i = 0; same && i < a->ndim; i++) same = a->shape[i] == b->shape[i];
    if (same) return PC_OK;
    char sa[128], sb[128];
    return pc_set_error(PC_ERR_INVALID, "%s: %s has shape %s but %s has shape %s", op, arg_a,
                        pc_shape_str(a->ndim, a->shape, sa, sizeof sa), arg_b,
                        pc_shape_str(b->ndim, b->shape, sb, sizeof sb));
}

PcStatus pc_cpu_check_dtype(const char *op, const char *arg, const PcTensor *t, PcDType dtype) {
    if (t->dtype == dtype) return PC_OK;
    return pc_set_error(PC_ERR_TYPE, "%s: expected %s to have dtype %s, got %s", op, arg,
                        pc_dtype_name(dtype), pc_dtype_name(t->dtype));
}

PcStatus pc_cpu_check_contiguous(const char *op, const char *arg, const PcTensor *t) {
    if (pc_tensor_is_contiguous(t)) return PC_OK;
    return pc_set_error(PC_ERR_INVALID, "%s: %s must be contiguous", op, arg);
}

PcStatus pc_cpu_dtype_error(const char *op, PcDType dt) {
    return pc_set_error(PC_ERR_TYPE, "%s: dtype %s not supported", op, pc_dtype_name(dt));
}

/* ---- the table ---- */

const PcBackend pc_cpu_backend = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy_h2d = cpu_copy_h2d,
    .copy_d2h = cpu_copy_d2h,
    .copy_d2d = cpu_copy_d2d,
    .synchronize = cpu_synchronize,
    .copy = pc_cpu_copy,
    .fill = pc_cpu_fill,
    .unary = pc_cpu_unary,
    .binary = pc_cpu_binary,
    .reduce = pc_cpu_reduce,
    .max_dim = pc_cpu_max_dim,
    .gather_dim = pc_cpu_gather_dim,
    .scatter_add_dim = pc_cpu_scatter_add_dim,
    .gemm = pc_cpu_gemm,
    .softmax = pc_cpu_softmax,
    .softmax_backward = pc_cpu_softmax_backward,
    .layer_norm = pc_cpu_layer_norm,
    .layer_norm_backward = pc_cpu_layer_norm_backward,
    .random = pc_cpu_random,
    .index_select0 = pc_cpu_index_select0,
    .index_add0 = pc_cpu_index_add0,
    .sgd_step = pc_cpu_sgd_step,
    .adamw_step = pc_cpu_adamw_step,
};
