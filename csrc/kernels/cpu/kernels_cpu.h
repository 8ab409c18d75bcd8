/* kernels_cpu.h — the CPU kernels behind pc_cpu_backend (internal to csrc/kernels/cpu/).
 *
 * Each function implements the PcBackend entry of the same name (see core/backend.h for the
 * contracts); backend_cpu.c assembles the table. Also small shared helpers: argument checks
 * that set a message naming the kernel, and the half <-> float load/store used by every file.
 */
#ifndef PC_KERNELS_CPU_KERNELS_CPU_H
#define PC_KERNELS_CPU_KERNELS_CPU_H

#include <stdbool.h>
#include <stdint.h>

#include "../../core/backend.h"

/* ---- elementwise.c ---- */
PcStatus pc_cpu_copy(PcTensor *dst, const PcTensor *src);
PcStatus pc_cpu_fill(PcTensor *dst, double value);
PcStatus pc_cpu_unary(PcUnaryOp op, PcTensor *dst, const PcTensor *src, double s);
PcStatus pc_cpu_binary(PcBinaryOp op, PcTensor *dst, const PcTensor *a, const PcTensor *b,
                       double alpha);

/* ---- reduce.c ---- */
PcStatus pc_cpu_reduce(PcReduceOp op, PcTensor *dst, const PcTensor *src);
PcStatus pc_cpu_max_dim(PcTensor *vals, PcTensor *idx, const PcTensor *src, int dim);
PcStatus pc_cpu_gather_dim(PcTensor *dst, const PcTensor *src, const PcTensor *idx, int dim);
PcStatus pc_cpu_scatter_add_dim(PcTensor *dst, const PcTensor *idx, const PcTensor *src,
                                int dim);

/* ---- gemm.c ---- */
PcStatus pc_cpu_gemm(PcDevice dev, const PcGemmArgs *args);

/* ---- rowwise.c ---- */
PcStatus pc_cpu_softmax(PcTensor *y, const PcTensor *x, bool log);
PcStatus pc_cpu_softmax_backward(PcTensor *dx, const PcTensor *dy, const PcTensor *y, bool log);
PcStatus pc_cpu_layer_norm(PcTensor *y, PcTensor *mean, PcTensor *rstd, const PcTensor *x,
                           const PcTensor *w, const PcTensor *b, double eps);
PcStatus pc_cpu_layer_norm_backward(PcTensor *dx, PcTensor *dw, PcTensor *db,
                                    const PcTensor *dy, const PcTensor *x,
                                    const PcTensor *mean, const PcTensor *rstd,
                                    const PcTensor *w);

/* ---- random.c ---- */
PcStatus pc_cpu_random(PcTensor *dst, PcRandomDist dist, double a, double b, uint64_t seed,
                       uint64_t offset);

/* ---- index.c ---- */
PcStatus pc_cpu_index_select0(PcTensor *dst, const PcTensor *src, const PcTensor *idx);
PcStatus pc_cpu_index_add0(PcTensor *dst, const PcTensor *idx, const PcTensor *src);

/* ---- optim.c ---- */
PcStatus pc_cpu_sgd_step(int n, PcTensor *const *params, PcTensor *const *grads,
                         PcTensor *const *momentum_bufs, const PcSgdArgs *args);
PcStatus pc_cpu_adamw_step(int n, PcTensor *const *params, PcTensor *const *grads,
                           PcTensor *const *exp_avgs, PcTensor *const *exp_avg_sqs,
                           const PcAdamWArgs *args);

/* ---- shared checks (set the error, naming `op` and `arg`) ---- */

/* a and b have the same ndim and shape. */
PcStatus pc_cpu_check_same_shape(const char *op, const char *arg_a, const PcTensor *a,
                                 const char *arg_b, const PcTensor *b);
/* t->dtype == dtype. */
PcStatus pc_cpu_check_dtype(const char *op, const char *arg, const PcTensor *t, PcDType dtype);
/* t is contiguous. */
PcStatus pc_cpu_check_contiguous(const char *op, const char *arg, const PcTensor *t);
/* "op: dtype X not supported" (PC_ERR_TYPE). */
PcStatus pc_cpu_dtype_error(const char *op, PcDType dt);

/* ---- scalar element access (slow paths, finalisation) ---- */

/* double -> int64: truncation toward zero, saturating; NaN -> INT64_MIN. */
static inline int64_t pc_cpu_d2i64(double v) {
    if (v != v) return INT64_MIN;
    if (v >= 9223372036854775808.0) return INT64_MAX;
    if (v < -9223372036854775808.0) return INT64_MIN;
    return (int64_t)v;
}

/* Element at p of a floating dtype (or int64) as double. */
static inline double pc_cpu_load_f(const void *p, PcDType dt) {
    switch (dt) {
    case PC_FLOAT32: return *(const float *)p;
    case PC_FLOAT64: return *(const double *)p;
    case PC_FLOAT16: return pc_f16_to_f32(*(const uint16_t *)p);
    case PC_BFLOAT16: return pc_bf16_to_f32(*(const uint16_t *)p);
    case PC_INT64: return (double)*(const int64_t *)p;
    case PC_BOOL: return *(const uint8_t *)p ? 1.0 : 0.0;
    default: return 0.0;
    }
}

/* Store v at p rounded to a floating dtype (float16/bfloat16 through float32). */
static inline void pc_cpu_store_f(void *p, PcDType dt, double v) {
    switch (dt) {
    case PC_FLOAT32: *(float *)p = (float)v; break;
    case PC_FLOAT64: *(double *)p = v; break;
    case PC_FLOAT16: *(uint16_t *)p = pc_f32_to_f16((float)v); break;
    case PC_BFLOAT16: *(uint16_t *)p = pc_f32_to_bf16((float)v); break;
    case PC_INT64: *(int64_t *)p = pc_cpu_d2i64(v); break;
    case PC_BOOL: *(uint8_t *)p = (uint8_t)(v != 0); break;
    default: break;
    }
}

#endif /* PC_KERNELS_CPU_KERNELS_CPU_H */
