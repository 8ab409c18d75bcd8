/* internal.h — helpers shared by the op files in csrc/ops/ (not part of the public API).
 * Implemented in csrc/ops/common.c.
 */
#ifndef PC_OPS_INTERNAL_H
#define PC_OPS_INTERNAL_H

#include "ops.h"
#include "../autograd/autograd.h"

/* Normalise a possibly negative dim against ndim (dim in [-ndim, ndim-1]; for ndim == 0,
 * -1 and 0 are accepted and give 0). `op` and `arg` name the caller in the error. */
PcStatus pc_wrap_dim(const char *op, int dim, int ndim, int *out);

/* Broadcast two shapes (NumPy rules). Error names op and both shapes. */
PcStatus pc_broadcast_shapes(const char *op, int na, const int64_t *sa, int nb,
                             const int64_t *sb, int *nout, int64_t *out);

/* A view of t expanded (stride 0) to (ndim, shape); t must be broadcastable to it.
 * No autograd. New reference. */
PcStatus pc_expand_view(PcTensor *t, int ndim, const int64_t *shape, PcTensor **out);

/* A new tensor of t's dtype and device, no history. */
PcStatus pc_empty_like(const PcTensor *t, PcTensor **out);
/* t as a contiguous tensor: t itself (new reference) if already contiguous, else a copy.
 * No autograd. */
PcStatus pc_make_contiguous(PcTensor *t, PcTensor **out);
/* t converted to dtype (new reference to t when equal). No autograd. */
PcStatus pc_cast(PcTensor *t, PcDType dtype, PcTensor **out);

/* Both on one device, else PC_ERR_DEVICE naming op and both devices. */
PcStatus pc_check_same_device(const char *op, const PcTensor *a, const PcTensor *b);
/* t is a floating dtype, else PC_ERR_TYPE naming op and arg. */
PcStatus pc_check_float(const char *op, const char *arg, const PcTensor *t);

/* The backend of t's device (sets an error and returns NULL when unavailable). */
static inline const PcBackend *pc_be(const PcTensor *t) { return pc_backend_for(t->device); }

/* Reduce a gradient of shape `gshape` back to `ndim, shape` (sum over broadcast dims) —
 * used by the backward of every broadcasting op. New reference (grad itself when equal). */
PcStatus pc_sum_to_shape(PcTensor *grad, int ndim, const int64_t *shape, PcTensor **out);

/* In-place guard: fails when t is a leaf that requires grad while grad mode is on. */
PcStatus pc_check_inplace(const char *op, const PcTensor *t);

/* Shape, dtype and device of t (what a node keeps to build gradients of t's shape). */
void pc_meta_of(const PcTensor *t, PcTensorMeta *m);

/* When grad mode is on and an input requires grad: create a node of `size` bytes, make `out`
 * its output 0 and return it in *node (borrowed: `out` holds the reference); else *node is
 * NULL. The caller fills the node's own fields afterwards. */
PcStatus pc_attach_node(size_t size, const PcNodeVTable *vt, int n_in, PcTensor *const *in,
                        PcTensor *out, PcNode **node);

/* c (m, n), contiguous, = alpha * a @ b + beta * c for 2-D a (m, k), b (k, n) of c's dtype
 * (any strides: copied when the GEMM cannot read them). Implemented in matmul.c. */
PcStatus pc_gemm_into(PcTensor *a, PcTensor *b, double alpha, double beta, PcTensor *c);

#endif /* PC_OPS_INTERNAL_H */
