/* ops.h — the tensor operations: argument checks, dispatch to the device's backend, and
 * autograd recording. This is the API csrc/py/ binds and the graph/runtime layers replay.
 *
 * Conventions:
 *   - Every op returns a PcStatus; results come back as new references in *out (or out[]).
 *   - Errors name the op and the argument, with both shapes/dtypes/devices, e.g.
 *     "mm: shape mismatch: self (2, 3) @ mat2 (4, 5): self.shape[1]=3 != mat2.shape[0]=4".
 *     Shape/value problems are PC_ERR_INVALID, dtype problems PC_ERR_TYPE, tensors on
 *     different devices PC_ERR_DEVICE.
 *   - `dim` arguments accept negative values (counted from the end) and are range-checked.
 *   - When grad mode is on and any tensor input requires grad, the op records a node
 *     (see autograd.h). View ops return views sharing storage; their backward is a view
 *     of the gradient reshaped back.
 *   - In-place ops (name ends in `_`) bump the storage version; they fail on a leaf that
 *     requires grad while grad mode is on (as torch does); on a non-leaf that requires grad
 *     they rebase its history onto a new node.
 *   - Mixed dtypes between two tensors promote (pc_dtype_promote); python scalars never
 *     change the tensor's dtype.
 */
#ifndef PC_OPS_OPS_H
#define PC_OPS_OPS_H

#include "../core/tensor.h"
#include "../core/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum PcReduction { PC_REDUCTION_NONE = 0, PC_REDUCTION_MEAN = 1, PC_REDUCTION_SUM = 2 } PcReduction;

/* ---- random generator (process-wide state: seed + offset, guarded by a lock) ---- */
void pc_rng_manual_seed(uint64_t seed);
uint64_t pc_rng_initial_seed(void);
/* Reserve n numbers: returns the seed and the offset to use; advances the offset by n. */
void pc_rng_reserve(uint64_t n, uint64_t *seed, uint64_t *offset);

/* ---- factories (no autograd) ---- */
PcStatus pc_op_empty(int ndim, const int64_t *shape, PcDType dtype, PcDevice dev, PcTensor **out);
PcStatus pc_op_full(int ndim, const int64_t *shape, double value, PcDType dtype, PcDevice dev,
                    PcTensor **out);
/* Values start, start+step, ... < end (> end for negative step). step != 0. */
PcStatus pc_op_arange(double start, double end, double step, PcDType dtype, PcDevice dev,
                      PcTensor **out);
PcStatus pc_op_rand(int ndim, const int64_t *shape, PcDType dtype, PcDevice dev, PcTensor **out);
PcStatus pc_op_randn(int ndim, const int64_t *shape, PcDType dtype, PcDevice dev, PcTensor **out);

/* ---- in-place fills and copies (no autograd history; fail on a leaf requiring grad when
 * grad mode is on) ---- */
PcStatus pc_op_fill_(PcTensor *self, double value);
PcStatus pc_op_zero_(PcTensor *self);
PcStatus pc_op_uniform_(PcTensor *self, double a, double b);
PcStatus pc_op_normal_(PcTensor *self, double mean, double std);
/* self = src broadcast to self's shape, converting dtype and device. Records history
 * (CopyBackward) when src requires grad. */
PcStatus pc_op_copy_(PcTensor *self, PcTensor *src);

/* ---- conversions ---- */
/* Same tensor (new reference) when nothing changes; otherwise a copy. Differentiable. */
PcStatus pc_op_to(PcTensor *self, PcDType dtype, PcDevice dev, PcTensor **out);
PcStatus pc_op_contiguous(PcTensor *self, PcTensor **out);
PcStatus pc_op_clone(PcTensor *self, PcTensor **out);
/* A view sharing storage, with no history and requires_grad false. */
PcStatus pc_op_detach(PcTensor *self, PcTensor **out);

/* ---- unary (differentiable) ---- */
PcStatus pc_op_unary(PcUnaryOp op, PcTensor *self, double s, PcTensor **out);
/* neg, abs, exp, log, sqrt, tanh, sigmoid, relu, gelu, pow(s) are pc_op_unary with the op;
 * the scalar forms x+s, x*s, s-x, s/x too (PC_U_ADD_S ...). */

/* ---- binary with broadcasting (differentiable; PC_B_ADD/SUB use alpha) ----
 * The comparisons PC_B_EQ ... PC_B_GE give a bool tensor that never requires grad. */
PcStatus pc_op_binary(PcBinaryOp op, PcTensor *a, PcTensor *b, double alpha, PcTensor **out);
/* In place: a = a op b (b broadcast to a's shape; the result dtype must be a's). */
PcStatus pc_op_binary_(PcBinaryOp op, PcTensor *a, PcTensor *b, double alpha);
/* In place with a scalar: self = f(self, s) for PC_U_ADD_S / PC_U_MUL_S / ... */
PcStatus pc_op_unary_(PcUnaryOp op, PcTensor *self, double s);

/* ---- matrix products ---- */
PcStatus pc_op_mm(PcTensor *a, PcTensor *b, PcTensor **out);               /* 2-D @ 2-D */
PcStatus pc_op_matmul(PcTensor *a, PcTensor *b, PcTensor **out);           /* NumPy rules */
/* beta * bias + alpha * (a @ b); bias broadcasts to (m, n). */
PcStatus pc_op_addmm(PcTensor *bias, PcTensor *a, PcTensor *b, double beta, double alpha,
                     PcTensor **out);
/* x @ w^T + b; x (..., in), w (out, in), b (out,) or NULL. */
PcStatus pc_op_linear(PcTensor *x, PcTensor *w, PcTensor *b, PcTensor **out);

/* ---- reductions ---- */
/* dims NULL / ndims == 0 = all dims. */
PcStatus pc_op_sum(PcTensor *self, int ndims, const int *dims, bool keepdim, PcTensor **out);
PcStatus pc_op_mean(PcTensor *self, int ndims, const int *dims, bool keepdim, PcTensor **out);
/* Max over everything: a 0-d tensor. */
PcStatus pc_op_max_all(PcTensor *self, PcTensor **out);
/* Max along one dim: values (differentiable) and int64 indices. */
PcStatus pc_op_max_dim(PcTensor *self, int dim, bool keepdim, PcTensor **values,
                       PcTensor **indices);

/* ---- views and shape ops (differentiable) ---- */
/* shape may hold one -1. view requires compatible strides; reshape copies when needed. */
PcStatus pc_op_view(PcTensor *self, int ndim, const int64_t *shape, PcTensor **out);
PcStatus pc_op_reshape(PcTensor *self, int ndim, const int64_t *shape, PcTensor **out);
PcStatus pc_op_flatten(PcTensor *self, int start_dim, int end_dim, PcTensor **out);
PcStatus pc_op_transpose(PcTensor *self, int d0, int d1, PcTensor **out);
PcStatus pc_op_t(PcTensor *self, PcTensor **out);                 /* <= 2-D */
PcStatus pc_op_permute(PcTensor *self, int ndims, const int *dims, PcTensor **out);
PcStatus pc_op_unsqueeze(PcTensor *self, int dim, PcTensor **out);
/* dim == PC_ALL_DIMS squeezes every size-1 dim. */
#define PC_ALL_DIMS (-1000)
PcStatus pc_op_squeeze(PcTensor *self, int dim, PcTensor **out);
/* -1 keeps a size; new leading dims allowed. */
PcStatus pc_op_expand(PcTensor *self, int ndim, const int64_t *shape, PcTensor **out);
/* Basic slicing: elements start, start+step, ... < stop along dim (step > 0); start/stop
 * already clamped by the caller to [0, size]. */
PcStatus pc_op_slice(PcTensor *self, int dim, int64_t start, int64_t stop, int64_t step,
                     PcTensor **out);
/* Integer indexing: drops dim (index may be negative). */
PcStatus pc_op_select(PcTensor *self, int dim, int64_t index, PcTensor **out);
PcStatus pc_op_cat(int n, PcTensor *const *ts, int dim, PcTensor **out);
PcStatus pc_op_stack(int n, PcTensor *const *ts, int dim, PcTensor **out);

/* ---- softmax, losses, normalisation ---- */
PcStatus pc_op_softmax(PcTensor *self, int dim, bool log, PcTensor **out);
PcStatus pc_op_mse_loss(PcTensor *input, PcTensor *target, PcReduction red, PcTensor **out);
/* input (N, C) or (C,), target int64 (N,) or (); class indices in [0, C). */
PcStatus pc_op_cross_entropy(PcTensor *input, PcTensor *target, PcReduction red,
                             PcTensor **out);
/* Normalise over the last `norm_ndim` dims; weight/bias of that shape or NULL. */
PcStatus pc_op_layer_norm(PcTensor *x, int norm_ndim, PcTensor *weight, PcTensor *bias,
                          double eps, PcTensor **out);
/* Training: zero with probability p, scale the rest by 1/(1-p). Not training: identity. */
PcStatus pc_op_dropout(PcTensor *x, double p, bool training, PcTensor **out);
/* weight (V, D), idx int64 of any shape -> (*idx.shape, D). */
PcStatus pc_op_embedding(PcTensor *weight, PcTensor *idx, PcTensor **out);

#ifdef __cplusplus
}
#endif
#endif /* PC_OPS_OPS_H */
