/* backend.h — the per-device kernel table.
 *
 * Ops (csrc/ops/) dispatch every piece of device work through a PcBackend: memory, copies,
 * elementwise, reductions, GEMM, softmax, norms, RNG, indexing and optimiser steps. The CPU
 * backend (csrc/kernels/cpu/) is always built and is the reference; the CUDA backend
 * (csrc/kernels/cuda/) is built when nvcc is found (PC_WITH_CUDA).
 *
 * Conventions for every kernel below:
 *   - Tensors are on this backend's device. Unless a kernel says "contiguous", inputs and the
 *     output may have arbitrary non-negative strides (0 = broadcast); the output never overlaps
 *     an input except when it is the very same view (in-place), which every kernel allows.
 *   - Elementwise kernels take inputs already broadcast to dst's shape, all of dst's dtype
 *     (ops convert first). Only `copy` converts dtypes.
 *   - Floating kernels support float32, float64, float16, bfloat16 (half types computed in
 *     float32). Integer/bool support is noted per kernel; otherwise PC_ERR_TYPE.
 *   - Kernels run asynchronously on the device's current stream (CUDA); CPU kernels finish
 *     before returning.
 */
#ifndef PC_CORE_BACKEND_H
#define PC_CORE_BACKEND_H

#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* dst = f(src, s) elementwise. */
typedef enum PcUnaryOp {
    PC_U_NEG,      /* -x */
    PC_U_ABS,      /* |x|                     (int64 too) */
    PC_U_EXP,
    PC_U_LOG,
    PC_U_SQRT,
    PC_U_TANH,
    PC_U_SIGMOID,
    PC_U_RELU,     /* max(x, 0) */
    PC_U_GELU,     /* x * Phi(x), exact (erf) form, torch's default */
    PC_U_POW,      /* x ** s */
    PC_U_SIGN,     /* -1, 0, 1 */
    PC_U_ADD_S,    /* x + s                   (int64 too) */
    PC_U_MUL_S,    /* x * s                   (int64 too) */
    PC_U_RSUB_S,   /* s - x */
    PC_U_RDIV_S,   /* s / x */
    PC_U_GE_S,     /* 1 if x >= s else 0 (in dst's dtype) */
    PC_U_GT_S,     /* 1 if x > s else 0 */
    PC_NUM_UNARY
} PcUnaryOp;

/* dst = f(a, b, alpha) elementwise. */
typedef enum PcBinaryOp {
    PC_B_ADD,          /* a + alpha * b           (int64 too) */
    PC_B_SUB,          /* a - alpha * b           (int64 too) */
    PC_B_MUL,          /* a * b                   (int64 too) */
    PC_B_DIV,          /* a / b */
    PC_B_MAXIMUM,      /* max(a, b) */
    /* Comparisons: 1 if the relation holds else 0 (in dst's dtype; int64 too). NaN compares
     * unequal to everything, itself included, and is ordered with nothing. */
    PC_B_EQ,           /* a == b */
    PC_B_NE,           /* a != b */
    PC_B_LT,           /* a < b */
    PC_B_LE,           /* a <= b */
    PC_B_GT,           /* a > b */
    PC_B_GE,           /* a >= b */
    PC_B_RELU_BWD,     /* a * (b > 0)            a = grad, b = x */
    PC_B_GELU_BWD,     /* a * gelu'(b)           a = grad, b = x */
    PC_B_TANH_BWD,     /* a * (1 - b*b)          a = grad, b = y */
    PC_B_SIGMOID_BWD,  /* a * b * (1 - b)        a = grad, b = y */
    PC_B_POW_BWD,      /* a * alpha * b**(alpha-1)   a = grad, b = x, alpha = exponent */
    PC_NUM_BINARY
} PcBinaryOp;

typedef enum PcReduceOp {
    PC_R_SUM,
    PC_R_MEAN,
    PC_R_MAX,
    PC_NUM_REDUCE
} PcReduceOp;

typedef enum PcRandomDist {
    PC_RAND_UNIFORM, /* a + (b - a) * U[0, 1) */
    PC_RAND_NORMAL   /* a + b * N(0, 1) */
} PcRandomDist;

/* C = alpha * op(A) @ op(B) + beta * C (+ bias[n] broadcast over rows) (then ReLU), row-major.
 * op(A) is (m, k): A is (m, k) with row stride lda, or (k, m) when trans_a.
 * op(B) is (k, n): B is (k, n) with row stride ldb, or (n, k) when trans_b.
 * C is (m, n) with row stride ldc. batch > 1 repeats with the given element strides.
 * All of one dtype (float32/float64/float16/bfloat16); half types accumulate in float32. */
typedef struct PcGemmArgs {
    PcDType dtype;
    bool trans_a, trans_b;
    int64_t m, n, k;
    double alpha, beta;
    const void *a; int64_t lda; int64_t stride_a;
    const void *b; int64_t ldb; int64_t stride_b;
    void *c; int64_t ldc; int64_t stride_c;
    int64_t batch;            /* >= 1 */
    const void *bias;         /* NULL or (n,) of dtype: added to every row of C */
    bool relu;                /* apply max(., 0) after the bias */
} PcGemmArgs;

/* Hyper-parameters of one optimiser step (shared by all tensors of a group). */
typedef struct PcSgdArgs {
    double lr, momentum, dampening, weight_decay;
    bool nesterov, maximize;
    bool first_step;          /* momentum buffers are initialised from the gradient */
} PcSgdArgs;

typedef struct PcAdamWArgs {
    double lr, beta1, beta2, eps, weight_decay;
    int64_t step;             /* 1-based step count after this update (for bias correction) */
    bool maximize;
} PcAdamWArgs;

typedef struct PcBackend {
    const char *name;

    /* ---- memory ---- */
    PcStatus (*alloc)(PcDevice dev, size_t nbytes, void **out);
    void (*free)(PcDevice dev, void *ptr, size_t nbytes);
    /* Contiguous byte copies. h2d: host -> dev; d2h: dev -> host; d2d within this backend
     * (may cross devices of the same type). Synchronous with respect to the host for h2d/d2h. */
    PcStatus (*copy_h2d)(PcDevice dev, void *dst, const void *src, size_t nbytes);
    PcStatus (*copy_d2h)(PcDevice dev, void *dst, const void *src, size_t nbytes);
    PcStatus (*copy_d2d)(PcDevice dst_dev, void *dst, PcDevice src_dev, const void *src,
                         size_t nbytes);
    PcStatus (*synchronize)(PcDevice dev);

    /* ---- elementwise ---- */
    /* dst = src (same shape), converting dtypes (all six). */
    PcStatus (*copy)(PcTensor *dst, const PcTensor *src);
    /* every element of dst = value (all six dtypes). */
    PcStatus (*fill)(PcTensor *dst, double value);
    PcStatus (*unary)(PcUnaryOp op, PcTensor *dst, const PcTensor *src, double s);
    PcStatus (*binary)(PcBinaryOp op, PcTensor *dst, const PcTensor *a, const PcTensor *b,
                       double alpha);

    /* ---- reductions ---- */
    /* dst has src's ndim; dims where dst->shape[i] == 1 != src->shape[i] are reduced
     * (and dims of size 1 in both). SUM/MEAN: float types (int64 SUM too). MAX: float types.
     * An empty reduction gives 0 for SUM, NaN for MEAN, PC_ERR_INVALID for MAX. */
    PcStatus (*reduce)(PcReduceOp op, PcTensor *dst, const PcTensor *src);
    /* Max along `dim`: vals (src dtype) and idx (int64) have src's shape with 1 at dim.
     * The first maximal index wins; NaN counts as the maximum. */
    PcStatus (*max_dim)(PcTensor *vals, PcTensor *idx, const PcTensor *src, int dim);
    /* dst = src gathered along dim at idx: dst[..i..] = src[..idx[..i..]..] (idx int64, dst and
     * idx of one shape). Index out of range -> PC_ERR_INDEX. */
    PcStatus (*gather_dim)(PcTensor *dst, const PcTensor *src, const PcTensor *idx, int dim);
    /* dst[..idx[..i..]..] += src[..i..] along dim (the transpose of gather_dim). */
    PcStatus (*scatter_add_dim)(PcTensor *dst, const PcTensor *idx, const PcTensor *src, int dim);

    /* ---- matrix products ---- */
    PcStatus (*gemm)(PcDevice dev, const PcGemmArgs *args);

    /* ---- row-wise (contiguous; rows = numel / last dim) ---- */
    /* y = softmax(x) or log_softmax(x) over the last dim. */
    PcStatus (*softmax)(PcTensor *y, const PcTensor *x, bool log);
    /* dx from dy and the forward's output y. */
    PcStatus (*softmax_backward)(PcTensor *dx, const PcTensor *dy, const PcTensor *y, bool log);
    /* y = (x - mean) * rstd * w + b over the last D elements; mean, rstd: (rows,) float32 for
     * half inputs, else x's dtype. w, b: (D,) or NULL. */
    PcStatus (*layer_norm)(PcTensor *y, PcTensor *mean, PcTensor *rstd, const PcTensor *x,
                           const PcTensor *w, const PcTensor *b, double eps);
    /* dx (may be NULL), dw, db (NULL when not wanted; written, not accumulated). */
    PcStatus (*layer_norm_backward)(PcTensor *dx, PcTensor *dw, PcTensor *db, const PcTensor *dy,
                                    const PcTensor *x, const PcTensor *mean,
                                    const PcTensor *rstd, const PcTensor *w);

    /* ---- random (contiguous dst, float types) ----
     * Element i uses Philox4x32-10 with key (lo32(seed), hi32(seed)) and counter
     * (lo32(offset + i), hi32(offset + i), 0, 0), giving words x0, x1 (x2, x3 unused).
     * In float64:  UNIFORM: u = (((uint64)x0 << 32 | x1) >> 11) * 2^-53, value a + (b - a) * u;
     *              NORMAL:  u1 = (x0 + 1) * 2^-32, u2 = x1 * 2^-32,
     *                       value a + b * sqrt(-2 ln u1) * cos(2 pi u2);
     * then rounded to dst's dtype. Every backend reproduces this exactly, so a seed gives the
     * same numbers on every device. Callers advance `offset` by numel per call. */
    PcStatus (*random)(PcTensor *dst, PcRandomDist dist, double a, double b, uint64_t seed,
                       uint64_t offset);

    /* ---- indexing along dim 0 (contiguous) ---- */
    /* dst[i, ...] = src[idx[i], ...]; idx int64 (n,), bounds-checked (PC_ERR_INDEX). */
    PcStatus (*index_select0)(PcTensor *dst, const PcTensor *src, const PcTensor *idx);
    /* dst[idx[i], ...] += src[i, ...]. */
    PcStatus (*index_add0)(PcTensor *dst, const PcTensor *idx, const PcTensor *src);

    /* ---- optimisers (contiguous, float types; n tensors in one call) ---- */
    PcStatus (*sgd_step)(int n, PcTensor *const *params, PcTensor *const *grads,
                         PcTensor *const *momentum_bufs /* NULL when momentum == 0 */,
                         const PcSgdArgs *args);
    PcStatus (*adamw_step)(int n, PcTensor *const *params, PcTensor *const *grads,
                           PcTensor *const *exp_avgs, PcTensor *const *exp_avg_sqs,
                           const PcAdamWArgs *args);
} PcBackend;

/* Kernel names for messages and traces ("?" when out of range): "neg", "add_scalar", ...;
 * "add", "eq", "relu_backward", ... */
const char *pc_unary_op_name(PcUnaryOp op);
const char *pc_binary_op_name(PcBinaryOp op);

/* The backend for `dev`; sets an error and returns NULL when it is not built or the device
 * does not exist. */
const PcBackend *pc_backend_for(PcDevice dev);

extern const PcBackend pc_cpu_backend;
#ifdef PC_WITH_CUDA
extern const PcBackend pc_cuda_backend;
/* Number of CUDA devices visible (0 without a driver or GPU; never an error). */
int pc_cuda_device_count(void);
#endif

#ifdef __cplusplus
}
#endif
#endif /* PC_CORE_BACKEND_H */
