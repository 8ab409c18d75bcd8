/* common.c — helpers shared by the op files (declared in csrc/ops/internal.h).
 *
 * Dim wrapping, NumPy broadcasting of shapes, stride-0 expansion views, contiguous copies
 * and dtype casts through the backend `copy` kernel, the gradient reduction used by every
 * broadcasting backward (pc_sum_to_shape, through the backend `reduce` kernel), and the
 * in-place guard. None of these record autograd history.
 *
 * pc_check_inplace also refuses (grad mode on) an in-place write through a view of a tensor
 * that requires grad — a tensor whose grad_fn is a view op's node (ViewBackward0,
 * TransposeBackward0, SliceBackward0, ...) — since pipec has no CopySlices-style rebase of the
 * base's history. Views made under no_grad, or of tensors not requiring grad, are not
 * detected (PcTensor keeps no base pointer).
 *
 * Invariants: every function returns a new reference in *out (NULL on failure) and leaves
 * its inputs untouched.
 * Exports: everything declared in internal.h.
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>

/* ---- dims and shapes ---- */

PcStatus pc_wrap_dim(const char *op, int dim, int ndim, int *out) {
    int lo = ndim > 0 ? -ndim : -1;
    int hi = ndim > 0 ? ndim - 1 : 0;
    if (dim < lo || dim > hi)
        return pc_set_error(PC_ERR_INDEX,
                            "%s: dimension out of range (expected to be in range of [%d, %d], "
                            "but got %d)", op, lo, hi, dim);
    *out = dim < 0 ? dim + (ndim > 0 ? ndim : 1) : dim;
    return PC_OK;
}

PcStatus pc_broadcast_shapes(const char *op, int na, const int64_t *sa, int nb,
                             const int64_t *sb, int *nout, int64_t *out) {
    int n = na > nb ? na : nb;
    int64_t res[PC_MAX_DIMS];
    for (int i = 0; i < n; i++) {
        int ia = na - n + i, ib = nb - n + i;
        int64_t a = ia >= 0 ? sa[ia] : 1;
        int64_t b = ib >= 0 ? sb[ib] : 1;
        if (a != b && a != 1 && b != 1) {
            char bufa[128], bufb[128];
            return pc_set_error(PC_ERR_INVALID,
                                "%s: shapes %s and %s cannot be broadcast: the size of tensor "
                                "a (%lld) must match the size of tensor b (%lld) at "
                                "non-singleton dimension %d",
                                op, pc_shape_str(na, sa, bufa, sizeof bufa),
                                pc_shape_str(nb, sb, bufb, sizeof bufb), (long long)a,
                                (long long)b, i);
        }
        res[i] = a == 1 ? b : a;
    }
    for (int i = 0; i < n; i++) out[i] = res[i];
    *nout = n;
    return PC_OK;
}

PcStatus pc_expand_view(PcTensor *t, int ndim, const int64_t *shape, PcTensor **out) {
    *out = NULL;
    if (ndim < t->ndim || ndim > PC_MAX_DIMS) {
        char bt[128], bs[128];
        return pc_set_error(PC_ERR_INVALID, "expand: cannot expand a tensor of shape %s to %s",
                            pc_shape_str(t->ndim, t->shape, bt, sizeof bt),
                            pc_shape_str(ndim, shape, bs, sizeof bs));
    }
    int64_t strides[PC_MAX_DIMS];
    int lead = ndim - t->ndim;
    for (int i = 0; i < ndim; i++) {
        if (i < lead) {
            strides[i] = 0;
            continue;
        }
        int64_t s = t->shape[i - lead];
        if (s == shape[i]) {
            strides[i] = t->strides[i - lead];
        } else if (s == 1) {
            strides[i] = 0;
        } else {
            char bt[128], bs[128];
            return pc_set_error(PC_ERR_INVALID,
                                "expand: the expanded size of the tensor (%lld) must match the "
                                "existing size (%lld) at non-singleton dimension %d; target "
                                "shape %s, tensor shape %s",
                                (long long)shape[i], (long long)s, i,
                                pc_shape_str(ndim, shape, bs, sizeof bs),
                                pc_shape_str(t->ndim, t->shape, bt, sizeof bt));
        }
    }
    return pc_tensor_view_of(t->storage, t->offset, ndim, shape, strides, t->dtype, out);
}

/* ---- allocation, contiguity, casts ---- */

PcStatus pc_empty_like(const PcTensor *t, PcTensor **out) {
    return pc_tensor_empty(t->ndim, t->shape, t->dtype, t->device, out);
}

PcStatus pc_make_contiguous(PcTensor *t, PcTensor **out) {
    *out = NULL;
    if (pc_tensor_is_contiguous(t)) {
        pc_tensor_incref(t);
        *out = t;
        return PC_OK;
    }
    const PcBackend *be = pc_be(t);
    if (!be) return PC_ERR_DEVICE;
    PcTensor *r;
    PC_TRY(pc_empty_like(t, &r));
    PcStatus st = be->copy(r, t);
    if (st != PC_OK) {
        pc_tensor_decref(r);
        return st;
    }
    *out = r;
    return PC_OK;
}

PcStatus pc_cast(PcTensor *t, PcDType dtype, PcTensor **out) {
    *out = NULL;
    if (t->dtype == dtype) {
        pc_tensor_incref(t);
        *out = t;
        return PC_OK;
    }
    const PcBackend *be = pc_be(t);
    if (!be) return PC_ERR_DEVICE;
    PcTensor *r;
    PC_TRY(pc_tensor_empty(t->ndim, t->shape, dtype, t->device, &r));
    PcStatus st = be->copy(r, t);
    if (st != PC_OK) {
        pc_tensor_decref(r);
        return st;
    }
    *out = r;
    return PC_OK;
}

/* ---- checks ---- */

const char *pc_device_str(PcDevice d, char *buf, size_t n) {
    if (d.type == PC_CPU)
        snprintf(buf, n, "cpu");
    else
        snprintf(buf, n, "cuda:%d", d.index);
    return buf;
}

PcStatus pc_check_same_device(const char *op, const PcTensor *a, const PcTensor *b) {
    if (pc_device_eq(a->device, b->device)) return PC_OK;
    char da[32], db[32];
    return pc_set_error(PC_ERR_DEVICE,
                        "%s: expected all tensors to be on the same device, but found at least "
                        "two devices, %s and %s",
                        op, pc_device_str(a->device, da, sizeof da),
                        pc_device_str(b->device, db, sizeof db));
}

PcStatus pc_check_float(const char *op, const char *arg, const PcTensor *t) {
    if (pc_dtype_is_float(t->dtype)) return PC_OK;
    return pc_set_error(PC_ERR_TYPE, "%s: expected a floating point tensor for argument '%s', "
                                     "got %s", op, arg, pc_dtype_name(t->dtype));
}

/* True when `fn` is the backward of a view op (the tensor it produced shares its base's
 * storage). Names follow torch's, which the view ops in csrc/ops/ use. */
static bool pc_is_view_node(const PcNode *fn) {
    static const char *const names[] = {
        "ViewBackward", "ReshapeAliasBackward", "UnsafeViewBackward", "TransposeBackward",
        "TBackward", "PermuteBackward", "UnsqueezeBackward", "SqueezeBackward",
        "ExpandBackward", "SliceBackward", "SelectBackward", "AsStridedBackward",
        "AliasBackward", "SplitBackward", "SplitWithSizesBackward", "UnbindBackward",
        "ChunkBackward", "NarrowBackward"};
    if (!fn || !fn->vt || !fn->vt->name) return false;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strncmp(fn->vt->name, names[i], strlen(names[i])) == 0) return true;
    return false;
}

/* Besides torch's leaf rule, in-place writes through a view of a tensor that requires grad
 * are refused while grad mode is on: pipec has no CopySlices-style rebase of the base's
 * history, so the base's gradient would silently be wrong. Clone the view, or write under
 * no_grad. */
PcStatus pc_check_inplace(const char *op, const PcTensor *t) {
    if (!pc_grad_enabled() || !t->requires_grad) return PC_OK;
    if (t->grad_fn == NULL)
        return pc_set_error(PC_ERR_RUNTIME,
                            "%s: a leaf Variable that requires grad is being used in an "
                            "in-place operation.", op);
    if (pc_is_view_node(t->grad_fn))
        return pc_set_error(PC_ERR_RUNTIME,
                            "%s: in-place operation on a view (%s) of a tensor that requires "
                            "grad is not supported by pipec; clone() the view first or run "
                            "the in-place op under no_grad()", op, t->grad_fn->vt->name);
    return PC_OK;
}

/* ---- gradient reduction for broadcasting ops ---- */

PcStatus pc_sum_to_shape(PcTensor *grad, int ndim, const int64_t *shape, PcTensor **out) {
    *out = NULL;
    bool same = grad->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = grad->shape[i] == shape[i];
    if (same) {
        pc_tensor_incref(grad);
        *out = grad;
        return PC_OK;
    }
    int lead = grad->ndim - ndim;
    if (lead < 0) {
        char bg[128], bs[128];
        return pc_set_error(PC_ERR_INVALID, "sum_to_shape: gradient of shape %s has fewer dims "
                                            "than the target %s",
                            pc_shape_str(grad->ndim, grad->shape, bg, sizeof bg),
                            pc_shape_str(ndim, shape, bs, sizeof bs));
    }
    /* Reduced shape with grad's ndim: 1 on leading dims and on broadcast dims. */
    int64_t red[PC_MAX_DIMS];
    for (int i = 0; i < grad->ndim; i++) {
        if (i < lead) {
            red[i] = 1;
        } else {
            int64_t s = shape[i - lead];
            if (s != grad->shape[i] && s != 1) {
                char bg[128], bs[128];
                return pc_set_error(PC_ERR_INVALID, "sum_to_shape: gradient of shape %s cannot "
                                                    "be summed to %s",
                                    pc_shape_str(grad->ndim, grad->shape, bg, sizeof bg),
                                    pc_shape_str(ndim, shape, bs, sizeof bs));
            }
            red[i] = s;
        }
    }
    const PcBackend *be = pc_be(grad);
    if (!be) return PC_ERR_DEVICE;
    PcTensor *r = NULL, *v = NULL;
    PcStatus st;
    PC_TRY(pc_tensor_empty(grad->ndim, red, grad->dtype, grad->device, &r));
    PC_TRY_GOTO(st, be->reduce(PC_R_SUM, r, grad));
    PC_TRY_GOTO(st, pc_tensor_view_of(r->storage, r->offset, ndim, shape, NULL, r->dtype, &v));
    pc_tensor_decref(r);
    *out = v;
    return PC_OK;
fail:
    pc_tensor_decref(r);
    return st;
}

/* ---- autograd helpers shared by the op files ---- */

void pc_meta_of(const PcTensor *t, PcTensorMeta *m) {
    memset(m, 0, sizeof *m);
    m->ndim = t->ndim;
    for (int i = 0; i < t->ndim; i++) m->shape[i] = t->shape[i];
    m->dtype = t->dtype;
    m->device = t->device;
}

PcStatus pc_attach_node(size_t size, const PcNodeVTable *vt, int n_in, PcTensor *const *in,
                        PcTensor *out, PcNode **node) {
    *node = NULL;
    if (!pc_autograd_any_requires_grad(n_in, in)) return PC_OK;
    PcNode *n;
    PC_TRY(pc_node_create(size, vt, 1, n_in, in, &n));
    pc_autograd_set_history(out, n, 0);
    pc_node_decref(n);
    *node = n;
    return PC_OK;
}
